"""What every task kind implements, and the running trial it trains against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from studies.spec import Task
from worker.data_roots import DataRoots, worker_data_roots
from worker.epochs import EpochCheckpoints, EpochResult, KeepRule, TrainResult

# progress(done, total): how far a one-time preparation (a feature cache build) has come.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TaskHost:
    """Where a task kind runs: this process's device, the node's cache folder, and what its operator allows."""

    device: torch.device
    cache_dir: Path
    # Whole pickled modules are loaded only when the worker's operator said so (TUNEFLEET_TRUST_PICKLED_MODELS).
    trust_pickled_models: bool = False
    # The entry points kind python may run: packages, or package.module:function (TUNEFLEET_ALLOWED_ENTRYPOINTS).
    allowed_entrypoints: tuple[str, ...] = ()
    # The only folders study data and local models are read from (TUNEFLEET_DATA_ROOTS or --data-root, read at
    # the worker's start-up); a host built without them (a benchmark) reads the environment once, here.
    data_roots: DataRoots = field(default_factory=worker_data_roots)


@dataclass(frozen=True)
class ModelFiles:
    """A trained model as the artifact store keeps it: weights, label names, and how to rebuild it."""

    weights: bytes
    labels: list[str]
    config: dict[str, Any]
    # More files the archive carries, by name: only those studies.artifacts.EXTRA_FILES allows (peft's own two
    # for finetune lora, so the unpacked download loads with PeftModel.from_pretrained).
    extra: dict[str, bytes] = field(default_factory=dict)


class TrialContext(Protocol):
    """One running trial as a task kind sees it: what to train with, where to report, whether to stop."""

    @property
    def params(self) -> dict[str, Any]:
        """The trial's sampled (and fixed) parameters."""
        ...

    @property
    def seed(self) -> int:
        """The trial's seed: the same seed, parameters and device give the same losses."""
        ...

    @property
    def device(self) -> torch.device:
        """The device this worker trains on."""
        ...

    @property
    def keep(self) -> KeepRule:
        """Which epoch's weights the objective wants kept (its best, or its final epoch)."""
        ...

    @property
    def study_name(self) -> str:
        """The name of the trial's study."""
        ...

    @property
    def number(self) -> int:
        """The trial's number in its study; a trial handed back keeps it."""
        ...

    @property
    def metric(self) -> str:
        """The metric the study's objective reads from each epoch: val_loss, val_accuracy or val_macro_f1."""
        ...

    @property
    def checkpoints(self) -> EpochCheckpoints | None:
        """Where the trial keeps its checkpoints, to resume from after a hand-back or a lost worker; None keeps
        none. A kind that trains through run_epochs hands it on; one that does not retrains from epoch 1."""
        ...

    def report(self, result: EpochResult) -> None:
        """Record an epoch's results; raises StopTraining when the trial must end there (pruned, stopped)."""
        ...

    def stop_reason(self) -> str | None:
        """Why the trial must stop now (the worker is lost or stopping), or None: poll it between batches."""
        ...

    def pause(self, seconds: float) -> None:
        """Wait up to seconds, returning early when the worker is told to stop."""
        ...

    def note(self, name: str, value: Any) -> None:
        """Record a user attribute the trial ends with, whatever its end (what its data held, say)."""
        ...


class TrialTask(Protocol):
    """A task kind: what a trial trains, prepared once per process and run one trial at a time."""

    def prepare(
        self, task: Task, *, progress: Progress | None = None, interrupt: Callable[[], None] | None = None
    ) -> None:
        """Load or build what every trial of the task shares (features, tokens); cheap once done in this process.

        interrupt() is called during a long build; what it raises (StopTraining) ends the build.
        """
        ...

    def run(self, task: Task, trial: TrialContext) -> TrainResult:
        """Train one trial, reporting every epoch to it; StopTraining or a TrialFailure (its reason) ends it."""
        ...

    def model_files(self, task: Task, params: dict[str, Any], result: TrainResult) -> ModelFiles | None:
        """The trained model of a prepared task's trial, ready to store; None when this kind keeps no models."""
        ...


@dataclass(frozen=True)
class TimedModel:
    """A trial's fine-tuned model as a user deploys it, on the trial's device in eval mode, and the fixed batch
    of validation inputs (already tokenized or featurised) its latency is timed on."""

    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]


@runtime_checkable
class Measurable(Protocol):
    """A task kind whose trained models the worker can measure for a study of several objectives."""

    def params_trainable(self, task: Task, params: dict[str, Any], result: TrainResult) -> int:
        """How many parameters the trial trained (the head's, and whatever else was not frozen)."""
        ...

    def timed_model(
        self,
        task: Task,
        params: dict[str, Any],
        result: TrainResult,
        archive: Path,
        *,
        batch_size: int,
        device: torch.device,
    ) -> TimedModel:
        """The trial's model (as archived for download) ready to time on batch_size validation inputs."""
        ...
