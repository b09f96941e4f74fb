"""Turns a spec's search space into Optuna distributions and grids."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from studies.spec import FreeSpace, Param, Space

# Whether a parameter is sampled, given the parameters drawn before it.
Condition = Callable[[Mapping[str, Any]], bool]


def to_distribution(param: Param) -> BaseDistribution:
    """The Optuna distribution of one parameter; a fixed value is a one-point distribution."""
    if param.type == "float":
        assert param.low is not None and param.high is not None
        return FloatDistribution(float(param.low), float(param.high), log=param.log, step=param.step)
    if param.type == "int":
        assert param.low is not None and param.high is not None
        return IntDistribution(int(param.low), int(param.high), log=param.log, step=int(param.step or 1))
    if param.type == "categorical":
        return CategoricalDistribution(list(param.choices or []))
    # A fixed value still goes through Optuna so every trial records the full configuration,
    # and the dashboard shows it beside the searched ones.
    value = param.value
    if isinstance(value, int):
        return IntDistribution(value, value)
    if isinstance(value, float):
        return FloatDistribution(value, value)
    return CategoricalDistribution([value])


def distributions(space: Space | FreeSpace) -> dict[str, BaseDistribution]:
    """Every parameter of the space as an Optuna distribution, by name, in sampling order."""
    return {name: to_distribution(param) for name, param in space.params().items()}


def conditions(space: Space | FreeSpace) -> dict[str, Condition]:
    """The conditional parameters of the space, each with its test on the parameters drawn before it."""
    return {name: param.applies for name, param in space.params().items() if param.when is not None}


def grid_combinations(space: Space | FreeSpace) -> list[dict[str, Any]]:
    """Every point of the space's grid, in order: a conditional parameter only in the points where it holds.

    Without conditions this is itertools.product over the parameters' values, the first one slowest;
    with them a depth-0 point has no width, rather than one copy per width that would train the same head.
    """
    points: list[dict[str, Any]] = [{}]
    for name, values in grid(space).items():
        param = space.params()[name]
        points = [
            extended
            for point in points
            for extended in ([{**point, name: v} for v in values] if param.applies(point) else [point])
        ]
    return points


def grid(space: Space | FreeSpace) -> dict[str, list[Any]]:
    """The grid sampler's search space; the spec has already checked every range is discrete."""
    points: dict[str, list[Any]] = {}
    for name, param in space.params().items():
        values = param.discrete_values()
        if values is None:
            raise ValueError(f"space.{name} is continuous; the grid sampler needs a discrete space")
        points[name] = values
    return points
