"""ASHA's promotion: which epochs are rungs, which trials a rung lets on, and the paused trials a claim resumes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from optuna.trial import TrialState

from studies._optuna.models import TrialIntermediateValueModel, TrialValueModel
from studies._optuna.trial_rows import (
    PAUSED_ATTR,
    intermediate_values,
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


def best_share(values: Iterable[tuple[int, float]], reduction_factor: int, *, minimize: bool) -> set[int]:
    """The trial numbers in the best 1/reduction_factor (rounded down, but at least the best one) of (number,
    value) pairs at one rung, as Optuna's SuccessiveHalvingPruner counts them: the first trial to reach a rung
    goes on, so a study's first trials run to their end and a small budget still trains some trial fully.

    Ties go to the lower number (the earlier trial); a value that is not a number ranks last.
    """
    ranked = _ranked(values, minimize=minimize)
    return set(ranked[: share(len(ranked), reduction_factor)])


def share(n: int, reduction_factor: int) -> int:
    """How many of n trials at a rung go on: n // reduction_factor, and at least one."""
    return max(1, n // reduction_factor) if n else 0


def _ranked(values: Iterable[tuple[int, float]], *, minimize: bool) -> list[int]:
    """Trial numbers from best to worst value; ties to the lower number, a value that is not a number last."""
    return [
        number
        for number, value in sorted(
            values,
            key=lambda pair: (
                math.isnan(pair[1]),
                0.0 if math.isnan(pair[1]) else pair[1] if minimize else -pair[1],
                pair[0],
            ),
        )
    ]


@dataclass(frozen=True)
class Paused:
    """A paused trial: its id, number and the rung it waits at."""

    trial_id: int
    number: int
    epoch: int


# Built once, as every claim of an asha study runs them.
_PAUSED = (
    sa.select(trials.c.trial_id, trials.c.number, system_attrs.c.value_json)
    .join(system_attrs, system_attrs.c.trial_id == trials.c.trial_id)
    .where(
        trials.c.study_id == sa.bindparam("study_id"),
        trials.c.state == TrialState.WAITING,
        system_attrs.c.key == PAUSED_ATTR,
    )
    .order_by(trials.c.number)
)
_RUNG_VALUES = (
    sa.select(
        trials.c.number,
        intermediate_values.c.intermediate_value,
        intermediate_values.c.intermediate_value_type,
    )
    .join(intermediate_values, intermediate_values.c.trial_id == trials.c.trial_id)
    .where(
        trials.c.study_id == sa.bindparam("study_id"),
        trials.c.state != TrialState.FAIL,
        intermediate_values.c.step == sa.bindparam("epoch"),
    )
)


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


def rung_values(connection: sa.Connection, study_id: int, epoch: int) -> list[tuple[int, float]]:
    """(number, value) of every trial of the study that reported a value at the epoch and has not failed."""
    rows = connection.execute(_RUNG_VALUES, {"study_id": study_id, "epoch": epoch}).all()
    return [
        (
            int(row.number),
            float(
                TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                    row.intermediate_value, row.intermediate_value_type
                )
            ),
        )
        for row in rows
    ]


def promotable(
    connection: sa.Connection, study_id: int, reduction_factor: int, *, minimize: bool
) -> list[Paused]:
    """The study's paused trials that are now in the best share of their rung: the highest rung first, then the
    best value (as ASHA promotes: the trials nearest the full budget go on first)."""
    paused = paused_trials(connection, study_id)
    found: list[Paused] = []
    for epoch in sorted({p.epoch for p in paused}, reverse=True):
        values = rung_values(connection, study_id, epoch)
        ranked = _ranked(values, minimize=minimize)
        rank = {number: i for i, number in enumerate(ranked[: share(len(ranked), reduction_factor)])}
        found.extend(
            sorted((p for p in paused if p.epoch == epoch and p.number in rank), key=lambda p: rank[p.number])
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
