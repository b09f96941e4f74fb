"""Train a classification head on cached encoder features, one seeded run per trial."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from worker.features import Features
from worker.model import ACTIVATIONS, build_head

OPTIMIZERS = ("sgd", "adagrad", "adam", "adamw")
SGD_MOMENTUM = 0.9
# Validation runs in chunks so a large local data set with a wide head does not exhaust memory.
_EVAL_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class HeadParams:
    """The sampled hyperparameters of one head-training run."""

    learning_rate: float
    batch_size: int
    epochs: int
    depth: int
    width: int
    activation: str
    optimizer: str

    def __post_init__(self) -> None:
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be positive and finite, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.depth < 0:
            raise ValueError(f"depth must be at least 0, got {self.depth}")
        if self.width < 1:
            raise ValueError(f"width must be at least 1, got {self.width}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


class NonFiniteLoss(Exception):
    """Training produced NaN or inf; the message says at which epoch."""


class StopTraining(Exception):
    """Raised by an epoch callback to end training early (pruned or stopped).

    train_head attaches the results so far as `result` before letting it propagate.
    """

    result: TrainResult | None = None


@dataclass
class EpochResult:
    """The losses and accuracy after one epoch (1-based)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float


@dataclass
class TrainResult:
    """A training run: every epoch, the best (lowest validation loss) and final scores, and kept weights.

    best_state holds the weights of the epoch the run's `keep` rule preferred (by default the
    lowest validation loss), as CPU tensors, named `head.*` and, when the encoder trained, `encoder.*`
    (train_head keeps the head's own names); kept_epoch says which epoch that was.
    """

    epochs: list[EpochResult]
    best_epoch: int
    best_val_loss: float
    final_val_loss: float
    best_val_accuracy: float
    final_val_accuracy: float
    best_state: dict[str, torch.Tensor]
    train_s: float
    kept_epoch: int = 0


# Which epoch's weights a run keeps: the one with the lowest key. The default keeps the lowest validation loss.
KeepRule = Callable[[EpochResult], float]


def by_val_loss(result: EpochResult) -> float:
    """The default keep rule: the lowest validation loss wins."""
    return result.val_loss


def keep_rule(*, metric: str, value: str) -> KeepRule:
    """The keep rule matching an objective: its best epoch by the metric, or its final epoch."""
    if value == "final":
        return lambda result: -float(result.epoch)
    if metric == "val_accuracy":
        return lambda result: -result.val_accuracy
    return by_val_loss


def result_of(
    history: list[EpochResult],
    *,
    best: EpochResult,
    kept: EpochResult,
    best_state: dict[str, torch.Tensor],
    started: float,
) -> TrainResult:
    """The TrainResult of the epochs run so far (started: the run's time.perf_counter() at start)."""
    return TrainResult(
        epochs=list(history),
        best_epoch=best.epoch,
        best_val_loss=best.val_loss,
        final_val_loss=history[-1].val_loss,
        best_val_accuracy=best.val_accuracy,
        final_val_accuracy=history[-1].val_accuracy,
        best_state=best_state,
        train_s=time.perf_counter() - started,
        kept_epoch=kept.epoch,
    )


def make_optimizer(
    name: str, parameters: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], learning_rate: float
) -> torch.optim.Optimizer:
    """Return the named optimizer (sgd with momentum 0.9, adagrad, adam or adamw) over parameters.

    parameters may be parameter groups (dicts with their own "lr"); learning_rate is the default.
    """
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=learning_rate, momentum=SGD_MOMENTUM)
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, lr=learning_rate)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=learning_rate)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=learning_rate)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def check_finite(value: float, what: str, epoch: int) -> None:
    """NonFiniteLoss naming the value (NaN or inf), what it is and the epoch, unless it is finite."""
    if not math.isfinite(value):
        raise NonFiniteLoss(f"{'NaN' if math.isnan(value) else 'inf'} {what} at epoch {epoch}")


class EpochLog:
    """One training run's epochs: the history, the best and kept epochs, the kept weights, the on_epoch hook.

    Shared by head and encoder training, so the stop, non-finite and keep rules live in one place.
    """

    def __init__(
        self,
        *,
        keep: KeepRule,
        snapshot: Callable[[], dict[str, torch.Tensor]],
        on_epoch: Callable[[EpochResult], None] | None,
        started: float,
    ) -> None:
        self.started = started
        self.keep = keep
        self.snapshot = snapshot
        self.on_epoch = on_epoch
        self.history: list[EpochResult] = []
        self.best: EpochResult | None = None
        self.kept: EpochResult | None = None
        self.best_state: dict[str, torch.Tensor] = {}

    def end_epoch(self, epoch: int, *, train_loss: float, val_loss: float, val_accuracy: float) -> None:
        """Record an epoch's results, keep its weights if the keep rule says so, and call on_epoch.

        on_epoch may raise StopTraining, which propagates with the results so far attached as `.result`.
        """
        check_finite(val_loss, "validation loss", epoch)
        current = EpochResult(
            epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_accuracy=val_accuracy
        )
        self.history.append(current)
        if self.best is None or current.val_loss < self.best.val_loss:
            self.best = current
        if self.kept is None or self.keep(current) < self.keep(self.kept):
            self.kept = current
            self.best_state = self.snapshot()
        if self.on_epoch is not None:
            try:
                self.on_epoch(current)
            except StopTraining as stop:
                stop.result = self.result()
                raise

    def result(self) -> TrainResult:
        """The TrainResult of the epochs run so far."""
        assert self.best is not None and self.kept is not None
        return result_of(
            self.history, best=self.best, kept=self.kept, best_state=self.best_state, started=self.started
        )


def _evaluate(head: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Return (mean cross-entropy, accuracy) of the head on a whole set."""
    head.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=inputs.device)
    correct = torch.zeros((), dtype=torch.int64, device=inputs.device)
    with torch.no_grad():
        for start in range(0, inputs.shape[0], _EVAL_CHUNK_ROWS):
            logits = head(inputs[start : start + _EVAL_CHUNK_ROWS])
            chunk_labels = labels[start : start + _EVAL_CHUNK_ROWS]
            loss_sum += torch.nn.functional.cross_entropy(logits, chunk_labels, reduction="sum").double()
            correct += (logits.argmax(dim=1) == chunk_labels).sum()
    n_rows = inputs.shape[0]
    return loss_sum.item() / n_rows, correct.item() / n_rows


def evaluate_head(head: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Return (mean cross-entropy, accuracy) of a head on features, computed as training computes it."""
    return _evaluate(head, inputs, labels)


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

    log = EpochLog(
        keep=keep,
        snapshot=lambda: {
            name: value.detach().to("cpu", copy=True) for name, value in head.state_dict().items()
        },
        on_epoch=on_epoch,
        started=started,
    )

    for epoch in range(1, params.epochs + 1):
        head.train()
        order = torch.randperm(n_train, generator=shuffle_generator).to(device)
        loss_sum = 0.0
        for start in range(0, n_train, params.batch_size):
            # A preempted node gives a worker seconds, not an epoch: check between batches.
            reason = interrupted() if interrupted is not None else None
            if reason is not None:
                raise StopTraining(reason)
            batch = order[start : start + params.batch_size]
            loss = torch.nn.functional.cross_entropy(head(train_inputs[batch]), train_labels[batch])
            # Checked every step (one sync, cheap next to the step) so a diverged trial fails at once
            # instead of burning its remaining epochs on NaN weights.
            loss_value = loss.item()
            check_finite(loss_value, "loss", epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss_value * batch.shape[0]

        val_loss, val_accuracy = _evaluate(head, val_inputs, val_labels)
        log.end_epoch(epoch, train_loss=loss_sum / n_train, val_loss=val_loss, val_accuracy=val_accuracy)
    return log.result()
