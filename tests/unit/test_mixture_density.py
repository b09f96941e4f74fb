"""tunefleet's Parzen mixture density gives Optuna's values exactly, for every kind of parameter."""

from __future__ import annotations

import random

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from studies._optuna import mixture_density
from studies._optuna.reference import (
    ParzenEstimator,
    build_parzen_estimator,
    mixture_of,
    split_complete_trials,
    transformed,
    unique_inverse_2d,
)

SPACE = {
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "momentum": FloatDistribution(0.8, 0.99),
    "decay": FloatDistribution(0.0, 0.1, step=0.01),
    "depth": IntDistribution(0, 4),
    "width": IntDistribution(16, 1024, log=True),
    "batch": CategoricalDistribution((16, 32, 64, 128)),
    "act": CategoricalDistribution(("relu", "gelu", "tanh")),
}


def estimators(n_trials: int, seed: int, multivariate: bool) -> list[ParzenEstimator]:
    """TPE's estimators of the 10 best and of the other trials, for a study of n_trials random trials."""
    rng = random.Random(seed)
    study = optuna.create_study()
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={name: _draw(rng, d) for name, d in SPACE.items()},
                distributions=SPACE,
                value=rng.random(),
            )
            for _ in range(n_trials)
        ]
    )
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=multivariate)
    below, above = split_complete_trials(study.get_trials(deepcopy=False), study, 10)
    return [
        build_parzen_estimator(sampler, study, SPACE, part, handle_below=handle)
        for part, handle in ((below, True), (above, False))
    ]


def _draw(rng: random.Random, d: object) -> object:
    if isinstance(d, CategoricalDistribution):
        return rng.choice(d.choices)
    if isinstance(d, IntDistribution):
        return rng.randint(d.low, d.high)
    assert isinstance(d, FloatDistribution)
    if d.step is not None:
        return d.low + d.step * rng.randint(0, round((d.high - d.low) / d.step))
    return 10 ** rng.uniform(np.log10(d.low), np.log10(d.high)) if d.log else rng.uniform(d.low, d.high)


@pytest.mark.parametrize(("n_trials", "multivariate"), [(12, False), (300, True), (1500, True)])
def test_log_pdf_is_optunas_value_for_value(n_trials: int, multivariate: bool) -> None:
    mpes = estimators(n_trials, seed=n_trials, multivariate=multivariate)
    rng = np.random.RandomState(0)
    for mpe in mpes:
        mixture = mixture_of(mpe)
        assert mixture_density.supported(mixture)
        x = transformed(mpe, mpe.sample(rng, 24))
        assert np.array_equal(mixture_density.log_pdf(mixture, x), mixture.log_pdf(x))


def test_log_pdf_outside_a_parameters_range_is_minus_infinity_as_optunas() -> None:
    below, _ = estimators(40, seed=1, multivariate=True)
    mixture = mixture_of(below)
    x = transformed(below, below.sample(np.random.RandomState(1), 6))
    lr = list(SPACE).index("lr")
    x[:2, lr] = [1e-7, 10.0]  # below and above the log-scaled range
    ours, optunas = mixture_density.log_pdf(mixture, x), mixture.log_pdf(x)
    assert np.array_equal(ours, optunas)
    assert np.isneginf(ours[:2]).all() and np.isfinite(ours[2:]).all()


def test_unique_pairs_are_optunas() -> None:
    rng = np.random.RandomState(3)
    a = rng.choice([0.0, 0.5, 1.0, 2.0], size=2000)
    b = np.where(rng.rand(2000) < 0.9, 0.3, rng.choice([0.1, 0.7], size=2000))
    for ours, optunas in zip(mixture_density.unique_pairs(a, b), unique_inverse_2d(a, b), strict=True):
        assert np.array_equal(ours, optunas)
