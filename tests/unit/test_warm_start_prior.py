"""The warm-start prior: TPE starts near the good configurations of earlier studies, and lets them go as its own
trials come in."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import optuna

from studies._optuna.cost_aware import PRIOR_HALF_LIFE, CostAwareTPESampler
from studies.spec import Space
from studies.warm_start import SourceStudy, SourceTrial, select_prior


def sampler(prior: list[dict[str, object]], weight: float = 1.0, seed: int = 0) -> CostAwareTPESampler:
    return CostAwareTPESampler(
        seed=seed, n_startup_trials=10, cost_weight=0.0, prior=prior, prior_weight=weight
    )


def suggested(trial: optuna.Trial) -> dict[str, Any]:
    """x and y on [0, 1] and an optimizer, suggested in that order as an objective function would."""
    return {
        "x": trial.suggest_float("x", 0.0, 1.0),
        "y": trial.suggest_float("y", 0.0, 1.0),
        "optimizer": trial.suggest_categorical("optimizer", ["sgd", "adam"]),
    }


def run(
    study: optuna.Study, n: int, objective: Callable[[dict[str, Any]], float]
) -> list[optuna.trial.FrozenTrial]:
    study.optimize(lambda t: objective(suggested(t)), n_trials=n)
    return study.trials


def test_a_strong_priors_start_is_drawn_near_its_configurations_keeping_their_pairings() -> None:
    # Two good configurations: x and y both low with sgd, both high with adam.
    prior = [{"x": 0.05, "y": 0.05, "optimizer": "sgd"}, {"x": 0.95, "y": 0.95, "optimizer": "adam"}]
    study = optuna.create_study(sampler=sampler(prior, weight=100.0))
    trials = run(study, 10, lambda p: 0.0)
    gaps = [abs(t.params["x"] - t.params["y"]) for t in trials]
    # Drawn from one configuration at a time: x and y go together, unlike two independent uniform draws
    # (mean gap 1/3), and the optimizer is its configuration's far more often than not.
    assert statistics.mean(gaps) < 0.2
    matching = [(t.params["x"] < 0.5) == (t.params["optimizer"] == "sgd") for t in trials]
    assert sum(matching) >= 8


def test_at_the_default_weight_some_of_the_start_stays_random() -> None:
    # Half the first trial's draws are near the prior, fewer as trials finish; the rest search the whole space,
    # so a study whose best lies far from its sources' still sees it.
    near = 0
    for seed in range(10):
        study = optuna.create_study(sampler=sampler([{"x": 0.02, "y": 0.02, "optimizer": "sgd"}], seed=seed))
        near += sum(t.params["x"] < 0.3 and t.params["y"] < 0.3 for t in run(study, 10, lambda p: 0.0))
    # Uniform draws land there 9% of the time; all of them would if every start were near the prior.
    assert 25 <= near <= 60


def test_without_a_prior_or_at_weight_0_the_draws_are_plain_tpes() -> None:
    def draws(made: CostAwareTPESampler) -> list[dict[str, object]]:
        study = optuna.create_study(sampler=made)
        return [t.params for t in run(study, 15, lambda p: p["x"])]

    plain = draws(sampler([]))
    assert draws(sampler([{"x": 0.9, "y": 0.9, "optimizer": "adam"}], weight=0.0)) == plain


def test_the_prior_fades_as_the_studys_own_trials_finish() -> None:
    made = sampler([{"x": 0.5, "y": 0.5, "optimizer": "sgd"}], weight=2.0)
    assert made.prior_strength(0) == 2.0
    assert made.prior_strength(PRIOR_HALF_LIFE) == 1.0
    assert made.prior_strength(9 * PRIOR_HALF_LIFE) < 0.25
    assert sampler([]).prior_strength(0) == 0.0


def test_a_misleading_prior_does_not_keep_tpe_from_the_optimum() -> None:
    # Earlier studies liked x near 0.95; this study's best is at x = 0.1.
    prior = [{"x": 0.95, "y": 0.5, "optimizer": "adam"}]
    bests = []
    for seed in range(3):
        study = optuna.create_study(sampler=sampler(prior, seed=seed))
        run(study, 60, lambda p: (p["x"] - 0.1) ** 2)
        bests.append(study.best_value)
    assert max(bests) < 0.01


def test_a_helpful_prior_finds_a_good_configuration_sooner() -> None:
    def best_after(prior: list[dict[str, object]], seed: int) -> float:
        study = optuna.create_study(sampler=sampler(prior, seed=seed))
        run(study, 15, lambda p: (p["x"] - 0.8) ** 2 + (p["y"] - 0.3) ** 2)
        return study.best_value

    helped = [best_after([{"x": 0.8, "y": 0.3, "optimizer": "sgd"}], s) for s in range(5)]
    plain = [best_after([], s) for s in range(5)]
    assert statistics.median(helped) < statistics.median(plain)


def test_the_prior_holds_each_sources_best_quarter_fitted_to_the_space() -> None:
    space = Space.model_validate({"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    trials = [SourceTrial(i, {"learning_rate": 2e-3 * (i + 1)}, float(10 - i)) for i in range(8)]
    lower = SourceStudy("a", "minimize", trials)
    higher = SourceStudy("b", "maximize", trials)
    prior = select_prior([lower, higher], space)
    # Minimized, a's best two are its last two, both clipped to the range's top: one configuration. Maximized,
    # b's are its first two.
    assert prior == [{"learning_rate": 1e-2}, {"learning_rate": 2e-3}, {"learning_rate": 4e-3}]
