"""The asha pruner's rules: its rungs and which spaces it can run (which trials a rung lets on is ranked in the
store: tests/integration/test_rung_ranking.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

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
