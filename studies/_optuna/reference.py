"""Optuna's own private computations, by name, for the tests that prove tunefleet's equal to them."""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers._tpe import _truncnorm
from optuna.samplers._tpe import sampler as _tpe
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator
from optuna.samplers._tpe.probability_distributions import _MixtureOfProductDistribution, _unique_inverse_2d
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial, TrialState

ParzenEstimator = _ParzenEstimator
MixtureOfProductDistribution = _MixtureOfProductDistribution


def joint_search_space(sampler: optuna.samplers.TPESampler) -> IntersectionSearchSpace:
    """What a multivariate TPE computes its joint search space with."""
    return sampler._search_space


def split_complete_trials(
    trials: Sequence[FrozenTrial], study: optuna.Study, n_below: int
) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """TPE's split of complete trials into the n_below best and the rest."""
    return _tpe._split_complete_trials(trials, study, n_below)


def build_parzen_estimator(
    sampler: optuna.samplers.TPESampler,
    study: optuna.Study,
    space: dict[str, BaseDistribution],
    trials: list[FrozenTrial],
    *,
    handle_below: bool,
) -> _ParzenEstimator:
    """The Parzen estimator TPE builds over the trials (the good ones when handle_below)."""
    return sampler._build_parzen_estimator(study, space, trials, handle_below=handle_below)


def mixture_of(estimator: _ParzenEstimator) -> _MixtureOfProductDistribution:
    """The estimator's mixture of per-trial distributions."""
    return estimator._mixture_distribution


def transformed(estimator: _ParzenEstimator, samples: dict[str, np.ndarray]) -> np.ndarray:
    """Samples as the mixture reads them (log-scaled, one column per parameter)."""
    return estimator._transform(samples)


def unique_inverse_2d(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optuna's distinct (a, b) pairs and each element's index among them."""
    return _unique_inverse_2d(a, b)


def internal_repr(
    sampler: optuna.samplers.TPESampler,
    trials: list[FrozenTrial],
    space: dict[str, BaseDistribution],
    study: optuna.Study,
) -> dict[str, np.ndarray]:
    """The trials' parameters in internal form, one column per parameter, as TPE gathers them."""
    return sampler._get_internal_repr(trials, space, study)


def read_trials(
    storage: optuna.storages.RDBStorage,
    study_id: int,
    states: Container[TrialState] | None,
    included_trial_ids: set[int],
    trial_id_greater_than: int,
) -> list[FrozenTrial]:
    """The trials Optuna's trial cache asks the storage for when it fills or refreshes itself."""
    return storage._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)


def bracket_id(pruner: optuna.pruners.HyperbandPruner, study: optuna.Study, trial: FrozenTrial) -> int:
    """The Hyperband bracket the trial belongs to."""
    return pruner._get_bracket_id(study, trial)


def log_ndtr_in_use() -> Callable[[Any], Any]:
    """The log_ndtr TPE's truncated normals call now (Optuna's own, or SciPy's once swapped in)."""
    return _truncnorm._log_ndtr


def optunas_log_ndtr(x: np.ndarray) -> np.ndarray:
    """Optuna's pure-Python log_ndtr, one value at a time, as it computes it without the swap."""
    return np.frompyfunc(_truncnorm._log_ndtr_single, 1, 1)(x).astype(float)
