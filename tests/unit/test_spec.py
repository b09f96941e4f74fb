"""The study spec: every bad input is rejected with a message that names the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from studies import StudySpec, load_spec_file, preset_path
from studies.space import distributions, grid


def errors_of(spec: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        StudySpec.model_validate({"name": "s", **spec})
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"bogus": 1}, "bogus", "Extra inputs"),
        (
            {"space": {"depth": {"type": "int", "low": 1, "high": 2, "foo": 3}}},
            "space.depth.foo",
            "Extra inputs",
        ),
        (
            {"space": {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}},
            "space.learning_rate",
            "exceed",
        ),
        (
            {"space": {"learning_rate": {"type": "float", "low": 0, "high": 0.1, "log": True}}},
            "space.learning_rate",
            "low > 0",
        ),
        ({"space": {"batch_size": {"type": "categorical", "choices": []}}}, "space.batch_size", "empty"),
        (
            {"space": {"activation": {"type": "categorical", "choices": ["relu", "swish"]}}},
            "space.activation",
            "unknown activation 'swish'",
        ),
        ({"space": {"optimizer": "lbfgs"}}, "space.optimizer", "unknown optimizer 'lbfgs'"),
        ({"budget": {"n_trials": 0}}, "budget.n_trials", "greater than or equal to 1"),
        ({"budget": {"n_trials": 100_001}}, "budget.n_trials", "less than or equal"),
        (
            {"space": {"batch_size": {"type": "float", "low": 1.0, "high": 8.0}}},
            "space.batch_size",
            "int range",
        ),
        ({"space": {"epochs": 0}}, "space.epochs", ">= 1"),
        ({"space": {"width": {"type": "int", "low": 1.5, "high": 8}}}, "space.width", "integer"),
        (
            {"space": {"learning_rate": {"type": "float", "low": 0.001}}},
            "space.learning_rate",
            "both low and high",
        ),
        ({"pruner": {"name": "sometimes"}}, "pruner", "does not match"),
        ({"sampler": {"name": "grid"}}, "", "space.learning_rate: the grid sampler needs a discrete space"),
        ({"objective": {"metric": "val_loss", "direction": "maximize"}}, "objective", "worse models"),
        (
            {"objective": {"value": "final", "patience": 3}},
            "objective",
            "patience applies only to value best",
        ),
        ({"objective": {"patience": -1}}, "objective.patience", "greater than or equal to 0"),
        ({"sampler": {"name": "random", "cost_weight": 1}}, "sampler", "cost_weight does not apply"),
        ({"sampler": {"cost_weight": -0.5}}, "sampler.cost_weight", "greater than or equal to 0"),
        ({"task": {"finetune": "partial"}}, "task.finetune", "unknown finetune mode 'partial'"),
        ({"task": {"data": "/etc/passwd"}}, "task.data", "unknown data set"),
        ({"task": {"model": "builtin:gpt-17"}}, "task.model", "unknown built-in model"),
    ],
)
def test_bad_spec_is_rejected_with_the_field_named(spec: dict[str, Any], field: str, words: str) -> None:
    found = errors_of(spec)
    assert any(loc == field and words in msg for loc, msg in found), found


@pytest.mark.parametrize(
    "name", ["", "-starts-with-dash", "has space", "x" * 129, "slash/name", "semi;colon"]
)
def test_bad_study_names_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError):
        StudySpec(name=name)


def test_minimal_spec_gets_defaults_for_every_parameter() -> None:
    spec = StudySpec(name="minimal")
    assert set(spec.space.params()) == {
        "learning_rate",
        "batch_size",
        "epochs",
        "depth",
        "width",
        "activation",
        "optimizer",
    }
    assert spec.objective.direction == "minimize"
    assert spec.objective.patience == 3


def test_a_final_epoch_objective_runs_every_epoch_and_round_trips() -> None:
    spec = StudySpec.model_validate({"name": "final", "objective": {"value": "final"}})
    assert spec.objective.patience == 0
    assert StudySpec.model_validate(spec.model_dump(mode="json")) == spec
    off = StudySpec.model_validate({"name": "off", "objective": {"patience": 0}})
    assert (off.objective.value, off.objective.patience) == ("best", 0)


def test_fixed_values_round_trip_as_bare_values() -> None:
    spec = StudySpec.model_validate({"name": "fixed", "space": {"optimizer": "adam", "epochs": 3}})
    dumped = spec.model_dump(mode="json")
    assert dumped["space"]["optimizer"] == "adam"
    assert dumped["space"]["epochs"] == 3
    assert StudySpec.model_validate(dumped) == spec


def test_fixed_values_become_one_point_distributions() -> None:
    spec = StudySpec.model_validate(
        {"name": "fixed", "space": {"optimizer": "adam", "epochs": 3, "learning_rate": 0.01}}
    )
    dists = distributions(spec.space)
    assert dists["optimizer"].choices == ("adam",)  # type: ignore[attr-defined]
    assert (dists["epochs"].low, dists["epochs"].high) == (3, 3)  # type: ignore[attr-defined]
    assert (dists["learning_rate"].low, dists["learning_rate"].high) == (0.01, 0.01)  # type: ignore[attr-defined]


def test_grid_sampler_accepts_a_discrete_space_and_enumerates_it() -> None:
    spec = StudySpec.model_validate(
        {
            "name": "g",
            "sampler": {"name": "grid"},
            "space": {
                "learning_rate": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1},
                "epochs": {"type": "int", "low": 1, "high": 3},
                "depth": 1,
                "width": {"type": "categorical", "choices": [16, 32]},
                "batch_size": 32,
                "activation": "relu",
                "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            },
        }
    )
    points = grid(spec.space)
    assert points["learning_rate"] == [0.1, 0.2, 0.3]
    assert points["epochs"] == [1, 2, 3]
    assert points["depth"] == [1]


def test_every_preset_is_a_valid_spec() -> None:
    spec = StudySpec.model_validate(load_spec_file(preset_path("bbc-news-minilm")))
    assert spec.name == "bbc-news-minilm"
    assert spec.space.max_epochs() == 20
