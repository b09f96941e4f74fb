"""A page of studies read from Optuna's tables in a fixed number of queries, however many studies it holds."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from optuna.study import StudyDirection
from optuna.study._constrained_optimization import (
    _CONSTRAINTS_KEY,
    _is_constrained_optimization,
)
from optuna.study._multi_objective import _get_pareto_front_trials_by_trials
from optuna.trial import FrozenTrial, TrialState

from studies._optuna.models import StudyUserAttributeModel, TrialValueModel
from studies._optuna.trial_reads import _stored_float, system_attrs
from studies._optuna.trial_rows import PAUSED_ATTR, trial_values, trials, user_attrs

study_user_attrs = StudyUserAttributeModel.__table__

Direction = Literal["minimize", "maximize"]
_TYPES = TrialValueModel.TrialValueType
# Optuna's find_min_value_trial_id and find_max_value_trial_id: infinities sort around the finite values.
_VALUE_RANK = sa.case(
    (trial_values.c.value_type == _TYPES.INF_NEG, -1),
    (trial_values.c.value_type == _TYPES.FINITE, 0),
    (trial_values.c.value_type == _TYPES.INF_POS, 1),
)


def _state(value: Any) -> TrialState:
    return value if isinstance(value, TrialState) else TrialState(value)


@dataclass(frozen=True)
class TrialCounts:
    """A study's trials by state, with the paused ones (WAITING, holding their budget slot until promoted)
    counted apart from the queued ones."""

    by_state: dict[TrialState, int]
    paused: int


def trial_counts(connection: sa.Connection, study_ids: Sequence[int]) -> dict[int, TrialCounts]:
    """How many trials each study has in each state it has trials in: one GROUP BY for them all."""
    if not study_ids:
        return {}
    by_state: dict[int, dict[TrialState, int]] = {study_id: {} for study_id in study_ids}
    paused_counts = dict.fromkeys(study_ids, 0)
    # A trial has at most one attribute of a key (Optuna's unique constraint): the outer join adds no rows.
    paused = system_attrs.c.trial_id.is_not(None)
    rows = connection.execute(
        sa.select(trials.c.study_id, trials.c.state, paused, sa.func.count())
        .select_from(
            trials.outerjoin(
                system_attrs,
                sa.and_(system_attrs.c.trial_id == trials.c.trial_id, system_attrs.c.key == PAUSED_ATTR),
            )
        )
        .where(trials.c.study_id.in_(list(study_ids)))
        .group_by(trials.c.study_id, trials.c.state, paused)
    ).all()
    for study_id, state, is_paused, count in rows:
        if is_paused and _state(state) == TrialState.WAITING:
            paused_counts[study_id] = int(count)
        else:
            states = by_state[study_id]
            states[_state(state)] = states.get(_state(state), 0) + int(count)
    return {study_id: TrialCounts(by_state[study_id], paused_counts[study_id]) for study_id in study_ids}


def finished_durations(
    connection: sa.Connection, study_ids: Sequence[int], states: Sequence[TrialState]
) -> dict[int, list[float]]:
    """Each study's trials in these (finished) states: their wall seconds from start to end, as
    FrozenTrial.duration gives them; trials without both times are left out."""
    found: dict[int, list[float]] = {study_id: [] for study_id in study_ids}
    if not study_ids:
        return found
    rows = connection.execute(
        sa.select(trials.c.study_id, trials.c.datetime_start, trials.c.datetime_complete).where(
            trials.c.study_id.in_(list(study_ids)),
            trials.c.state.in_(list(states)),
            trials.c.datetime_start.is_not(None),
            trials.c.datetime_complete.is_not(None),
        )
    ).all()
    for study_id, start, end in rows:
        found[study_id].append((end - start).total_seconds())
    return found


def trial_user_attr(
    connection: sa.Connection, study_ids: Sequence[int], key: str, states: Sequence[TrialState]
) -> dict[int, list[Any]]:
    """Each study's values of a trial user attribute, over its trials in these states that have it."""
    found: dict[int, list[Any]] = {study_id: [] for study_id in study_ids}
    if not study_ids:
        return found
    rows = connection.execute(
        sa.select(trials.c.study_id, user_attrs.c.value_json)
        .join(trials, trials.c.trial_id == user_attrs.c.trial_id)
        .where(
            trials.c.study_id.in_(list(study_ids)),
            trials.c.state.in_(list(states)),
            user_attrs.c.key == key,
        )
    ).all()
    for study_id, value_json in rows:
        found[study_id].append(json.loads(value_json))
    return found


def best_trial_ids(connection: sa.Connection, directions: Mapping[int, Direction]) -> dict[int, int]:
    """Each single-objective study's best complete trial, as RDBStorage.get_best_trial picks it (the lowest
    trial id among equals); a study with no complete trial has none. One query per direction."""
    best: dict[int, int] = {}
    for direction in ("minimize", "maximize"):
        study_ids = [study_id for study_id, d in directions.items() if d == direction]
        if not study_ids:
            continue
        order = (
            (_VALUE_RANK.asc(), trial_values.c.value.asc())
            if direction == "minimize"
            else (_VALUE_RANK.desc(), trial_values.c.value.desc())
        )
        ranked = (
            sa.select(
                trials.c.study_id,
                trials.c.trial_id,
                sa.func.row_number()
                .over(partition_by=trials.c.study_id, order_by=(*order, trials.c.trial_id))
                .label("place"),
            )
            .join(trial_values, trial_values.c.trial_id == trials.c.trial_id)
            .where(
                trials.c.study_id.in_(study_ids),
                trials.c.state == TrialState.COMPLETE,
                trial_values.c.objective == 0,
            )
            .subquery()
        )
        rows = connection.execute(
            sa.select(ranked.c.study_id, ranked.c.trial_id).where(ranked.c.place == 1)
        ).all()
        best.update({study_id: trial_id for study_id, trial_id in rows})
    return best


def user_attr_values(connection: sa.Connection, study_ids: Sequence[int], key: str) -> dict[int, list[str]]:
    """Each study's distinct stored values (JSON) of a trial user attribute, in the order trials first had them."""
    found: dict[int, list[str]] = {study_id: [] for study_id in study_ids}
    if not study_ids:
        return found
    rows = connection.execute(
        sa.select(trials.c.study_id, user_attrs.c.value_json)
        .join(trials, trials.c.trial_id == user_attrs.c.trial_id)
        .where(trials.c.study_id.in_(list(study_ids)), user_attrs.c.key == key)
        .group_by(trials.c.study_id, user_attrs.c.value_json)
        .order_by(trials.c.study_id, sa.func.min(trials.c.number))
    ).all()
    for study_id, value_json in rows:
        found[study_id].append(value_json)
    return found


def study_user_attr(connection: sa.Connection, study_ids: Sequence[int], key: str) -> dict[int, Any]:
    """One user attribute of each study that has it (Study.user_attrs[key]), by study id."""
    if not study_ids:
        return {}
    rows = connection.execute(
        sa.select(study_user_attrs.c.study_id, study_user_attrs.c.value_json).where(
            study_user_attrs.c.study_id.in_(list(study_ids)), study_user_attrs.c.key == key
        )
    ).all()
    return {study_id: json.loads(value_json) for study_id, value_json in rows}


def pareto_front_sizes(
    connection: sa.Connection, directions: Mapping[int, Sequence[Direction]]
) -> dict[int, int]:
    """How many trials Study.best_trials would give for each study of several objectives, read from the complete
    trials' values and every trial's constraints only: two queries for them all."""
    study_ids = list(directions)
    if not study_ids:
        return {}
    parts: dict[int, dict[int, dict[str, Any]]] = {study_id: {} for study_id in study_ids}

    def part(study_id: int, trial_id: int, number: int, state: Any) -> dict[str, Any]:
        return parts[study_id].setdefault(
            trial_id, {"number": number, "state": _state(state), "values": {}, "system_attrs": {}}
        )

    for row in connection.execute(
        sa.select(
            trials.c.study_id,
            trials.c.trial_id,
            trials.c.number,
            trials.c.state,
            trial_values.c.objective,
            trial_values.c.value,
            trial_values.c.value_type,
        )
        .join(trial_values, trial_values.c.trial_id == trials.c.trial_id)
        .where(trials.c.study_id.in_(study_ids), trials.c.state == TrialState.COMPLETE)
    ):
        values = part(row.study_id, row.trial_id, row.number, row.state)["values"]
        values[row.objective] = _stored_float(row.value, row.value_type)
    # Study.best_trials keeps only feasible trials whenever any trial of the study, in any state, stored one.
    for attr in connection.execute(
        sa.select(
            trials.c.study_id,
            trials.c.trial_id,
            trials.c.number,
            trials.c.state,
            system_attrs.c.key,
            system_attrs.c.value_json,
        )
        .join(trials, trials.c.trial_id == system_attrs.c.trial_id)
        .where(
            trials.c.study_id.in_(study_ids),
            sa.or_(
                system_attrs.c.key == _CONSTRAINTS_KEY,
                system_attrs.c.key.startswith(f"{_CONSTRAINTS_KEY}:", autoescape=True),
            ),
        )
    ):
        attrs = part(attr.study_id, attr.trial_id, attr.number, attr.state)["system_attrs"]
        attrs[attr.key] = json.loads(attr.value_json)
    return {
        study_id: len(_front(list(by_trial.items()), directions[study_id]))
        for study_id, by_trial in parts.items()
    }


def _front(parts: list[tuple[int, dict[str, Any]]], directions: Sequence[Direction]) -> list[FrozenTrial]:
    """Study.best_trials on trials that carry only their state, values and constraints."""
    frozen = [
        FrozenTrial(
            number=p["number"],
            state=p["state"],
            value=None,
            values=[p["values"][k] for k in range(len(p["values"]))] if p["values"] else None,
            datetime_start=None,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs=p["system_attrs"],
            intermediate_values={},
            trial_id=trial_id,
        )
        for trial_id, p in parts
    ]
    constrained = _is_constrained_optimization(frozen)
    study_directions = [
        StudyDirection.MINIMIZE if d == "minimize" else StudyDirection.MAXIMIZE for d in directions
    ]
    return _get_pareto_front_trials_by_trials(frozen, study_directions, consider_constraint=constrained)
