"""The synthetic task's validation loss, free of torch, so plain-Optuna benchmark baselines share it."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any


def synthetic_loss(params: Mapping[str, Any], *, seed: int, epoch: int) -> float:
    """A smooth, seeded validation loss with an optimum near learning_rate=3e-3, falling with epochs."""
    learning_rate = float(params.get("learning_rate", 1e-3))
    width = float(params.get("width", 64))
    depth = float(params.get("depth", 1))
    distance = (math.log10(learning_rate) + 2.5) ** 2 + 0.1 * (math.log2(width) - 7) ** 2 / 9 + 0.05 * depth
    noise = random.Random(seed * 1_000_003 + epoch).gauss(0.0, 0.01)
    return 0.1 + distance + 1.0 / epoch + noise
