"""The multivariate TPE's joint search space, kept up to date trial by trial, is the one Optuna computes."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.search_space import IntersectionSearchSpace, intersection_search_space
from optuna.trial import TrialState

from studies._optuna.cost_aware import CostAwareTPESampler
from studies._optuna.intersection import FinishedTrialsIntersection
from studies._optuna.reference import joint_search_space

# Parameters that some trials draw and others do not (a conditional head), and one whose range moves.
SPACES: list[dict[str, BaseDistribution]] = [
    {"lr": FloatDistribution(1e-4, 1e-1, log=True), "depth": IntDistribution(0, 2)},
    {
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "depth": IntDistribution(0, 2),
        "width": IntDistribution(16, 512),
        "act": CategoricalDistribution(["relu", "gelu"]),
    },
    {"lr": FloatDistribution(1e-4, 1e-2, log=True), "depth": IntDistribution(0, 2)},
]


@pytest.mark.parametrize("include_pruned", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_the_space_is_optunas_at_every_step_of_a_study_that_leaves_trials_unfinished(
    include_pruned: bool, seed: int
) -> None:
    rng = random.Random(seed)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    kept = FinishedTrialsIntersection(include_pruned=include_pruned)
    optunas = IntersectionSearchSpace(include_pruned=include_pruned)
    open_trials: list[optuna.Trial] = []
    for _ in range(150):
        action = rng.random()
        if action < 0.5 or not open_trials:
            open_trials.append(study.ask(rng.choice(SPACES[: 2 if rng.random() < 0.9 else 3])))
        else:
            trial = open_trials.pop(rng.randrange(len(open_trials)))
            state = rng.choice([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
            study._storage.set_trial_state_values(
                trial._trial_id, state, [rng.random()] if state == TrialState.COMPLETE else None
            )
        if rng.random() < 0.5:
            expected = intersection_search_space(study.get_trials(deepcopy=False), include_pruned)
            assert kept.calculate(study) == expected
            assert optunas.calculate(study) == expected


def test_one_instance_refuses_a_second_study_as_optunas_does() -> None:
    storage = optuna.storages.RDBStorage("sqlite://")
    kept = FinishedTrialsIntersection()
    kept.calculate(optuna.create_study(storage=storage))
    with pytest.raises(ValueError, match="multiple studies"):
        kept.calculate(optuna.create_study(storage=storage))


def test_the_cost_aware_tpe_samples_the_space_of_the_trials_finished_after_one_left_running() -> None:
    study = optuna.create_study(
        sampler=CostAwareTPESampler(cost_weight=0.0, seed=1, n_startup_trials=3, constant_liar=True)
    )
    study.ask(SPACES[1])
    for index in range(8):
        trial = study.ask(SPACES[index % 2])
        study.tell(trial, trial.params["lr"])
    trial = study.ask()
    assert isinstance(joint_search_space(study.sampler), FinishedTrialsIntersection)
    relative = study.sampler.infer_relative_search_space(study, study._storage.get_trial(trial._trial_id))
    assert relative == SPACES[0]
