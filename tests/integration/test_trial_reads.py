"""The bulk trial reader builds exactly the FrozenTrials Optuna's own ORM reader builds, on both backends."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from studies import open_storage
from studies._optuna.reference import read_trials
from studies._optuna.trial_reads import BulkReadRDBStorage
from studies.promotion import PAUSED_ATTR, Paused, pause_trial, take_paused
from tests.sql_statements import statements as sql_statements

SPACE = {
    "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
    "width": IntDistribution(32, 1024, step=32),
    "activation": CategoricalDistribution(["relu", "gelu", None, True, 2.5]),
}


def comparable(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's fields, with NaN spelled out (NaN never equals itself)."""
    fields = {name.lstrip("_"): value for name, value in vars(trial).items()}
    fields["intermediate_values"] = {
        step: "nan" if math.isnan(v) else v for step, v in trial.intermediate_values.items()
    }
    return fields


def fill(study: optuna.Study) -> None:
    """Trials in every state, with values, attributes and reports of every kind Optuna stores."""
    for index in range(12):
        trial = study.ask(SPACE)
        trial.set_user_attr("trial_s", 1.5 * index)
        trial.set_user_attr("nested", {"a": [1, 2], "b": None})
        study._storage.set_trial_system_attr(trial._trial_id, "constraints", [0.1 * index - 0.5])
        for step, value in enumerate((0.9, math.nan, math.inf, -math.inf, 0.25)[: 1 + index % 5]):
            trial.report(value, step)
        kind = index % 4
        if kind == 0:
            study.tell(trial, 0.1 * index)
        elif kind == 1:
            study.tell(trial, state=TrialState.PRUNED)
        elif kind == 2:
            study.tell(trial, math.inf if index % 8 == 2 else -math.inf)
        elif index < 11:
            study.tell(trial, state=TrialState.FAIL)
    study.enqueue_trial({"learning_rate": 0.01})


@pytest.mark.parametrize(
    ("states", "included", "greater_than"),
    [
        (None, set(), -1),
        ((TrialState.COMPLETE, TrialState.PRUNED), set(), -1),
        (None, set(), 5),
        (None, {1, 3, 4}, 6),
        ((TrialState.RUNNING, TrialState.WAITING), {2, 11}, 9),
    ],
)
def test_the_bulk_reader_builds_what_optunas_reader_builds(
    store_url: str, study_name: str, states: Any, included: set[int], greater_than: int
) -> None:
    storage = open_storage(store_url)
    assert isinstance(storage, BulkReadRDBStorage)
    optunas = optuna.storages.RDBStorage(storage.url, skip_compatibility_check=True)
    try:
        study = optuna.create_study(study_name=study_name, storage=optunas)
        fill(study)
        first_id = study.trials[0]._trial_id
        # Trial ids are global to the store: offset the case's ids by this study's first one.
        ids = {first_id + i for i in included}
        after = first_id + greater_than if greater_than > -1 else -1
        expected = read_trials(optunas, study._study_id, states, ids, after)
        got = read_trials(storage, study._study_id, states, ids, after)
        assert expected, "the case selects no trial"
        assert [comparable(t) for t in got] == [comparable(t) for t in expected]
    finally:
        optunas.engine.dispose()
        storage.engine.dispose()


def test_a_system_attribute_is_written_as_optunas_storage_writes_it(store_url: str, study_name: str) -> None:
    storage = open_storage(store_url)
    optunas = optuna.storages.RDBStorage(storage.url, skip_compatibility_check=True)
    try:
        study = optuna.create_study(study_name=study_name, storage=optunas)
        running, waiting, done = study.ask(), study.ask(), study.ask()
        optunas.set_trial_state_values(waiting._trial_id, TrialState.WAITING)
        study.tell(done, 1.0)
        for trial in (running, waiting):
            storage.set_trial_system_attr(trial._trial_id, "completed_rung_0", 0.5)
            storage.set_trial_system_attr(
                trial._trial_id, "completed_rung_0", 0.25
            )  # replaced, as Optuna does
            storage.set_trial_system_attr(trial._trial_id, "nested", {"a": [1, None]})
            attrs = optunas.get_trial_system_attrs(trial._trial_id)
            assert attrs["completed_rung_0"] == 0.25 and attrs["nested"] == {"a": [1, None]}
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_system_attr(done._trial_id, "completed_rung_0", 0.5)
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
            optunas.set_trial_system_attr(done._trial_id, "completed_rung_0", 0.5)
        with pytest.raises(KeyError):
            storage.set_trial_system_attr(10_000_000, "completed_rung_0", 0.5)
    finally:
        optunas.engine.dispose()
        storage.engine.dispose()


def test_a_missing_study_or_trial_is_a_key_error_as_with_optunas_reader(store_url: str) -> None:
    storage = open_storage(store_url)
    try:
        with pytest.raises(KeyError):
            read_trials(storage, 10_000_000, None, set(), -1)
        with pytest.raises(KeyError):
            storage.get_trial(10_000_000)
        with pytest.raises(KeyError):
            storage.get_trial_system_attrs(10_000_000)
    finally:
        storage.engine.dispose()


def test_one_trial_read_by_id_is_what_optunas_reader_builds(store_url: str, study_name: str) -> None:
    storage = open_storage(store_url)
    optunas = optuna.storages.RDBStorage(storage.url, skip_compatibility_check=True)
    try:
        study = optuna.create_study(study_name=study_name, storage=optunas)
        fill(study)
        study.add_trial(optuna.trial.create_trial(value=1.0))  # a trial without system attributes
        for trial in study.get_trials(deepcopy=False):
            got = storage.get_trial(trial._trial_id)
            assert comparable(got) == comparable(optunas.get_trial(trial._trial_id))
            # The one-query read of a trial's system attributes, in Optuna's order too.
            attrs = storage.get_trial_system_attrs(trial._trial_id)
            assert list(attrs.items()) == list(optunas.get_trial_system_attrs(trial._trial_id).items())
        assert storage.get_trial_system_attrs(study.trials[-1]._trial_id) == {}
        # What a pruner reads of a running trial each epoch: its system attributes, through Optuna's cache.
        running = study.ask()
        storage.set_trial_system_attr(running._trial_id, "completed_rung_0", 0.5)
        cached = optuna.load_study(study_name=study_name, storage=storage)._storage
        attrs = cached.get_trial_system_attrs(running._trial_id)
        assert attrs["completed_rung_0"] == 0.5
        assert attrs == optunas.get_trial_system_attrs(running._trial_id)
    finally:
        optunas.engine.dispose()
        storage.engine.dispose()


def test_optunas_cache_fills_through_the_bulk_reader(store_url: str, study_name: str) -> None:
    storage = open_storage(store_url)
    try:
        study = optuna.create_study(study_name=study_name, storage=storage)
        fill(study)
        optunas = optuna.storages.RDBStorage(storage.url, skip_compatibility_check=True)
        reread = optuna.load_study(study_name=study_name, storage=optunas)
        assert [comparable(t) for t in study.get_trials()] == [comparable(t) for t in reread.get_trials()]
        optunas.engine.dispose()
    finally:
        storage.engine.dispose()


def test_child_rows_are_sorted_here_not_by_the_database(store_url: str, study_name: str) -> None:
    # With statistics behind a fast-growing table, an ORDER BY on a few trials' child rows makes
    # PostgreSQL plan a parallel scan for every claim's cache refresh (benchmark 2 at 8 workers:
    # claims twice as slow). The reader sorts those rows itself; only the trials query orders.
    storage = open_storage(store_url)
    try:
        study = optuna.create_study(study_name=study_name, storage=storage)
        fill(study)
        first_id = study.trials[0]._trial_id
        with sql_statements(storage.engine) as statements:
            got = read_trials(storage, study._study_id, None, {first_id + 1}, first_id + 8)
        assert [t.number for t in got] == [1, 9, 10, 11, 12]
        ordered = [s for s in statements if "ORDER BY" in s.upper()]
        assert len(ordered) == 1 and "FROM trials" in ordered[0], ordered
    finally:
        storage.engine.dispose()


def test_a_paused_trial_is_built_once_while_it_waits_and_again_once_it_has_run(
    store_url: str, study_name: str
) -> None:
    storage = open_storage(store_url)
    optunas = optuna.storages.RDBStorage(storage.url, skip_compatibility_check=True)
    try:
        study = optuna.create_study(study_name=study_name, storage=storage)
        trial = study.ask(SPACE)
        trial.report(0.5, 1)
        with storage.engine.begin() as connection:
            pause_trial(connection, trial._trial_id, 1)
        first = read_trials(storage, study._study_id, None, set(), -1)
        again = read_trials(storage, study._study_id, None, set(), -1)
        assert again[0] is first[0], "a paused trial that has not run since is not read again"

        # Promoted, it runs to the next rung and pauses there: the reader sees it anew.
        with storage.engine.begin() as connection:
            assert take_paused(connection, Paused(trial._trial_id, trial.number, 1))
        assert read_trials(storage, study._study_id, None, set(), -1)[0].state == TrialState.RUNNING
        storage.set_trial_intermediate_value(trial._trial_id, 2, 0.3)
        storage.set_trial_intermediate_value(trial._trial_id, 3, 0.25)
        with storage.engine.begin() as connection:
            pause_trial(connection, trial._trial_id, 3)
        later = read_trials(storage, study._study_id, None, set(), -1)
        expected = read_trials(optunas, study._study_id, None, set(), -1)
        assert [comparable(t) for t in later] == [comparable(t) for t in expected]
        assert later[0].intermediate_values == {1: 0.5, 2: 0.3, 3: 0.25}
        assert later[0].system_attrs[PAUSED_ATTR] == 3

        # Its study deleted, the reader lets go of the trials it kept.
        storage.delete_study(study._study_id)
        with pytest.raises(KeyError):
            read_trials(storage, study._study_id, None, set(), -1)
        assert study._study_id not in storage._paused
    finally:
        optunas.engine.dispose()
        storage.engine.dispose()
