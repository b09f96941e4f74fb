"""A study's Pareto front: which trials dominate which, and the rule that picks one trial from the front."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from optuna.trial import FrozenTrial

from studies.names import EPOCH_METRICS
from studies.spec import NATURAL_DIRECTIONS, Objective

Direction = Literal["minimize", "maximize"]


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[Direction]) -> bool:
    """Whether values a dominate values b: no worse in every objective and better in one."""
    oriented = [(x, y) if d == "minimize" else (-x, -y) for x, y, d in zip(a, b, directions, strict=True)]
    return all(x <= y for x, y in oriented) and any(x < y for x, y in oriented)


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether every constraint value the trial stored is 0 or less, as Optuna's samplers read them."""
    return all(value <= 0 for value in trial.constraints.values())


def joins_front(
    values: Sequence[float], front: Sequence[FrozenTrial], directions: Sequence[Direction]
) -> bool:
    """Whether a feasible trial with these values would be on the front: no trial of the front dominates it.

    Domination is transitive, so a trial no front trial dominates is dominated by no trial at all.
    """
    return not any(t.values is not None and dominates(t.values, values, directions) for t in front)


def available_metrics(objective: Objective) -> tuple[str, ...]:
    """The metrics every finished trial of the study records: its objectives, its constraints', the epoch's."""
    return tuple(dict.fromkeys((*objective.measured(), *EPOCH_METRICS)))


def metric_value(trial: FrozenTrial, name: str) -> float | None:
    """A metric the worker recorded for the trial (a user attribute of that name), or None."""
    value = trial.user_attrs.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Bound:
    """A rule's bound on a metric: `max_val_loss=0.15` keeps trials whose val_loss is at most 0.15."""

    metric: str
    limit: Literal["max", "min"]
    value: float

    def holds(self, trial: FrozenTrial) -> bool:
        """Whether the trial's value of the metric is within the bound (a trial without one is not)."""
        measured = metric_value(trial, self.metric)
        if measured is None:
            return False
        return measured <= self.value if self.limit == "max" else measured >= self.value


def preferred(
    front: Sequence[FrozenTrial], *, prefer: str, direction: Direction, bounds: Sequence[Bound]
) -> FrozenTrial | None:
    """Among the front's trials within every bound, the one best in the preferred metric (ties: the earliest)."""
    within = [t for t in front if all(b.holds(t) for b in bounds) and metric_value(t, prefer) is not None]
    if not within:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(within, key=lambda t: (sign * (metric_value(t, prefer) or 0.0), t.number))


def metric_direction(objective: Objective, name: str) -> Direction:
    """Which way a metric is better in this study: its objective's direction, else its natural one."""
    directions: Mapping[str, Direction] = dict(zip(objective.names, objective.directions, strict=True))
    return directions.get(name, NATURAL_DIRECTIONS[name])
