"""A random forest's trees as flat arrays, walked with numpy alone: the surrogate's, and the peers' copy of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

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
