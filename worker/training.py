"""Train a classification head on cached encoder features, one seeded run per trial."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from worker.epochs import EpochCheckpoints, EpochResult, KeepRule, TrainResult, by_val_loss, run_epochs
from worker.features import Features
from worker.hyperparams import HeadParams, make_optimizer
from worker.model import build_head
from worker.scores import Scores, macro_f1

# Validation runs in chunks so a large local data set with a wide head does not exhaust memory.
_EVAL_CHUNK_ROWS = 4096


def _evaluate(head: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> Scores:
    """The head's mean cross-entropy, accuracy and macro-averaged F1 on a whole set."""
    head.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=inputs.device)
    predicted: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], _EVAL_CHUNK_ROWS):
            logits = head(inputs[start : start + _EVAL_CHUNK_ROWS])
            chunk_labels = labels[start : start + _EVAL_CHUNK_ROWS]
            loss_sum += torch.nn.functional.cross_entropy(logits, chunk_labels, reduction="sum").double()
            predicted.append(logits.argmax(dim=1))
    predictions = torch.cat(predicted)
    n_rows = inputs.shape[0]
    correct = (predictions == labels).sum()
    return Scores(loss_sum.item() / n_rows, correct.item() / n_rows, macro_f1(predictions, labels))


def evaluate_head(head: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Return (mean cross-entropy, accuracy) of a head on features, computed as training computes it."""
    scores = _evaluate(head, inputs, labels)
    return scores.loss, scores.accuracy


def _check_features(features: Features) -> None:
    n_classes = len(features.label_names)
    for name, inputs, labels in (
        ("train", features.train, features.train_labels),
        ("validation", features.validation, features.validation_labels),
    ):
        if inputs.ndim != 2 or inputs.shape[0] == 0:
            raise ValueError(
                f"{name} features must be a non-empty 2-D tensor, got shape {tuple(inputs.shape)}"
            )
        if labels.shape != (inputs.shape[0],):
            raise ValueError(f"{name} labels have shape {tuple(labels.shape)}, expected ({inputs.shape[0]},)")
        if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
            raise ValueError(f"{name} labels fall outside the {n_classes} label names")
    if features.train.shape[1] != features.validation.shape[1]:
        raise ValueError("train and validation features differ in width")


def train_head(
    *,
    features: Features,
    params: HeadParams,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochResult], None] | None = None,
    interrupted: Callable[[], str | None] | None = None,
    keep: KeepRule = by_val_loss,
    run_name: str = "training",
    checkpoints: EpochCheckpoints | None = None,
) -> TrainResult:
    """Train a fresh head on the features, evaluating after every epoch; same seed and device, same losses.

    on_epoch may raise StopTraining, which propagates with the results so far attached as `.result`.
    interrupted is polled between batches; a reason it returns ends training with StopTraining(reason).
    """
    _check_features(features)
    started = time.perf_counter()
    torch.manual_seed(seed)
    # A generator of its own keeps the shuffling order independent of anything else using the global RNG.
    shuffle_generator = torch.Generator(device="cpu").manual_seed(seed)
    # Features are moved once; every minibatch is then an index into tensors already on the device.
    train_inputs = features.train.to(device=device, dtype=torch.float32)
    train_labels = features.train_labels.to(device=device, dtype=torch.int64)
    val_inputs = features.validation.to(device=device, dtype=torch.float32)
    val_labels = features.validation_labels.to(device=device, dtype=torch.int64)
    n_train = train_inputs.shape[0]

    head = build_head(
        input_size=train_inputs.shape[1],
        n_classes=len(features.label_names),
        depth=params.depth,
        width=params.width,
        activation=params.activation,
    ).to(device)
    optimizer = make_optimizer(params.optimizer, head.parameters(), params.learning_rate)

    def batches() -> Iterator[torch.Tensor]:
        order = torch.randperm(n_train, generator=shuffle_generator).to(device)
        for start in range(0, n_train, params.batch_size):
            yield order[start : start + params.batch_size]

    def loss_of(batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        loss = torch.nn.functional.cross_entropy(head(train_inputs[batch]), train_labels[batch])
        return loss, batch.shape[0]

    return run_epochs(
        epochs=params.epochs,
        n_train=n_train,
        train_mode=head.train,
        batches=batches,
        loss_of=loss_of,
        optimizer=optimizer,
        evaluate=lambda: _evaluate(head, val_inputs, val_labels),
        trained=lambda: dict(head.state_dict()),
        generator=shuffle_generator,
        keep=keep,
        on_epoch=on_epoch,
        interrupted=interrupted,
        started=started,
        run_name=run_name,
        checkpoints=checkpoints,
    )
