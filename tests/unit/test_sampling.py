"""Samplers and pruners are built from the spec the same way on every worker."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import optuna
import pytest
import scipy.special
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from studies import StudySpec
from studies._optuna.cost_aware import MIN_TRIALS, CostAwareTPESampler, CostModel
from studies._optuna.log_ndtr import use_scipy_log_ndtr
from studies._optuna.reference import bracket_id, internal_repr, log_ndtr_in_use, optunas_log_ndtr
from studies.sampling import build_pruner, build_sampler, derived_seed, sample_params
from studies.space import distributions
from studies.spec import DEFAULT_COST_WEIGHT


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


def timed_trial(
    params: dict[str, Any], space: dict[str, BaseDistribution], value: float, per_epoch_s: float
) -> FrozenTrial:
    """A finished trial as the worker records it: its value, wall seconds and epochs trained."""
    return optuna.trial.create_trial(
        params=params,
        distributions=space,
        value=value,
        user_attrs={"trial_s": per_epoch_s * 4, "epochs_run": 4},
    )


SPACE: dict[str, BaseDistribution] = {
    "batch_size": CategoricalDistribution([16, 32, 64, 128]),
    "width": IntDistribution(32, 1024, log=True),
    "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
}


def cost_of(params: dict[str, Any]) -> float:
    """Seconds per epoch of a head: steps per epoch times the work of one step."""
    return 2000 / params["batch_size"] * (0.002 + params["width"] / 100_000)


def random_params(rng: random.Random) -> dict[str, Any]:
    return {
        "batch_size": rng.choice([16, 32, 64, 128]),
        "width": round(math.exp(rng.uniform(math.log(32), math.log(1024)))),
        "learning_rate": math.exp(rng.uniform(math.log(1e-4), math.log(1e-1))),
    }


def test_cost_model_learns_which_configurations_train_faster() -> None:
    rng = random.Random(0)
    trials = [
        timed_trial(p, SPACE, 0.5, cost_of(p) * rng.uniform(0.9, 1.1))
        for p in (random_params(rng) for _ in range(40))
    ]
    model = CostModel.fit(SPACE, trials)
    assert model is not None
    probes = [
        {"batch_size": 128, "width": 32, "learning_rate": 0.01},
        {"batch_size": 64, "width": 128, "learning_rate": 0.01},
        {"batch_size": 16, "width": 1024, "learning_rate": 0.01},
    ]
    columns = {name: np.array([d.to_internal_repr(p[name]) for p in probes]) for name, d in SPACE.items()}
    predicted = model.predict(columns)
    assert list(predicted) == sorted(predicted)
    # A linear fit in log space, shrunk: it need not be exact, but must see most of the real spread.
    truth = [math.log(cost_of(p)) for p in probes]
    assert predicted[-1] - predicted[0] > 0.5 * (truth[-1] - truth[0])


def test_cost_model_needs_timed_trials() -> None:
    rng = random.Random(1)
    few = [timed_trial(random_params(rng), SPACE, 0.5, 1.0) for _ in range(MIN_TRIALS - 1)]
    assert CostModel.fit(SPACE, few) is None
    untimed = [
        optuna.trial.create_trial(params=random_params(rng), distributions=SPACE, value=0.5)
        for _ in range(20)
    ]
    assert CostModel.fit(SPACE, untimed) is None


def mean_log_cost_of_suggestions(cost_weight: float, seed: int) -> float:
    """The mean log seconds per epoch of 30 suggestions after 40 trials whose loss says nothing."""
    rng = random.Random(seed)
    study = optuna.create_study()
    study.add_trials(
        [
            timed_trial(p, SPACE, rng.uniform(0.4, 0.6), cost_of(p))
            for p in (random_params(rng) for _ in range(40))
        ]
    )
    costs = []
    for index in range(30):
        study.sampler = CostAwareTPESampler(seed=index, n_startup_trials=10, cost_weight=cost_weight)
        costs.append(math.log(cost_of(study.ask(SPACE).params)))
    return sum(costs) / len(costs)


def test_cost_aware_tpe_prefers_cheaper_configurations_of_equal_promise() -> None:
    gaps = [
        mean_log_cost_of_suggestions(0.0, s) - mean_log_cost_of_suggestions(DEFAULT_COST_WEIGHT, s)
        for s in range(3)
    ]
    assert min(gaps) > 0, gaps
    assert sum(gaps) / len(gaps) > 0.25, gaps


def suggestions(sampler: optuna.samplers.BaseSampler, pattern: str) -> list[dict[str, Any]]:
    """40 asks with four trials in flight, each finished one (c)omplete, (p)runed after a report or
    (i)nfeasible, in turn as the pattern says."""
    rng = random.Random(5)
    study = optuna.create_study(sampler=sampler)
    suggested, running = [], []
    for index in range(40):
        trial = study.ask(SPACE)
        suggested.append(trial.params)
        running.append(trial)
        if len(running) < 4:
            continue
        done = running.pop(0)
        kind = pattern[index % len(pattern)]
        if kind == "p":
            done.report(rng.random(), 1)
            study.tell(done, state=optuna.trial.TrialState.PRUNED)
            continue
        if kind == "i":
            study._storage.set_trial_system_attr(done._trial_id, "constraints", [rng.random()])
        study.tell(done, rng.choice([0.1, 0.2, 0.3, 0.4]))  # ties: a split must break them as Optuna does
    return suggested


def quarter(n: int) -> int:
    """A quarter of the trials are "good": with 40, ten, so the split reaches pruned and infeasible ones."""
    return min(math.ceil(0.25 * n), 25)


# Mostly complete; good trials mostly pruned (too few complete); mostly infeasible.
@pytest.mark.filterwarnings("ignore:`gamma` has been deprecated:FutureWarning")  # the test's split size only
@pytest.mark.parametrize("pattern", ["piccc", "pppppppic", "iiiiiiipc"])
@pytest.mark.parametrize("constant_liar", [True, False])
def test_cost_aware_tpe_at_weight_zero_suggests_what_optunas_tpe_does(
    constant_liar: bool, pattern: str
) -> None:
    # Its own trial split and its cache of finished trials' internal values must leave TPE as it is.
    settings: dict[str, Any] = {
        "seed": 7,
        "n_startup_trials": 5,
        "constant_liar": constant_liar,
        "gamma": quarter,
    }
    ours = CostAwareTPESampler(cost_weight=0.0, **settings)
    optunas = optuna.samplers.TPESampler(**settings)
    assert suggestions(ours, pattern) == suggestions(optunas, pattern)


def test_a_claims_tpe_sampler_does_not_write_its_sample_to_the_trial_on_its_own() -> None:
    # Optuna's constant liar shares a relative sample in a transaction of its own; a claim writes
    # every parameter at once right after sampling, so its sampler skips that write.
    def relative_attrs(sampler: optuna.samplers.BaseSampler) -> list[str]:
        study = optuna.create_study(sampler=sampler)
        rng = random.Random(3)
        study.add_trials(
            [
                optuna.trial.create_trial(params=random_params(rng), distributions=SPACE, value=rng.random())
                for _ in range(12)
            ]
        )
        trial = study.ask(SPACE)
        return [
            key for key in study._storage.get_trial_system_attrs(trial._trial_id) if "relative_params" in key
        ]

    spec = StudySpec.model_validate({"name": "s", "sampler": {"name": "tpe", "n_startup_trials": 5}})
    assert relative_attrs(build_sampler(spec, claim_index=0)) == []
    # Used through Optuna's own Trial, which writes parameters one suggest at a time, it shares as Optuna does.
    shared = CostAwareTPESampler(seed=1, n_startup_trials=5, constant_liar=True, cost_weight=1.0)
    assert relative_attrs(shared) != []


def test_kept_internal_values_are_optunas_as_the_study_grows() -> None:
    # Finished trials' rows are kept across claims in a matrix that grows; running trials are read
    # afresh; a trial without every parameter is left out. Each claim's columns must be Optuna's.
    rng = random.Random(2)
    study = optuna.create_study()
    ours = CostAwareTPESampler(seed=0, constant_liar=True, cost_weight=0.0)
    optunas = optuna.samplers.TPESampler(seed=0, constant_liar=True)
    for size in (3, 700, 1500):
        study.add_trials(
            [
                optuna.trial.create_trial(params=random_params(rng), distributions=SPACE, value=rng.random())
                for _ in range(size)
            ]
        )
        partial = {"width": 64, "learning_rate": 0.01}
        narrower = {name: SPACE[name] for name in partial}
        study.add_trial(optuna.trial.create_trial(params=partial, distributions=narrower, value=0.5))
        running = study.ask(SPACE)
        trials = study.get_trials(deepcopy=False)
        mine = internal_repr(ours, trials, SPACE, study)
        theirs = internal_repr(optunas, trials, SPACE, study)
        for name in SPACE:
            assert mine[name].dtype == theirs[name].dtype
            assert np.array_equal(mine[name], theirs[name])
        study.tell(running, 0.5)
    empty = internal_repr(ours, [], SPACE, study)
    assert {name: column.dtype for name, column in empty.items()} == {
        name: column.dtype for name, column in internal_repr(optunas, [], SPACE, study).items()
    }


def test_tpe_is_cost_aware_by_default_and_can_be_turned_off() -> None:
    default = build_sampler(StudySpec.model_validate({"name": "s"}), claim_index=0)
    assert isinstance(default, CostAwareTPESampler)
    assert default.cost_weight == DEFAULT_COST_WEIGHT
    off = StudySpec.model_validate({"name": "s", "sampler": {"name": "tpe", "cost_weight": 0}})
    assert build_sampler(off, claim_index=0).cost_weight == 0  # type: ignore[attr-defined]


def test_tpe_uses_scipys_log_ndtr_with_the_same_values() -> None:
    x = np.concatenate([np.linspace(-60.0, 60.0, 2001), [-1e4, -20.01, -19.99, 5.99, 6.01, 1e4]])
    optunas_own = optunas_log_ndtr(x)
    assert use_scipy_log_ndtr()
    CostAwareTPESampler(cost_weight=0.0)
    assert log_ndtr_in_use() is scipy.special.log_ndtr
    np.testing.assert_allclose(log_ndtr_in_use()(x), optunas_own, rtol=1e-9, atol=1e-12)


def test_cost_model_skips_trials_it_cannot_read() -> None:
    rng = random.Random(3)
    good = [timed_trial(p, SPACE, 0.5, cost_of(p)) for p in (random_params(rng) for _ in range(MIN_TRIALS))]
    odd = [
        optuna.trial.create_trial(
            params=random_params(rng),
            distributions=SPACE,
            value=0.5,
            user_attrs={"trial_s": s, "epochs_run": e},
        )
        for s, e in ((math.inf, 3), (math.nan, 3), (-1.0, 3), (2.0, 0), ("2", 3), (2.0, 1.5))
    ]
    model = CostModel.fit(SPACE, good + odd)
    assert model is not None and np.isfinite(model.weights).all()
    # A parameter value outside the space is skipped, not raised: sampling must never fail for the cost model.
    other = {**SPACE, "batch_size": CategoricalDistribution([16, 32, 64, 128, 256])}
    outside = optuna.trial.create_trial(
        params={"batch_size": 256, "width": 64, "learning_rate": 0.01},
        distributions=other,
        value=0.5,
        user_attrs={"trial_s": 1.0, "epochs_run": 1},
    )
    assert CostModel.fit(SPACE, [outside] * 10) is None


@pytest.mark.parametrize("finished, modelled", [(9, False), (10, True)])
def test_tpe_under_hyperband_starts_modelling_after_the_studys_startup_trials_not_each_brackets(
    finished: int, modelled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Optuna's bracket view filters get_trials, but TPE reads Study._get_trials: every bracket's
    # trials count towards n_startup_trials, once for the study (what README says).
    spec = StudySpec.model_validate(
        {"name": "s", "sampler": {"name": "tpe", "seed": 1}, "pruner": {"name": "hyperband"}}
    )
    space = distributions(spec.space)
    pruner = build_pruner(spec)
    study = optuna.create_study(sampler=build_sampler(spec, claim_index=0), pruner=pruner)
    rng = random.Random(0)
    for _ in range(finished):
        trial = study.ask(space)
        trial.report(rng.random(), 1)
        trial.should_prune()  # Hyperband sets up its brackets at its first pruning decision.
        study.tell(trial, rng.random())
    new = study._storage.get_trial(study.ask()._trial_id)
    bracket = bracket_id(pruner, study, new)
    finished_in_bracket = [
        t for t in study.trials if t.state.is_finished() and bracket_id(pruner, study, t) == bracket
    ]
    assert len(finished_in_bracket) < 10  # build_sampler's default n_startup_trials
    calls: list[int] = []
    modelling = CostAwareTPESampler._sample

    def spy(self: CostAwareTPESampler, *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        return modelling(self, *args, **kwargs)

    monkeypatch.setattr(CostAwareTPESampler, "_sample", spy)
    sample_params(study, new, space)
    assert bool(calls) is modelled


def test_cost_model_of_a_conditional_parameter_reads_only_the_trials_that_drew_it() -> None:
    # A linear head (depth 0) has no width: its cost says nothing about what a width costs.
    rng = random.Random(4)
    space: dict[str, BaseDistribution] = {"depth": IntDistribution(0, 2), **SPACE}
    trials = []
    for _ in range(30):
        drawn = {"depth": rng.randint(0, 2), **random_params(rng)}
        if drawn["depth"] == 0:
            del drawn["width"]
        per_epoch_s = cost_of(drawn) if "width" in drawn else 0.001
        trials.append(timed_trial(drawn, {name: space[name] for name in drawn}, 0.5, per_epoch_s))
    width = {"width": SPACE["width"]}
    assert CostModel.fit(width, [t for t in trials if "width" not in t.params]) is None
    model = CostModel.fit(width, trials)
    assert model is not None
    assert model.low == pytest.approx(min(math.log(cost_of(t.params)) for t in trials if "width" in t.params))
    narrow, wide = model.predict({"width": np.array([32.0, 1024.0])})
    assert narrow < wide
