"""A TPE sampler that weighs each candidate's expected gain against its predicted compute per epoch, and
against a prior from earlier studies' good configurations while the study's own trials are few."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers._tpe import sampler as _tpe
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator
from optuna.samplers._tpe.sampler import default_gamma, default_gamma_multiobjective
from optuna.trial import FrozenTrial, TrialState

from studies._optuna import mixture_density
from studies._optuna.intersection import FinishedTrialsIntersection
from studies._optuna.log_ndtr import use_scipy_log_ndtr

# Recorded by the worker on every finished trial (completed or pruned): wall seconds and epochs trained.
SECONDS_ATTR = "trial_s"
EPOCHS_ATTR = "epochs_run"
# Enough finished trials to fit a cost per parameter; the most recent ones are enough to know it.
MIN_TRIALS = 5
MAX_TRIALS = 1_000
RIDGE = 1.0
# The prior's pull is prior_weight * PRIOR_HALF_LIFE / (PRIOR_HALF_LIFE + finished trials): halved by the
# 10th finished trial of the study's own, a tenth by the 90th. As in piBO (Hvarfner et al. 2022), whose
# exponent on the prior decays as beta / n, the study's own evidence takes over.
PRIOR_HALF_LIFE = 10
# A start drawn near a prior configuration keeps its choices this often, and draws its numbers this wide (a
# share of the range): near, not on it, so starts explore around what worked before.
PRIOR_KEEP_CHOICE = 0.8
PRIOR_SPREAD = 0.1
_MISSING: Any = object()


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

    @staticmethod
    def observation(
        space: Mapping[str, BaseDistribution], trial: FrozenTrial
    ) -> tuple[list[float], float] | None:
        """A finished trial's parameters in internal form and its seconds per epoch; None if it says nothing."""
        cost = seconds_per_epoch(trial)
        if cost is None or not space.keys() <= trial.params.keys():
            return None
        try:
            return [float(d.to_internal_repr(trial.params[name])) for name, d in space.items()], cost
        except ValueError:
            return None  # a value outside this space (an enqueued trial, say) says nothing about its cost

    @classmethod
    def fit(cls, space: Mapping[str, BaseDistribution], trials: Sequence[FrozenTrial]) -> CostModel | None:
        """A model of the finished trials' cost per epoch; None with too few of them to fit one."""
        return cls.fit_observations(space, [cls.observation(space, t) for t in trials[-MAX_TRIALS:]])

    @classmethod
    def fit_observations(
        cls, space: Mapping[str, BaseDistribution], observations: Sequence[tuple[list[float], float] | None]
    ) -> CostModel | None:
        """The model of observations made by `observation`; None with fewer than MIN_TRIALS of them."""
        seen = [o for o in observations if o is not None]
        if len(seen) < MIN_TRIALS:
            return None
        table = np.array([row for row, _ in seen], dtype=float)
        columns = {name: table[:, i] for i, name in enumerate(space)}
        x = features(space, columns)
        y = np.log([cost for _, cost in seen])
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


class _ReprTable:
    """Finished trials' internal values for one search space: one row each, in a matrix that grows."""

    def __init__(self, width: int) -> None:
        self.rows = np.empty((1024, width))
        self.size = 0
        # Trial id to its row; -1 for a trial without every parameter of the space (TPE skips it).
        self.positions: dict[int, int] = {}
        self.lock = threading.Lock()

    def add(self, trial_id: int, row: tuple[float, ...] | None) -> int:
        if row is None:
            self.positions[trial_id] = -1
            return -1
        if self.size == len(self.rows):
            self.rows = np.concatenate([self.rows, np.empty_like(self.rows)])
        self.rows[self.size] = row
        self.positions[trial_id] = self.size
        self.size += 1
        return self.size - 1


def _number(trial: FrozenTrial) -> int:
    return trial.number


class CostAwareTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE, choosing among its candidates by log(l/g) minus cost_weight times log seconds per epoch.

    TPE draws candidates from the density of good trials (l) and keeps the one that maximises
    l/g; here each candidate also pays for its predicted cost, so of two configurations the model
    finds equally promising the one that trains faster per epoch wins: at weight 1, TPE's
    density ratio per second, in the spirit of expected improvement per second (Snoek et al.
    2012). Until MIN_TRIALS trials have recorded their timing it is plain TPE.
    """

    def __init__(
        self,
        *,
        cost_weight: float,
        share_relative_params: bool = True,
        prior: Sequence[Mapping[str, Any]] = (),
        prior_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        use_scipy_log_ndtr()
        # The multivariate TPE's joint space, from the trials finished since the last sample: Optuna's rescans
        # every trial after the oldest unfinished one, and an asha study keeps paused trials unfinished.
        self._search_space = FinishedTrialsIntersection(include_pruned=True)
        self.cost_weight = cost_weight
        # Configurations earlier studies found good, in this study's space; see prior_strength.
        self.prior = [dict(p) for p in prior] if prior_weight > 0 else []
        self.prior_weight = prior_weight
        # The prior configuration each trial started from, by trial number, while the study is starting up.
        self._anchors: dict[int, int] = {}
        self._share_relative_params = share_relative_params
        # Fitted per sample and read back by the acquisition below; one per thread, as a store
        # with several threads of workers can share a sampler.
        self._local = threading.local()
        self._reprs: dict[tuple[tuple[str, BaseDistribution], ...], _ReprTable] = {}
        # Finished trials' constraint scores and (single-objective) values, by trial id.
        self._finished: dict[int, tuple[float, float]] = {}
        self._observations: dict[
            tuple[tuple[str, BaseDistribution], ...], dict[int, tuple[list[float], float] | None]
        ] = {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        # With constant_liar Optuna writes the relative sample to the trial in a transaction of its
        # own, so that other processes see a running trial's parameters before Trial.suggest_* has
        # written them one by one. A caller that writes them all at once right after sampling (a
        # tunefleet claim) has no such gap, and the extra transaction was ~7% of a claim's CPU.
        if self._share_relative_params or self._group:
            return super().sample_relative(study, trial, search_space)
        return self._sample_relative(study, trial, search_space)

    def prior_strength(self, n_finished: int) -> float:
        """The prior's pull once the study has n_finished trials of its own: fades from prior_weight toward 0."""
        if not self.prior:
            return 0.0
        return self.prior_weight * PRIOR_HALF_LIFE / (PRIOR_HALF_LIFE + n_finished)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if self.prior:
            finished = study._get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=True
            )
            if len(finished) < self._n_startup_trials:
                # Some of TPE's random start drawn near good configurations of the earlier studies instead.
                drawn = self._sample_prior(trial, param_name, param_distribution, len(finished))
                if drawn is not _MISSING:
                    return drawn
        return super().sample_independent(study, trial, param_name, param_distribution)

    def _prior_rows(
        self, search_space: dict[str, BaseDistribution], configs: Sequence[Mapping[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """The prior configurations (or configs) that set every parameter of the space, in internal form."""
        rows = []
        for config in self.prior if configs is None else configs:
            if not search_space.keys() <= config.keys():
                continue
            try:
                rows.append({name: d.to_internal_repr(config[name]) for name, d in search_space.items()})
            except ValueError:
                continue  # outside this space: warm start fitted it to the space the study was created with
        return rows

    def _prior_estimator(
        self, rows: Sequence[Mapping[str, Any]], search_space: dict[str, BaseDistribution]
    ) -> _ParzenEstimator:
        columns = {name: np.asarray([row[name] for row in rows]) for name in search_space}
        # Half the density on the estimator's own broad kernel over the whole range, half on the configurations:
        # the prior raises the score near them without sinking it far from them, where a source that was
        # another task may simply have been wrong.
        parameters = self._parzen_estimator_parameters._replace(prior_weight=float(len(rows)))
        return self._parzen_estimator_cls(columns, search_space, parameters)

    def _sample_prior(
        self, trial: FrozenTrial, name: str, distribution: BaseDistribution, n_finished: int
    ) -> Any:
        # One prior configuration per trial, drawn at its first parameter: the others are sampled one by one
        # (independent TPE), each near the same configuration, so a start keeps the pairings that made it good.
        # With probability strength / (1 + strength) (a half at weight 1 and no trials), else none: the rest of
        # the start stays random, so a study whose best lies far from its sources' still sees the whole space.
        rng = self._rng.rng
        anchor = self._anchors.get(trial.number)
        if anchor is None:
            strength = self.prior_strength(n_finished)
            near_prior = rng.rand() < strength / (1.0 + strength)
            anchor = self._anchors[trial.number] = int(rng.randint(len(self.prior))) if near_prior else -1
            for number in [n for n in self._anchors if n < trial.number - 1_000]:
                del self._anchors[number]
        if anchor < 0:
            return _MISSING
        config = self.prior[anchor]
        if name not in config:
            # A parameter the anchor lacks (a linear head has no width): near any configuration that has it.
            having = [c for c in self.prior if name in c]
            if not having:
                return _MISSING
            config = having[int(rng.randint(len(having)))]
        return near(distribution, config[name], rng)

    def _sample(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        # Optuna's TPESampler._sample, but with the study as one snapshot per claim and per-trial work
        # on finished trials done once per process: at 5,000 trials that work (parameters to internal
        # form, constraint scores), redone for every trial at every claim, was most of a claim's CPU.
        # Optuna re-reads the study here for constant_liar's running trials; the snapshot was read by
        # the search-space inference of the same claim moments before, so it holds them too.
        states: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED)
        if self._constant_liar:
            states += (TrialState.RUNNING,)
        trials = study._get_trials(deepcopy=False, states=states, use_cache=True)
        if self._constant_liar:
            trials = [t for t in trials if t.number != trial.number]
        finished = [t for t in trials if t.state != TrialState.RUNNING]
        self._local.model = self._cost_model(search_space, finished) if self.cost_weight > 0 else None
        strength = self.prior_strength(len(finished))
        prior_rows = self._prior_rows(search_space) if strength > 0 else []
        try:
            if self._gamma is None:
                self._gamma = default_gamma if len(study.directions) <= 1 else default_gamma_multiobjective
            below, above = self._split_trials(study, trials, self._gamma(len(finished)))
            mpe_below = self._build_parzen_estimator(study, search_space, below, handle_below=True)
            mpe_above = self._build_parzen_estimator(study, search_space, above, handle_below=False)
            samples = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
            if prior_rows:
                # The candidates come from the good trials' density and the prior's, and pay the prior's
                # log density times its fading strength on top of TPE's log(l/g).
                mpe_prior = self._prior_estimator(prior_rows, search_space)
                from_prior = mpe_prior.sample(self._rng.rng, self._n_ei_candidates)
                samples = {name: np.concatenate([samples[name], from_prior[name]]) for name in samples}
                self._local.prior = (mpe_prior, strength)
            chosen = optuna.samplers.TPESampler._compare(
                samples, self._compute_acquisition_func(samples, mpe_below, mpe_above)
            )
        finally:
            self._local.model = None
            self._local.prior = None
        return {name: d.to_external_repr(chosen[name]) for name, d in search_space.items()}

    def _cost_model(
        self, search_space: dict[str, BaseDistribution], finished: list[FrozenTrial]
    ) -> CostModel | None:
        # CostModel.fit, with each finished trial's observation made once per process, as its internal values are.
        cache = self._observations.setdefault(tuple(search_space.items()), {})
        observations = []
        for t in finished[-MAX_TRIALS:]:
            seen = cache.get(t._trial_id, _MISSING)
            if seen is _MISSING:
                seen = cache[t._trial_id] = CostModel.observation(search_space, t)
            observations.append(seen)
        return CostModel.fit_observations(search_space, observations)

    def _split_trials(
        self, study: optuna.Study, trials: list[FrozenTrial], n_below: int
    ) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
        """optuna.samplers._tpe.sampler._split_trials for trials in number order, as Study._get_trials gives.

        Finished trials' constraint scores and values are kept per process; the good trials are
        found by one stable numpy sort of the values (Python's sort is stable too, so ties split
        alike); every other trial is "above", already in number order.
        """
        complete: list[FrozenTrial] = []
        values: list[float] = []
        pruned: list[FrozenTrial] = []
        infeasible: list[FrozenTrial] = []
        kept = self._finished
        for t in trials:
            if t.state == TrialState.RUNNING:
                continue
            known = kept.get(t._trial_id)
            if known is None:
                score = _tpe._get_infeasible_trial_score(t)
                single = t.state == TrialState.COMPLETE and t.values is not None and len(t.values) == 1
                known = kept[t._trial_id] = (score, t.values[0] if single else math.nan)
            if known[0] > 0:
                infeasible.append(t)
            elif t.state == TrialState.COMPLETE:
                complete.append(t)
                values.append(known[1])
            elif t.state == TrialState.PRUNED:
                pruned.append(t)
            else:
                raise AssertionError(f"trial {t.number} is {t.state.name}")
        n = min(n_below, len(complete))
        if len(study.directions) > 1:
            below = _tpe._split_complete_trials(complete, study, n)[0]
        else:
            sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
            order = np.argsort(sign * np.asarray(values, dtype=float), kind="stable")
            below = [complete[i] for i in order[:n]]
        n_below = max(0, n_below - len(below))
        if n_below and pruned:
            below_pruned = _tpe._split_pruned_trials(pruned, study, n_below)[0]
            below += below_pruned
            n_below = max(0, n_below - len(below_pruned))
        if n_below and infeasible:
            below += _tpe._split_infeasible_trials(infeasible, n_below)[0]
        below.sort(key=_number)
        chosen = {t._trial_id for t in below}
        return below, [t for t in trials if t._trial_id not in chosen]

    def _get_internal_repr(
        self, trials: list[FrozenTrial], search_space: dict[str, BaseDistribution], study: optuna.Study
    ) -> dict[str, np.ndarray]:
        # A finished trial's parameters never change: its row of internal values is computed once,
        # into one matrix per search space, and a claim gathers the rows it needs in one step.
        key = tuple(search_space.items())
        table = self._reprs.get(key)
        if table is None:
            table = self._reprs.setdefault(key, _ReprTable(len(search_space)))
        with table.lock:
            positions = table.positions
            index: list[int] = []
            running: list[tuple[int, tuple[float, ...]]] = []
            for t in trials:
                if t.state != TrialState.RUNNING:
                    at = positions.get(t._trial_id)
                    if at is None:
                        at = table.add(t._trial_id, self._internal_row(t, search_space, study))
                    if at >= 0:
                        index.append(at)
                    continue
                # A running trial's parameters may still be coming: read them afresh every time.
                row = self._internal_row(t, search_space, study)
                if row is not None:
                    running.append((len(index), row))
                    index.append(-1)
            rows = table.rows[index] if index else np.empty((0, len(search_space)))
            for i, row in running:
                rows[i] = row
        columns = {}
        for j, (name, d) in enumerate(search_space.items()):
            column = rows[:, j]
            # Optuna's arrays come from Python values: categorical indices make an integer array.
            columns[name] = (
                column.astype(np.int64) if isinstance(d, CategoricalDistribution) and index else column
            )
        return columns

    def _internal_row(
        self, trial: FrozenTrial, search_space: dict[str, BaseDistribution], study: optuna.Study
    ) -> tuple[float, ...] | None:
        params = self._get_params(trial, study)
        if not search_space.keys() <= params.keys():
            return None
        return tuple(d.to_internal_repr(params[name]) for name, d in search_space.items())

    def _compute_acquisition_func(
        self,
        samples: dict[str, np.ndarray],
        mpe_below: _ParzenEstimator,
        mpe_above: _ParzenEstimator,
    ) -> np.ndarray:
        values = _log_density(mpe_below, samples) - _log_density(mpe_above, samples)
        prior: tuple[_ParzenEstimator, float] | None = getattr(self._local, "prior", None)
        if prior is not None:
            values = values + prior[1] * _log_density(prior[0], samples)
        model: CostModel | None = getattr(self._local, "model", None)
        if model is None or not model.space.keys() <= samples.keys():
            return values
        return values - self.cost_weight * model.predict(samples)


def near(distribution: BaseDistribution, value: Any, rng: np.random.RandomState) -> Any:
    """A value drawn near the given one: the same choice PRIOR_KEEP_CHOICE of the time, else any; a number from
    a normal around it, PRIOR_SPREAD of the range wide (on the log scale for a log range), kept in the range."""
    if isinstance(distribution, CategoricalDistribution):
        if value in distribution.choices and rng.rand() < PRIOR_KEEP_CHOICE:
            return value
        return distribution.choices[int(rng.randint(len(distribution.choices)))]
    assert isinstance(distribution, FloatDistribution | IntDistribution)
    low, high, center = float(distribution.low), float(distribution.high), float(value)
    if distribution.log:
        low, high, center = math.log(low), math.log(high), math.log(max(center, float(distribution.low)))
    drawn = float(np.clip(rng.normal(center, PRIOR_SPREAD * (high - low)), low, high))
    if distribution.log:
        drawn = math.exp(drawn)
    step = distribution.step
    if step is not None:
        drawn = distribution.low + round((drawn - distribution.low) / step) * step
    drawn = min(max(drawn, distribution.low), distribution.high)
    return round(drawn) if isinstance(distribution, IntDistribution) else float(drawn)


def _log_density(estimator: _ParzenEstimator, samples: dict[str, np.ndarray]) -> np.ndarray:
    """estimator.log_pdf(samples), through tunefleet's faster and identical mixture density where it applies."""
    mixture = estimator._mixture_distribution
    if not mixture_density.supported(mixture):
        return estimator.log_pdf(samples)
    return mixture_density.log_pdf(mixture, estimator._transform(samples))
