"""Samplers and pruners are built from the spec the same way on every worker."""

from __future__ import annotations

import optuna
import pytest

from studies import StudySpec
from studies.sampling import build_pruner, build_sampler, derived_seed
from studies.space import distributions


@pytest.mark.parametrize("name", ["tpe", "random", "qmc", "cmaes", "gp"])
def test_every_sampler_suggests_points_inside_the_space(name: str) -> None:
    spec = StudySpec.model_validate({"name": "s", "sampler": {"name": name, "seed": 3}})
    study = optuna.create_study()
    for index in range(3):
        study.sampler = build_sampler(spec, claim_index=index)
        trial = study.ask(distributions(spec.space))
        assert 1e-4 <= trial.params["learning_rate"] <= 1e-1
        assert trial.params["batch_size"] in (16, 32, 64, 128)
        study.tell(trial, float(index))


@pytest.mark.parametrize("name", ["none", "median", "percentile", "successive_halving", "hyperband"])
def test_every_pruner_is_built(name: str) -> None:
    spec = StudySpec.model_validate({"name": "s", "pruner": {"name": name}})
    assert isinstance(build_pruner(spec), optuna.pruners.BasePruner)


def test_two_claims_of_one_study_get_different_random_streams() -> None:
    spec = StudySpec.model_validate({"name": "s", "sampler": {"name": "random", "seed": 1}})
    first = optuna.create_study(sampler=build_sampler(spec, claim_index=0)).ask(distributions(spec.space))
    second = optuna.create_study(sampler=build_sampler(spec, claim_index=1)).ask(distributions(spec.space))
    assert first.params != second.params


def test_derived_seed_is_stable_and_in_31_bits() -> None:
    assert derived_seed(42, "trial", 3) == derived_seed(42, "trial", 3)
    assert derived_seed(42, "trial", 3) != derived_seed(42, "trial", 4)
    assert 0 <= derived_seed(2**31 - 1, "x") < 2**31
