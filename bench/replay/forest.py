"""The surrogate's forest as flat arrays and the curve it replays, with numpy alone: the surrogate's and the peers'."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# The surrogate's models (bench/replay/surrogate.py says what each is); a forest's leaves hold, per epoch, the
# log loss, then (best-so-far only) the best-so-far log loss, the accuracy, and last the log seconds per epoch.
BEST_SO_FAR = "best-so-far"
CURVES = "curves"
SURROGATES = (BEST_SO_FAR, CURVES)

# The arrays a FlatForest is made of, by name: what bench.peers.export writes and bench/peers/replay.py reads.
ARRAYS = ("roots", "feature", "threshold", "left", "right", "value")


@dataclass
class FlatForest:
    """Every tree's nodes end to end (a leaf's feature is negative), walked for one row with a few numpy steps per
    level: sklearn's predict costs milliseconds a call, which thousands of replayed trials per run cannot afford.
    This module imports numpy alone, so the peers' environment replays with the same walk."""

    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    leaf: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.leaf = self.feature < 0

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> FlatForest:
        """The forest from its arrays by name (an .npz, or arrays()'s dict)."""
        return cls(*(np.asarray(arrays[name]) for name in ARRAYS))

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by name, as of() takes them."""
        return {name: getattr(self, name) for name in ARRAYS}

    def predict(self, row: np.ndarray) -> np.ndarray:
        """The forest's prediction for one row: the mean of the leaves the row reaches, one per tree."""
        # sklearn compares rows cast to float32 against its thresholds: the same here, or a row on a split
        # point goes the other way.
        row = row.astype(np.float32)
        nodes = self.roots.copy()
        while True:
            inner = ~self.leaf[nodes]
            if not inner.any():
                return np.asarray(self.value[nodes].mean(axis=0))
            at = nodes[inner]
            goes_left = row[self.feature[at]] <= self.threshold[at]
            nodes[inner] = np.where(goes_left, self.left[at], self.right[at])


@dataclass(frozen=True)
class Replayed:
    """A configuration's replayed curve: each epoch's validation loss and accuracy, CPU seconds, where it fails."""

    val_loss: list[float]
    val_accuracy: list[float]
    cpu_s: list[float]
    fails_after: int | None

    def value(self, epochs: int) -> float:
        """What tunefleet records for a trial of that many epochs (objective value: best)."""
        return min(self.val_loss[:epochs])

    def cost(self, epochs: int, *, after: int = 0) -> float:
        """CPU seconds of epochs after+1 .. epochs (after > 0 where training resumes from a checkpoint)."""
        return float(sum(self.cpu_s[after:epochs]))


def with_best_so_far(curve: np.ndarray, best: np.ndarray) -> np.ndarray:
    """The curve lowered, epoch by epoch, by how far its own running minimum sits above the best-so-far curve:
    at each epoch where it reaches a new low it equals `best`, it never drops below `best`, it keeps its rises
    (overfitting a pruner should see), and a curve given its own running minimum is left as it is."""
    return np.asarray(curve - (np.minimum.accumulate(curve) - best))


def replay_row(
    forest: FlatForest,
    features: np.ndarray,
    failures: Sequence[int | None],
    max_epochs: int,
    row: np.ndarray,
    model: str = BEST_SO_FAR,
) -> Replayed:
    """The curve of an encoded configuration: the forest's log losses, accuracies and log seconds per epoch, and
    the failure (if any) of the nearest fitted configuration."""
    predicted = forest.predict(row)
    n = max_epochs
    nearest = int(np.argmin(((features - row) ** 2).sum(axis=1)))
    log_loss, rest = predicted[:n], predicted[n:]
    if model == BEST_SO_FAR:
        log_loss, rest = with_best_so_far(log_loss, rest[:n]), rest[n:]
    accuracy, seconds = rest[:n], math.exp(rest[n])
    return Replayed(
        val_loss=[math.exp(v) for v in log_loss],
        val_accuracy=[float(v) for v in accuracy],
        cpu_s=[seconds] * n,
        fails_after=failures[nearest],
    )
