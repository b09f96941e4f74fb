"""A recorded task as an objective: any configuration's curve and cost, predicted from the recorded ones."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from scipy.stats import spearmanr
from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

from bench.replay.curves import Curve, Recording
from bench.replay.forest import BEST_SO_FAR, CURVES, SURROGATES, FlatForest, Replayed, replay_row
from studies import StudySpec
from studies.space import distributions

# The configuration's own epoch budget is not a feature: every curve is recorded to the space's last epoch,
# and a trial of `epochs` epochs is its prefix.
NOT_FEATURES = frozenset({"epochs"})
TREES = 64


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


@dataclass(frozen=True)
class Encoder:
    """Configurations as rows of numbers: log scales where the space has them, one column per categorical choice,
    and a column that says whether a conditional parameter was drawn at all."""

    space: Mapping[str, BaseDistribution]

    @classmethod
    def of(cls, spec: StudySpec) -> Encoder:
        assert not isinstance(spec.space, dict)
        return cls({n: d for n, d in distributions(spec.space).items() if n not in NOT_FEATURES})

    def row(self, params: Mapping[str, Any]) -> list[float]:
        row: list[float] = []
        for name, d in self.space.items():
            value = params.get(name)
            row.append(0.0 if value is None else 1.0)
            if isinstance(d, CategoricalDistribution) and _numeric(d.choices):
                positive = all(float(c) > 0 for c in d.choices if isinstance(c, int | float))
                row.append(-1.0 if value is None else math.log2(float(value)) if positive else float(value))
            elif isinstance(d, CategoricalDistribution):
                row.extend(1.0 if value == choice else 0.0 for choice in d.choices)
            else:
                assert isinstance(d, FloatDistribution | IntDistribution)
                if value is None:
                    row.append(-1.0)
                else:
                    low, high = (math.log(d.low), math.log(d.high)) if d.log else (d.low, d.high)
                    x = math.log(float(value)) if d.log else float(value)
                    row.append((x - low) / (high - low) if high > low else 0.0)
        return row

    def rows(self, configurations: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.asarray([self.row(p) for p in configurations], dtype=np.float64)


def flat_forest(
    forest: RandomForestRegressor | ExtraTreesRegressor, values: list[np.ndarray] | None = None
) -> FlatForest:
    """A fitted sklearn forest's trees as one FlatForest; `values` (one array per tree, a row per node) replaces
    what the trees predict."""
    trees = [estimator.tree_ for estimator in forest.estimators_]
    sizes = [tree.node_count for tree in trees]
    offsets = np.cumsum([0, *sizes[:-1]])
    return FlatForest(
        roots=offsets.astype(np.int64),
        feature=np.concatenate([tree.feature for tree in trees]).astype(np.int64),
        threshold=np.concatenate([tree.threshold for tree in trees]),
        left=np.concatenate([tree.children_left + o for tree, o in zip(trees, offsets, strict=True)]),
        right=np.concatenate([tree.children_right + o for tree, o in zip(trees, offsets, strict=True)]),
        value=np.concatenate(values if values is not None else [tree.value[:, :, 0] for tree in trees]),
    )


def leaf_means(forest: ExtraTreesRegressor, features: np.ndarray, targets: np.ndarray) -> list[np.ndarray]:
    """Each tree's nodes valued by the mean of other targets over the fitted rows in each leaf (every row is in
    every tree: extremely randomized trees draw no bootstrap sample)."""
    values = []
    for estimator, leaves in zip(forest.estimators_, forest.apply(features).T, strict=True):
        sums = np.zeros((estimator.tree_.node_count, targets.shape[1]))
        np.add.at(sums, leaves, targets)
        counts = np.bincount(leaves, minlength=estimator.tree_.node_count)[:, None]
        values.append(np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0))
    return values


def _log(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Natural logs from the C library, not numpy: numpy picks its vector code for `log` by the CPU, and its AVX-512
    code differs from the others in the last bit of a few values in a thousand, enough to move a split of the
    forest, so that the same recording replayed differently on another machine."""
    return np.asarray([[math.log(v) for v in row] for row in rows], dtype=np.float64)


def _standardized(columns: np.ndarray) -> np.ndarray:
    return (columns - columns.mean(axis=0)) / np.maximum(columns.std(axis=0), 1e-9)


def _padded(values: list[float], n: int) -> list[float]:
    # A curve that failed (a NaN loss) stops early; its last value stands for the epochs it never ran,
    # and the nearest recorded configuration says whether a replayed trial fails.
    return values + [values[-1]] * (n - len(values)) if values else [math.nan] * n


class Surrogate:
    """A forest from configuration to its whole curve (log loss, accuracy) and log CPU seconds per epoch, fitted
    on a recording's curves; a replayed trial fails where the nearest recorded configuration failed.

    Model `best-so-far` (the default): extremely randomized trees split on the best-so-far log loss of each epoch
    and the log seconds, standardized, and their leaves carry the curve as well. A forest that averages raw curves
    (model `curves`, a random forest on loss, accuracy and seconds together) ranks configurations by the minimum of
    an averaged curve: where curves overfit at different epochs (tweets) that minimum sits well above each curve's
    own, and the accuracy and seconds columns steer its splits more than the losses do."""

    def __init__(
        self, spec: StudySpec, curves: Sequence[Curve], *, seed: int = 0, model: str = BEST_SO_FAR
    ) -> None:
        if model not in SURROGATES:
            raise ValueError(f"surrogate model {model!r}: one of {', '.join(SURROGATES)}")
        self.model = model
        self.encoder = Encoder.of(spec)
        most = spec.space.max_epochs()
        assert most is not None, "a replayed space has an epochs range"
        self.max_epochs: int = most
        usable = [c for c in curves if c.val_loss]
        self.features = self.encoder.rows([c.params for c in usable])
        self.failures = [None if c.failed is None else len(c.val_loss) for c in usable]
        n = self.max_epochs
        log_loss = _log([_padded(c.val_loss, n) for c in usable])
        accuracy = np.asarray([_padded(c.val_accuracy, n) for c in usable])
        log_seconds = _log([[max(sum(c.cpu_s) / len(c.cpu_s), 1e-6)] for c in usable])
        self.forest: RandomForestRegressor | ExtraTreesRegressor
        if model == CURVES:
            self.forest = RandomForestRegressor(
                n_estimators=TREES, min_samples_leaf=2, max_features=0.6, random_state=seed, n_jobs=1
            ).fit(self.features, np.hstack([log_loss, accuracy, log_seconds]))
            self.fast = flat_forest(self.forest)
        else:
            best = np.minimum.accumulate(log_loss, axis=1)
            self.forest = ExtraTreesRegressor(
                n_estimators=TREES, min_samples_leaf=1, max_features=1.0, random_state=seed, n_jobs=1
            ).fit(self.features, np.hstack([_standardized(best), _standardized(log_seconds)]))
            carried = np.hstack([log_loss, best, accuracy, log_seconds])
            self.fast = flat_forest(self.forest, leaf_means(self.forest, self.features, carried))
        self._cache: dict[tuple[Any, ...], Replayed] = {}

    def fingerprint(self) -> str:
        """A short hash of the fitted forest and rows: two runs replayed the same task alike only if theirs agree."""
        digest = hashlib.sha256()
        for array in (*self.fast.arrays().values(), self.features):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:12]

    def _key(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(sorted((k, v) for k, v in params.items() if k not in NOT_FEATURES))

    def replay(self, params: Mapping[str, Any]) -> Replayed:
        """The configuration's predicted curve to the space's last epoch (its own `epochs` picks a prefix)."""
        key = self._key(params)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        row = np.asarray(self.encoder.row(params))
        replayed = replay_row(self.fast, self.features, self.failures, self.max_epochs, row, self.model)
        self._cache[key] = replayed
        return replayed


def _encoded(d: BaseDistribution) -> dict[str, Any]:
    if isinstance(d, CategoricalDistribution):
        return {"type": "categorical", "choices": list(d.choices)}
    assert isinstance(d, FloatDistribution | IntDistribution)
    return {
        "type": "float" if isinstance(d, FloatDistribution) else "int",
        "low": d.low,
        "high": d.high,
        "log": d.log,
    }


def export(surrogate: Surrogate, path: Path, meta: Mapping[str, Any]) -> None:
    """The surrogate as plain arrays (its forest's flat trees, the fitted rows and where they failed) and its
    encoder's space as JSON, for a process that replays with numpy alone (bench/peers/replay.py)."""
    fast = surrogate.fast
    description = {
        **meta,
        "model": surrogate.model,
        "max_epochs": surrogate.max_epochs,
        "encoder": [{"name": n, **_encoded(d)} for n, d in surrogate.encoder.space.items()],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        **fast.arrays(),
        "features": surrogate.features,
        "failures": np.asarray([-1 if f is None else f for f in surrogate.failures], dtype=np.int64),
        "meta": np.asarray(json.dumps(description)),
    }
    np.savez_compressed(path, **arrays)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    return float(spearmanr(a, b).statistic)


def fidelity(
    spec: StudySpec, recording: Recording, repeat: Recording | None = None, *, model: str = BEST_SO_FAR
) -> dict[str, Any]:
    """How well the surrogate fitted on the recording's curves predicts the held-out configurations' training:
    the rank correlation of their values (best loss within their own epochs), final-epoch losses and costs."""
    surrogate = Surrogate(spec, recording.fitted(), model=model)
    held = [c for c in recording.held_out() if c.failed is None]
    replayed = [surrogate.replay(c.params) for c in held]
    n = recording.max_epochs
    return {
        "model": model,
        "fingerprint": surrogate.fingerprint(),
        "fitted": len(recording.fitted()),
        "held_out": len(held),
        "value_spearman": spearman(
            [c.value() for c in held], [r.value(c.epochs) for c, r in zip(held, replayed, strict=True)]
        ),
        "last_epoch_spearman": spearman(
            [c.val_loss[n - 1] for c in held], [r.val_loss[n - 1] for r in replayed]
        ),
        # What a pruner compares: each epoch's loss across the configurations, averaged over the epochs.
        "epoch_spearman": statistics.mean(
            spearman([c.val_loss[e] for c in held], [r.val_loss[e] for r in replayed]) for e in range(n)
        ),
        "cost_spearman": spearman(
            [sum(c.cpu_s) / len(c.cpu_s) for c in held], [r.cpu_s[0] for r in replayed]
        ),
        **(seed_agreement(held, repeat) if repeat is not None else {}),
    }


def seed_agreement(held: Sequence[Curve], repeat: Recording) -> dict[str, Any]:
    """How alike two trainings of the same held-out configurations (other seeds) rank: the ceiling of fidelity."""
    again = {c.index: c for c in repeat.curves if c.failed is None}
    pairs = [(c, again[c.index]) for c in held if c.index in again]
    return {
        "repeated": len(pairs),
        "seed_value_spearman": spearman([a.value() for a, _ in pairs], [b.value() for _, b in pairs]),
    }
