"""Samplers and pruners are built from the spec the same way on every worker."""

from __future__ import annotations

import optuna
import pytest

from studies import StudySpec, load_spec_file, preset_path
from studies.sampling import (
    build_pruner,
    build_sampler,
    derived_seed,
    hyperband_brackets,
    model_startup_trials,
)
from studies.space import distributions
from studies.spec import MedianPruner


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


def test_under_hyperband_the_startup_is_split_over_its_brackets() -> None:
    # Each bracket's TPE sees only its own trials: 10 random trials per bracket would be 30 for the
    # built-in study's three brackets (epochs 1-20, reduction factor 3) before any modelling.
    spec = StudySpec.model_validate(load_spec_file(preset_path("bbc-news-minilm")))
    assert hyperband_brackets(spec) == 3
    sampler = build_sampler(spec, claim_index=0)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 4
    assert model_startup_trials(spec) * hyperband_brackets(spec) in range(10, 13)
    # Without Hyperband the study has one history: Optuna's usual 10.
    median = spec.model_copy(update={"pruner": MedianPruner(name="median")})
    assert hyperband_brackets(median) == 1 and model_startup_trials(median) == 10
    # A startup the spec names is kept as it is.
    named = spec.model_copy(update={"sampler": spec.sampler.model_copy(update={"n_startup_trials": 7})})
    assert model_startup_trials(named) == 7
