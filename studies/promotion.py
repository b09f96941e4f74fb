"""ASHA's promotion: which epochs are rungs, which trials a rung lets on, and the paused trials a claim resumes."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from optuna.trial import TrialState

from studies._optuna.models import TrialIntermediateValueModel, TrialValueModel
from studies._optuna.trial_rows import (
    PAUSED_ATTR,
    intermediate_values,
    of_paused_trials,
    set_system_attrs,
    system_attrs,
    trial_values,
    trials,
)

__all__ = ["PAUSED_ATTR", "PROMOTED_ATTR"]

# The system attribute of a paused trial, PAUSED_ATTR: the epoch (a rung) it is paused after (WAITING trials only).
# The system attribute of a promoted trial: the highest rung a claim promoted it from. A rerun of its epochs
# (a hand-back, a retry) passes that rung and those below it without asking again.
PROMOTED_ATTR = "tunefleet:promoted_from"


@dataclass(frozen=True)
class Paused:
    """A paused trial: its id, number and the rung it waits at."""

    trial_id: int
    number: int
    epoch: int


# Built once, as every claim of an asha study runs them.
_PAUSED = of_paused_trials(trials.c.trial_id, trials.c.number, system_attrs.c.value_json).order_by(
    trials.c.number
)
_TYPE = TrialIntermediateValueModel.TrialIntermediateValueType
_PAUSED_RUNGS = of_paused_trials(system_attrs.c.value_json).distinct()


@functools.cache
def _best_share(minimize: bool) -> sa.Subquery:
    """The trials in the best share of a rung (bound: study_id, epoch, reduction_factor), each with its place.

    Ranked in the store, so that a claim does not carry every value at the rung into Python (a study of thousands
    of trials has thousands at its first rung): by value in the direction, ties to the lower number (the earlier
    trial), NaN last; of the n trials that reported at the rung and have not failed, the best n // reduction_factor
    go on, and at least the best one, as Optuna's SuccessiveHalvingPruner counts them (the first trial to reach a
    rung goes on, so a small budget still trains some trial fully).
    """
    t, v = trials.c, intermediate_values.c
    kind = v.intermediate_value_type
    # Non-finite values are stored as NULL with their kind: order the kinds, then the finite values.
    first, last = (_TYPE.INF_NEG, _TYPE.INF_POS) if minimize else (_TYPE.INF_POS, _TYPE.INF_NEG)
    kinds = sa.case((kind == first, 0), (kind == _TYPE.FINITE, 1), (kind == last, 2), else_=3)
    value = v.intermediate_value.asc() if minimize else v.intermediate_value.desc()
    ranked = (
        sa.select(
            t.trial_id,
            t.number,
            t.state,
            sa.func.row_number().over(order_by=(kinds, value, t.number)).label("place"),
            sa.func.count().over().label("reached"),
        )
        .join(intermediate_values, v.trial_id == t.trial_id)
        .where(
            t.study_id == sa.bindparam("study_id"),
            t.state != TrialState.FAIL,
            v.step == sa.bindparam("epoch"),
        )
        .subquery()
    )
    factor = sa.bindparam("reduction_factor", type_=sa.Integer)
    # place <= n // factor, for positive integers, without a division each dialect rounds its own way.
    return (
        sa.select(ranked)
        .where(sa.or_(ranked.c.place == 1, ranked.c.place * factor <= ranked.c.reached))
        .subquery()
    )


@functools.cache
def _passes(minimize: bool) -> sa.Select[Any]:
    best = _best_share(minimize)
    return sa.select(best.c.place).where(best.c.number == sa.bindparam("number"))


@functools.cache
def _promotable_at(minimize: bool) -> sa.Select[Any]:
    """The paused trials in a rung's best share, best first, with the rung each waits at."""
    best = _best_share(minimize)
    return (
        sa.select(best.c.trial_id, best.c.number, system_attrs.c.value_json)
        .join(system_attrs, system_attrs.c.trial_id == best.c.trial_id)
        .where(best.c.state == TrialState.WAITING, system_attrs.c.key == PAUSED_ATTR)
        .order_by(best.c.place)
    )


def passes_rung(
    connection: sa.Connection,
    study_id: int,
    epoch: int,
    number: int,
    reduction_factor: int,
    *,
    minimize: bool,
) -> bool:
    """Whether the study's trial of that number, having reported at the rung, is in the rung's best share."""
    bound = {"study_id": study_id, "epoch": epoch, "reduction_factor": reduction_factor, "number": number}
    return connection.execute(_passes(minimize), bound).first() is not None


def paused_trials(connection: sa.Connection, study_id: int) -> list[Paused]:
    """The study's paused trials (WAITING with a paused rung), by number."""
    rows = connection.execute(_PAUSED, {"study_id": study_id}).all()
    return [Paused(int(row.trial_id), int(row.number), int(json.loads(row.value_json))) for row in rows]


def has_paused_trials(study_id: sa.ColumnElement[Any], *, correlate: sa.FromClause) -> sa.ColumnElement[bool]:
    """Whether the study of that id column (of a table in the enclosing query) has paused trials."""
    return (
        sa.exists()
        .where(trials.c.study_id == study_id, trials.c.state == TrialState.WAITING, is_paused())
        .correlate(correlate)
    )


def is_paused() -> sa.ColumnElement[bool]:
    """Whether the trial row of `trials` in the enclosing query is paused (for WHERE clauses)."""
    return (
        sa.exists()
        .where(system_attrs.c.trial_id == trials.c.trial_id, system_attrs.c.key == PAUSED_ATTR)
        .correlate(trials)
    )


def promotable(
    connection: sa.Connection, study_id: int, reduction_factor: int, *, minimize: bool
) -> list[Paused]:
    """The study's paused trials that are now in the best share of their rung: the highest rung first, then the
    best value (as ASHA promotes: the trials nearest the full budget go on first)."""
    rungs = sorted(
        (
            int(json.loads(value))
            for value in connection.execute(_PAUSED_RUNGS, {"study_id": study_id}).scalars()
        ),
        reverse=True,
    )
    found: list[Paused] = []
    for epoch in rungs:
        bound = {"study_id": study_id, "epoch": epoch, "reduction_factor": reduction_factor}
        rows = connection.execute(_promotable_at(minimize), bound).all()
        # A trial paused at a higher rung reported at this one too: it waits at that one, not here.
        found.extend(
            Paused(int(row.trial_id), int(row.number), epoch)
            for row in rows
            if json.loads(row.value_json) == epoch
        )
    return found


def _unpause(connection: sa.Connection, paused: Paused, **values: Any) -> bool:
    """Move a paused trial out of WAITING (to the state and times in values), no longer paused; False if another
    claim or the end of the study moved it first."""
    moved = connection.execute(
        trials.update()
        .where(trials.c.trial_id == paused.trial_id, trials.c.state == TrialState.WAITING)
        .values(**values)
    ).rowcount
    if moved:
        connection.execute(
            system_attrs.delete().where(
                system_attrs.c.trial_id == paused.trial_id, system_attrs.c.key == PAUSED_ATTR
            )
        )
    return bool(moved)


def take_paused(connection: sa.Connection, paused: Paused) -> bool:
    """Make a paused trial RUNNING again, promoted from its rung; False if another claim (or the end of the study)
    took it first. Its start time stays the first run's, so its duration spans the pause."""
    if not _unpause(connection, paused, state=TrialState.RUNNING):
        return False
    set_system_attrs(connection, paused.trial_id, {PROMOTED_ATTR: paused.epoch})
    return True


def pause_trial(connection: sa.Connection, trial_id: int, epoch: int) -> None:
    """Make a RUNNING trial (locked in this transaction) WAITING at the rung, its per-epoch values kept."""
    set_system_attrs(connection, trial_id, {PAUSED_ATTR: epoch})
    connection.execute(trials.update().where(trials.c.trial_id == trial_id).values(state=TrialState.WAITING))


def active_trials(connection: sa.Connection, study_id: int) -> int:
    """How many of the study's trials run or wait to run: RUNNING ones and queued (not paused) WAITING ones."""
    return int(
        connection.execute(
            sa.select(sa.func.count())
            .select_from(trials)
            .where(
                trials.c.study_id == study_id,
                sa.or_(
                    trials.c.state == TrialState.RUNNING,
                    sa.and_(trials.c.state == TrialState.WAITING, ~is_paused()),
                ),
            )
        ).scalar_one()
    )


def end_paused(connection: sa.Connection, paused: Paused, now: datetime) -> float | None:
    """End a paused trial PRUNED, its value its last reported one when finite (as a pruned trial's is): that
    last value (NaN when there is none), or None when a claim promoted the trial first."""
    if not _unpause(connection, paused, state=TrialState.PRUNED, datetime_complete=now):
        return None
    last = connection.execute(
        sa.select(intermediate_values.c.intermediate_value, intermediate_values.c.intermediate_value_type)
        .where(intermediate_values.c.trial_id == paused.trial_id)
        .order_by(intermediate_values.c.step.desc())
        .limit(1)
    ).first()
    if last is None:
        return math.nan
    value = float(
        TrialIntermediateValueModel.stored_repr_to_intermediate_value(
            last.intermediate_value, last.intermediate_value_type
        )
    )
    if math.isfinite(value):
        stored, value_type = TrialValueModel.value_to_stored_repr(value)
        connection.execute(
            trial_values.insert().values(
                trial_id=paused.trial_id, objective=0, value=stored, value_type=value_type
            )
        )
    return value
