"""Named doors to the few private steps of Optuna's ask and tell that a claim and a finish repeat on their own."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial


def filter_study(study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
    """The study as the pruner lets the trial see it (Hyperband: the trial's bracket), as Trial does."""
    return optuna.pruners._filter_study(study, trial)


def single_value(distribution: BaseDistribution) -> Any:
    """The one value of a distribution whose range holds one value, as Trial._suggest takes it."""
    return optuna.distributions._get_single_value(distribution)


def forget_cached_trials(study: optuna.Study) -> None:
    """Drop the study's per-thread snapshot of its trials, so the sampler reads the store afresh."""
    study._thread_local.cached_all_trials = None


def frozen_trial_of(trial: optuna.Trial) -> FrozenTrial:
    """The FrozenTrial an optuna.Trial keeps of itself (its parameters and reports so far)."""
    return trial._cached_frozen_trial
