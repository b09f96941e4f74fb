"""Which trials a rung of the asha pruner lets on, ranked in the store: as the rule says, on both backends."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from studies import open_storage
from studies.promotion import PAUSED_ATTR, Paused, passes_rung, promotable

NAN, INF = math.nan, math.inf


def rule(values: list[tuple[int, float]], reduction_factor: int, *, minimize: bool) -> list[int]:
    """The rule, written out: best first, ties to the lower number, NaN last; n // reduction_factor go on, and at
    least the best one (as Optuna's SuccessiveHalvingPruner counts them)."""
    ranked = sorted(
        values,
        key=lambda pair: (
            math.isnan(pair[1]),
            0.0 if math.isnan(pair[1]) else pair[1] if minimize else -pair[1],
            pair[0],
        ),
    )
    return [number for number, _ in ranked[: max(1, len(ranked) // reduction_factor) if ranked else 0]]


@pytest.fixture
def storage(store_url: str) -> Iterator[optuna.storages.RDBStorage]:
    storage = open_storage(store_url)
    yield storage
    storage.engine.dispose()


@pytest.fixture
def study(storage: optuna.storages.RDBStorage, study_name: str) -> optuna.Study:
    return optuna.create_study(study_name=study_name, storage=storage)


def add(
    study: optuna.Study, values: dict[int, float], state: TrialState, paused_at: int | None = None
) -> None:
    study.add_trial(
        create_trial(
            state=state,
            value=0.0 if state == TrialState.COMPLETE else None,
            intermediate_values=values,
            system_attrs={PAUSED_ATTR: paused_at} if paused_at is not None else {},
        )
    )


def passing(
    storage: optuna.storages.RDBStorage,
    study: optuna.Study,
    epoch: int,
    reduction_factor: int,
    *,
    minimize: bool,
) -> list[int]:
    with storage.engine.connect() as connection:
        return [
            t.number
            for t in study.trials
            if passes_rung(connection, study._study_id, epoch, t.number, reduction_factor, minimize=minimize)
        ]


@pytest.mark.parametrize("minimize", [True, False])
def test_a_rung_ranks_by_direction_ties_to_the_earlier_trial_infinities_in_order_and_nan_last(
    storage: optuna.storages.RDBStorage, study: optuna.Study, minimize: bool
) -> None:
    values = [0.5, NAN, 0.2, 0.2, 0.9, 0.1, INF, -INF, NAN, 0.3, 0.2, -INF]
    for value in values:
        add(study, {1: value}, TrialState.COMPLETE)
    numbered = list(enumerate(values))
    assert sorted(passing(storage, study, 1, 3, minimize=minimize)) == sorted(
        rule(numbered, 3, minimize=minimize)
    )
    assert sorted(passing(storage, study, 1, 3, minimize=minimize)) == (
        [2, 5, 7, 11] if minimize else [0, 4, 6, 9]
    )
    # A rung no trial reached lets none on.
    assert passing(storage, study, 2, 3, minimize=minimize) == []


@pytest.mark.parametrize(("n", "expected"), [(1, 1), (2, 1), (3, 1), (5, 1), (6, 2), (9, 3)])
def test_a_rung_lets_a_third_on_and_at_least_the_best_and_a_failed_trial_is_not_counted(
    storage: optuna.storages.RDBStorage, study: optuna.Study, n: int, expected: int
) -> None:
    for number in range(n):
        add(study, {1: float(number)}, TrialState.COMPLETE)
    add(study, {1: -1.0}, TrialState.FAIL)
    assert passing(storage, study, 1, 3, minimize=True) == list(range(expected))


@pytest.mark.parametrize("minimize", [True, False])
# 80 trials to tell an order; small studies, where one place decides whether a rung has a trial to promote.
@pytest.mark.parametrize(("seed", "n"), [(11, 80), *((seed, 7 + seed) for seed in range(8))])
def test_the_promotable_trials_are_the_paused_ones_in_their_rungs_best_share_highest_rung_and_best_first(
    storage: optuna.storages.RDBStorage, study: optuna.Study, minimize: bool, seed: int, n: int
) -> None:
    rng = random.Random(seed)
    states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]
    paused: list[Paused] = []
    for number in range(n):
        # Ties, infinities and NaN among the values at each of the rungs 1, 3 and 9.
        epochs = rng.choice([1, 3, 9])
        values = {
            step: rng.choice([round(rng.random(), 1), NAN, INF, -INF, rng.random()])
            for step in (1, 3, 9)
            if step <= epochs
        }
        state = rng.choice(states)
        if state == TrialState.WAITING:
            paused.append(Paused(0, number, epochs))
        add(study, values, state, paused_at=epochs if state == TrialState.WAITING else None)
    with storage.engine.connect() as connection:
        found = promotable(connection, study._study_id, 3, minimize=minimize)
    trials = study.trials
    expected: list[int] = []
    for epoch in (9, 3, 1):
        counted = [
            (t.number, t.intermediate_values[epoch])
            for t in trials
            if epoch in t.intermediate_values and t.state != TrialState.FAIL
        ]
        waiting = {p.number for p in paused if p.epoch == epoch}
        expected += [number for number in rule(counted, 3, minimize=minimize) if number in waiting]
    assert [p.number for p in found] == expected
    assert n < 80 or len(expected) >= 3, "the case promotes too few to tell an order"
    by_number = {t.number: t for t in trials}
    assert all(
        p.trial_id == by_number[p.number]._trial_id
        and p.epoch == by_number[p.number].system_attrs[PAUSED_ATTR]
        for p in found
    )
