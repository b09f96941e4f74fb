"""The synthetic task: a zero-cost stand-in for training, for fleet tests and coordination benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from studies.spec import Task
from worker.epochs import EpochResult, StopTraining, TrainResult, result_of
from worker.synthetic_loss import synthetic_loss
from worker.tasks.interface import ModelFiles, Progress, TaskHost, TrialContext


def run_synthetic(
    *,
    params: dict[str, Any],
    seed: int,
    epoch_sleep_s: float,
    on_epoch: Callable[[EpochResult], None],
    interrupted: Callable[[], str | None],
    pause: Callable[[float], None] = time.sleep,
) -> TrainResult:
    """Sleep epoch_sleep_s per epoch and report the synthetic loss, honouring stops like real training."""
    started = time.perf_counter()
    history: list[EpochResult] = []
    for epoch in range(1, int(params.get("epochs", 1)) + 1):
        pause(epoch_sleep_s)
        reason = interrupted()
        if reason is not None:
            raise StopTraining(reason)
        loss = synthetic_loss(params, seed=seed, epoch=epoch)
        history.append(
            EpochResult(
                epoch=epoch,
                train_loss=loss,
                val_loss=loss,
                val_accuracy=1.0 / (1.0 + loss),
                # A stand-in that, like a real classifier's, falls with the loss and stays below the accuracy.
                val_macro_f1=1.0 / (1.0 + 2.0 * loss),
            )
        )
        try:
            on_epoch(history[-1])
        except StopTraining as stop:
            # As real training does: the epochs so far go with the stop, for a trial that ends early.
            stop.result = _result(history, started)
            raise
    return _result(history, started)


def _result(history: list[EpochResult], started: float) -> TrainResult:
    best = min(history, key=lambda e: e.val_loss)
    return result_of(history, best=best, kept=best, best_state={}, started=started)


class Synthetic:
    """The synthetic task kind: nothing to prepare, a seeded loss per epoch, no model to keep."""

    def __init__(self, host: TaskHost) -> None:
        self.host = host

    def prepare(
        self, task: Task, *, progress: Progress | None = None, interrupt: Callable[[], None] | None = None
    ) -> None:
        """Nothing: the synthetic task has no model and no data."""

    def run(self, task: Task, trial: TrialContext) -> TrainResult:
        """Report the synthetic loss for each of the trial's epochs, epoch_sleep_s apart."""
        return run_synthetic(
            params=trial.params,
            seed=trial.seed,
            epoch_sleep_s=task.epoch_sleep_s,
            on_epoch=trial.report,
            interrupted=trial.stop_reason,
            pause=trial.pause,
        )

    def model_files(self, task: Task, params: dict[str, Any], result: TrainResult) -> ModelFiles | None:
        """None: a synthetic trial trains no model."""
        return None
