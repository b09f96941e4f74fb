"""Optimizers on a recorded task through tunefleet's own claim, report and prune path, on simulated CPU seconds."""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import torch

from bench.replay.surrogate import Surrogate
from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from studies.artifacts import open_artifact_store
from studies.space import distributions
from studies.spec import Task
from worker.epochs import EpochResult, NonFiniteLoss, PauseTraining, StopTraining, TrainResult, result_of
from worker.runner import TrialRunner
from worker.tasks.interface import ModelFiles, Progress, TrialContext

WORKER = WorkerIdentity(host=platform.node(), pid=os.getpid(), device="cpu", worker_id="replay")
# Every method runs every trial to its own `epochs` unless its pruner (or tunefleet's patience) stops it.
NO_PATIENCE = {"patience": 0}
# ASHA with promotion: trials pause at rungs (epochs 1, 3, 9) and resume from their checkpoints when promoted.
ASHA = {"name": "asha", "min_resource": 1, "reduction_factor": 3}
# The Optuna-based methods, as spec overrides of the task's preset: the same space, seeds and budget.
METHODS: dict[str, dict[str, Any]] = {
    "random": {"sampler": {"name": "random"}, "pruner": {"name": "none"}, "objective": NO_PATIENCE},
    "tpe": {
        "sampler": {"name": "tpe", "cost_weight": 0},
        "pruner": {"name": "none"},
        "objective": NO_PATIENCE,
    },
    # The BOHB recipe in Optuna: TPE proposing, Hyperband stopping.
    "tpe-hyperband": {
        "sampler": {"name": "tpe", "cost_weight": 0},
        "pruner": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3},
        "objective": NO_PATIENCE,
    },
    # tunefleet's defaults: cost-aware TPE, the preset's pruner, early stopping on a plateau.
    "tunefleet": {"sampler": {"name": "tpe"}},
    "tpe-asha": {
        "sampler": {"name": "tpe", "cost_weight": 0},
        "pruner": ASHA,
        "objective": NO_PATIENCE,
    },
    "tunefleet-asha": {
        "sampler": {"name": "tpe"},
        "pruner": ASHA,
    },
    # The defaults with half of TPE's random start-up trials: a candidate default, measured beside them.
    "tunefleet-startup5": {"sampler": {"name": "tpe", "n_startup_trials": 5}},
    # Both candidates at once: pause and promote, and five random start-up trials.
    "tunefleet-asha-startup5": {
        "sampler": {"name": "tpe", "n_startup_trials": 5},
        "pruner": ASHA,
    },
}
# What the benchmark runs unless told otherwise; the others are there to be named with --methods.
DEFAULT_METHODS = ("random", "tpe", "tpe-hyperband", "tunefleet")
# tunefleet's defaults warm-started from the source studies a run is given (other tasks' recordings): their
# portfolio queued first, and their best quarter as the sampler's prior.
# Not among METHODS: they need sources (bench.replay.warm_start gives them). The first is the portfolio alone, the
# second warm start's defaults: the portfolio and the sampler's prior at weight 1.
WARM = "tunefleet-warm"
WARM_PRIOR = "tunefleet-warm-prior"
WARM_OVERRIDES: dict[str, dict[str, Any]] = {
    WARM: {"sampler": {"name": "tpe"}, "warm_start": {"portfolio": 5, "prior_weight": 0.0}},
    WARM_PRIOR: {"sampler": {"name": "tpe"}, "warm_start": {"portfolio": 5, "prior_weight": 1.0}},
}


@dataclass(frozen=True)
class Source:
    """A finished study on another task to warm-start from: its preset, and each trial's parameters and value."""

    task: str
    preset: dict[str, Any]
    trials: list[tuple[dict[str, Any], float]]

    @property
    def name(self) -> str:
        return f"recorded-{self.task}"


def source_of(task: str, preset: dict[str, Any], curves: list[Any]) -> Source:
    """A recording as the study a user would have run on that task: every recorded configuration and its value."""
    return Source(task, preset, [(dict(c.params), c.value()) for c in curves if c.failed is None])


def add_source(repository: StudyRepository, source: Source) -> None:
    """The source as a completed study in the store: a trial per recorded configuration, completed with its
    recorded value, written in one go (as Optuna's add_trials does; warm start reads only completed trials)."""
    spec = StudySpec.model_validate(
        {
            **source.preset,
            "name": source.name,
            "sampler": {"name": "random"},
            "pruner": {"name": "none"},
            "budget": {"n_trials": len(source.trials)},
        }
    )
    record = repository.create(spec)
    space = distributions(spec.space)
    optuna.load_study(study_name=record.name, storage=repository.storage).add_trials(
        [
            optuna.trial.create_trial(
                params=params, distributions={name: space[name] for name in params}, value=value
            )
            for params, value in source.trials
        ]
    )


@dataclass
class Clock:
    """Simulated CPU seconds: advanced by each replayed epoch's recorded cost, read by the runner as its clock."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ReplayKind:
    """A task kind whose trials replay the surrogate's curve, epoch by epoch, through the trial's real reports."""

    surrogate: Surrogate
    clock: Clock

    def prepare(
        self, task: Task, *, progress: Progress | None = None, interrupt: Callable[[], None] | None = None
    ) -> None:
        """Nothing: the recorded task needs no model and no data."""

    def run(self, task: Task, trial: TrialContext) -> TrainResult:
        replayed = self.surrogate.replay(trial.params)
        started = self.clock()
        history: list[EpochResult] = []
        # A trial promoted after a pause goes on from its checkpoint (the epochs so far), as a real one does: its
        # earlier epochs are reported again and cost nothing.
        saved = trial.checkpoints.saved() if trial.checkpoints is not None else None
        if saved is not None:
            history = [EpochResult(**result) for result in saved["history"]]
            for result in history:
                self._report(trial, result, history, started)
        for epoch in range(len(history) + 1, int(trial.params["epochs"]) + 1):
            if replayed.fails_after is not None and epoch > replayed.fails_after:
                raise NonFiniteLoss(f"NaN validation loss at epoch {epoch}")
            self.clock.advance(replayed.cpu_s[epoch - 1])
            loss = replayed.val_loss[epoch - 1]
            history.append(
                EpochResult(
                    epoch=epoch, train_loss=loss, val_loss=loss, val_accuracy=replayed.val_accuracy[epoch - 1]
                )
            )
            try:
                self._report(trial, history[-1], history, started)
            except PauseTraining:
                if trial.checkpoints is not None:
                    state: dict[str, Any] = {
                        "epoch": epoch,
                        "history": [dataclasses.asdict(result) for result in history],
                    }
                    trial.checkpoints.save(epoch, partial(dict, state), force=True)
                raise
        return self._result(history, started)

    def _report(
        self, trial: TrialContext, result: EpochResult, history: list[EpochResult], started: float
    ) -> None:
        try:
            trial.report(result)
        except StopTraining as stop:
            stop.result = self._result(history, started)
            raise

    def _result(self, history: list[EpochResult], started: float) -> TrainResult:
        # As a real run's result, but its seconds are the simulated clock's, not the microseconds it took.
        best = min(history, key=lambda e: e.val_loss)
        result = result_of(history, best=best, kept=best, best_state={}, started=0.0)
        return dataclasses.replace(result, train_s=self.clock() - started)

    def model_files(self, task: Task, params: dict[str, Any], result: TrainResult) -> ModelFiles | None:
        return None


@dataclass
class Run:
    """One method on one seed: after each finished trial, the simulated compute so far and the best value."""

    method: str
    seed: int
    compute: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    trials: int = 0

    def best_at(self, compute: float) -> float:
        """The best value found within that much compute (inf before the first completed trial)."""
        found = math.inf
        for spent, best in zip(self.compute, self.best, strict=True):
            if spent > compute:
                break
            found = best
        return found

    def to_reach(self, target: float) -> float | None:
        """The compute at which the best first reached target, or None if it never did."""
        for spent, best in zip(self.compute, self.best, strict=True):
            if best <= target:
                return spent
        return None


def method_spec(
    preset: dict[str, Any], method: str, seed: int, sources: tuple[Source, ...] = ()
) -> StudySpec:
    overrides = WARM_OVERRIDES[method] if method in WARM_OVERRIDES else METHODS[method]
    raw = {**preset, "name": f"replay-{method}-{seed}", "budget": {"n_trials": 100_000}}
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if key == "objective" else value
    if "warm_start" in raw:
        raw["warm_start"] = {**raw["warm_start"], "studies": [source.name for source in sources]}
    raw["sampler"] = {**raw["sampler"], "seed": seed}
    return StudySpec.model_validate(raw)


def run_method(
    preset: dict[str, Any],
    method: str,
    seed: int,
    budget_s: float,
    surrogate: Surrogate,
    workdir: Path,
    sources: tuple[Source, ...] = (),
    epoch_budget: int | None = None,
) -> Run:
    """The method's study, claimed and run trial by trial until the simulated compute passes budget_s, or, given
    epoch_budget, until its trials have run that many epochs (bench.time_to_good_model's budget: a promoted
    trial's epochs before its pause counted once)."""
    spec = method_spec(preset, method, seed, sources)
    storage = open_storage(f"sqlite:///{workdir / f'{method}-{seed}.db'}")
    repository = StudyRepository(storage)
    if spec.warm_start is not None:
        for source in sources:
            add_source(repository, source)
    repository.create(spec)
    clock = Clock()
    runner = TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=workdir,
        clock=clock,
        _tasks={spec.task.kind: ReplayKind(surrogate, clock)},
        # A pruner that pauses trials needs their checkpoints to promote them; no other method writes any.
        artifact_store=open_artifact_store(str(workdir / f"{method}-{seed}-artifacts"))
        if spec.rungs()
        else None,
        checkpoint_interval_s=math.inf,
    )
    run = Run(method=method, seed=seed)
    best = math.inf
    epochs = 0
    counted: dict[int, int] = {}
    try:
        while clock.now < budget_s if epoch_budget is None else epochs < epoch_budget:
            claim = repository.claim(WORKER, study_names=[spec.name])
            if claim is None:
                break
            runner.run(claim)
            trial = repository.storage.get_trial(claim.trial._trial_id)
            epochs += len(trial.intermediate_values) - counted.get(trial._trial_id, 0)
            counted[trial._trial_id] = len(trial.intermediate_values)
            if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None:
                best = min(best, trial.value)
            run.compute.append(clock.now)
            run.best.append(best)
            run.trials += 1
    finally:
        storage.engine.dispose()
    return run


def run_seed(
    preset: dict[str, Any],
    methods: list[str],
    seed: int,
    budget_s: float,
    surrogate: Surrogate,
    sources: tuple[Source, ...] = (),
    epoch_budget: int | None = None,
) -> list[Run]:
    """Every method on one seed, one after another in this process."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The stores live in memory-backed /dev/shm where there is one: a replay writes every epoch's report.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(
        prefix="tunefleet-replay-", dir=shm if shm.is_dir() else None
    ) as workdir:
        return [
            run_method(preset, m, seed, budget_s, surrogate, Path(workdir), sources, epoch_budget)
            for m in methods
        ]
