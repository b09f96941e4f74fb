"""The epoch driver every training run shares: batches, loss, NaN check, step, evaluation, report, stops."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from worker.failures import TrialFailure
from worker.scores import Scores

Batch = TypeVar("Batch")

logger = logging.getLogger(__name__)


class NonFiniteLoss(TrialFailure):
    """Training produced NaN or inf; the message says at which epoch."""


class StopTraining(Exception):
    """Raised by an epoch callback to end training early (pruned or stopped).

    The epoch driver attaches the results so far as `result` before letting it propagate.
    """

    result: TrainResult | None = None


class PauseTraining(StopTraining):
    """Raised by an epoch callback to pause the trial after this epoch (a rung its pruner did not let it past):
    the epoch driver writes a checkpoint first, so that the trial's promotion goes on from here."""


@dataclass
class EpochResult:
    """The losses, accuracy and macro-averaged F1 after one epoch (1-based)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    # NaN where it was not measured: a kind python function that did not report it, or a replay of old records.
    val_macro_f1: float = math.nan
    # Every metric a user's training function reported for the epoch, by name (kind python); else empty.
    metrics: dict[str, float] = field(default_factory=dict)


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


def epoch_value(result: EpochResult, metric: str) -> float:
    """An epoch's value of a validation metric: val_loss, val_accuracy or val_macro_f1."""
    if metric == "val_loss":
        return result.val_loss
    if metric == "val_accuracy":
        return result.val_accuracy
    if metric == "val_macro_f1":
        return result.val_macro_f1
    raise ValueError(f"{metric!r} is not a validation metric an epoch reports")


def keep_rule(*, metric: str, value: str) -> KeepRule:
    """The keep rule matching an objective: its best epoch by the metric, or its final epoch."""
    if value == "final":
        return lambda result: -float(result.epoch)
    if metric in ("val_accuracy", "val_macro_f1"):
        return lambda result: -epoch_value(result, metric)
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


# A run's trained tensors by name, live (not copied): the weights training changes, and nothing frozen.
TrainedState = Callable[[], dict[str, torch.Tensor]]


def copied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors detached and copied to the CPU: a snapshot that later training steps leave alone."""
    return {name: value.detach().to("cpu", copy=True) for name, value in state.items()}


class EpochCheckpoints(Protocol):
    """Where a run keeps what it needs to go on after an epoch, so a trial handed back or retried resumes there."""

    def saved(self) -> dict[str, Any] | None:
        """The state the trial last saved (a checkpoint()'s dict), or None: it starts from its first epoch."""
        ...

    def save(self, epoch: int, state: Callable[[], dict[str, Any]], *, force: bool = False) -> None:
        """Offer the state after an epoch; state() builds it, called only when the checkpoint is written (always
        when forced: the trial pauses here)."""
        ...


@dataclass
class Resumable:
    """What makes a run's next epoch the same whether it ran on or was restored: its trained tensors, its
    optimizer, its shuffling generator (and torch's global random state, for dropout)."""

    trained: TrainedState
    optimizer: torch.optim.Optimizer
    generator: torch.Generator

    def checkpoint(self, log: EpochLog) -> dict[str, Any]:
        """Everything the run needs to go on after its last epoch, as CPU tensors and plain values."""
        assert log.best is not None and log.kept is not None
        return {
            "epoch": log.history[-1].epoch,
            "trained": copied(self.trained()),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "history": [asdict(result) for result in log.history],
            "best_epoch": log.best.epoch,
            "kept_epoch": log.kept.epoch,
            "kept_state": log.best_state,
        }

    def restore(self, saved: dict[str, Any], log: EpochLog) -> int:
        """Put the run back where the checkpoint left it; the last epoch it had run.

        ValueError if the checkpoint does not fit this run (other tensors, another optimizer).
        """
        live = self.trained()
        stored = saved["trained"]
        if set(stored) != set(live) or any(stored[n].shape != live[n].shape for n in live):
            raise ValueError("its tensors are not this trial's model")
        self.optimizer.load_state_dict(saved["optimizer"])
        with torch.no_grad():
            for name, value in live.items():
                value.copy_(stored[name])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        log.history = [EpochResult(**result) for result in saved["history"]]
        by_epoch = {result.epoch: result for result in log.history}
        log.best = by_epoch[saved["best_epoch"]]
        log.kept = by_epoch[saved["kept_epoch"]]
        log.best_state = dict(saved["kept_state"])
        return int(saved["epoch"])


def check_finite(value: float, what: str, epoch: int) -> None:
    """NonFiniteLoss naming the value (NaN or inf), what it is and the epoch, unless it is finite."""
    if not math.isfinite(value):
        raise NonFiniteLoss(f"{'NaN' if math.isnan(value) else 'inf'} {what} at epoch {epoch}")


class EpochLog:
    """One training run's epochs: the history, the best and kept epochs, the kept weights, the on_epoch hook."""

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

    def end_epoch(self, epoch: int, *, train_loss: float, scores: Scores) -> None:
        """Record an epoch's results, keep its weights if the keep rule says so, and call on_epoch.

        on_epoch may raise StopTraining, which propagates with the results so far attached as `.result`.
        """
        check_finite(scores.loss, "validation loss", epoch)
        current = EpochResult(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=scores.loss,
            val_accuracy=scores.accuracy,
            val_macro_f1=scores.macro_f1,
        )
        self.history.append(current)
        if self.best is None or current.val_loss < self.best.val_loss:
            self.best = current
        if self.kept is None or self.keep(current) < self.keep(self.kept):
            self.kept = current
            self.best_state = self.snapshot()
        self.report(current)

    def report(self, current: EpochResult) -> None:
        """Call on_epoch with an epoch's results; StopTraining from it propagates with the results so far."""
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


def run_epochs(
    *,
    epochs: int,
    n_train: int,
    train_mode: Callable[[], object],
    batches: Callable[[], Iterable[Batch]],
    loss_of: Callable[[Batch], tuple[torch.Tensor, int]],
    optimizer: torch.optim.Optimizer,
    evaluate: Callable[[], Scores],
    trained: TrainedState,
    generator: torch.Generator,
    keep: KeepRule,
    on_epoch: Callable[[EpochResult], None] | None,
    interrupted: Callable[[], str | None] | None,
    started: float,
    run_name: str = "training",
    checkpoints: EpochCheckpoints | None = None,
) -> TrainResult:
    """Train for `epochs` epochs over `batches()`, evaluating and reporting after each; the run's result.

    loss_of(batch) is the batch's mean loss and its number of examples; evaluate() scores the validation set.
    trained() gives the tensors training changes (the kept epoch's copy is the run's best_state); generator
    is the one batches() shuffles with.
    on_epoch may raise StopTraining, which propagates with the results so far attached as `.result`; PauseTraining
    writes a checkpoint after the epoch first, whatever the interval.
    interrupted is polled between batches; a reason it returns ends training with StopTraining(reason).
    Each epoch is one INFO line of the log, headed by run_name (e.g. "trial 3 of my-study").
    With checkpoints, the run starts where its saved checkpoint left it (its epochs so far reported to on_epoch
    again, so a retried trial's pruner and patience see them) and offers a checkpoint after every epoch it goes
    on from; the epochs after a resume are the same, bit for bit on a CPU, as those of a run never stopped.
    """
    log = EpochLog(keep=keep, snapshot=lambda: copied(trained()), on_epoch=on_epoch, started=started)
    resumable = Resumable(trained=trained, optimizer=optimizer, generator=generator)
    first = 1
    saved = checkpoints.saved() if checkpoints is not None else None
    if saved is not None:
        first = resumable.restore(saved, log) + 1
        logger.info("%s: resumed after epoch %d from its checkpoint", run_name, first - 1)
        for result in log.history:
            log.report(result)
    for epoch in range(first, epochs + 1):
        epoch_started = time.perf_counter()
        train_mode()
        loss_sum = 0.0
        for batch in batches():
            # A preempted node gives a worker seconds, not an epoch: check between batches.
            reason = interrupted() if interrupted is not None else None
            if reason is not None:
                raise StopTraining(reason)
            loss, n_rows = loss_of(batch)
            # Checked every step (one sync, cheap next to the step) so a diverged trial fails at once
            # instead of burning its remaining epochs on NaN weights.
            loss_value = loss.item()
            check_finite(loss_value, "loss", epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss_value * n_rows

        scores = evaluate()
        train_loss = loss_sum / n_train
        # Logged before the report, which may end the trial (pruned, stalled, stopped): every epoch run is shown.
        logger.info(
            "%s: epoch %d/%d train_loss %.4f val_loss %.4f val_accuracy %.4f val_macro_f1 %.4f in %.2fs",
            run_name,
            epoch,
            epochs,
            train_loss,
            scores.loss,
            scores.accuracy,
            scores.macro_f1,
            time.perf_counter() - epoch_started,
        )
        try:
            log.end_epoch(epoch, train_loss=train_loss, scores=scores)
        except PauseTraining:
            if checkpoints is not None:
                checkpoints.save(epoch, lambda: resumable.checkpoint(log), force=True)
            raise
        if checkpoints is not None and epoch < epochs:
            checkpoints.save(epoch, lambda: resumable.checkpoint(log))
    return log.result()
