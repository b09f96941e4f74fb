"""Optuna's RDBStorage without the ORM where workers use it most: the trial cache's reads, a pruner's attribute read and write."""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Sequence
from operator import attrgetter
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages._rdb.models import (
    NOT_FOUND_MSG,
    TrialIntermediateValueModel,
    TrialSystemAttributeModel,
)
from optuna.trial import FrozenTrial, TrialState

from studies._optuna.trial_rows import (
    intermediate_values,
    of_paused_trials,
    optuna_studies,
    params,
    set_system_attrs,
    trial_values,
    trials,
    user_attrs,
)

system_attrs = TrialSystemAttributeModel.__table__
# Trial ids per IN list: SQLAlchemy's selectinload (Optuna's reader) uses 500, within every backend's limit.
CHUNK = 500
_FINITE = TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
_NAN = TrialIntermediateValueModel.TrialIntermediateValueType.NAN
_INF_POS = TrialIntermediateValueModel.TrialIntermediateValueType.INF_POS


def _stored_float(value: float | None, kind: Any) -> float:
    # Optuna's stored_repr_to_value and stored_repr_to_intermediate_value; the enums share their names.
    if kind.name == _FINITE.name:
        assert value is not None
        return value
    if kind.name == _NAN.name:
        return float("nan")
    return float("inf") if kind.name == _INF_POS.name else float("-inf")


# A trial's row and its system attributes (a row of NULLs for none), built once: every pruner decision reads them.
_SYSTEM_ATTRS = (
    sa.select(
        trials.c.trial_id,
        system_attrs.c.trial_system_attribute_id,
        system_attrs.c.key,
        system_attrs.c.value_json,
    )
    .select_from(trials.outerjoin(system_attrs, system_attrs.c.trial_id == trials.c.trial_id))
    .where(trials.c.trial_id == sa.bindparam("trial_id"))
)


# A table's rows of some trials, by id, built once: the cache's refresh and a pruner's read run them all the time.
_BY_ID = {
    table.name: sa.select(table).where(table.c.trial_id.in_(sa.bindparam("ids", expanding=True)))
    for table in (trials, params, trial_values, user_attrs, system_attrs, intermediate_values)
}


# Every paused trial of a study and its PAUSED_ATTR row: the row's id and the rung it holds (see _paused_marks).
_PAUSED_MARKS = of_paused_trials(
    system_attrs.c.trial_id, system_attrs.c.trial_system_attribute_id, system_attrs.c.value_json
)
_STUDY = sa.select(optuna_studies.c.study_id).where(optuna_studies.c.study_id == sa.bindparam("study_id"))
_STATE = sa.select(trials.c.state).where(trials.c.trial_id == sa.bindparam("trial_id"))


class BulkReadRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose trial reads (what Optuna's cache calls to fill and refresh), and a pruner's read and write
    of a running trial's system attributes, skip the ORM.

    Every sampler reads a study's trials through Optuna's cache, which fills itself with
    RDBStorage._get_trials: ORM objects for each trial, parameter, value and attribute, and each
    parameter's distribution parsed from JSON again. At 5,000 trials that took about 3 s of a
    worker's CPU on its first claim, 0.6 ms a trial. The same rows read as plain rows, each
    distinct distribution parsed once, build the same FrozenTrials about ten times faster.
    tests/integration/test_trial_reads.py compares the two readers trial by trial, and the attribute read
    and write with Optuna's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Paused trials as last built, by study and trial id: what would change if they had run since
        # (_paused_marks), and the trial.
        self._paused: dict[int, dict[int, tuple[tuple[Any, ...], FrozenTrial]]] = {}

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        included = {i for i in included_trial_ids if i <= trial_id_greater_than}
        with self.engine.connect() as connection:
            found = connection.execute(_STUDY, {"study_id": study_id}).first()
            if found is None:
                self._paused.pop(study_id, None)
                raise KeyError(NOT_FOUND_MSG)
            # Optuna's cache reads every unfinished trial again at each refresh, and under an asha pruner most of
            # a study's trials wait paused: a paused trial that has not run since it was last built is reused,
            # its row not read again.
            kept: dict[int, FrozenTrial] = {}
            marks: dict[int, tuple[Any, ...]] = {}
            memo: dict[int, tuple[tuple[Any, ...], FrozenTrial]] = {}
            if states is None or TrialState.WAITING in states:
                marks = _paused_marks(connection, study_id)
                memo = self._paused.setdefault(study_id, {})
                for trial_id in [i for i in memo if i in included or i > trial_id_greater_than]:
                    mark, trial = memo[trial_id]
                    if marks.get(trial_id) == mark:
                        kept[trial_id] = trial
                    else:
                        del memo[trial_id]
            where = trials.c.study_id == study_id
            if states is not None:
                assert isinstance(states, Iterable)
                where = sa.and_(where, trials.c.state.in_(list(states)))
            if trial_id_greater_than > -1:
                after: sa.ColumnElement[bool] = trials.c.trial_id > trial_id_greater_than
                to_read = included.difference(kept)
                if to_read:
                    after = sa.or_(trials.c.trial_id.in_(sorted(to_read)), after)
                where = sa.and_(where, after)
            kept_after = sorted(i for i in kept if i > trial_id_greater_than)
            if kept_after:
                where = sa.and_(where, trials.c.trial_id.not_in(kept_after))
            rows = connection.execute(sa.select(trials).where(where).order_by(trials.c.trial_id)).all()
            children = _children(connection, [row.trial_id for row in rows])
        built = dict(zip((row.trial_id for row in rows), _frozen_trials(rows, children), strict=True))
        # A trial paused after the marks were read has none yet: it is kept from the next refresh on.
        for row in rows:
            if row.state == TrialState.WAITING and row.trial_id in marks:
                memo[row.trial_id] = (marks[row.trial_id], built[row.trial_id])
        return [trial for _, trial in sorted({**kept, **built}.items())]

    def forget_paused_all_but(self, study_ids: Container[int]) -> None:
        """Drop the paused trials kept of every study but those (a worker's runnable ones)."""
        for study_id in list(self._paused):
            if study_id not in study_ids:
                self._paused.pop(study_id, None)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        # Every pruner decision reads its running trial's system attributes through this (Optuna's cache keeps
        # only finished trials): Optuna's ORM read of one trial, lazy-loading each child table, cost a worker
        # about 4.6 ms of CPU an epoch on SQLite; the same six queries as plain rows, about 2.9 ms.
        with self.engine.connect() as connection:
            found = trials_by_id(connection, [trial_id])
        if trial_id not in found:
            raise KeyError(NOT_FOUND_MSG)
        return found[trial_id]

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        # What Hyperband and successive halving read of the running trial at each pruner decision. Optuna's
        # storages answer it with the whole trial, six queries; the trial's row and its system attributes
        # are one.
        with self.engine.connect() as connection:
            rows = connection.execute(_SYSTEM_ATTRS, {"trial_id": trial_id}).all()
        if not rows:
            raise KeyError(NOT_FOUND_MSG)
        found = sorted(
            (row for row in rows if row.key is not None), key=attrgetter("trial_system_attribute_id")
        )
        return {row.key: json.loads(row.value_json) for row in found}

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        # What successive halving (and so Hyperband) writes at each rung a trial passes. Optuna's goes through
        # its ORM session, about 1.9 ms of a worker's CPU each; the same check (KeyError for no trial,
        # UpdateFinishedTrialError for a finished one) and upsert as two plain statements.
        with self.engine.begin() as connection:
            state = connection.execute(_STATE, {"trial_id": trial_id}).scalar()
            if state is None:
                raise KeyError(NOT_FOUND_MSG)
            self.check_trial_is_updatable(trial_id, state)
            set_system_attrs(connection, trial_id, {key: value})


def trials_by_id(connection: sa.Connection, trial_ids: Sequence[int]) -> dict[int, FrozenTrial]:
    """The trials of those ids, of any studies, by id, as Optuna's reader builds them: six queries for up to
    CHUNK trials."""
    ids = sorted(set(trial_ids))
    rows = [
        row
        for start in range(0, len(ids), CHUNK)
        for row in connection.execute(_BY_ID[trials.name], {"ids": ids[start : start + CHUNK]})
    ]
    rows.sort(key=attrgetter("trial_id"))
    built = _frozen_trials(rows, _children(connection, [row.trial_id for row in rows]))
    return {row.trial_id: trial for row, trial in zip(rows, built, strict=True)}


def _paused_marks(connection: sa.Connection, study_id: int) -> dict[int, tuple[Any, ...]]:
    """The study's paused trials, each with its PAUSED_ATTR row's id and value (the rung it waits at), in one query.

    A paused trial changes nothing while it waits. It changes only once promoted (its PAUSED_ATTR row deleted,
    tunefleet:promoted_from written), and if it is paused again that is at a higher rung, in a new row: a trial
    whose mark is the one it was built with has not run since."""
    return {row[0]: tuple(row[1:]) for row in connection.execute(_PAUSED_MARKS, {"study_id": study_id})}


def _children(connection: sa.Connection, ids: list[int]) -> dict[str, list[Any]]:
    """The parameter, value and attribute rows of the trials of those ids, each table's in its id order."""
    # Children by explicit ids, a chunk at a time, as Optuna's selectinload does: each an
    # index lookup, where a subquery let PostgreSQL's planner scan a whole table of every study.
    # Sorted here, not by an ORDER BY: with statistics behind a fast-growing table, the
    # sort's estimated cost made PostgreSQL plan a parallel scan for a few trials' rows,
    # several ms and two background processes for each claim's refresh of the cache.
    children: dict[str, list[Any]] = {}
    for table, key in (
        (params, "param_id"),
        (trial_values, "trial_value_id"),
        (user_attrs, "trial_user_attribute_id"),
        (system_attrs, "trial_system_attribute_id"),
        (intermediate_values, "trial_intermediate_value_id"),
    ):
        rows_of_table = [
            child
            for start in range(0, len(ids), CHUNK)
            for child in connection.execute(_BY_ID[table.name], {"ids": ids[start : start + CHUNK]})
        ]
        rows_of_table.sort(key=attrgetter(key))
        children[table.name] = rows_of_table
    return children


def _frozen_trials(rows: Sequence[Any], children: dict[str, list[Any]]) -> list[FrozenTrial]:
    """FrozenTrials as Optuna's _build_frozen_trial_from_trial_model makes them, from plain rows."""
    by_id: dict[int, dict[str, Any]] = {
        row.trial_id: {
            "params": {},
            "distributions": {},
            "values": {},
            "user_attrs": {},
            "system_attrs": {},
            "intermediate_values": {},
        }
        for row in rows
    }
    parsed: dict[str, BaseDistribution] = {}
    for p in children[params.name]:
        distribution = parsed.get(p.distribution_json)
        if distribution is None:
            distribution = parsed[p.distribution_json] = json_to_distribution(p.distribution_json)
        parts = by_id[p.trial_id]
        parts["params"][p.param_name] = distribution.to_external_repr(p.param_value)
        parts["distributions"][p.param_name] = distribution
    for v in children[trial_values.name]:
        by_id[v.trial_id]["values"][v.objective] = _stored_float(v.value, v.value_type)
    for a in children[user_attrs.name]:
        by_id[a.trial_id]["user_attrs"][a.key] = json.loads(a.value_json)
    for a in children[system_attrs.name]:
        by_id[a.trial_id]["system_attrs"][a.key] = json.loads(a.value_json)
    for i in children[intermediate_values.name]:
        by_id[i.trial_id]["intermediate_values"][i.step] = _stored_float(
            i.intermediate_value, i.intermediate_value_type
        )
    out = []
    for row in rows:
        parts = by_id[row.trial_id]
        values = parts.pop("values")
        out.append(
            FrozenTrial(
                number=row.number,
                state=row.state,
                value=None,
                values=[values[k] for k in range(len(values))] if values else None,
                datetime_start=row.datetime_start,
                datetime_complete=row.datetime_complete,
                trial_id=row.trial_id,
                **parts,
            )
        )
    return out
