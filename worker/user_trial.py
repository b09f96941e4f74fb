"""The trial a kind python study's training function receives: its parameters, its reports, its stops, its model."""

from __future__ import annotations

import json
import math
import numbers
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studies.names import EPOCH_METRICS
from worker.epochs import (
    EpochResult,
    KeepRule,
    NonFiniteLoss,
    StopTraining,
    TrainResult,
    epoch_value,
    keep_rule,
    result_of,
)
from worker.failures import TrialFailure

# The metrics a study's objective can read; each EpochResult carries them (NaN when not reported).
_RESULT_METRICS = ("train_loss", *EPOCH_METRICS)


class TrialUsageError(TrialFailure):
    """The training function used its trial in a way that cannot be recorded; the message says what to change."""


@dataclass
class _Weights:
    """A copy of a model's weights as save_model took it, with the label names and config given with it."""

    state: dict[str, torch.Tensor]
    labels: list[str]
    config: dict[str, Any]


@dataclass
class _Kept:
    """The weights kept for the best-model download, and the epoch whose metrics they gave."""

    result: EpochResult
    weights: _Weights


class Trial:
    """One trial of a kind python study, as the study's training function receives it.

    A worker calls the function with one Trial and records what it reports::

        def train(trial: tunefleet.Trial) -> None:
            model = build_model(trial.params["width"]).to(trial.device)
            for epoch in range(1, trial.params["epochs"] + 1):
                ...  # train one epoch, then evaluate on the validation set
                if trial.report(epoch, val_loss=val_loss, val_accuracy=accuracy, train_loss=train_loss):
                    return  # pruned, study stopped, worker stopping, or no better for `patience` epochs
                trial.save_model(model)

    The function returns None (the reported epochs decide the trial's value), its final metrics (a dict
    holding the objective's metric) or the objective's value (a float). Returned metrics are the final
    model's: they stand for the last reported epoch, or for epoch 1 when the function reported none.

    Made by hand, `Trial(params={...})` runs a function outside the fleet: its reports are checked and kept,
    and nothing stops it.
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        *,
        number: int = 0,
        seed: int = 0,
        device: torch.device | str = "cpu",
        checkpoint_dir: Path | None = None,
        metric: str = "val_loss",
        keep: KeepRule | None = None,
        on_epoch: Callable[[EpochResult], None] | None = None,
        stop_reason: Callable[[], str | None] | None = None,
    ) -> None:
        if metric not in EPOCH_METRICS:
            raise ValueError(f"metric is one of {', '.join(EPOCH_METRICS)}, not {metric!r}")
        self._params = dict(params)
        self._number = number
        self._seed = seed
        self._device = torch.device(device)
        self._checkpoint_dir = checkpoint_dir
        self._metric = metric
        self._keep = keep or keep_rule(metric=metric, value="best")
        self._on_epoch = on_epoch or (lambda result: None)
        self._stop_reason = stop_reason or (lambda: None)
        self._started = time.perf_counter()
        self._history: list[EpochResult] = []
        self._kept: _Kept | None = None
        # The epoch whose weights were saved last: a second save before the next report is the next epoch's.
        self._saved_epoch = 0
        # Weights saved before the report of their epoch, waiting for it (or for the function's return).
        self._pending: _Weights | None = None
        self._stop: StopTraining | None = None
        self._fleet_error: Exception | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Trial(number={self._number}, seed={self._seed}, params={self._params!r})"

    @property
    def params(self) -> dict[str, Any]:
        """The trial's parameters by name: sampled or fixed; a conditional one is absent when its condition is false."""
        return self._params

    @property
    def number(self) -> int:
        """The trial's number in its study; a trial handed back and run again keeps it."""
        return self._number

    @property
    def seed(self) -> int:
        """The seed to train with: a trial handed back, or retried after its worker was lost, gets the same one."""
        return self._seed

    @property
    def device(self) -> torch.device:
        """The device this worker trains on (a GPU of its own, or the CPU)."""
        return self._device

    @property
    def checkpoint_dir(self) -> Path:
        """A folder on this worker for the function's own checkpoints, made on first use.

        It is this trial's alone, and kept while the trial is handed back (SIGTERM), so a run of the same trial
        on this worker can resume from it; it is removed when the trial ends.
        """
        if self._checkpoint_dir is None:
            self._checkpoint_dir = Path(tempfile.mkdtemp(prefix=f"tunefleet-trial-{self._number}-"))
        self._checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return self._checkpoint_dir

    def report(self, epoch: int, **metrics: float) -> bool:
        """Record an epoch's metrics; True when the trial must stop now, and the function should then return.

        The study's objective metric (val_loss, val_accuracy or val_macro_f1) must be among the metrics; the others
        (train_loss, ...) are recorded beside it. Epochs count from 1 and increase from one report to the next.
        True means pruned, study stopped, worker stopping, or no better metric for the objective's patience;
        a report after True raises what stops the trial.
        """
        self._check_open("report")
        if self._fleet_error is not None:
            raise self._fleet_error
        if self._stop is not None:
            raise self._stop
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise TrialUsageError(f"report({epoch!r}, ...): the epoch is a whole number, counted from 1")
        last = self._history[-1].epoch if self._history else 0
        if epoch <= last:
            raise TrialUsageError(f"report({epoch}, ...) after epoch {last}: each report is of a later epoch")
        result = self._epoch_result(
            epoch, self._checked(metrics, f"report({epoch}, ...)", f"at epoch {epoch}")
        )
        self._history.append(result)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._offer(result, pending)
        try:
            self._on_epoch(result)
        except StopTraining as stop:
            self._stop = stop
            return True
        except Exception as error:
            # The store could not be reached, or the trial was taken over: the worker's trouble, not the
            # function's, so it ends the trial as it would any other kind's, whatever the function does next.
            self._fleet_error = error
            raise
        return False

    def should_stop(self) -> bool:
        """Whether the trial must stop now (the worker is stopping or lost, or a report said so): poll it between batches."""
        if self._stop is None and not self._closed:
            reason = self._stop_reason()
            if reason is not None:
                self._stop = StopTraining(reason)
        return self._stop is not None

    def save_model(
        self, model: torch.nn.Module, *, labels: Sequence[str] = (), config: Mapping[str, Any] | None = None
    ) -> None:
        """Keep a copy of the model's weights for the study's best-model download, if the objective keeps its epoch.

        The weights go with the epoch reported last; saved before any report, or a second time after one, they go
        with the next report (or the returned metrics). Only the epoch the objective's value comes from (its best,
        or its final) is kept, so saving after every report is cheap. labels name the model's outputs
        (labels.json); config, JSON, says what rebuilds the model (config.json's "model").
        """
        self._check_open("save_model")
        if not isinstance(model, torch.nn.Module):
            raise TrialUsageError(f"save_model takes a torch.nn.Module, not a {type(model).__name__}")
        names = [str(label) for label in labels]
        described = dict(config or {})
        try:
            json.dumps(described)
        except (TypeError, ValueError) as error:
            raise TrialUsageError(f"save_model: config must be JSON ({error})") from None
        last = self._history[-1] if self._history else None
        if last is not None and self._saved_epoch < last.epoch:
            self._saved_epoch = last.epoch
            if self._keeps(last):
                self._kept = _Kept(last, _Weights(_copy_weights(model), names, described))
            return
        # The epoch these weights belong to is not reported yet: copy them now, judge them at its report.
        self._pending = _Weights(_copy_weights(model), names, described)

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise TrialUsageError(f"{what}: trial {self._number} has ended")

    def _checked(self, metrics: Mapping[str, Any], call: str, where: str) -> dict[str, float]:
        if self._metric not in metrics:
            raise TrialUsageError(
                f"{call} has no {self._metric}, the study's objective metric: give it, e.g."
                f" report(epoch, {self._metric}=...)"
            )
        values: dict[str, float] = {}
        for name, value in metrics.items():
            if not isinstance(name, str):
                raise TrialUsageError(f"{call}: metric names are strings, not {name!r}")
            values[name] = _as_number(value, f"{call}: {name}")
            # A diverged run: fail it now, as the built-in kinds do, rather than record a NaN value.
            if (name == self._metric or name.endswith("loss")) and not math.isfinite(values[name]):
                raise NonFiniteLoss(f"{'NaN' if math.isnan(values[name]) else 'inf'} {name} {where}")
        return values

    @staticmethod
    def _epoch_result(epoch: int, metrics: dict[str, float]) -> EpochResult:
        known = {name: metrics.get(name, math.nan) for name in _RESULT_METRICS}
        return EpochResult(epoch=epoch, **known, metrics=metrics)

    def _keeps(self, result: EpochResult) -> bool:
        kept = self._kept
        return (
            kept is None or kept.result.epoch == result.epoch or self._keep(result) < self._keep(kept.result)
        )

    def _offer(self, result: EpochResult, weights: _Weights) -> None:
        self._saved_epoch = result.epoch
        if self._keeps(result):
            self._kept = _Kept(result, weights)

    def _stopped(self) -> StopTraining:
        """The stop a report or should_stop gave, with the epochs so far (a trial that stalled completes with them)."""
        assert self._stop is not None
        if self._history and self._stop.result is None:
            self._stop.result = self._result()
        return self._stop

    def _overriding_error(self) -> BaseException | None:
        """What ends the trial whatever the function raised: the fleet's error, or the stop it was told of."""
        if self._fleet_error is not None:
            return self._fleet_error
        # Told to stop, the function broke on its way out: the stop decides how the trial ends.
        return self._stopped() if self._stop is not None else None

    def _finish(self, returned: object) -> TrainResult:
        """The trial's result once the function has returned; raises the stop a report or should_stop gave."""
        if self._stop is not None:
            raise self._stopped()
        metrics = self._returned_metrics(returned)
        if metrics is None and not self._history:
            raise TrialUsageError(
                f"the training function returned without reporting an epoch: call trial.report(epoch, {self._metric}=...)"
                f" after each epoch, or return the final metrics ({{'{self._metric}': ...}})"
            )
        if metrics is not None:
            last = self._history.pop() if self._history else None
            final = self._epoch_result(
                last.epoch if last else 1, {**(last.metrics if last else {}), **metrics}
            )
            self._history.append(final)
            if self._kept is not None and self._kept.result.epoch == final.epoch:
                self._kept.result = final
        if self._pending is not None:
            # Saved after the last report's weights were: the final model, the one the returned metrics describe.
            pending, self._pending = self._pending, None
            self._offer(self._history[-1], pending)
        return self._result()

    def _returned_metrics(self, returned: object) -> dict[str, float] | None:
        call = "the training function's return value"
        if returned is None:
            return None
        if isinstance(returned, Mapping):
            return self._checked(returned, call, "in the returned metrics")
        one_number = isinstance(returned, torch.Tensor) and returned.numel() == 1
        if one_number or (isinstance(returned, numbers.Real) and not isinstance(returned, bool)):
            return self._checked({self._metric: returned}, call, "returned by the function")
        raise TrialUsageError(
            f"the training function returned a {type(returned).__name__}: return None, the final metrics"
            f" ({{'{self._metric}': ...}}) or the objective's value (a float)"
        )

    def _result(self) -> TrainResult:
        if self._metric == "val_loss":
            best = min(self._history, key=lambda e: e.val_loss)
        else:
            best = max(self._history, key=lambda e: epoch_value(e, self._metric))
        kept = self._kept
        return result_of(
            self._history,
            best=best,
            kept=kept.result if kept else self._history[-1],
            best_state=kept.weights.state if kept else {},
            started=self._started,
        )

    def _saved_model(self) -> tuple[list[str], dict[str, Any]]:
        """The label names and config given with the kept weights."""
        return (self._kept.weights.labels, self._kept.weights.config) if self._kept else ([], {})

    def _close(self) -> None:
        """End the trial: a report or save after this is the function's mistake, not a record."""
        self._closed = True


def _as_number(value: Any, what: str) -> float:
    if isinstance(value, bool | str | bytes) or value is None:
        raise TrialUsageError(f"{what} is {value!r}, not a number")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        # A tensor of more than one element, a list: a metric is one number.
        raise TrialUsageError(f"{what} is a {type(value).__name__}, not one number") from None


def _copy_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as CPU tensors of its own: later training steps must not change what was kept."""
    state: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TrialUsageError(
                f"save_model: the model's state_dict holds {name}, a {type(value).__name__}, not a tensor"
            )
        state[name] = value.detach().to("cpu", copy=True)
    return state
