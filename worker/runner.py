"""Runs one claimed trial on the fleet's side: reports, prune and stop checks, OOM, hand-back, model, end state.

What the trial trains is its task kind's business (worker.tasks); this module never looks inside one.
"""

from __future__ import annotations

import gc
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import optuna
import torch

from studies import Claim, StudyRepository
from studies._optuna.internals import frozen_trial_of
from studies.artifacts import MODEL_ARTIFACT_ATTR, ArtifactStore, upload_model, write_model_archive
from studies.checkpoints import discard_checkpoint
from studies.errors import StudyNotFound, TrialVanished
from studies.pareto import joins_front
from studies.promotion import PROMOTED_ATTR
from studies.resilience import GaveUp, is_transient, with_retry
from studies.spec import StudySpec, Task
from studies.states import StopReason, StudyState
from worker.checkpoints import RESUMED_FROM_EPOCH, TrialCheckpoints
from worker.data_roots import DataRoots, worker_data_roots
from worker.early_stopping import Patience
from worker.entrypoints import is_allowed, user_code
from worker.epochs import (
    EpochCheckpoints,
    EpochResult,
    KeepRule,
    PauseTraining,
    StopTraining,
    TrainResult,
    epoch_value,
    keep_rule,
)
from worker.failures import TrialFailure
from worker.measures import measure
from worker.tasks import TASK_KINDS
from worker.tasks.interface import Progress, TaskHost, TrialTask
from worker.trial_task import trial_task

log = logging.getLogger("tunefleet.worker")

T = TypeVar("T")
# The constraint an out-of-memory trial violates; TPE ranks infeasible trials below every feasible one.
OUT_OF_MEMORY_CONSTRAINT = "out_of_memory"
_CPU_OUT_OF_MEMORY = re.compile(
    r"(can't|cannot|could not|unable to) allocate memory|not enough memory|out of memory", re.IGNORECASE
)
# What torch says it could not allocate: "Tried to allocate 275.00 GiB" (CUDA), "you tried to allocate
# 68719476736 bytes" (CPU), "Tried to allocate 256 bytes on private pool" (MPS).
_ALLOCATION = re.compile(r"tried to allocate (\d+(?:\.\d+)?) ?(bytes|[KMGTPE]i?B|B)\b", re.IGNORECASE)
# The parameters that size a built-in kind's memory: the batch, and the head built from depth x width.
MEMORY_PARAMS = ("batch_size", "depth", "width")
STATE_CHECK_INTERVAL_S = 1.0
# What became of a trial that has ended in the store: its checkpoint is of no more use.
ENDED_OUTCOMES = frozenset({"complete", "pruned", "fail", "out of memory"})


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or a CPU allocation that failed."""
    if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and bool(_CPU_OUT_OF_MEMORY.search(str(error)))


class Handling(Enum):
    """What the runner does with an exception a trial's training or measuring raised."""

    # The trial's own failure (TrialFailure): its message is the fail_reason, no traceback.
    FAIL = "fail"
    # The trial is gone, ended elsewhere, or the store is out of reach: run() or the worker decides.
    RAISE = "raise"
    # Pruned as infeasible, once the except block has let go of the traceback that holds the tensors.
    OUT_OF_MEMORY = "out of memory"
    # Anything else is a broken trial: logged with its traceback, failed with its type and message.
    BROKEN = "broken"


def handling(error: Exception) -> Handling:
    """How a trial ends on an exception raised while it trained or while its model was measured."""
    if isinstance(error, TrialFailure):
        return Handling.FAIL
    if isinstance(error, optuna.exceptions.UpdateFinishedTrialError | GaveUp | TrialVanished):
        return Handling.RAISE
    if is_out_of_memory(error):
        return Handling.OUT_OF_MEMORY
    if is_transient(error):
        return Handling.RAISE
    return Handling.BROKEN


def allocation_size(message: str) -> str | None:
    """The allocation an out-of-memory message says failed, as torch writes sizes ("275.00 GiB"), or None."""
    found = _ALLOCATION.search(message)
    if found is None:
        return None
    number, unit = found.groups()
    if unit.lower() != "bytes" and unit != "B":
        return f"{number} {unit}"
    size = float(number)
    if size < 1024:
        return f"{int(size)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.2f} {unit}"


def out_of_memory_reason(message: str, params: dict[str, Any], *, kind: str) -> str:
    """An out-of-memory trial's fail_reason: the allocation that failed, if torch said, and the parameters
    that asked for the memory (a built-in kind's batch size, depth and width; every parameter of kind python)."""
    named = {name: params[name] for name in MEMORY_PARAMS if name in params} if kind != "python" else {}
    # Kind python's space is the user's own names: any of them may be what took the memory.
    shown = ", ".join(f"{name}={value}" for name, value in (named or params).items())
    size = allocation_size(message)
    reason = f"out of memory: tried to allocate {size}" if size else "out of memory"
    return f"{reason} ({shown})"[:500] if shown else reason


def free_memory(device: torch.device) -> None:
    """Give back what a trial that ran out of memory held, so the next trial starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def mark_infeasible(trial: optuna.Trial, key: str) -> None:
    """Record a violated constraint on a running trial, where Optuna's samplers read it."""
    set_constraint = getattr(trial, "set_constraint", None)
    if set_constraint is not None:
        set_constraint(key, 1.0)
    else:
        # Optuna before 5.0 has no Trial.set_constraint; its samplers read this system attribute.
        trial.storage.set_trial_system_attr(trial._trial_id, "constraints", (1.0,))


def chosen_epoch(epochs: list[EpochResult], *, metric: str, value: str) -> EpochResult:
    """The epoch whose metric is the trial's value: the best one, or the last one."""
    if value == "final":
        return epochs[-1]
    if metric == "val_loss":
        return min(epochs, key=lambda e: e.val_loss)
    return max(epochs, key=lambda e: epoch_value(e, metric))


@dataclass
class RunningTrial:
    """The trial object a task kind trains against: its parameters, and the fleet behind `report`."""

    params: dict[str, Any]
    seed: int
    device: torch.device
    keep: KeepRule
    # Report an epoch to the store, then raise StopTraining if the trial must end there.
    on_epoch: Callable[[EpochResult], None]
    interrupted: Callable[[], str | None]
    wake: threading.Event
    # Which trial this is and which metric its objective reads: for kinds that hand it to the user's code.
    study_name: str = ""
    number: int = 0
    metric: str = "val_loss"
    # User attributes the kind noted (what its data held): recorded with the trial, whatever its end.
    notes: dict[str, Any] = field(default_factory=dict)
    # Where it keeps checkpoints to resume from; None: a rerun trains from epoch 1.
    checkpoints: EpochCheckpoints | None = None

    def note(self, name: str, value: Any) -> None:
        """Record a user attribute the trial ends with (duplicates its data had, say)."""
        self.notes[name] = value

    def report(self, result: EpochResult) -> None:
        """Record an epoch's results; raises StopTraining when the trial must end there (pruned, stopped)."""
        self.on_epoch(result)

    def stop_reason(self) -> str | None:
        """Why the trial must stop now (the worker is lost or stopping), or None: poll it between batches."""
        return self.interrupted()

    def pause(self, seconds: float) -> None:
        """Wait up to seconds, returning early when the worker is told to stop."""
        self.wake.wait(seconds)


@dataclass
class TrialRunner:
    """Everything a worker process keeps between trials: device, task kinds (and their caches), its stop flag."""

    repository: StudyRepository
    device: torch.device
    cache_dir: Path
    stopping: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    _state_checked: dict[str, tuple[float, str]] = field(default_factory=dict)
    # Where a new best trial's fine-tuned weights go; None keeps no models (tests, benchmarks).
    artifact_store: ArtifactStore | None = None
    trust_pickled_models: bool = False
    allowed_entrypoints: tuple[str, ...] = ()
    # Where its trials may read study data and local models: the worker passes its settings' roots; a runner
    # built without them (tests, benchmarks) reads TUNEFLEET_DATA_ROOTS once, when it is built.
    data_roots: DataRoots = field(default_factory=worker_data_roots)
    # What a trial's seconds (trial_s, train_s) are read from: a simulated clock replays recorded training.
    clock: Callable[[], float] = time.perf_counter
    # A running trial writes a checkpoint to the artifact store after an epoch once this many seconds have
    # passed since its last one (0: after every epoch); None, or no artifact store, writes none.
    checkpoint_interval_s: float | None = 60.0
    _tasks: dict[str, TrialTask] = field(default_factory=dict)
    _refused: set[str] = field(default_factory=set)

    def can_run(self, spec: StudySpec) -> bool:
        """Whether this worker may run the study's trials: its user code, if any, is on the operator's allow list."""
        code = user_code(spec)
        if code is None or is_allowed(code, self.allowed_entrypoints):
            return True
        if spec.name not in self._refused:
            # Said once per study: its trials wait for a worker that allows the code, and none may fail here.
            self._refused.add(spec.name)
            log.warning(
                "study %s runs %s, which this worker does not allow: left to workers that do"
                " (tunefleet worker --allow-entrypoint %s, or TUNEFLEET_ALLOWED_ENTRYPOINTS)",
                spec.name,
                code,
                code.partition(":")[0].split(".")[0],
            )
        return False

    def task_kind(self, task: Task) -> TrialTask:
        """This process's instance of the task's kind, made on first use."""
        if task.kind not in self._tasks:
            self._tasks[task.kind] = TASK_KINDS[task.kind](
                TaskHost(
                    device=self.device,
                    cache_dir=self.cache_dir,
                    trust_pickled_models=self.trust_pickled_models,
                    allowed_entrypoints=self.allowed_entrypoints,
                    data_roots=self.data_roots,
                )
            )
        return self._tasks[task.kind]

    def prepare(self, task: Task, progress: Progress | None = None) -> None:
        """Load or build what the task's trials share (a head study's feature cache), ahead of any trial."""
        self.task_kind(task).prepare(task, progress=progress)

    def _store(self, what: str, call: Callable[[], T]) -> T:
        # A database blip must not cost a trial: wait for the store, unless this worker is stopping.
        return with_retry(call, what=what, stop=self.stopping, reset=self.repository.reset_session)

    def _on_trial(self, claim: Claim, what: str, call: Callable[[], T]) -> T:
        """A store call about the claim's trial; TrialVanished when it failed because the trial is gone."""
        try:
            return self._store(what, call)
        except (optuna.exceptions.UpdateFinishedTrialError, GaveUp, TrialVanished):
            raise
        except Exception:
            # Optuna's own calls (a pruner reading the study, a constraint, an artifact) fail on a study
            # deleted outside tunefleet each in its own way: ask the store whether the trial is still there.
            if not self._store("trial check", lambda: self.repository.still_claimed(claim)):
                raise TrialVanished(claim.study_name, claim.trial.number) from None
            raise

    def _study_state(self, claim: Claim) -> str:
        # Short epochs would otherwise spend a query per epoch on a state that rarely changes;
        # a stop still reaches a running trial within STATE_CHECK_INTERVAL_S, at an epoch boundary.
        study_name = claim.study_name
        now = time.monotonic()
        checked = self._state_checked.get(study_name)
        if checked is None or now - checked[0] >= STATE_CHECK_INTERVAL_S:
            try:
                state = self._store("study state", lambda: self.repository.stored_state(study_name))
            except StudyNotFound:
                raise TrialVanished(study_name, claim.trial.number) from None
            self._state_checked[study_name] = (now, state)
            return state
        return checked[1]

    def _stop_if_interrupted(self) -> None:
        # Called between batches of a feature-cache build (minutes on a CPU): a preempted worker hands
        # its trial back now, not after the build.
        reason = self.interrupted()
        if reason is not None:
            raise StopTraining(reason)

    def interrupted(self) -> str | None:
        """Why the running trial must stop now, or None: polled between batches."""
        if self.lost.is_set():
            return StopReason.WORKER_LOST
        if self.stopping.is_set():
            return StopReason.WORKER_STOPPING
        return None

    @staticmethod
    def _rungs_to_decide(claim: Claim) -> frozenset[int]:
        """The epochs after which the trial asks its asha pruner whether it goes on: the study's rungs above the
        one a claim promoted it from, and below its own last epoch (which ends it anyway)."""
        rungs = claim.spec.rungs()
        if not rungs:
            return frozenset()
        frozen = frozen_trial_of(claim.trial)
        promoted_from = int(frozen.system_attrs.get(PROMOTED_ATTR, 0))
        last = claim.params.get("epochs", rungs[-1] + 1)
        return frozenset(r for r in rungs if promoted_from < r < int(last))

    def _checkpoints(self, claim: Claim, notes: dict[str, Any]) -> TrialCheckpoints | None:
        if self.artifact_store is None or self.checkpoint_interval_s is None:
            return None
        return TrialCheckpoints(
            claim=claim,
            repository=self.repository,
            store=self.artifact_store,
            interval_s=self.checkpoint_interval_s,
            clock=self.clock,
            on_trial=lambda what, call: self._on_trial(claim, what, call),
            note=notes.__setitem__,
        )

    def _train(
        self,
        claim: Claim,
        on_epoch: Callable[[EpochResult], None],
        notes: dict[str, Any],
        checkpoints: EpochCheckpoints | None,
    ) -> TrainResult:
        task = trial_task(claim.spec.task, claim.params)
        kind = self.task_kind(task)
        kind.prepare(task, interrupt=self._stop_if_interrupted)
        trial = RunningTrial(
            params=claim.params,
            seed=claim.seed,
            device=self.device,
            keep=keep_rule(metric=claim.spec.objective.epoch_metric, value=claim.spec.objective.value),
            on_epoch=on_epoch,
            interrupted=self.interrupted,
            wake=self.stopping,
            study_name=claim.study_name,
            number=claim.trial.number,
            metric=claim.spec.objective.epoch_metric,
            notes=notes,
            checkpoints=checkpoints,
        )
        return kind.run(task, trial)

    def _beats_best(self, claim: Claim, value: float) -> bool:
        try:
            best = self.repository.storage.get_best_trial(claim.study._study_id)
        except ValueError:
            return True
        if best.value is None:
            return True
        return value < best.value if claim.spec.objective.direction == "minimize" else value > best.value

    def _write_archive(self, claim: Claim, result: TrainResult, value: float, folder: Path) -> Path | None:
        """The trial's model as the zip a best-model download carries, written in folder; None without one."""
        task = trial_task(claim.spec.task, claim.params)
        if not result.best_state:
            return None
        files = self.task_kind(task).model_files(task, claim.params, result)
        if files is None:
            return None
        path = folder / f"{claim.study_name}-trial-{claim.trial.number}-model.zip"
        write_model_archive(
            path,
            weights=files.weights,
            params={
                "study": claim.study_name,
                "number": claim.trial.number,
                "value": value,
                "metric": claim.spec.objective.epoch_metric,
                "epoch": result.kept_epoch,
                "seed": claim.seed,
                "params": claim.params,
            },
            labels=files.labels,
            config=files.config,
            extra=files.extra,
        )
        return path

    def _upload(self, claim: Claim, archive: Callable[[], Path | None]) -> dict[str, Any]:
        """Put the trial's model archive in the artifact store; the attributes saying where, or why not."""
        store = self.artifact_store
        if store is None:
            return {}
        try:
            path = archive()
            if path is None:
                return {}
            artifact_id = self._on_trial(
                claim, "upload model", lambda: upload_model(store, claim.trial, path)
            )
        except (optuna.exceptions.UpdateFinishedTrialError, GaveUp, TrialVanished):
            raise
        # A full disk or an unreachable bucket must not cost the trial its result: record why instead.
        except Exception as error:
            log.warning("trial %d of %s: model not saved: %s", claim.trial.number, claim.study_name, error)
            return {"model_artifact_error": f"{type(error).__name__}: {error}"[:500]}
        return {MODEL_ARTIFACT_ATTR: artifact_id}

    def _save_model_if_best(self, claim: Claim, result: TrainResult, value: float) -> dict[str, Any]:
        """Upload the trial's weights when it beats the study's best so far; the attributes saying so."""
        if self.artifact_store is None or not result.best_state:
            return {}
        if not self._on_trial(claim, "best value", lambda: self._beats_best(claim, value)):
            return {}
        with tempfile.TemporaryDirectory(prefix="tunefleet-model-") as folder:
            return self._upload(claim, lambda: self._write_archive(claim, result, value, Path(folder)))

    def _joins_front(self, claim: Claim, values: list[float]) -> bool:
        front = claim.study.best_trials
        return joins_front(values, front, claim.spec.objective.directions)

    def _complete_several(
        self, claim: Claim, result: TrainResult, chosen: EpochResult, train_s: float, attrs: dict[str, Any]
    ) -> str:
        """End a trial of a study of several objectives: measure them, keep its model if it joins the front."""
        objective = claim.spec.objective
        value = epoch_value(chosen, objective.epoch_metric)
        with tempfile.TemporaryDirectory(prefix="tunefleet-model-") as folder:
            written: list[Path | None] = []

            def archive() -> Path | None:
                # Written once, when first asked for: its size is a metric, and it is what is uploaded.
                if not written:
                    written.append(self._write_archive(claim, result, value, Path(folder)))
                return written[0]

            measured = measure(
                objective.measured(),
                kind=self.task_kind(claim.spec.task),
                task=trial_task(claim.spec.task, claim.params),
                params=claim.params,
                result=result,
                chosen=chosen,
                train_s=train_s,
                archive=archive,
                latency_batch_size=objective.latency_batch_size or 1,
                device=self.device,
            )
            values = [measured.values[name] for name in objective.names]
            constraints = {
                c.key: c.violation(measured.values[c.metric]) for c in objective.parsed_constraints()
            }
            # Every trial on the final front is kept: one that joins no front when it ends never will.
            saved: dict[str, Any] = {}
            if (
                self.artifact_store is not None
                and all(v <= 0 for v in constraints.values())
                and self._on_trial(claim, "pareto front", lambda: self._joins_front(claim, values))
            ):
                saved = self._upload(claim, archive)
        recorded = {
            name: int(v) if name == "params_trainable" else v
            for name, v in measured.values.items()
            if name not in ("val_loss", "val_accuracy", "val_macro_f1")
        }
        final = {**attrs, **recorded, **measured.attrs, **saved}
        self._store("complete", lambda: self.repository.complete(claim, values, final, constraints))
        return "complete"

    def _out_of_memory(self, claim: Claim, message: str, extra_attrs: dict[str, Any]) -> str:
        # Pruned, not failed: Optuna's TPE learns only from COMPLETE and PRUNED trials, and ranks an
        # infeasible one below every feasible one, so it steers away from configurations that ran
        # out of memory. A FAIL would be invisible to it. The reason is recorded as for a failure.
        reason = out_of_memory_reason(message, claim.params, kind=claim.spec.task.kind)
        log.warning("trial %d of %s: %s", claim.trial.number, claim.study_name, reason)
        self._on_trial(
            claim, "mark infeasible", lambda: mark_infeasible(claim.trial, OUT_OF_MEMORY_CONSTRAINT)
        )
        self._store("prune", lambda: self.repository.prune(claim, {**extra_attrs, "fail_reason": reason}))
        return "out of memory"

    def run(self, claim: Claim) -> str:
        """Run the claimed trial to its end and record it; returns what became of it ("dropped": it is gone)."""
        notes: dict[str, Any] = {}
        checkpoints = self._checkpoints(claim, notes)
        try:
            outcome = self._run(claim, notes, checkpoints)
        except TrialVanished as gone:
            # Deleted or renamed in optuna-dashboard or with `optuna delete-study`: nothing is left to
            # record the trial in, and the next claim is as good as ever.
            log.warning("%s; dropping it", gone)
            return "dropped"
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
        # A trial handed back or paused, or one whose worker was declared lost, keeps its checkpoint for its rerun.
        if checkpoints is not None and outcome in ENDED_OUTCOMES:
            checkpoints.discard()
        if claim.spec.rungs():
            self._settle_paused(claim.study_name)
        return outcome

    def _settle_paused(self, study_name: str) -> None:
        # The trial that ended or paused may have been the study's last: its paused trials that no rung can
        # promote any more end now, and their checkpoints with them.
        try:
            leftover = self._store("settle paused trials", lambda: self.repository.settle_paused(study_name))
        except GaveUp as error:
            log.warning("paused trials of %s not settled: %s", study_name, error)
            return
        if self.artifact_store is not None:
            for checkpoint in leftover:
                discard_checkpoint(self.artifact_store, checkpoint.artifact_id)

    def _run(self, claim: Claim, notes: dict[str, Any], checkpoints: TrialCheckpoints | None) -> str:
        trial = claim.trial
        spec = claim.spec
        started = self.clock()
        last: list[EpochResult] = []
        repository = self.repository
        # Time spent between epochs reporting to the store and asking the pruner: not training.
        reporting_s = [0.0]
        objective = spec.objective
        patience = Patience(objective.patience, minimize=objective.epoch_direction == "minimize")
        rungs = self._rungs_to_decide(claim)

        def on_epoch(result: EpochResult) -> None:
            began = self.clock()
            try:
                report(result)
            finally:
                reporting_s[0] += self.clock() - began

        def report(result: EpochResult) -> None:
            last[:] = [result]
            value = epoch_value(result, objective.epoch_metric)
            if not objective.several:
                # Several objectives have no per-epoch value in Optuna: Trial.report refuses them, and TPE
                # would read a stopped trial's per-epoch values by a single direction the study lacks.
                self._store("report", lambda: repository.report(claim, value, result.epoch))
            reason = self.interrupted()
            if reason is not None:
                raise StopTraining(reason)
            if self._study_state(claim) != StudyState.RUNNING:
                raise StopTraining(StopReason.STUDY_STOPPED)
            if not objective.several and self._on_trial(claim, "should_prune", trial.should_prune):
                raise StopTraining(StopReason.PRUNED)
            if patience.stalled(value):
                raise StopTraining(StopReason.PLATEAU)
            # A rung passed before (replayed from a checkpoint, or promoted from) is not decided again.
            if (
                result.epoch in rungs
                and result.epoch > notes.get(RESUMED_FROM_EPOCH, 0)
                and not self._on_trial(claim, "rung", lambda: repository.passes_rung(claim, result.epoch))
            ):
                raise PauseTraining(StopReason.PAUSED)

        def attrs(extra: dict[str, Any] | None = None) -> dict[str, Any]:
            # A trial resumed from a checkpoint counts the seconds of its earlier runs too: the cost TPE weighs is
            # seconds per epoch run, and its epochs count from the first.
            seconds = checkpoints.seconds() if checkpoints is not None else self.clock() - started
            base: dict[str, Any] = {
                **notes,
                "trial_s": round(seconds, 3),
                "claim_s": round(claim.claim_s, 4),
            }
            if last:
                base.update(
                    val_loss=last[0].val_loss,
                    val_accuracy=last[0].val_accuracy,
                    val_macro_f1=last[0].val_macro_f1,
                    epochs_run=last[0].epoch,
                )
                if last[0].metrics:
                    base["metrics"] = last[0].metrics
            return {**base, **(extra or {})}

        def fail(reason: str, *, logged: bool = False) -> str:
            # The reason is in the store; the worker's log says it too, where its operator is looking.
            if not logged:
                log.warning("trial %d of %s failed: %s", trial.number, claim.study_name, reason)
            self._store("fail", lambda: repository.fail(claim, reason, attrs()))
            return "fail"

        out_of_memory: str | None = None
        early_stop: dict[str, Any] = {}
        try:
            result = self._train(claim, on_epoch, notes, checkpoints)
        except StopTraining as stop:
            reason = str(stop)
            if reason == StopReason.PLATEAU and stop.result is not None:
                # A stalled trial is a finished one: it completes with its best epoch, like any other.
                result = stop.result
                early_stop = {"stopped_early": patience.reason()}
            elif reason == StopReason.WORKER_LOST:
                return "abandoned"
            elif reason == StopReason.WORKER_STOPPING:
                self._store("give back", lambda: repository.give_back(claim))
                return "requeued"
            elif reason == StopReason.PAUSED and last:
                epoch = last[0].epoch
                log.info("trial %d of %s: paused after epoch %d", trial.number, claim.study_name, epoch)
                self._store("pause", lambda: repository.pause(claim, epoch, attrs()))
                return "paused"
            else:
                extra = {} if reason == StopReason.PRUNED else {"fail_reason": reason}
                self._store("prune", lambda: repository.prune(claim, attrs(extra)))
                return "pruned"
        except Exception as error:
            what = handling(error)
            if what is Handling.RAISE:
                raise
            if what is Handling.FAIL:
                return fail(str(error))
            if what is Handling.BROKEN:
                # One broken trial must not take the worker down: record why, then go on to the next.
                log.exception("trial %d of %s failed", trial.number, claim.study_name)
                return fail(f"{type(error).__name__}: {error}", logged=True)
            # Handled after this block: until it ends, the traceback holds the trial's tensors.
            out_of_memory = str(error)
        if out_of_memory is not None:
            free_memory(self.device)
            return self._out_of_memory(claim, out_of_memory, attrs())
        chosen = chosen_epoch(result.epochs, metric=objective.epoch_metric, value=objective.value)
        train_s = result.train_s - reporting_s[0]
        final = attrs(
            {
                "val_loss": chosen.val_loss,
                "val_accuracy": chosen.val_accuracy,
                "val_macro_f1": chosen.val_macro_f1,
                "chosen_epoch": chosen.epoch,
                "epochs_run": len(result.epochs),
                **({"metrics": chosen.metrics} if chosen.metrics else {}),
                "train_s": round(train_s, 3),
                "report_s": round(reporting_s[0], 3),
                **early_stop,
            }
        )
        if objective.several:
            try:
                return self._complete_several(claim, result, chosen, train_s, final)
            except Exception as error:
                what = handling(error)
                if what is Handling.RAISE:
                    raise
                if what is Handling.FAIL:
                    return fail(str(error))
                if what is Handling.BROKEN:
                    log.exception(
                        "trial %d of %s: measuring its model failed", trial.number, claim.study_name
                    )
                    return fail(f"measuring the model: {type(error).__name__}: {error}", logged=True)
                # Timing a model the device cannot hold is the trial's memory, as in training: handled
                # after this block, once the traceback lets go of the model's tensors.
                out_of_memory = str(error)
            free_memory(self.device)
            return self._out_of_memory(claim, out_of_memory or "out of memory", final)
        value = epoch_value(chosen, objective.metric)
        final.update(self._save_model_if_best(claim, result, value))
        self._store("complete", lambda: repository.complete(claim, value, final))
        return "complete"
