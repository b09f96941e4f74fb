"""Studies in the shared store: create, read, list, control, and the one atomic claim of a trial."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.storages._rdb.models import TrialModel
from optuna.trial import FrozenTrial, TrialState

from studies.errors import InvalidStudyState, StudyAlreadyExists, StudyNotFound, TrialNotFound
from studies.sampling import build_pruner, build_sampler, derived_seed
from studies.space import distributions
from studies.spec import StudySpec

metadata = sa.MetaData()

# Our own table beside Optuna's: the spec every worker rebuilds the study from, the study's
# control state, and the claim counter that makes the budget exact however many workers race.
studies_table = sa.Table(
    "tunefleet_studies",
    metadata,
    sa.Column("study_name", sa.String(128), primary_key=True),
    sa.Column("optuna_study_id", sa.Integer, nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("state_reason", sa.Text, nullable=True),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("n_trials", sa.Integer, nullable=False),
    sa.Column("n_claimed", sa.Integer, nullable=False),
    sa.Column("deadline_at", sa.DateTime, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

RUNNING, STOPPED, FAILED, COMPLETED, STOPPING = "running", "stopped", "failed", "completed", "stopping"
TRIAL_STATE_NAMES = {s: s.name.lower() for s in TrialState}


def _now() -> datetime:
    # Naive UTC: SQLite keeps no time zone, and both backends must compare the same way.
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class StudyRecord:
    """A study as tunefleet stores it: its spec and control state."""

    name: str
    optuna_study_id: int
    spec: StudySpec
    state: str
    state_reason: str | None
    n_claimed: int
    deadline_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class StudyProgress:
    """A study's state as a user sees it: counts by trial state and the best trial so far."""

    record: StudyRecord
    state: str
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


def _record(row: Any) -> StudyRecord:
    return StudyRecord(
        name=row.study_name,
        optuna_study_id=row.optuna_study_id,
        spec=StudySpec.model_validate(row.spec),
        state=row.state,
        state_reason=row.state_reason,
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
        self._studies: dict[str, optuna.Study] = {}

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
        try:
            study = optuna.create_study(
                study_name=spec.name, storage=self.storage, direction=spec.objective.direction or "minimize"
            )
        except optuna.exceptions.DuplicatedStudyError as error:
            raise StudyAlreadyExists(spec.name) from error
        now = _now()
        deadline = now + timedelta(seconds=spec.budget.timeout_s) if spec.budget.timeout_s else None
        try:
            with self._begin() as connection:
                connection.execute(
                    studies_table.insert().values(
                        study_name=spec.name,
                        optuna_study_id=study._study_id,
                        spec=spec.model_dump(mode="json"),
                        state=RUNNING,
                        state_reason=None,
                        priority=spec.priority,
                        n_trials=spec.budget.n_trials,
                        n_claimed=0,
                        deadline_at=deadline,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except sa.exc.IntegrityError as error:
            raise StudyAlreadyExists(spec.name) from error
        return self.get(spec.name)

    def _all_optuna_study_names(self) -> set[str]:
        return {s.study_name for s in self.storage.get_all_studies()}

    def get(self, study_name: str) -> StudyRecord:
        """One study's record; StudyNotFound if there is none."""
        with self._begin() as connection:
            row = connection.execute(
                sa.select(studies_table).where(studies_table.c.study_name == study_name)
            ).first()
        if row is None:
            raise StudyNotFound(study_name)
        return _record(row)

    def list_studies(self) -> list[StudyRecord]:
        """Every tunefleet study, newest first."""
        with self._begin() as connection:
            rows = connection.execute(
                sa.select(studies_table).order_by(
                    studies_table.c.created_at.desc(), studies_table.c.study_name
                )
            ).all()
        return [_record(row) for row in rows]

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
    def _derived_state(record: StudyRecord, counts: dict[str, int]) -> str:
        active = counts["running"] + counts["waiting"]
        if record.state == RUNNING:
            budget_spent = record.n_claimed >= record.spec.budget.n_trials or (
                record.deadline_at is not None and record.deadline_at <= _now()
            )
            return COMPLETED if budget_spent and active == 0 else RUNNING
        if record.state == STOPPED and active:
            return STOPPING
        return record.state

    def set_state(self, study_name: str, state: str, reason: str | None = None) -> StudyRecord:
        """Move a study to running, stopped or failed."""
        if state not in (RUNNING, STOPPED, FAILED):
            raise InvalidStudyState(f"cannot set study state to {state!r}")
        with self._begin() as connection:
            result = connection.execute(
                studies_table.update()
                .where(studies_table.c.study_name == study_name)
                .values(state=state, state_reason=reason, updated_at=_now())
            )
        if result.rowcount == 0:
            raise StudyNotFound(study_name)
        return self.get(study_name)

    def stored_state(self, study_name: str) -> str:
        """The study's control state as stored (running, stopped, failed): cheap, for per-epoch checks."""
        with self._begin() as connection:
            state = connection.execute(
                sa.select(studies_table.c.state).where(studies_table.c.study_name == study_name)
            ).scalar()
        if state is None:
            raise StudyNotFound(study_name)
        return str(state)

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

    def _runnable(self, study_name: str | None) -> list[str]:
        c = studies_table.c
        query = sa.select(c.study_name).where(
            c.state == RUNNING,
            c.n_claimed < c.n_trials,
            sa.or_(c.deadline_at.is_(None), c.deadline_at > _now()),
        )
        if study_name is not None:
            query = query.where(c.study_name == study_name)
        with self._begin() as connection:
            return list(
                connection.execute(query.order_by(c.priority.desc(), c.n_claimed, c.created_at)).scalars()
            )

    def _take_slot(self, study_name: str) -> int | None:
        c = studies_table.c
        # One conditional UPDATE is the whole claim: PostgreSQL row-locks and re-checks the WHERE
        # clause for racing updates, SQLite serialises writers, so the budget can never overshoot.
        with self._begin() as connection:
            claimed = connection.execute(
                studies_table.update()
                .where(c.study_name == study_name, c.state == RUNNING, c.n_claimed < c.n_trials)
                .values(n_claimed=c.n_claimed + 1, updated_at=_now())
                .returning(c.n_claimed)
            ).scalar()
        return None if claimed is None else int(claimed) - 1

    def _give_slot_back(self, study_name: str) -> None:
        c = studies_table.c
        with self._begin() as connection:
            connection.execute(
                studies_table.update()
                .where(c.study_name == study_name, c.n_claimed > 0)
                .values(n_claimed=c.n_claimed - 1, updated_at=_now())
            )

    def _study(self, record: StudyRecord) -> optuna.Study:
        study = self._studies.get(record.name)
        if study is None:
            study = optuna.load_study(study_name=record.name, storage=self.storage)
            self._studies[record.name] = study
        return study

    def claim(self, worker: WorkerIdentity, *, study_name: str | None = None) -> Claim | None:
        """Claim the next trial of a runnable study within its budget, or None when there is nothing to do."""
        for name in self._runnable(study_name):
            index = self._take_slot(name)
            if index is None:
                continue
            try:
                record = self.get(name)
                spec = record.spec
                study = self._study(record)
                study.sampler = build_sampler(spec, claim_index=index)
                study.pruner = build_pruner(spec)
                trial = study.ask(distributions(spec.space))
                # A trial handed back keeps its seed, so its rerun is the same experiment.
                seed = int(
                    trial.user_attrs.get("seed", derived_seed(spec.sampler.seed or 0, "trial", trial.number))
                )
                trial.set_user_attr("seed", seed)
                trial.set_user_attr("worker", worker.label)
                trial.set_user_attr("device", worker.device)
            except BaseException:
                self._give_slot_back(name)
                raise
            return Claim(
                study_name=name,
                spec=spec,
                study=study,
                trial=trial,
                claim_index=index,
                seed=seed,
                params=dict(trial.params),
            )
        return None

    # -- finishing a trial -----------------------------------------------------------------------

    def complete(self, claim: Claim, value: float, attrs: dict[str, Any]) -> None:
        """End the trial COMPLETE with its objective value and result attributes."""
        for key, item in attrs.items():
            claim.trial.set_user_attr(key, item)
        claim.study.tell(claim.trial, value)

    def prune(self, claim: Claim, attrs: dict[str, Any]) -> None:
        """End the trial PRUNED (its last reported value stands as its value)."""
        for key, item in attrs.items():
            claim.trial.set_user_attr(key, item)
        claim.study.tell(claim.trial, state=TrialState.PRUNED)

    def give_back(self, claim: Claim, reason: str) -> None:
        """Hand an unfinished trial back: it ends FAIL with the reason, and a copy with the same
        parameters waits for the next claim, which the budget counts once, not twice."""
        # Optuna's own retry callback does the same: a finished trial cannot go back to WAITING.
        claim.study.enqueue_trial(
            claim.params,
            user_attrs={"retry_of": claim.trial.number, "seed": claim.seed},
            skip_if_exists=False,
        )
        self.fail(claim, reason)
        self._give_slot_back(claim.study_name)

    def fail(self, claim: Claim, reason: str, attrs: dict[str, Any] | None = None) -> None:
        """End the trial FAIL with the reason recorded as the `fail_reason` user attribute."""
        for key, item in {**(attrs or {}), "fail_reason": reason[:2000]}.items():
            claim.trial.set_user_attr(key, item)
        claim.study.tell(claim.trial, state=TrialState.FAIL)
