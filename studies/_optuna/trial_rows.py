"""A claimed trial's rows in Optuna's tables, each step of its life written in one statement batch."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages._rdb.models import (
    StudyModel,
    TrialIntermediateValueModel,
    TrialModel,
    TrialParamModel,
    TrialSystemAttributeModel,
    TrialUserAttributeModel,
    TrialValueModel,
)
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from optuna.trial import TrialState

# Optuna's RDBStorage writes a trial in one transaction per parameter and per attribute, each
# re-reading the trial row; a claimed trial's life was 23 transactions. These helpers write the
# same rows, through Optuna's own table models, inside one transaction the caller holds, so that a
# claim is one transaction and a trial's end is one more. tests/integration/test_trial_rows.py
# reads every row back through Optuna's storage API.
trials = TrialModel.__table__
params = TrialParamModel.__table__
user_attrs = TrialUserAttributeModel.__table__
system_attrs = TrialSystemAttributeModel.__table__
trial_values = TrialValueModel.__table__
intermediate_values = TrialIntermediateValueModel.__table__
optuna_studies = StudyModel.__table__


# The system attribute of a paused trial (studies.promotion): the epoch it waits at. Only WAITING trials carry it.
PAUSED_ATTR = "tunefleet:paused_at"


def of_paused_trials(*columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """Those columns of a study's paused trials (bound: study_id), each joined to its PAUSED_ATTR row."""
    return (
        sa.select(*columns)
        .select_from(trials.join(system_attrs, system_attrs.c.trial_id == trials.c.trial_id))
        .where(
            trials.c.study_id == sa.bindparam("study_id"),
            trials.c.state == TrialState.WAITING,
            system_attrs.c.key == PAUSED_ATTR,
        )
    )


@dataclass(frozen=True)
class NewTrial:
    """A trial row just made RUNNING: a new one, or one taken from the study's queue."""

    trial_id: int
    number: int
    datetime_start: datetime
    from_queue: bool


def take_queued_trial(
    connection: sa.Connection, study_id: int, now: datetime, *, skip: sa.ColumnElement[bool] | None = None
) -> NewTrial | None:
    """Make the study's oldest WAITING trial (handed back, retried or enqueued) RUNNING, if it has one.

    skip: a condition on the trial's row for WAITING trials that are not queued (paused ones), left alone.
    """
    while True:
        # By number, the same order as by id within a study: ORDER BY the primary key with LIMIT 1
        # let PostgreSQL walk the whole store's trials in id order looking for this study's WAITING
        # one, and a study has none most of the time, so every claim scanned every trial of every
        # study while holding the budget's row lock. No index orders by number, so the study's own
        # index is used, whatever else the store holds.
        query = sa.select(trials.c.trial_id, trials.c.number).where(
            trials.c.study_id == study_id, trials.c.state == TrialState.WAITING
        )
        if skip is not None:
            query = query.where(~skip)
        waiting = connection.execute(query.order_by(trials.c.number).limit(1)).first()
        if waiting is None:
            return None
        # Conditional on WAITING, so of two racing claims exactly one takes it.
        taken = connection.execute(
            trials.update()
            .where(trials.c.trial_id == waiting.trial_id, trials.c.state == TrialState.WAITING)
            .values(state=TrialState.RUNNING, datetime_start=now)
        ).rowcount
        if taken:
            return NewTrial(int(waiting.trial_id), int(waiting.number), now, from_queue=True)


_LOCK_STUDY = (
    sa.select(optuna_studies.c.study_id)
    .where(optuna_studies.c.study_id == sa.bindparam("study_id"))
    .with_for_update()
)


def insert_running_trial(connection: sa.Connection, study_id: int, now: datetime) -> NewTrial:
    """A new RUNNING trial numbered as Optuna numbers it: by the study's trials made before it."""
    # Optuna locks the study row while it numbers a trial; so do we, so that trials made through
    # Optuna (the dashboard, enqueue_trial) and by claims never share a number.
    connection.execute(_LOCK_STUDY, {"study_id": study_id})
    trial_id = connection.execute(
        trials.insert()
        .values(study_id=study_id, number=None, state=TrialState.RUNNING, datetime_start=now)
        .returning(trials.c.trial_id)
    ).scalar_one()
    earlier = (
        sa.select(sa.func.count(trials.c.trial_id))
        .where(trials.c.study_id == study_id, trials.c.trial_id < trial_id)
        .scalar_subquery()
    )
    number = connection.execute(
        trials.update().where(trials.c.trial_id == trial_id).values(number=earlier).returning(trials.c.number)
    ).scalar_one()
    return NewTrial(int(trial_id), int(number), now, from_queue=False)


def _upsert(connection: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], key: str) -> None:
    # One statement run for every row (the driver's executemany).
    connection.execute(_upsert_statement(connection.dialect.name, table, key, ("value_json",)), rows)


@functools.cache
def _upsert_statement(dialect: str, table: sa.Table, key: str, updated: tuple[str, ...]) -> Any:
    """INSERT ... ON CONFLICT (trial_id, key) DO UPDATE of the updated columns, in the dialect's spelling: the
    upsert Optuna itself uses on both backends.

    Built once per table and kept (a statement is immutable): built for each write, with the rows' values
    written into its VALUES, it cost SQLAlchemy more than running it did, about 2 ms of a worker's CPU for
    each write of a trial's attributes.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    else:
        raise NotImplementedError(f"tunefleet's store runs on PostgreSQL or SQLite, not {dialect}")
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=[table.c.trial_id, table.c[key]],
        set_={column: statement.excluded[column] for column in updated},
    )


def set_user_attrs(connection: sa.Connection, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """Set (or replace) several user attributes of a trial."""
    if attrs:
        rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
        _upsert(connection, user_attrs, rows, "key")


def set_constraints(connection: sa.Connection, trial_id: int, constraints: Mapping[str, float]) -> None:
    """Store a trial's constraint values by name where Trial.set_constraint stores them (FrozenTrial.constraints
    and Optuna's samplers read them there); a value above 0 breaks its constraint."""
    if constraints:
        rows = [
            {
                "trial_id": trial_id,
                "key": f"{_CONSTRAINTS_KEY}:{name}",
                "value_json": json.dumps(float(value)),
            }
            for name, value in constraints.items()
        ]
        _upsert(connection, system_attrs, rows, "key")


def set_system_attrs(connection: sa.Connection, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """Set (or replace) several system attributes of a trial."""
    if attrs:
        rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
        _upsert(connection, system_attrs, rows, "key")


def system_attr(connection: sa.Connection, trial_id: int, key: str) -> Any:
    """One system attribute of a trial, or None."""
    stored = connection.execute(
        sa.select(system_attrs.c.value_json).where(
            system_attrs.c.trial_id == trial_id, system_attrs.c.key == key
        )
    ).scalar()
    return None if stored is None else json.loads(stored)


def user_attr(connection: sa.Connection, trial_id: int, key: str) -> Any:
    """One user attribute of a trial, or None."""
    stored = connection.execute(
        sa.select(user_attrs.c.value_json).where(user_attrs.c.trial_id == trial_id, user_attrs.c.key == key)
    ).scalar()
    return None if stored is None else json.loads(stored)


@dataclass(frozen=True)
class LockedTrial:
    """A trial's row as locked for a transaction: its study, number and state, and the worker its claim tagged."""

    study_id: int
    number: int
    state: TrialState
    worker_id: str | None


# The claim's worker tag in the same statement: on SQLite a deleted trial's id (and its study's) goes to the next
# one made, and only the tag tells a claim's trial from a stranger under its id. Built once: every report locks.
_LOCK = (
    sa.select(
        trials.c.study_id,
        trials.c.number,
        trials.c.state,
        sa.select(user_attrs.c.value_json)
        .where(user_attrs.c.trial_id == trials.c.trial_id, user_attrs.c.key == "worker_id")
        .scalar_subquery()
        .label("worker_id"),
    )
    .where(trials.c.trial_id == sa.bindparam("trial_id"))
    .with_for_update()
)
_LOCK_RUNNING = (
    sa.select(trials.c.state).where(trials.c.trial_id == sa.bindparam("trial_id")).with_for_update()
)


def lock_study(connection: sa.Connection, study_id: int) -> None:
    """Lock the study's row and its trials' rows for this transaction: a write that would add a row under any of
    them (a trial, an epoch's value, a heartbeat) waits for the transaction's end."""
    connection.execute(_LOCK_STUDY, {"study_id": study_id})
    connection.execute(
        sa.select(trials.c.trial_id)
        .where(trials.c.study_id == study_id)
        .order_by(trials.c.trial_id)
        .with_for_update()
    )


def lock(connection: sa.Connection, trial_id: int) -> LockedTrial | None:
    """Lock the trial's row for this transaction and say whose it is; None when there is no such row."""
    row = connection.execute(_LOCK, {"trial_id": trial_id}).first()
    if row is None or row.study_id is None or row.number is None:
        return None
    worker_id = None if row.worker_id is None else json.loads(row.worker_id)
    return LockedTrial(int(row.study_id), int(row.number), TrialState(row.state), worker_id)


def lock_running(connection: sa.Connection, trial_id: int) -> None:
    """Lock the trial's row for this transaction; UpdateFinishedTrialError unless it is RUNNING."""
    state = connection.execute(_LOCK_RUNNING, {"trial_id": trial_id}).scalar()
    if state is None:
        raise KeyError(f"no trial with id {trial_id}")
    if state != TrialState.RUNNING:
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"trial {trial_id} is {state.name}, not RUNNING: it cannot be updated"
        )


def add_params(
    connection: sa.Connection,
    trial_id: int,
    values: Mapping[str, Any],
    distributions: Mapping[str, BaseDistribution],
) -> None:
    """Record the trial's parameters that it does not have yet (a retried write adds nothing twice)."""
    present = set(
        connection.execute(sa.select(params.c.param_name).where(params.c.trial_id == trial_id)).scalars()
    )
    rows = [
        {
            "trial_id": trial_id,
            "param_name": name,
            "param_value": distributions[name].to_internal_repr(value),
            "distribution_json": distribution_to_json(distributions[name]),
        }
        for name, value in values.items()
        if name not in present
    ]
    if rows:
        connection.execute(params.insert(), rows)


def finish(
    connection: sa.Connection,
    trial_id: int,
    state: TrialState,
    value: float | Sequence[float] | None,
    now: datetime,
) -> None:
    """End a RUNNING trial (locked by lock_running in this transaction) with its state and value, or its
    values, one per objective in the study's order (a row each, as Optuna stores them)."""
    values = [] if value is None else [value] if isinstance(value, int | float) else list(value)
    rows = []
    for objective, one in enumerate(values):
        stored, value_type = TrialValueModel.value_to_stored_repr(float(one))
        rows.append({"trial_id": trial_id, "objective": objective, "value": stored, "value_type": value_type})
    if rows:
        connection.execute(trial_values.insert(), rows)
    connection.execute(
        trials.update().where(trials.c.trial_id == trial_id).values(state=state, datetime_complete=now)
    )


def set_intermediate_value(connection: sa.Connection, trial_id: int, step: int, value: float) -> None:
    """Record (or replace) the trial's value at step, as Trial.report stores it."""
    stored, value_type = TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
    row = {
        "trial_id": trial_id,
        "step": step,
        "intermediate_value": stored,
        "intermediate_value_type": value_type,
    }
    updated = ("intermediate_value", "intermediate_value_type")
    connection.execute(_upsert_statement(connection.dialect.name, intermediate_values, "step", updated), row)


def requeue(connection: sa.Connection, trial_id: int) -> None:
    """Put a RUNNING trial back in the queue (WAITING), its per-epoch values cleared for the rerun."""
    connection.execute(intermediate_values.delete().where(intermediate_values.c.trial_id == trial_id))
    connection.execute(trials.update().where(trials.c.trial_id == trial_id).values(state=TrialState.WAITING))
