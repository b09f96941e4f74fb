"""The study catalog: create, read, list, page, count, control and delete studies and read their trials."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

# Optuna's table models: counting and paging trials in SQL beats loading tens of thousands of them.
from studies._optuna import study_page
from studies._optuna.models import StudyModel, TrialModel
from studies._optuna.trial_reads import trials_by_id
from studies.checkpoints import CheckpointRef, held_checkpoints
from studies.errors import InvalidStudyState, StudyAlreadyExists, StudyNotFound, TrialNotFound
from studies.records import (
    DATA_WARNINGS_ATTR,
    PAUSED,
    TRIAL_STATE_NAMES,
    FinishedFacts,
    StudyProgress,
    StudyRecord,
    StudySummary,
    record_from_row,
)
from studies.sampling import grid_points
from studies.schema import upgrade_store
from studies.spec import StudySpec
from studies.states import SETTABLE_STUDY_STATES, StudyState
from studies.tables import studies_table, utcnow

# Loaded Optuna studies a process keeps at most (StudyCatalog._study), the least recently used let go first. A
# worker lets go of those it can no longer claim from (claim.py) and claims from the runnable ones in turn, so the
# bound is far above the studies a fleet runs at once.
KEPT_STUDIES = 256

# The states a trial ends in; /metrics reports these trials' seconds.
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class StudyCatalog:
    """Studies in the shared store, on one storage and its one pool: what there is and in which state."""

    def __init__(self, storage: RDBStorage) -> None:
        self.storage = storage
        self.engine: sa.Engine = storage.engine
        upgrade_store(self.engine)
        # Loaded Optuna studies by name, the most recently used last (a claim needs one each time, and each holds
        # Optuna's cache of its trials): at most KEPT_STUDIES, so a process that lives through many studies
        # (a service, a long-lived worker) does not hold them all.
        self._studies: OrderedDict[str, optuna.Study] = OrderedDict()

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as connection:
            yield connection

    def create(
        self, spec: StudySpec, *, state: StudyState = StudyState.RUNNING, state_reason: str | None = None
    ) -> StudyRecord:
        """Create the Optuna study and persist its spec; StudyAlreadyExists if the name is taken.

        `state` stopped holds claims back until the caller resumes it (warm start queues its trials first).
        """
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
            # One direction per objective, in the order of a trial's values.
            study = optuna.create_study(
                study_name=spec.name, storage=self.storage, directions=list(spec.objective.directions)
            )
        except optuna.exceptions.DuplicatedStudyError as error:
            raise StudyAlreadyExists(spec.name) from error
        if spec.objective.several:
            # optuna-dashboard (and Optuna's plots) name each objective by its metric instead of 0, 1, 2.
            study.set_metric_names(list(spec.objective.names))
        now = utcnow()
        deadline = now + timedelta(seconds=spec.budget.timeout_s) if spec.budget.timeout_s else None
        try:
            with self._begin() as connection:
                connection.execute(
                    studies_table.insert().values(
                        study_name=spec.name,
                        optuna_study_id=study._study_id,
                        spec=spec.model_dump(mode="json"),
                        state=state,
                        state_reason=state_reason,
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
        return record_from_row(row)

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
        return [record_from_row(row) for row in rows]

    def study_page(self, *, offset: int = 0, limit: int = 100) -> tuple[int, list[StudyRecord]]:
        """A page of the studies, newest first, and how many there are in all."""
        query = self._studies_newest_first()
        with self._begin() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
            rows = connection.execute(query.offset(offset).limit(limit)).all()
        return int(total), [record_from_row(row) for row in rows]

    def trial_counts(self, record: StudyRecord) -> dict[str, int]:
        """How many trials the study has in each state (lower-case names), zeros included."""
        # One GROUP BY instead of loading every trial: a study may hold tens of thousands.
        with self._begin() as connection:
            stored = study_page.trial_counts(connection, [record.optuna_study_id])
        return _named_counts(stored[record.optuna_study_id])

    def progress(self, record: StudyRecord) -> StudyProgress:
        """The study's derived state, trial counts and best trial."""
        counts = self.trial_counts(record)
        best: FrozenTrial | None = None
        # A study of several objectives has a front, not one best trial (pareto_front).
        if not record.spec.objective.several:
            try:
                best = self.storage.get_best_trial(record.optuna_study_id)
            except ValueError:
                best = None
        return StudyProgress(
            record=record, state=self._derived_state(record, counts), trial_counts=counts, best_trial=best
        )

    def summaries(
        self, records: Sequence[StudyRecord], warnings_limit: int = 50, study_attrs: Sequence[str] = ()
    ) -> list[StudySummary]:
        """Each study's progress, data warnings, (several objectives) Pareto front size and the study user
        attributes named in study_attrs, as progress, data_warnings and pareto_front give them one study at a
        time: a list of studies in a fixed number of queries, however many it holds, without loading the trials
        of a front."""
        ids = [record.optuna_study_id for record in records]
        single = {
            r.optuna_study_id: r.spec.objective.directions[0] for r in records if not r.spec.objective.several
        }
        several = {
            r.optuna_study_id: r.spec.objective.directions for r in records if r.spec.objective.several
        }
        with self._begin() as connection:
            counts = study_page.trial_counts(connection, ids)
            best_ids = study_page.best_trial_ids(connection, single)
            best = trials_by_id(connection, list(best_ids.values()))
            warnings = study_page.user_attr_values(connection, ids, DATA_WARNINGS_ATTR)
            fronts = study_page.pareto_front_sizes(connection, several)
            attrs = {key: study_page.study_user_attr(connection, ids, key) for key in study_attrs}
        summaries = []
        for record in records:
            study_id = record.optuna_study_id
            named = _named_counts(counts[study_id])
            best_id = best_ids.get(study_id)
            progress = StudyProgress(
                record=record,
                state=self._derived_state(record, named),
                trial_counts=named,
                best_trial=best[best_id] if best_id is not None else None,
            )
            summaries.append(
                StudySummary(
                    progress,
                    _distinct_warnings(warnings[study_id], warnings_limit),
                    fronts.get(study_id),
                    {key: found[study_id] for key, found in attrs.items() if study_id in found},
                )
            )
        return summaries

    def finished_trial_facts(self, records: Sequence[StudyRecord]) -> dict[int, FinishedFacts]:
        """What /metrics reports of each study's finished trials, by Optuna study id: their wall seconds, their
        claim seconds, and the reasons failed trials recorded. Three queries in all."""
        ids = [record.optuna_study_id for record in records]
        with self._begin() as connection:
            durations = study_page.finished_durations(connection, ids, FINISHED_STATES)
            claims = study_page.trial_user_attr(connection, ids, "claim_s", FINISHED_STATES)
            reasons = study_page.trial_user_attr(connection, ids, "fail_reason", (TrialState.FAIL,))
        return {
            study_id: FinishedFacts(
                durations_s=durations[study_id],
                claims_s=[float(c) for c in claims[study_id] if isinstance(c, int | float)],
                fail_reasons=Counter(str(reason) for reason in reasons[study_id]),
            )
            for study_id in ids
        }

    def pareto_front(self, record: StudyRecord) -> list[FrozenTrial]:
        """The study's feasible non-dominated completed trials by number (for one objective: its best trials)."""
        study = self._study(record)
        # Study.best_trials leaves out trials that break a constraint whenever any trial stored one.
        return sorted(study.best_trials, key=lambda trial: trial.number)

    def data_warnings(self, record: StudyRecord, limit: int = 50) -> list[str]:
        """What workers found wrong with the study's data (its trials' data_warnings), each once, oldest first."""
        with self._begin() as connection:
            stored = study_page.user_attr_values(connection, [record.optuna_study_id], DATA_WARNINGS_ATTR)
        return _distinct_warnings(stored[record.optuna_study_id], limit)

    @staticmethod
    def _derived_state(record: StudyRecord, counts: dict[str, int]) -> StudyState:
        active = counts["running"] + counts["waiting"] + counts[PAUSED]
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

    def _study(self, record: StudyRecord) -> optuna.Study:
        study = self._studies.get(record.name)
        # A study deleted and created again under the same name has a new id: drop the stale one.
        if study is None or study._study_id != record.optuna_study_id:
            study = optuna.load_study(study_name=record.name, storage=self.storage)
        # Last, as the most recently used (a pop and a set: another thread's claim may let it go meanwhile).
        self._studies.pop(record.name, None)
        self._studies[record.name] = study
        while len(self._studies) > KEPT_STUDIES:
            self._studies.popitem(last=False)
        return study

    def reset_session(self) -> None:
        """Drop this thread's Optuna session: after a dropped connection it can be stuck mid-rollback."""
        self.storage.scoped_session.remove()

    def delete(self, study_name: str) -> list[CheckpointRef]:
        """Delete a study that is not running (stopped, failed or completed): its row, then its Optuna study.
        Returns the checkpoints its trials still held (a paused trial's, before the reaper's sweep ended it),
        which nothing resumes from any more: the caller deletes them from the artifact store.

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
            checkpoints = held_checkpoints(connection, record.optuna_study_id)
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
        # Already gone when deleted through the dashboard or the optuna CLI.
        with contextlib.suppress(KeyError):
            self.storage.delete_study(record.optuna_study_id)
        return checkpoints


def _named_counts(stored: study_page.TrialCounts) -> dict[str, int]:
    # "waiting" is the queue; a paused trial (pruner asha) waits for a promotion and is counted as "paused".
    counts = dict.fromkeys([*TRIAL_STATE_NAMES.values(), PAUSED], 0)
    for state, count in stored.by_state.items():
        counts[TRIAL_STATE_NAMES[state]] = count
    counts[PAUSED] = stored.paused
    return counts


def _distinct_warnings(stored: list[str], limit: int) -> list[str]:
    warnings: dict[str, None] = {}
    for value_json in stored:
        # Every trial on the same data records the same list: one entry per distinct warning.
        listed = json.loads(value_json)
        for warning in listed if isinstance(listed, list) else [listed]:
            warnings[str(warning)] = None
    return list(warnings)[:limit]
