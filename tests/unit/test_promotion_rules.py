"""The asha pruner's rules: its rungs, how many trials a rung lets on, and which spaces it can run."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from studies.promotion import best_share, share
from studies.spec import StudySpec


def asha(space: dict[str, Any], **pruner: Any) -> StudySpec:
    return StudySpec.model_validate(
        {"name": "s", "space": space, "pruner": {"name": "asha", **pruner}, "budget": {"n_trials": 10}}
    )


@pytest.mark.parametrize(
    ("epochs", "pruner", "expected"),
    [
        (20, {}, [1, 3, 9]),
        (9, {}, [1, 3]),
        (4, {"min_resource": 1, "reduction_factor": 2}, [1, 2]),
        (4, {"min_resource": 2, "reduction_factor": 2}, [2]),
        (1, {}, []),
    ],
)
def test_rungs_are_min_resource_times_powers_of_the_factor_below_the_largest_epoch(
    epochs: int, pruner: dict[str, Any], expected: list[int]
) -> None:
    space = {"epochs": {"type": "int", "low": 1, "high": epochs}} if epochs > 1 else {"epochs": 1}
    assert asha(space, **pruner).rungs() == expected


def test_other_pruners_have_no_rungs() -> None:
    spec = StudySpec.model_validate({"name": "s", "pruner": {"name": "hyperband"}})
    assert spec.rungs() == []


@pytest.mark.parametrize(("n", "expected"), [(0, 0), (1, 1), (2, 1), (3, 1), (5, 1), (6, 2), (9, 3)])
def test_a_rung_lets_a_third_on_and_at_least_the_best(n: int, expected: int) -> None:
    assert share(n, 3) == expected


def test_the_best_share_ranks_by_direction_ties_to_the_earlier_trial_and_nan_last() -> None:
    values = [(0, 0.5), (1, math.nan), (2, 0.2), (3, 0.2), (4, 0.9), (5, 0.1)]
    assert best_share(values, 3, minimize=True) == {5, 2}
    assert best_share(values, 3, minimize=False) == {4, 0}
    assert best_share([(0, math.nan), (1, 0.3)], 2, minimize=True) == {1}
    assert best_share([], 3, minimize=True) == set()


def test_kind_python_without_numeric_epochs_cannot_use_asha() -> None:
    with pytest.raises(ValidationError, match="pruner asha pauses trials"):
        StudySpec.model_validate(
            {
                "name": "s",
                "task": {"kind": "python", "entrypoint": "mypkg.train:run"},
                "space": {"x": {"type": "float", "low": 0, "high": 1}},
                "pruner": {"name": "asha"},
            }
        )


def test_a_min_resource_beyond_the_largest_epoch_is_refused() -> None:
    with pytest.raises(ValidationError, match="exceeds the largest epochs value"):
        asha({"epochs": {"type": "int", "low": 1, "high": 3}}, min_resource=4)
