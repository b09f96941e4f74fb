"""A TPE sampler that weighs each candidate's expected gain against its predicted compute per epoch."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator
from optuna.trial import FrozenTrial, TrialState

from studies.log_ndtr import use_scipy_log_ndtr

# Recorded by the worker on every finished trial (completed or pruned): wall seconds and epochs trained.
SECONDS_ATTR = "trial_s"
EPOCHS_ATTR = "epochs_run"
# Enough finished trials to fit a cost per parameter; the most recent ones are enough to know it.
MIN_TRIALS = 5
MAX_TRIALS = 1_000
RIDGE = 1.0


def seconds_per_epoch(trial: FrozenTrial) -> float | None:
    """What one epoch of a finished trial cost, from the worker's own timing; None when it was not recorded."""
    seconds = trial.user_attrs.get(SECONDS_ATTR)
    epochs = trial.user_attrs.get(EPOCHS_ATTR)
    if not isinstance(seconds, int | float) or not isinstance(epochs, int) or epochs < 1:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return float(seconds) / epochs


class CostModel:
    """Ridge regression of log seconds per epoch on a search space's parameters, scaled to [0, 1]."""

    def __init__(self, space: Mapping[str, BaseDistribution], weights: np.ndarray, low: float, high: float):
        self.space = dict(space)
        self.weights = weights
        # Predictions stay inside what was observed: a linear fit must not extrapolate a cost
        # far below anything measured and pull the search to the edge of the space for it.
        self.low = low
        self.high = high

    @classmethod
    def fit(cls, space: Mapping[str, BaseDistribution], trials: Sequence[FrozenTrial]) -> CostModel | None:
        """A model of the finished trials' cost per epoch; None with too few of them to fit one."""
        rows: list[list[float]] = []
        costs: list[float] = []
        for t in trials[-MAX_TRIALS:]:
            cost = seconds_per_epoch(t)
            if cost is None or not space.keys() <= t.params.keys():
                continue
            try:
                rows.append([float(d.to_internal_repr(t.params[name])) for name, d in space.items()])
            except ValueError:
                continue  # a value outside this space (an enqueued trial, say) says nothing about its cost
            costs.append(cost)
        if len(costs) < MIN_TRIALS:
            return None
        table = np.array(rows, dtype=float)
        columns = {name: table[:, i] for i, name in enumerate(space)}
        x = features(space, columns)
        y = np.log(costs)
        penalty = RIDGE * np.eye(x.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        weights = np.linalg.solve(x.T @ x + penalty, x.T @ y)
        return cls(space, weights, float(y.min()), float(y.max()))

    def predict(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Predicted log seconds per epoch of points given as internal-representation columns."""
        return np.clip(features(self.space, columns) @ self.weights, self.low, self.high)


def features(space: Mapping[str, BaseDistribution], columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """An intercept, each numeric parameter scaled to [0, 1] (log-scaled where its range is), one-hot choices."""
    size = len(next(iter(columns.values()))) if columns else 0
    out = [np.ones(size)]
    for name, distribution in space.items():
        x = np.asarray(columns[name], dtype=float)
        if isinstance(distribution, CategoricalDistribution):
            out.extend((x == i).astype(float) for i in range(1, len(distribution.choices)))
            continue
        low, high = float(distribution.low), float(distribution.high)  # type: ignore[attr-defined]
        if getattr(distribution, "log", False):
            x, low, high = np.log(x), math.log(low), math.log(high)
        out.append((x - low) / (high - low) if high > low else np.zeros(size))
    return np.stack(out, axis=1)


class CostAwareTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE, choosing among its candidates by log(l/g) minus cost_weight times log seconds per epoch.

    TPE draws candidates from the density of good trials (l) and keeps the one that maximises
    l/g; here each candidate also pays for its predicted cost, so of two configurations the model
    finds equally promising the one that trains faster per epoch wins: at weight 1, TPE's
    density ratio per second, in the spirit of expected improvement per second (Snoek et al.
    2012). Until MIN_TRIALS trials have recorded their timing it is plain TPE.
    """

    def __init__(self, *, cost_weight: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        use_scipy_log_ndtr()
        self.cost_weight = cost_weight
        # Fitted per sample and read back by the acquisition below; one per thread, as a store
        # with several threads of workers can share a sampler.
        self._local = threading.local()

    def _sample(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        model = None
        if self.cost_weight > 0:
            finished = study._get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=True
            )
            model = CostModel.fit(search_space, finished)
        self._local.model = model
        try:
            return super()._sample(study, trial, search_space)
        finally:
            self._local.model = None

    def _compute_acquisition_func(
        self,
        samples: dict[str, np.ndarray],
        mpe_below: _ParzenEstimator,
        mpe_above: _ParzenEstimator,
    ) -> np.ndarray:
        values = super()._compute_acquisition_func(samples, mpe_below, mpe_above)
        model: CostModel | None = getattr(self._local, "model", None)
        if model is None or not model.space.keys() <= samples.keys():
            return values
        return values - self.cost_weight * model.predict(samples)
