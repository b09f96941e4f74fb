"""The synthetic task: a zero-cost stand-in for training, for fleet tests and coordination benchmarks."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from worker.training import EpochResult, StopTraining, TrainResult, result_of


def synthetic_loss(params: dict[str, Any], *, seed: int, epoch: int) -> float:
    """A smooth, seeded validation loss with an optimum near learning_rate=3e-3, falling with epochs."""
    learning_rate = float(params.get("learning_rate", 1e-3))
    width = float(params.get("width", 64))
    depth = float(params.get("depth", 1))
    distance = (math.log10(learning_rate) + 2.5) ** 2 + 0.1 * (math.log2(width) - 7) ** 2 / 9 + 0.05 * depth
    noise = random.Random(seed * 1_000_003 + epoch).gauss(0.0, 0.01)
    return 0.1 + distance + 1.0 / epoch + noise


def run_synthetic(
    *,
    params: dict[str, Any],
    seed: int,
    epoch_sleep_s: float,
    on_epoch: Callable[[EpochResult], None],
    interrupted: Callable[[], str | None],
    wake: threading.Event | None = None,
) -> TrainResult:
    """Sleep epoch_sleep_s per epoch and report the synthetic loss, honouring stops like real training."""
    started = time.perf_counter()
    history: list[EpochResult] = []
    for epoch in range(1, int(params.get("epochs", 1)) + 1):
        if wake is not None:
            wake.wait(epoch_sleep_s)
        else:
            time.sleep(epoch_sleep_s)
        reason = interrupted()
        if reason is not None:
            raise StopTraining(reason)
        loss = synthetic_loss(params, seed=seed, epoch=epoch)
        history.append(
            EpochResult(epoch=epoch, train_loss=loss, val_loss=loss, val_accuracy=1.0 / (1.0 + loss))
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
