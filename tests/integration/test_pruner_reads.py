"""A claimed trial's pruner decisions are Optuna's own, read from the store with fewer queries."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from studies._optuna.claimed_trial import ClaimedTrial
from studies._optuna.hyperband import HyperbandPruner
from studies._optuna.internals import frozen_trial_of
from tests.conftest import tiny_spec
from tests.sql_statements import statements

EPOCHS = 9
HYPERBAND = {"min_resource": 1, "max_resource": EPOCHS, "reduction_factor": 3}


def run_trials(
    study: optuna.Study, engine: sa.Engine, should_prune: Callable[[optuna.Trial], bool]
) -> tuple[list[bool], list[list[str]]]:
    """The same 40 trials of random per-epoch values, each asked to be pruned after every epoch: its decisions
    and the SQL each decision ran."""
    rng = random.Random(3)
    decisions: list[bool] = []
    queries: list[list[str]] = []
    for _ in range(40):
        trial = study.ask()
        level = rng.random()
        state = TrialState.COMPLETE
        for epoch in range(1, EPOCHS + 1):
            trial.report(level + rng.random() / epoch, epoch)
            with statements(engine) as seen:
                pruned = should_prune(trial)
            decisions.append(pruned)
            queries.append(seen)
            if pruned:
                state = TrialState.PRUNED
                break
        study.tell(trial, level if state == TrialState.COMPLETE else None, state=state)
    return decisions, queries


def test_a_claimed_trials_hyperband_decisions_are_optunas_without_reading_the_whole_trial(
    store_url: str, study_name: str, tmp_path: Path
) -> None:
    # Optuna's own path, in a store of its own: the stock pruner and Trial.should_prune.
    stock_storage = open_storage(f"sqlite:///{tmp_path / 'stock.db'}")
    storage = open_storage(store_url)
    try:
        stock = optuna.create_study(
            study_name=study_name, storage=stock_storage, pruner=optuna.pruners.HyperbandPruner(**HYPERBAND)
        )
        expected, stock_queries = run_trials(stock, stock_storage.engine, lambda trial: trial.should_prune())
        ours = optuna.create_study(
            study_name=study_name, storage=storage, pruner=HyperbandPruner(**HYPERBAND)
        )

        def claimed(trial: optuna.Trial) -> bool:
            return ClaimedTrial(ours, frozen_trial_of(trial), storage).should_prune()

        decisions, queries = run_trials(ours, storage.engine, claimed)
        assert decisions == expected
        assert True in decisions and False in decisions, "the case prunes nothing, or everything"
        # Brackets (completed rungs) are the same too.
        assert [t.system_attrs for t in ours.trials] == [t.system_attrs for t in stock.trials]

        def whole_trial_reads(seen: list[str]) -> int:
            # Optuna's read of one trial by id (the study's cache refresh reads by study).
            return sum("FROM trials WHERE trials.trial_id IN" in " ".join(q.split()) for q in seen)

        def study_lookups(seen: list[str]) -> int:
            return sum("studies.study_name =" in q for q in seen)

        # Optuna's path reads the whole trial and looks its study up by name at each decision; a claimed trial
        # reads its system attributes in one query, and its pruner looks the study up once for each bracket.
        assert all(whole_trial_reads(seen) >= 1 and study_lookups(seen) >= 1 for seen in stock_queries)
        assert sum(whole_trial_reads(seen) for seen in queries) == 0
        assert sum(study_lookups(seen) for seen in queries) <= 3  # Hyperband's brackets for 9 epochs
    finally:
        stock_storage.engine.dispose()
        storage.engine.dispose()


@pytest.mark.parametrize(
    ("pruner", "kept"),
    [
        ({"name": "hyperband", "min_resource": 1, "reduction_factor": 3}, True),
        ({"name": "successive_halving", "min_resource": 1}, True),
        # "auto": Optuna finds min_resource from the finished trials at its first decision.
        ({"name": "successive_halving"}, False),
    ],
)
def test_a_worker_keeps_one_pruner_a_study_unless_it_finds_its_resources_from_the_trials(
    repository: StudyRepository, study_name: str, pruner: dict[str, Any], kept: bool
) -> None:
    space = {
        "epochs": {"type": "int", "low": EPOCHS, "high": EPOCHS},
        "width": {"type": "int", "low": 8, "high": 64},
    }
    repository.create(
        StudySpec.model_validate(tiny_spec(study_name, space=space, pruner=pruner, budget={"n_trials": 12}))
    )
    worker = WorkerIdentity(host="test", pid=1, device="cpu")
    rng = random.Random(5)
    pruners: list[optuna.pruners.BasePruner] = []
    with statements(repository.engine) as seen:
        while (claim := repository.claim(worker, study_names=[study_name])) is not None:
            pruners.append(claim.study.pruner)
            level = rng.random()
            for epoch in range(1, EPOCHS + 1):
                repository.report(claim, level + rng.random() / epoch, epoch)
                if claim.trial.should_prune():
                    repository.prune(claim, {})
                    break
            else:
                repository.complete(claim, level, {})
    assert len(pruners) == 12
    assert all(p is pruners[0] for p in pruners) == kept
    assert all(p is not pruners[0] for p in pruners[1:]) == (not kept)
    if pruner["name"] == "hyperband":
        # Optuna's study, and each of Hyperband's three brackets (9 epochs), looked up by name once: not at each
        # claim (18 lookups when each claim built its pruner).
        assert sum("FROM studies WHERE studies.study_name =" in " ".join(q.split()) for q in seen) <= 4
