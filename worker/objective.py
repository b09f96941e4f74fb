"""Runs one claimed trial: features, training, per-epoch reports, pruning, and the trial's end state."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna
import torch

from studies import Claim, StudyRepository
from studies.repository import RUNNING, WORKER_LOST
from studies.resilience import GaveUp, is_transient, with_retry
from studies.spec import Task
from worker.data import DataError, LabelledSplit, load_builtin_bbc_news
from worker.features import Features, load_or_build_features
from worker.model import ModelError, builtin_model_folder
from worker.synthetic import run_synthetic
from worker.training import EpochResult, HeadParams, NonFiniteLoss, StopTraining, TrainResult, train_head

log = logging.getLogger("tunefleet.worker")

Progress = Callable[[int, int], None]
T = TypeVar("T")


class StopReason:
    """Why training stopped before its last epoch; each maps to how the trial ends."""

    PRUNED = "pruned"
    STUDY_STOPPED = "study stopped"
    WORKER_STOPPING = "worker stopping"
    WORKER_LOST = WORKER_LOST


def model_folder(task: Task) -> Path:
    """The encoder folder a task names: a built-in model or a local Hugging Face folder."""
    if task.model.startswith("builtin:"):
        return builtin_model_folder(task.model.removeprefix("builtin:"))
    folder = Path(task.model).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model folder {task.model!r} does not exist on this worker")
    return folder


def load_split(task: Task) -> LabelledSplit:
    """The task's labelled train/validation split."""
    if task.data == "builtin:bbc-news":
        return load_builtin_bbc_news(
            validation_fraction=task.validation_fraction, seed=task.data_seed, max_examples=task.max_examples
        )
    raise DataError(f"data set {task.data!r} is not available on this worker")


def chosen_epoch(epochs: list[EpochResult], *, metric: str, value: str) -> EpochResult:
    """The epoch whose metric is the trial's value: the best one, or the last one."""
    if value == "final":
        return epochs[-1]
    if metric == "val_loss":
        return min(epochs, key=lambda e: e.val_loss)
    return max(epochs, key=lambda e: e.val_accuracy)


@dataclass
class TrialRunner:
    """Everything a worker process keeps between trials: device, caches, and its stop flag."""

    repository: StudyRepository
    device: torch.device
    cache_dir: Path
    stopping: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    _features: dict[tuple[Any, ...], Features] = field(default_factory=dict)

    def features(self, task: Task, progress: Progress | None = None) -> Features:
        """The task's encoder features: from this process's memo, else the node's disk cache, else computed."""
        key = (
            task.model,
            task.data,
            task.max_length,
            task.max_examples,
            task.validation_fraction,
            task.data_seed,
        )
        if key not in self._features:
            # Encoding is one big batch job, unlike head training: give it every core while it runs.
            threads = torch.get_num_threads()
            torch.set_num_threads(max(threads, os.cpu_count() or 1))
            try:
                self._features[key] = load_or_build_features(
                    encoder_folder=model_folder(task),
                    split=load_split(task),
                    max_length=task.max_length,
                    cache_dir=self.cache_dir,
                    progress=progress,
                    device=self.device,
                )
            finally:
                torch.set_num_threads(threads)
        return self._features[key]

    def _store(self, what: str, call: Callable[[], T]) -> T:
        # A database blip must not cost a trial: wait for the store, unless this worker is stopping.
        return with_retry(call, what=what, stop=self.stopping, reset=self.repository.reset_session)

    def interrupted(self) -> str | None:
        """Why the running trial must stop now, or None: polled between batches."""
        if self.lost.is_set():
            return StopReason.WORKER_LOST
        if self.stopping.is_set():
            return StopReason.WORKER_STOPPING
        return None

    def _train(self, claim: Claim, on_epoch: Callable[[EpochResult], None]) -> TrainResult:
        task = claim.spec.task
        if task.kind == "synthetic":
            return run_synthetic(
                params=claim.params,
                seed=claim.seed,
                epoch_sleep_s=task.epoch_sleep_s,
                on_epoch=on_epoch,
                interrupted=self.interrupted,
                wake=self.stopping,
            )
        features = self.features(task)
        params = HeadParams(**{name: claim.params[name] for name in HeadParams.__dataclass_fields__})
        return train_head(
            features=features,
            params=params,
            seed=claim.seed,
            device=self.device,
            on_epoch=on_epoch,
            interrupted=self.interrupted,
        )

    def run(self, claim: Claim) -> str:
        """Run the claimed trial to its end and record it; returns what became of it."""
        try:
            return self._run(claim)
        except optuna.exceptions.UpdateFinishedTrialError:
            # The trial was ended elsewhere (declared lost while this worker was silent, and
            # retried): a late report must never overwrite the retry, so drop this result.
            log.warning(
                "trial %d of %s was taken over while this worker was silent; dropping its result",
                claim.trial.number,
                claim.study_name,
            )
            return "abandoned"
        except GaveUp as error:
            log.warning("trial %d of %s abandoned: %s", claim.trial.number, claim.study_name, error)
            return "abandoned"

    def _run(self, claim: Claim) -> str:
        trial = claim.trial
        spec = claim.spec
        started = time.perf_counter()
        last: list[EpochResult] = []
        repository = self.repository

        def on_epoch(result: EpochResult) -> None:
            last[:] = [result]
            value = result.val_loss if spec.objective.metric == "val_loss" else result.val_accuracy
            self._store("report", lambda: trial.report(value, result.epoch))
            reason = self.interrupted()
            if reason is not None:
                raise StopTraining(reason)
            if self._store("study state", lambda: repository.stored_state(claim.study_name)) != RUNNING:
                raise StopTraining(StopReason.STUDY_STOPPED)
            if self._store("should_prune", trial.should_prune):
                raise StopTraining(StopReason.PRUNED)

        def attrs(extra: dict[str, Any] | None = None) -> dict[str, Any]:
            base: dict[str, Any] = {
                "trial_s": round(time.perf_counter() - started, 3),
                "claim_s": round(claim.claim_s, 4),
            }
            if last:
                base.update(
                    val_loss=last[0].val_loss, val_accuracy=last[0].val_accuracy, epochs_run=last[0].epoch
                )
            return {**base, **(extra or {})}

        def fail(reason: str) -> str:
            self._store("fail", lambda: repository.fail(claim, reason, attrs()))
            return "fail"

        try:
            result = self._train(claim, on_epoch)
        except StopTraining as stop:
            reason = str(stop)
            if reason == StopReason.WORKER_LOST:
                return "abandoned"
            if reason == StopReason.WORKER_STOPPING:
                self._store("give back", lambda: repository.give_back(claim))
                return "requeued"
            extra = {} if reason == StopReason.PRUNED else {"fail_reason": reason}
            self._store("prune", lambda: repository.prune(claim, attrs(extra)))
            return "pruned"
        except NonFiniteLoss as error:
            return fail(str(error))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return fail(f"out of memory at batch_size={claim.params.get('batch_size')}")
        except (DataError, ModelError) as error:
            return fail(str(error))
        except (optuna.exceptions.UpdateFinishedTrialError, GaveUp):
            raise
        except Exception as error:
            if is_transient(error):
                raise
            # One broken trial must not take the worker down: record why, then go on to the next.
            log.exception("trial %d of %s failed", trial.number, claim.study_name)
            return fail(f"{type(error).__name__}: {error}")
        chosen = chosen_epoch(result.epochs, metric=spec.objective.metric, value=spec.objective.value)
        value = chosen.val_loss if spec.objective.metric == "val_loss" else chosen.val_accuracy
        final = attrs(
            {
                "val_loss": chosen.val_loss,
                "val_accuracy": chosen.val_accuracy,
                "chosen_epoch": chosen.epoch,
                "epochs_run": len(result.epochs),
                "train_s": round(result.train_s, 3),
            }
        )
        self._store("complete", lambda: repository.complete(claim, value, final))
        return "complete"
