"""The log density of TPE's Parzen mixtures, as Optuna computes it, in fewer passes over candidates x trials."""

from __future__ import annotations

import numpy as np
from optuna.samplers._tpe import _truncnorm
from optuna.samplers._tpe.probability_distributions import (
    _BatchedCategoricalDistributions,
    _BatchedDiscreteTruncLogNormDistributions,
    _BatchedDiscreteTruncNormDistributions,
    _BatchedTruncLogNormDistributions,
    _BatchedTruncNormDistributions,
    _MixtureOfProductDistribution,
)

_Numeric = (
    _BatchedTruncNormDistributions
    | _BatchedTruncLogNormDistributions
    | _BatchedDiscreteTruncNormDistributions
    | _BatchedDiscreteTruncLogNormDistributions
)


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (a, b) pairs in order, and each element's index among them: Optuna's _unique_inverse_2d.

    Optuna's first sort is numpy's default quicksort, which took 0.5 ms on 5,000 bandwidths that are
    nearly all equal; a stable one gives the same pairs and indices (ties are equal pairs) in 0.02 ms.
    """
    order = np.argsort(b, kind="stable")
    order = order[np.argsort(a[order], kind="stable")]
    a_order, b_order = a[order], b[order]
    first = np.empty_like(a, dtype=bool)
    first[0] = True
    first[1:] = (a_order[1:] != a_order[:-1]) | (b_order[1:] != b_order[:-1])
    inverse = np.empty(a_order.size, dtype=int)
    inverse[order] = np.cumsum(first) - 1
    return a_order[first], b_order[first], inverse


def supported(mixture: object) -> bool:
    """Whether log_pdf knows every kind of distribution in the mixture (else use Optuna's own)."""
    return isinstance(mixture, _MixtureOfProductDistribution) and all(
        isinstance(d, _BatchedCategoricalDistributions | _Numeric) for d in mixture.distributions
    )


def log_pdf(mixture: _MixtureOfProductDistribution, x: np.ndarray) -> np.ndarray:
    """_MixtureOfProductDistribution.log_pdf(x), value for value.

    Per (candidate, trial) pair Optuna's version takes the log of each categorical weight again, runs
    a truncated normal's bounds through np.select, gathers discrete masses with np.ix_ and evaluates
    the mass of each candidate's interval through a uniqueness pass that finds nothing to share: at
    24 candidates and 5,000 trials that was 12 ms of a 33 ms claim. Here each weight's log is taken
    once per trial, bounds are checked and applied only where crossed, and the same floating-point
    operations run in the same order, so the result is identical (tests/unit/test_mixture_density.py).
    """
    weighted = np.zeros((len(x), len(mixture.weights)), dtype=np.float64)
    continuous: list[np.ndarray] = []
    for i, d in enumerate(mixture.distributions):
        if isinstance(d, _BatchedCategoricalDistributions):
            weighted += np.log(d.weights).T[x[:, i].astype(np.int64)]
            continue
        if (step := d.step) == 0.0:
            continuous.append(_truncnorm_log_pdf(d, np.log(x[:, i]) if d.is_log else x[:, i]))
            continue
        x_unique, x_inverse = np.unique(x[:, i], return_inverse=True)
        mu_unique, sigma_unique, mu_sigma_inverse = unique_pairs(d.mu, d.sigma)
        left = np.log(x_unique - step / 2) if d.is_log else (x_unique - step / 2)
        right = np.log(x_unique + step / 2) if d.is_log else (x_unique + step / 2)
        mass = _truncnorm._log_gauss_mass(
            (left[:, np.newaxis] - mu_unique) / sigma_unique,
            (right[:, np.newaxis] - mu_unique) / sigma_unique,
        )
        weighted += np.take(mass[x_inverse], mu_sigma_inverse, axis=1)
        weighted -= _truncnorm._log_gauss_mass(
            (d.adapted_low - mu_unique) / sigma_unique, (d.adapted_high - mu_unique) / sigma_unique
        )[mu_sigma_inverse]
    if continuous:
        # Optuna sums the continuous parameters' terms over a last axis, then adds: the same sum here.
        weighted += continuous[0] if len(continuous) == 1 else np.stack(continuous, axis=-1).sum(axis=-1)
    weighted += np.log(mixture.weights[np.newaxis])
    max_ = weighted.max(axis=1)
    max_[np.isneginf(max_)] = 0
    with np.errstate(divide="ignore"):
        return np.log(np.exp(weighted - max_[:, None]).sum(axis=1)) + max_


def _truncnorm_log_pdf(d: _Numeric, x: np.ndarray) -> np.ndarray:
    # _truncnorm.logpdf for candidates x against every trial's truncated normal.
    a = (d.adapted_low - d.mu) / d.sigma
    b = (d.adapted_high - d.mu) / d.sigma
    z = (x[:, np.newaxis] - d.mu) / d.sigma
    out: np.ndarray = _truncnorm._norm_logpdf(z) - _truncnorm._log_gauss_mass(a, b) - np.log(d.sigma)
    outside = (z < a) | (z > b)
    if outside.any():
        out[outside] = -np.inf
    degenerate = a == b
    if degenerate.any():
        out[:, degenerate] = np.nan
    return out
