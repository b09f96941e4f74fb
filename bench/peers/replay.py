"""A recorded task's surrogate replayed with numpy alone, from the arrays `python -m bench.peers.export` writes."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench.replay.forest import FlatForest, Replayed, replay_row

# This module runs in the peers' own environment (numpy 1.26, no torch, no tunefleet): it replays with
# bench/replay/forest.py (numpy alone), repeats the encoder of bench/replay/surrogate.py step for step (from the
# exported space, not Optuna's distributions), and tests/unit/test_replay_peers.py holds the two equal.


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


class Replay:
    """The exported surrogate: a configuration's curve exactly as `Surrogate.replay` gives it."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as data:
            self.forest = FlatForest.of(data)
            self.features = data["features"]
            self.failures = [None if f < 0 else int(f) for f in data["failures"]]
            self.meta: dict[str, Any] = json.loads(str(data["meta"]))
        self.space: list[dict[str, Any]] = self.meta["encoder"]
        self.max_epochs = int(self.meta["max_epochs"])
        self.model = str(self.meta["model"])
        self._cache: dict[tuple[Any, ...], Replayed] = {}

    def row(self, params: Mapping[str, Any]) -> list[float]:
        row: list[float] = []
        for d in self.space:
            value = params.get(d["name"])
            row.append(0.0 if value is None else 1.0)
            if d["type"] == "categorical" and _numeric(d["choices"]):
                positive = all(float(c) > 0 for c in d["choices"] if isinstance(c, int | float))
                row.append(-1.0 if value is None else math.log2(float(value)) if positive else float(value))
            elif d["type"] == "categorical":
                row.extend(1.0 if value == choice else 0.0 for choice in d["choices"])
            elif value is None:
                row.append(-1.0)
            else:
                low, high = (math.log(d["low"]), math.log(d["high"])) if d["log"] else (d["low"], d["high"])
                x = math.log(float(value)) if d["log"] else float(value)
                row.append((x - low) / (high - low) if high > low else 0.0)
        return row

    def replay(self, params: Mapping[str, Any]) -> Replayed:
        """The configuration's curve (a parameter that is absent or None was not drawn: its condition failed)."""
        key = tuple(sorted((k, v) for k, v in params.items() if k != "epochs" and v is not None))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        row = np.asarray(self.row(params))
        curve = replay_row(self.forest, self.features, self.failures, self.max_epochs, row, self.model)
        self._cache[key] = curve
        return curve
