"""Fine-tune a copy of the user's pretrained module with the searched head in place: one seeded run per trial."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from worker.epochs import EpochCheckpoints, EpochResult, KeepRule, TrainResult, by_val_loss, run_epochs
from worker.hyperparams import HeadParams, make_optimizer
from worker.model import build_head
from worker.module_inputs import FeatureRows, ModelInputs
from worker.module_surgery import (
    Replaced,
    attach_head,
    changing_state,
    check_logits,
    is_head_parameter,
    mark_trainable,
    parameter_dtype,
    replaced_width,
    set_train_mode,
    trained_paths,
)
from worker.scores import Scores, macro_f1

# Validation runs in chunks so a large data set (or wide hashed text) does not exhaust memory.
_EVAL_CHUNK_ROWS = 4096


def with_head(
    model: torch.nn.Module,
    *,
    replace: str,
    freeze: str | list[str],
    n_classes: int,
    depth: int,
    width: int | None,
    activation: str | None,
) -> tuple[Replaced, list[str]]:
    """The model (changed in place) with a fresh head at `replace`, and the module paths that train."""
    head = build_head(
        input_size=replaced_width(model, replace),
        n_classes=n_classes,
        depth=depth,
        width=width,
        activation=activation,
    )
    replaced = attach_head(model, replace, head)
    trained = trained_paths(replaced, freeze)
    mark_trainable(replaced, trained)
    return replaced, trained


def evaluate_rows(
    model: torch.nn.Module, rows: FeatureRows, labels: torch.Tensor, *, device: torch.device
) -> Scores:
    """The model's mean cross-entropy, accuracy and macro-averaged F1 on a whole set, in chunks."""
    model.eval()
    dtype = parameter_dtype(model)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    predicted: list[torch.Tensor] = []
    labels = labels.to(device)
    with torch.no_grad():
        for start in range(0, rows.n_rows, _EVAL_CHUNK_ROWS):
            index = torch.arange(start, min(start + _EVAL_CHUNK_ROWS, rows.n_rows))
            logits = model(rows.take(index, device=device, dtype=dtype)).float()
            chunk_labels = labels[start : start + _EVAL_CHUNK_ROWS]
            loss_sum += torch.nn.functional.cross_entropy(logits, chunk_labels, reduction="sum").double()
            predicted.append(logits.argmax(dim=1))
    predictions = torch.cat(predicted)
    correct = (predictions == labels).sum()
    return Scores(loss_sum.item() / rows.n_rows, correct.item() / rows.n_rows, macro_f1(predictions, labels))


def train_module(
    *,
    model: torch.nn.Module,
    replace: str,
    freeze: str | list[str],
    inputs: ModelInputs,
    params: HeadParams,
    encoder_learning_rate: float | None,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochResult], None] | None = None,
    interrupted: Callable[[], str | None] | None = None,
    keep: KeepRule = by_val_loss,
    run_name: str = "training",
    checkpoints: EpochCheckpoints | None = None,
) -> TrainResult:
    """Train the model (a private copy, changed in place) with a fresh head; same seed and device, same losses.

    The callbacks, errors and result are run_epochs'; best_state holds the kept epoch's entries of the model's
    state_dict that training can change (the head, and whatever freeze lets train).
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    # A generator of its own keeps the shuffling order independent of anything else using the global RNG.
    generator = torch.Generator(device="cpu").manual_seed(seed)
    n_classes = len(inputs.label_names)
    replaced, trained = with_head(
        model,
        replace=replace,
        freeze=freeze,
        n_classes=n_classes,
        depth=params.depth,
        width=params.width,
        activation=params.activation,
    )
    network = replaced.model.to(device)
    check_logits(network, inputs.width, n_classes, replace)
    dtype = parameter_dtype(network)
    head_parameters: list[torch.nn.Parameter] = []
    other_parameters: list[torch.nn.Parameter] = []
    for name, parameter in network.named_parameters():
        if parameter.requires_grad:
            (head_parameters if is_head_parameter(replaced, name) else other_parameters).append(parameter)
    groups = [{"params": head_parameters, "lr": params.learning_rate}]
    if other_parameters:
        groups.append({"params": other_parameters, "lr": encoder_learning_rate or params.learning_rate})
    optimizer = make_optimizer(params.optimizer, groups, params.learning_rate)
    changing = changing_state(replaced, trained)
    train_rows = inputs.train.to(device)
    train_labels = inputs.train_labels.to(device)
    validation_rows = inputs.validation.to(device)
    n_train = train_rows.n_rows

    def batches() -> Iterator[torch.Tensor]:
        order = torch.randperm(n_train, generator=generator)
        for start in range(0, n_train, params.batch_size):
            yield order[start : start + params.batch_size]

    def loss_of(index: torch.Tensor) -> tuple[torch.Tensor, int]:
        logits = network(train_rows.take(index, device=device, dtype=dtype)).float()
        return torch.nn.functional.cross_entropy(logits, train_labels[index.to(device)]), int(index.shape[0])

    def trained_state() -> dict[str, torch.Tensor]:
        state = network.state_dict()
        return {name: state[name] for name in changing}

    return run_epochs(
        epochs=params.epochs,
        n_train=n_train,
        train_mode=lambda: set_train_mode(replaced, trained),
        batches=batches,
        loss_of=loss_of,
        optimizer=optimizer,
        evaluate=lambda: evaluate_rows(network, validation_rows, inputs.validation_labels, device=device),
        trained=trained_state,
        generator=generator,
        keep=keep,
        on_epoch=on_epoch,
        interrupted=interrupted,
        started=started,
        run_name=run_name,
        checkpoints=checkpoints,
    )
