"""Tests for training a classification head on cached features, and for building heads."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from studies.names import OPTIMIZER_NAMES
from worker.epochs import EpochResult, NonFiniteLoss, StopTraining
from worker.features import Features
from worker.hyperparams import HeadParams, make_optimizer
from worker.model import ACTIVATIONS, build_head
from worker.training import train_head

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_blobs(*, n_per_class: int = 64, n_dims: int = 64, seed: int = 0) -> Features:
    """Two well separated Gaussian blobs, half of each held out for validation."""
    generator = torch.Generator().manual_seed(seed)
    # Centres 8 standard deviations apart: separable, yet the first epoch is far from perfect.
    centres = torch.full((2, n_dims), 0.5)
    centres[0] = -centres[0]
    points = torch.cat(
        [centres[label] + torch.randn(n_per_class, n_dims, generator=generator) for label in (0, 1)]
    )
    labels = torch.tensor([0] * n_per_class + [1] * n_per_class)
    order = torch.randperm(points.shape[0], generator=generator)
    points, labels = points[order], labels[order]
    half = points.shape[0] // 2
    return Features(
        train=points[:half],
        validation=points[half:],
        train_labels=labels[:half],
        validation_labels=labels[half:],
        label_names=["left", "right"],
    )


def params(**overrides: object) -> HeadParams:
    values: dict[str, object] = {
        "learning_rate": 1e-2,
        "batch_size": 16,
        "epochs": 5,
        "depth": 1,
        "width": 32,
        "activation": "relu",
        "optimizer": "adam",
    }
    values.update(overrides)
    return HeadParams(**values)  # type: ignore[arg-type]


def test_training_loss_goes_down_on_a_tiny_separable_set() -> None:
    result = train_head(features=two_blobs(), params=params(epochs=8), seed=0, device=CPU)
    assert [epoch.epoch for epoch in result.epochs] == list(range(1, 9))
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss / 2
    assert result.final_val_loss < result.epochs[0].val_loss
    assert result.best_val_accuracy > 0.95
    assert result.best_val_loss == min(epoch.val_loss for epoch in result.epochs)
    assert result.epochs[result.best_epoch - 1].val_loss == result.best_val_loss
    assert result.train_s > 0


def test_the_same_seed_twice_gives_identical_validation_losses() -> None:
    features = two_blobs()
    first = train_head(features=features, params=params(), seed=7, device=CPU)
    second = train_head(features=features, params=params(), seed=7, device=CPU)
    other = train_head(features=features, params=params(), seed=8, device=CPU)
    assert [e.val_loss for e in first.epochs] == [e.val_loss for e in second.epochs]
    assert [e.val_loss for e in first.epochs] != [e.val_loss for e in other.epochs]


def test_best_state_loads_into_a_fresh_head_and_reproduces_the_best_validation_loss() -> None:
    features = two_blobs()
    result = train_head(features=features, params=params(depth=2), seed=0, device=CPU)
    head = build_head(input_size=64, n_classes=2, depth=2, width=32, activation="relu")
    head.load_state_dict(result.best_state)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(head(features.validation), features.validation_labels)
    assert loss.item() == pytest.approx(result.best_val_loss, rel=1e-5)
    assert all(tensor.device == CPU for tensor in result.best_state.values())


def test_a_huge_sgd_learning_rate_raises_non_finite_loss_naming_the_epoch() -> None:
    with pytest.raises(NonFiniteLoss, match=r"(NaN|inf) (validation )?loss at epoch 1"):
        train_head(
            features=two_blobs(), params=params(learning_rate=1e30, optimizer="sgd"), seed=0, device=CPU
        )


def test_stop_training_raised_by_the_epoch_callback_propagates_after_one_epoch_with_results() -> None:
    seen: list[EpochResult] = []

    def stop_after_first(epoch: EpochResult) -> None:
        seen.append(epoch)
        raise StopTraining("pruned")

    with pytest.raises(StopTraining) as stopped:
        train_head(
            features=two_blobs(), params=params(epochs=5), seed=0, device=CPU, on_epoch=stop_after_first
        )
    assert [epoch.epoch for epoch in seen] == [1]
    partial = stopped.value.result
    assert partial is not None
    assert partial.best_epoch == 1 and len(partial.epochs) == 1
    assert partial.best_state and partial.best_val_loss == seen[0].val_loss


def test_each_epoch_is_one_info_line_headed_by_the_run_even_when_the_run_stops_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="worker.epochs")
    seen: list[EpochResult] = []

    def stop_at_the_second(epoch: EpochResult) -> None:
        seen.append(epoch)
        if epoch.epoch == 2:
            raise StopTraining("pruned")

    with pytest.raises(StopTraining):
        train_head(
            features=two_blobs(),
            params=params(epochs=5),
            seed=0,
            device=CPU,
            on_epoch=stop_at_the_second,
            run_name="trial 7 of my-study",
        )
    records = [r for r in caplog.records if r.name == "worker.epochs"]
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO]
    for record, epoch in zip(records, seen, strict=True):
        assert re.fullmatch(
            rf"trial 7 of my-study: epoch {epoch.epoch}/5 train_loss {epoch.train_loss:.4f}"
            rf" val_loss {epoch.val_loss:.4f} val_accuracy {epoch.val_accuracy:.4f}"
            rf" val_macro_f1 {epoch.val_macro_f1:.4f} in \d+\.\d\ds",
            record.getMessage(),
        )


@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
def test_each_optimizer_trains_a_head_to_a_finite_loss(optimizer: str) -> None:
    learning_rate = 0.1 if optimizer in ("sgd", "adagrad") else 1e-2
    result = train_head(
        features=two_blobs(n_per_class=32),
        params=params(optimizer=optimizer, learning_rate=learning_rate, epochs=3),
        seed=0,
        device=CPU,
    )
    assert result.final_val_loss < result.epochs[0].val_loss or result.final_val_accuracy == 1.0


def test_sgd_uses_momentum() -> None:
    optimizer = make_optimizer("sgd", torch.nn.Linear(2, 2).parameters(), 0.1)
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_an_unknown_optimizer_raises_value_error() -> None:
    with pytest.raises(ValueError, match="lion"):
        make_optimizer("lion", torch.nn.Linear(2, 2).parameters(), 0.1)
    with pytest.raises(ValueError, match="lion"):
        params(optimizer="lion")


def test_build_head_depth_zero_is_a_linear_probe() -> None:
    head = build_head(input_size=384, n_classes=5, depth=0, width=128, activation="gelu")
    assert len(head) == 1 and isinstance(head[0], torch.nn.Linear)
    assert head(torch.zeros(3, 384)).shape == (3, 5)


def test_build_head_depth_three_has_three_hidden_layers_of_width_units() -> None:
    head = build_head(input_size=384, n_classes=5, depth=3, width=48, activation="tanh")
    linears = [layer for layer in head if isinstance(layer, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [
        (384, 48),
        (48, 48),
        (48, 48),
        (48, 5),
    ]
    assert sum(isinstance(layer, torch.nn.Tanh) for layer in head) == 3
    assert head(torch.zeros(2, 384)).shape == (2, 5)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds_a_working_head(activation: str) -> None:
    head = build_head(input_size=8, n_classes=3, depth=1, width=4, activation=activation)
    assert isinstance(head[1], ACTIVATIONS[activation])
    assert head(torch.zeros(2, 8)).shape == (2, 3)


def test_build_head_rejects_an_unknown_activation() -> None:
    with pytest.raises(ValueError, match="swish"):
        build_head(input_size=8, n_classes=3, depth=1, width=4, activation="swish")
