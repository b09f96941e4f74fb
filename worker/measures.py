"""What a trial's end measures of its model for several objectives: parameters, download size, latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studies.spec import Task
from worker.epochs import EpochResult, TrainResult
from worker.failures import TrialFailure
from worker.tasks.interface import Measurable, TimedModel

# Calls before timing starts (lazy initialisation, allocator and kernel caches), then the calls timed: the
# median of these is a trial's latency_ms, steady against the odd slow call.
WARMUP_CALLS = 3
TIMED_CALLS = 20
BYTES_PER_MB = 1_000_000


class MeasureError(TrialFailure):
    """A metric the study names could not be measured for this trial; the message says which and why."""


def _synchronize(device: torch.device) -> None:
    # Kernels run asynchronously on an accelerator: a call is done when its device says so.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def latency_ms(
    timed: TimedModel, device: torch.device, *, warmup: int = WARMUP_CALLS, calls: int = TIMED_CALLS
) -> float:
    """The median milliseconds of one forward pass over the timed batch, after warm-up, on the device."""
    return statistics.median(call_seconds(timed, device, warmup=warmup, calls=calls)) * 1000.0


def call_seconds(
    timed: TimedModel, device: torch.device, *, warmup: int = WARMUP_CALLS, calls: int = TIMED_CALLS
) -> list[float]:
    """The seconds of each timed forward pass latency_ms takes the median of (bench.latency_spread reads them)."""
    module = timed.module.eval()
    seconds: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            module(*timed.inputs)
        _synchronize(device)
        for _ in range(calls):
            started = time.perf_counter()
            module(*timed.inputs)
            _synchronize(device)
            seconds.append(time.perf_counter() - started)
    return seconds


def size_mb(path: Path) -> float:
    """A file's size in megabytes (10^6 bytes)."""
    return path.stat().st_size / BYTES_PER_MB


@dataclass(frozen=True)
class Measured:
    """A trial's measured metrics by name, and the user attributes that say how they were taken."""

    values: dict[str, float]
    attrs: dict[str, Any]


def measure(
    names: Sequence[str],
    *,
    kind: object,
    task: Task,
    params: dict[str, Any],
    result: TrainResult,
    chosen: EpochResult,
    train_s: float,
    archive: Callable[[], Path | None],
    latency_batch_size: int,
    device: torch.device,
) -> Measured:
    """Every named metric of a finished trial: validation metrics of its kept epoch, training seconds, and
    what its model measures (trainable parameters, the download's size, latency on this worker's device).

    archive() gives the model archive a best-model download carries (None when the kind keeps no model).
    MeasureError when a metric cannot be measured for this trial.
    """
    values: dict[str, float] = {}
    attrs: dict[str, Any] = {}
    for name in names:
        if name == "val_loss":
            values[name] = chosen.val_loss
        elif name == "val_accuracy":
            values[name] = chosen.val_accuracy
        elif name == "val_macro_f1":
            values[name] = chosen.val_macro_f1
        elif name == "train_seconds":
            values[name] = train_s
        elif name == "model_size_mb":
            path = archive()
            if path is None:
                raise MeasureError(f"cannot measure {name}: kind {task.kind} keeps no model files")
            values[name] = size_mb(path)
        elif name in ("params_trainable", "latency_ms"):
            if not isinstance(kind, Measurable):
                raise MeasureError(f"cannot measure {name}: kind {task.kind} has no model to measure")
            if name == "params_trainable":
                values[name] = float(kind.params_trainable(task, params, result))
                continue
            path = archive()
            if path is None:
                raise MeasureError(f"cannot measure {name}: kind {task.kind} keeps no model files")
            timed = kind.timed_model(task, params, result, path, batch_size=latency_batch_size, device=device)
            values[name] = round(latency_ms(timed, device), 4)
            attrs.update(latency_batch_size=latency_batch_size, latency_device=str(device))
        else:
            raise MeasureError(f"cannot measure {name}: not a metric a worker knows")
    return Measured(values=values, attrs=attrs)
