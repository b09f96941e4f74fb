"""Studies in the shared store: create, read, list, control, and the one atomic claim of a trial."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage

# Optuna's table models: counting and paging trials in SQL beats loading tens of thousands of them.
from optuna.storages._rdb.models import StudyModel, TrialModel
from optuna.trial import FrozenTrial, TrialState

from studies import trial_rows
from studies.errors import (
    InvalidStudyState,
    StudyAlreadyExists,
    StudyNotFound,
    TrialNotFound,
    WorkerDeclaredLost,
)
from studies.resilience import GaveUp, with_retry
from studies.sampling import build_pruner, build_sampler, derived_seed, grid_points, sample_params
from studies.space import distributions
from studies.spec import StudySpec
from studies.states import SETTABLE_STUDY_STATES, WORKER_ALIVE, StopReason, StudyState, WorkerState
from studies.tables import (
    metadata,
    studies_table,
    upgrade_schema,
    utcnow,
    workers_table,
)
from studies.trial_rows import NewTrial

T = TypeVar("T")
TRIAL_STATE_NAMES = {s: s.name.lower() for s in TrialState}


@dataclass(frozen=True)
class StudyRecord:
    """A study as tunefleet stores it: its spec and control state."""

    name: str
    optuna_study_id: int
    spec: StudySpec
    state: StudyState
    state_reason: str | None
    n_trials: int
    n_claimed: int
    deadline_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class StudyProgress:
    """A study's state as a user sees it: counts by trial state and the best trial so far."""

    record: StudyRecord
    state: StudyState
    trial_counts: dict[str, int]
    best_trial: FrozenTrial | None

    @property
    def n_finished(self) -> int:
        """Trials that ended, in any way."""
        return sum(n for s, n in self.trial_counts.items() if s in ("complete", "pruned", "fail"))


@dataclass(frozen=True)
class WorkerIdentity:
    """Who runs a trial: recorded on every trial so results can be traced to a host and device."""

    host: str
    pid: int
    device: str
    worker_id: str = ""

    @property
    def label(self) -> str:
        """host:pid, unique among live workers."""
        return f"{self.host}:{self.pid}"


@dataclass
class Claim:
    """A trial a worker has claimed: the Optuna trial to report to, and the spec to run it by."""

    study_name: str
    spec: StudySpec
    study: optuna.Study
    trial: optuna.Trial
    claim_index: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    claim_s: float = 0.0
    # The registry row holding the trial, released when it ends; "" for a claim outside the fleet.
    worker_id: str = ""


class ClaimedTrial(optuna.Trial):
    """An optuna.Trial over a trial the claim has just written, built from what it wrote.

    optuna.Trial's constructor reads the whole trial back (six queries) and would re-run the
    sampler's before_trial hook; the claim already holds both the trial and its parameters.
    """

    def __init__(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        self.study = study
        self._trial_id = frozen._trial_id
        self.storage = study._storage
        self._cached_frozen_trial = frozen
        self.relative_search_space = None
        self._relative_params = None
        self._fixed_params = frozen.system_attrs.get("fixed_params", {})


def _record(row: Any, spec: StudySpec | None = None) -> StudyRecord:
    return StudyRecord(
        name=row.study_name,
        optuna_study_id=row.optuna_study_id,
        spec=StudySpec.model_validate(row.spec) if spec is None else spec,
        state=StudyState(row.state),
        state_reason=row.state_reason,
        n_trials=row.n_trials,
        n_claimed=row.n_claimed,
        deadline_at=row.deadline_at,
        created_at=row.created_at,
    )


class StudyRepository:
    """All reads and writes of studies go through here, on one storage and its one pool."""

    def __init__(self, storage: RDBStorage) -> None:
        self.storage = storage
        self.engine: sa.Engine = storage.engine
        metadata.create_all(self.engine)
        upgrade_schema(self.engine)
        self._studies: dict[str, optuna.Study] = {}
        self._specs: dict[tuple[str, int], StudySpec] = {}
        self._samplers: dict[tuple[str, int], optuna.samplers.BaseSampler] = {}

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as connection:
            yield connection

    # -- studies -------------------------------------------------------------------------------

    def create(self, spec: StudySpec) -> StudyRecord:
        """Create the Optuna study and persist its spec; StudyAlreadyExists if the name is taken."""
        if spec.sampler.seed is None:
            # Record the seed we draw, so the study can be reproduced from its stored spec.
            spec = spec.model_copy(
                update={"sampler": spec.sampler.model_copy(update={"seed": secrets.randbelow(2**31)})}
            )
        if spec.name in self._all_optuna_study_names():
            raise StudyAlreadyExists(spec.name)
        with self._begin() as connection:
            # The row of a study deleted through Optuna's tools would hold the name for good.
            connection.execute(
                studies_table.delete().where(studies_table.c.study_name == spec.name, ~self._alive())
            )
        try:
            study = optuna.create_study(
                study_name=spec.name, storage=self.storage, direction=spec.objective.direction or "minimize"
            )
        except optuna.exceptions.DuplicatedStudyError as error:
            raise StudyAlreadyExists(spec.name) from error
        now = utcnow()
        deadline = now + timedelta(seconds=spec.budget.timeout_s) if spec.budget.timeout_s else None
        try:
            with self._begin() as connection:
                connection.execute(
                    studies_table.insert().values(
                        study_name=spec.name,
                        optuna_study_id=study._study_id,
                        spec=spec.model_dump(mode="json"),
                        state=StudyState.RUNNING,
                        state_reason=None,
                        priority=spec.priority,
                        n_trials=self._trial_cap(spec),
                        n_claimed=0,
                        deadline_at=deadline,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except sa.exc.IntegrityError as error:
            raise StudyAlreadyExists(spec.name) from error
        return self.get(spec.name)

    @staticmethod
    def _trial_cap(spec: StudySpec) -> int:
        # A grid is exhausted after its last point: more trials would only repeat points.
        if spec.sampler.name == "grid":
            return min(spec.budget.n_trials, len(grid_points(spec)))
        return spec.budget.n_trials

    @staticmethod
    def _alive() -> sa.ColumnElement[bool]:
        # optuna-dashboard and `optuna delete-study` delete the Optuna study and know nothing of our
        # row: a row whose Optuna study is gone is a deleted study (not listed, never claimed).
        # The name too: SQLite hands a deleted study's id to the next study made.
        return sa.exists().where(
            StudyModel.study_id == studies_table.c.optuna_study_id,
            StudyModel.study_name == studies_table.c.study_name,
        )

    def _all_optuna_study_names(self) -> set[str]:
        return {s.study_name for s in self.storage.get_all_studies()}

    def get(self, study_name: str) -> StudyRecord:
        """One study's record; StudyNotFound if there is none."""
        with self._begin() as connection:
            row = connection.execute(
                sa.select(studies_table).where(studies_table.c.study_name == study_name, self._alive())
            ).first()
        if row is None:
            raise StudyNotFound(study_name)
        return _record(row)

    def _studies_newest_first(self) -> sa.Select[Any]:
        return (
            sa.select(studies_table)
            .where(self._alive())
            .order_by(studies_table.c.created_at.desc(), studies_table.c.study_name)
        )

    def list_studies(self) -> list[StudyRecord]:
        """Every tunefleet study, newest first."""
        with self._begin() as connection:
            rows = connection.execute(self._studies_newest_first()).all()
        return [_record(row) for row in rows]

    def study_page(self, *, offset: int = 0, limit: int = 100) -> tuple[int, list[StudyRecord]]:
        """A page of the studies, newest first, and how many there are in all."""
        query = self._studies_newest_first()
        with self._begin() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
            rows = connection.execute(query.offset(offset).limit(limit)).all()
        return int(total), [_record(row) for row in rows]

    def trial_counts(self, record: StudyRecord) -> dict[str, int]:
        """How many trials the study has in each state (lower-case names), zeros included."""
        # One GROUP BY instead of loading every trial: a study may hold tens of thousands.
        with self._begin() as connection:
            rows = connection.execute(
                sa.select(TrialModel.state, sa.func.count())
                .where(TrialModel.study_id == record.optuna_study_id)
                .group_by(TrialModel.state)
            ).all()
        counts = dict.fromkeys(TRIAL_STATE_NAMES.values(), 0)
        for state, count in rows:
            counts[TRIAL_STATE_NAMES[TrialState(state) if not isinstance(state, TrialState) else state]] = (
                count
            )
        return counts

    def progress(self, record: StudyRecord) -> StudyProgress:
        """The study's derived state, trial counts and best trial."""
        counts = self.trial_counts(record)
        try:
            best: FrozenTrial | None = self.storage.get_best_trial(record.optuna_study_id)
        except ValueError:
            best = None
        return StudyProgress(
            record=record, state=self._derived_state(record, counts), trial_counts=counts, best_trial=best
        )

    @staticmethod
    def _derived_state(record: StudyRecord, counts: dict[str, int]) -> StudyState:
        active = counts["running"] + counts["waiting"]
        if record.state == StudyState.RUNNING:
            budget_spent = record.n_claimed >= record.n_trials or (
                record.deadline_at is not None and record.deadline_at <= utcnow()
            )
            return StudyState.COMPLETED if budget_spent and active == 0 else StudyState.RUNNING
        if record.state == StudyState.STOPPED and active:
            return StudyState.STOPPING
        return record.state

    def set_state(self, study_name: str, state: StudyState, reason: str | None = None) -> StudyRecord:
        """Move a study to running, stopped or failed."""
        if state not in SETTABLE_STUDY_STATES:
            raise InvalidStudyState(f"cannot set study state to {state!r}")
        with self._begin() as connection:
            result = connection.execute(
                studies_table.update()
                .where(studies_table.c.study_name == study_name)
                .values(state=state, state_reason=reason, updated_at=utcnow())
            )
        if result.rowcount == 0:
            raise StudyNotFound(study_name)
        return self.get(study_name)

    def stored_state(self, study_name: str) -> StudyState:
        """The study's control state as stored (running, stopped, failed): cheap, for per-epoch checks."""
        with self._begin() as connection:
            state = connection.execute(
                sa.select(studies_table.c.state).where(studies_table.c.study_name == study_name)
            ).scalar()
        if state is None:
            raise StudyNotFound(study_name)
        return StudyState(state)

    # -- trials --------------------------------------------------------------------------------

    def trials(
        self,
        record: StudyRecord,
        *,
        states: Sequence[TrialState] | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[int, list[FrozenTrial]]:
        """A page of the study's trials by number, and the total matching the filter."""
        query = sa.select(TrialModel.trial_id).where(TrialModel.study_id == record.optuna_study_id)
        if states:
            query = query.where(TrialModel.state.in_(list(states)))
        with self._begin() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
            ids = (
                connection.execute(query.order_by(TrialModel.number).offset(offset).limit(limit))
                .scalars()
                .all()
            )
        return int(total), [self.storage.get_trial(trial_id) for trial_id in ids]

    def trial(self, record: StudyRecord, number: int) -> FrozenTrial:
        """One trial by its number within the study."""
        with self._begin() as connection:
            trial_id = connection.execute(
                sa.select(TrialModel.trial_id).where(
                    TrialModel.study_id == record.optuna_study_id, TrialModel.number == number
                )
            ).scalar()
        if trial_id is None:
            raise TrialNotFound(record.name, number)
        return self.storage.get_trial(int(trial_id))

    # -- the claim -----------------------------------------------------------------------------

    def _runnable(self, connection: sa.Connection, study_names: Sequence[str] | None) -> list[str]:
        c = studies_table.c
        query = sa.select(c.study_name).where(
            c.state == StudyState.RUNNING,
            c.n_claimed < c.n_trials,
            sa.or_(c.deadline_at.is_(None), c.deadline_at > utcnow()),
            self._alive(),
        )
        if study_names is not None:
            query = query.where(c.study_name.in_(list(study_names)))
        return list(
            connection.execute(query.order_by(c.priority.desc(), c.n_claimed, c.created_at)).scalars()
        )

    def _take_slot(self, connection: sa.Connection, study_name: str) -> Any:
        c = studies_table.c
        # One conditional UPDATE is the budget: PostgreSQL row-locks and re-checks the WHERE clause
        # for racing updates, SQLite serialises writers, so the budget can never overshoot.
        return connection.execute(
            studies_table.update()
            .where(c.study_name == study_name, c.state == StudyState.RUNNING, c.n_claimed < c.n_trials)
            .values(n_claimed=c.n_claimed + 1, updated_at=utcnow())
            .returning(*studies_table.c)
        ).first()

    def _give_slot_back(self, connection: sa.Connection, study_name: str) -> None:
        c = studies_table.c
        connection.execute(
            studies_table.update()
            .where(c.study_name == study_name, c.n_claimed > 0)
            .values(n_claimed=c.n_claimed - 1, updated_at=utcnow())
        )

    def _cached_record(self, row: Any) -> StudyRecord:
        # A spec never changes once stored: parse it once per study, not once per claim.
        key = (row.study_name, row.optuna_study_id)
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = StudySpec.model_validate(row.spec)
        return _record(row, spec)

    def _study(self, record: StudyRecord) -> optuna.Study:
        study = self._studies.get(record.name)
        # A study deleted and created again under the same name has a new id: drop the stale one.
        if study is None or study._study_id != record.optuna_study_id:
            study = optuna.load_study(study_name=record.name, storage=self.storage)
            self._studies[record.name] = study
        return study

    def reset_session(self) -> None:
        """Drop this thread's Optuna session: after a dropped connection it can be stuck mid-rollback."""
        self.storage.scoped_session.remove()

    def _take_trial(
        self, worker: WorkerIdentity, study_names: Sequence[str] | None
    ) -> tuple[StudyRecord, NewTrial, dict[str, Any]] | None:
        # The whole claim in one transaction: a budget slot, a RUNNING trial (queued first), its
        # tags, and the worker's registry row pointing at it. Nothing half-made survives a crash or
        # a dropped connection; a retry after a commit whose answer was lost leaves the first trial
        # held by no registry row, which the reaper's sweep for unheld trials retries.
        with self._begin() as connection:
            for name in self._runnable(connection, study_names):
                row = self._take_slot(connection, name)
                if row is None:
                    continue
                record = self._cached_record(row)
                now = utcnow()
                new = trial_rows.take_queued_trial(connection, record.optuna_study_id, now)
                if new is None:
                    new = trial_rows.insert_running_trial(connection, record.optuna_study_id, now)
                # A trial handed back or retried keeps its seed, so its rerun is the same experiment.
                stored_seed = (
                    trial_rows.user_attr(connection, new.trial_id, "seed") if new.from_queue else None
                )
                seed = (
                    int(stored_seed)
                    if stored_seed is not None
                    else derived_seed(record.spec.sampler.seed or 0, "trial", new.number)
                )
                tags = {
                    "seed": seed,
                    "worker": worker.label,
                    "worker_id": worker.worker_id,
                    "device": worker.device,
                }
                trial_rows.set_user_attrs(connection, new.trial_id, tags)
                # A worker id never registered (a script claiming outside the fleet) only tags the
                # trial: no row holds it, so a reaper retries it once it has been unheld for a grace period.
                if (
                    worker.worker_id
                    and not self._hold(connection, worker.worker_id, name, new)
                    and self._registered(connection, worker.worker_id)
                ):
                    raise WorkerDeclaredLost(worker.worker_id)
                return record, new, tags
        return None

    @staticmethod
    def _hold(connection: sa.Connection, worker_id: str, study_name: str, new: NewTrial) -> bool:
        c = workers_table.c
        return bool(
            connection.execute(
                workers_table.update()
                .where(c.worker_id == worker_id, c.state.in_(WORKER_ALIVE))
                .values(
                    state=WorkerState.BUSY,
                    study_name=study_name,
                    trial_id=new.trial_id,
                    trial_number=new.number,
                    heartbeat_at=utcnow(),
                )
            ).rowcount
        )

    @staticmethod
    def _registered(connection: sa.Connection, worker_id: str) -> bool:
        c = workers_table.c
        return connection.execute(sa.select(c.worker_id).where(c.worker_id == worker_id)).first() is not None

    @staticmethod
    def _release(connection: sa.Connection, worker_id: str, trial_id: int) -> None:
        c = workers_table.c
        connection.execute(
            workers_table.update()
            .where(c.worker_id == worker_id, c.trial_id == trial_id, c.state.in_(WORKER_ALIVE))
            .values(
                state=WorkerState.IDLE,
                study_name=None,
                trial_id=None,
                trial_number=None,
                heartbeat_at=utcnow(),
            )
        )

    def _frozen(self, new: NewTrial, tags: dict[str, Any]) -> FrozenTrial:
        if new.from_queue:
            # Queued trials carry parameters, fixed parameters and attributes: read them whole.
            return self.storage.get_trial(new.trial_id)
        return FrozenTrial(
            number=new.number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            # Optuna stores naive UTC and hands out naive local time.
            datetime_start=new.datetime_start.replace(tzinfo=UTC).astimezone().replace(tzinfo=None),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs=dict(tags),
            system_attrs={},
            intermediate_values={},
            trial_id=new.trial_id,
        )

    def _sampler(self, record: StudyRecord, claim_index: int) -> optuna.samplers.BaseSampler:
        # One sampler per study for the life of the process, seeded at its first claim: Optuna's
        # samplers keep incremental caches between trials (TPE's search space: 60 ms a trial at
        # 5,000 trials when rebuilt). A grid point is the claim's own, so a grid's is built per claim.
        if record.spec.sampler.name == "grid":
            return build_sampler(record.spec, claim_index=claim_index)
        key = (record.name, record.optuna_study_id)
        sampler = self._samplers.get(key)
        if sampler is None:
            sampler = self._samplers[key] = build_sampler(record.spec, claim_index=claim_index)
        return sampler

    def _sample(self, record: StudyRecord, frozen: FrozenTrial) -> optuna.Study:
        study = self._study(record)
        study.sampler = self._sampler(record, claim_index=record.n_claimed - 1)
        study.pruner = build_pruner(record.spec)
        sample_params(study, frozen, distributions(record.spec.space))
        return study

    def _write_params(self, trial: FrozenTrial) -> None:
        with self._begin() as connection:
            trial_rows.lock_running(connection, trial._trial_id)
            trial_rows.add_params(connection, trial._trial_id, trial.params, trial.distributions)

    def claim(self, worker: WorkerIdentity, *, study_names: Sequence[str] | None = None) -> Claim | None:
        """Claim the next trial of a runnable study within its budget, or None when there is nothing to do.

        WorkerDeclaredLost if the worker's registry row says it was declared lost (nothing is claimed).
        """
        started = time.perf_counter()
        taken = self._take_trial(worker, study_names)
        if taken is None:
            return None
        record, new, tags = taken
        spec = record.spec
        # The trial is claimed and held: each step from here is retried on its own through a store
        # outage (a parameter already drawn is kept, not drawn again), never by claiming anew.
        try:
            frozen = with_retry(
                partial(self._frozen, new, tags), what="read a queued trial", reset=self.reset_session
            )
            study = with_retry(
                partial(self._sample, record, frozen), what="sample parameters", reset=self.reset_session
            )
            with_retry(
                partial(self._write_params, frozen), what="record parameters", reset=self.reset_session
            )
        except optuna.exceptions.UpdateFinishedTrialError:
            # This worker stalled mid-claim and a reaper already failed (and re-queued) the trial.
            return None
        except GaveUp:
            raise
        except Exception as error:
            # A sampler that cannot sample is this trial's failure, recorded, not a trial left RUNNING.
            try:
                self._end(
                    new.trial_id,
                    worker.worker_id,
                    TrialState.FAIL,
                    None,
                    {"fail_reason": f"sampling failed: {type(error).__name__}: {error}"[:2000]},
                )
            except Exception as also:
                error.add_note(f"and the trial could not be failed: {type(also).__name__}: {also}")
            raise
        return Claim(
            study_name=record.name,
            spec=spec,
            study=study,
            trial=ClaimedTrial(study, frozen),
            claim_index=record.n_claimed - 1,
            seed=int(tags["seed"]),
            params=dict(frozen.params),
            claim_s=time.perf_counter() - started,
            worker_id=worker.worker_id,
        )

    # -- finishing a trial -----------------------------------------------------------------------

    def set_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Set several user attributes of an unfinished trial in one transaction."""
        with self._begin() as connection:
            trial_rows.lock_running(connection, trial_id)
            trial_rows.set_user_attrs(connection, trial_id, attrs)

    def _end(
        self, trial_id: int, worker_id: str, state: TrialState, value: float | None, attrs: dict[str, Any]
    ) -> None:
        with self._begin() as connection:
            trial_rows.lock_running(connection, trial_id)
            trial_rows.set_user_attrs(connection, trial_id, attrs)
            trial_rows.finish(connection, trial_id, state, value, utcnow())
            if worker_id:
                self._release(connection, worker_id, trial_id)

    def _finish(self, claim: Claim, state: TrialState, value: float | None, attrs: dict[str, Any]) -> None:
        # Study.tell's rules and hooks, then one transaction for the attributes, value, state and
        # the worker's registry row (Study.tell would take one per attribute and two more).
        frozen = claim.trial._cached_frozen_trial
        if state == TrialState.PRUNED and value is None and frozen.last_step is not None:
            # As Study.tell does: a pruned trial's value is its last reported one, when finite.
            last = frozen.intermediate_values[frozen.last_step]
            value = last if math.isfinite(last) else None
        if state == TrialState.COMPLETE and (value is None or math.isnan(value)):
            state, value = TrialState.FAIL, None
            attrs = {**attrs, "fail_reason": "the objective value is not a number"}
        study = claim.study
        study._thread_local.cached_all_trials = None
        filtered = optuna.pruners._filter_study(study, frozen)
        study.sampler.after_trial(filtered, frozen, state, None if value is None else [value])
        self._end(claim.trial._trial_id, claim.worker_id, state, value, attrs)

    def complete(self, claim: Claim, value: float, attrs: dict[str, Any]) -> None:
        """End the trial COMPLETE with its objective value and result attributes."""
        self._finish(claim, TrialState.COMPLETE, value, attrs)

    def prune(self, claim: Claim, attrs: dict[str, Any]) -> None:
        """End the trial PRUNED (its last reported value stands as its value)."""
        self._finish(claim, TrialState.PRUNED, None, attrs)

    def fail(self, claim: Claim, reason: str, attrs: dict[str, Any] | None = None) -> None:
        """End the trial FAIL with the reason recorded as `fail_reason`; trip the study's breaker if due."""
        self._finish(claim, TrialState.FAIL, None, {**(attrs or {}), "fail_reason": reason[:2000]})
        self._trip_breaker_if_due(claim.study_name)

    def give_back(self, claim: Claim) -> None:
        """Put an unfinished trial back in the queue, same number, parameters and seed, not failed.

        Its per-epoch values are cleared so the pruner judges the rerun from its first epoch.
        """
        trial_id = claim.trial._trial_id
        with self._begin() as connection:
            trial_rows.lock_running(connection, trial_id)
            trial_rows.requeue(connection, trial_id)
            self._give_slot_back(connection, claim.study_name)
            if claim.worker_id:
                self._release(connection, claim.worker_id, trial_id)

    # -- lost workers and broken studies -----------------------------------------------------------

    def retry_lost_trial(self, trial_id: int, reason: str, held_by: str | None = None) -> FrozenTrial | None:
        """Fail a running trial whose worker is gone and queue a copy (same parameters and seed)
        within the study's max_retries; None if the trial had already finished, or is gone with its study,
        or (held_by: the lost worker's id) is now run by another worker."""
        try:
            trial = self.storage.get_trial(trial_id)
            if trial.state != TrialState.RUNNING:
                return None
            # SQLite reuses a deleted trial's id: a lost worker's row can name an id that, since its
            # study was deleted, belongs to a new trial a live worker runs. Each claim tags its worker.
            if held_by is not None and trial.user_attrs.get("worker_id", held_by) != held_by:
                return None
            study_name = self.storage.get_study_name_from_id(self._study_id_of(trial_id))
            record = self.get(study_name)
        except (KeyError, sa.exc.NoResultFound, StudyNotFound):
            # Its study was deleted (through the API, the dashboard or the optuna CLI) after the worker
            # was declared lost: nothing is left to fail or retry, and the sweep must go on.
            return None
        try:
            self.storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if not self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                return None
        except optuna.exceptions.UpdateFinishedTrialError:
            # The worker finished it after all, between our read and our write: its result stands.
            return None
        retries = int(trial.user_attrs.get("retry", 0))
        if retries < record.spec.budget.max_retries:
            self._study(record).enqueue_trial(
                trial.params,
                user_attrs={
                    "retry_of": trial.number,
                    "retry": retries + 1,
                    "seed": trial.user_attrs.get("seed"),
                },
                skip_if_exists=False,
            )
            with self._begin() as connection:
                self._give_slot_back(connection, study_name)
        return self.storage.get_trial(trial_id)

    def running_trial_ids(self) -> list[int]:
        """The ids of every RUNNING trial of every tunefleet study (plain Optuna studies are not ours)."""
        with self._begin() as connection:
            return list(
                connection.execute(
                    sa.select(TrialModel.trial_id)
                    .join(studies_table, studies_table.c.optuna_study_id == TrialModel.study_id)
                    .where(TrialModel.state == TrialState.RUNNING)
                ).scalars()
            )

    def _study_id_of(self, trial_id: int) -> int:
        with self._begin() as connection:
            study_id = connection.execute(
                sa.select(TrialModel.study_id).where(TrialModel.trial_id == trial_id)
            ).scalar_one()
        # Optuna 5.1 types the column as nullable; a trial row always names its study.
        if study_id is None:
            raise LookupError(f"trial {trial_id} names no study")
        return int(study_id)

    def _trip_breaker_if_due(self, study_name: str) -> None:
        # A study whose first trials all fail the same way (a missing data file, a model that cannot
        # load) is broken, not unlucky: stop it before it burns the fleet's time on its whole budget.
        record = self.get(study_name)
        threshold = record.spec.budget.max_consecutive_failures
        if record.state != StudyState.RUNNING or threshold == 0:
            return
        counts = self.trial_counts(record)
        if counts["complete"] or counts["pruned"] or counts["fail"] < threshold:
            return
        failed = self.storage.get_all_trials(
            record.optuna_study_id, deepcopy=False, states=(TrialState.FAIL,)
        )
        reasons = [t.user_attrs.get("fail_reason") for t in failed if t.user_attrs.get("retry_of") is None]
        reasons = [r for r in reasons if r and not str(r).startswith(StopReason.WORKER_LOST)]
        if len(reasons) >= threshold and len(set(reasons[-threshold:])) == 1:
            self.set_state(
                study_name, StudyState.FAILED, f"the first {len(reasons)} trials failed: {reasons[-1]}"
            )

    # -- deleting ------------------------------------------------------------------------------------

    def delete(self, study_name: str) -> None:
        """Delete a study that is not running (stopped, failed or completed): its row, then its Optuna study.

        StudyNotFound if there is none; InvalidStudyState while it runs or any of its trials runs.
        """
        record = self.get(study_name)
        counts = self.trial_counts(record)
        state = self._derived_state(record, counts)
        if state == StudyState.RUNNING:
            raise InvalidStudyState(f"study {study_name!r} is running; stop it before deleting it")
        if counts["running"]:
            raise InvalidStudyState(
                f"study {study_name!r} still has {counts['running']} running trials; "
                "delete it when they have stopped"
            )
        c = studies_table.c
        with self._begin() as connection:
            # Only if nothing changed since we looked (a resume, a claim): never pull a trial from under a worker.
            deleted = connection.execute(
                studies_table.delete().where(
                    c.study_name == study_name, c.state == record.state, c.n_claimed == record.n_claimed
                )
            ).rowcount
        if deleted == 0:
            self.get(study_name)  # StudyNotFound when another request deleted it first
            raise InvalidStudyState(f"study {study_name!r} changed while being deleted; try again")
        self._studies.pop(study_name, None)
        try:
            self.storage.delete_study(record.optuna_study_id)
        except KeyError:
            return  # already gone (deleted through the dashboard or the optuna CLI)
