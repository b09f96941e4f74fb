"""Several objectives in the spec: each bad input is refused naming the field, and the one-metric form is unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from studies import StudySpec
from studies.spec import Constraint, NoPruner

TWO = [{"name": "val_loss", "direction": "minimize"}, {"name": "latency_ms", "direction": "minimize"}]


def errors_of(spec: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        StudySpec.model_validate({"name": "s", **spec})
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (
            {"objective": {"metrics": [{"name": "val_loss"}, TWO[1]]}},
            "objective.metrics.0.direction",
            "Field required",
        ),
        (
            {"objective": {"metrics": [{"name": "val_f2", "direction": "minimize"}, TWO[1]]}},
            "objective.metrics.0.name",
            "unknown metric 'val_f2'; known: val_loss, val_accuracy, val_macro_f1, params_trainable,"
            " model_size_mb, latency_ms, train_seconds",
        ),
        (
            {"objective": {"metrics": [{"name": "val_accuracy", "direction": "minimize"}, TWO[1]]}},
            "objective.metrics.0",
            "would reward worse models",
        ),
        ({"objective": {"metrics": [TWO[0], TWO[0]]}}, "objective", "metrics name val_loss twice"),
        ({"objective": {"metrics": [TWO[0]]}}, "objective.metrics", "at least 2 items"),
        ({"objective": {"metric": "val_loss", "metrics": TWO}}, "objective", "not both"),
        (
            {"objective": {"metrics": TWO, "constraints": ["latency_ms < 20"]}},
            "objective.constraints.0",
            "cannot read 'latency_ms < 20': write METRIC <= NUMBER or METRIC >= NUMBER",
        ),
        (
            {"objective": {"metrics": TWO, "constraints": ["flops <= 20"]}},
            "objective.constraints.0",
            "names 'flops', which is not measured",
        ),
        (
            {
                "task": {"kind": "synthetic"},
                "objective": {
                    "metrics": [*TWO[:1], {"name": "train_seconds", "direction": "minimize"}],
                    "constraints": ["model_size_mb <= 5"],
                },
            },
            "",
            "objective: kind synthetic does not measure model_size_mb",
        ),
        (
            {"objective": {"constraints": ["latency_ms <= 20"]}},
            "objective",
            "constraints applies only to several",
        ),
        ({"objective": {"metrics": TWO, "prune_on": "val_loss"}}, "objective.prune_on", "does not prune"),
        ({"objective": {"metrics": TWO}, "pruner": {"name": "median"}}, "", "pruner: Optuna does not prune"),
        ({"objective": {"metrics": TWO}, "sampler": {"name": "cmaes"}}, "", "the cmaes sampler takes one"),
        ({"objective": {"metrics": TWO}, "sampler": {"cost_weight": 1.0}}, "", "sampler.cost_weight"),
        (
            {"objective": {"metrics": TWO, "latency_batch_size": 0}},
            "objective.latency_batch_size",
            "greater than or equal to 1",
        ),
        (
            {
                "task": {"kind": "python", "entrypoint": "pkg.mod:train"},
                "space": {"x": [1, 2]},
                "objective": {"metrics": TWO},
            },
            "",
            "kind python reports the one value",
        ),
        ({"sampler": {"name": "nsga2", "n_startup_trials": 1}}, "sampler", "population size, at least 2"),
    ],
)
def test_a_bad_objective_is_refused_naming_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    found = errors_of(spec)
    assert any(loc == field and words in msg for loc, msg in found), found


def test_several_objectives_default_to_no_pruner_and_round_trip_in_their_own_form() -> None:
    spec = StudySpec.model_validate(
        {
            "name": "front",
            "objective": {"metrics": TWO, "constraints": ["latency_ms <= 20", "model_size_mb>=0.5"]},
            "sampler": {"name": "nsga2"},
        }
    )
    assert isinstance(spec.pruner, NoPruner)
    objective = spec.objective
    assert (objective.names, objective.directions) == (("val_loss", "latency_ms"), ("minimize", "minimize"))
    assert objective.measured() == ("val_loss", "latency_ms", "model_size_mb")
    assert objective.parsed_constraints()[1] == Constraint("model_size_mb", ">=", 0.5)
    assert objective.parsed_constraints()[1].violation(0.2) == pytest.approx(0.3)
    stored = spec.model_dump(mode="json")
    assert "metric" not in stored["objective"] and stored["objective"]["latency_batch_size"] == 1
    assert StudySpec.model_validate(stored) == spec


def test_the_single_metric_form_and_the_default_are_unchanged() -> None:
    assert StudySpec(name="one").model_dump(mode="json")["objective"] == {
        "metric": "val_loss",
        "direction": "minimize",
        "value": "best",
        "patience": 3,
    }
    spec = StudySpec.model_validate({"name": "acc", "objective": {"metric": "val_accuracy"}})
    assert (spec.objective.names, spec.objective.directions, spec.objective.several) == (
        ("val_accuracy",),
        ("maximize",),
        False,
    )
    assert spec.pruner.name == "hyperband"


def test_macro_f1_is_an_objective_maximized_by_default_and_minimizing_it_is_refused() -> None:
    spec = StudySpec.model_validate({"name": "f1", "objective": {"metric": "val_macro_f1"}})
    objective = spec.objective
    assert (objective.names, objective.directions) == (("val_macro_f1",), ("maximize",))
    assert (objective.epoch_metric, objective.epoch_direction) == ("val_macro_f1", "maximize")
    assert StudySpec.model_validate(spec.model_dump(mode="json")) == spec
    found = errors_of({"objective": {"metric": "val_macro_f1", "direction": "minimize"}})
    assert any(
        loc == "objective" and "would reward worse models: val_macro_f1 is maximized" in msg
        for loc, msg in found
    ), found
    found = errors_of({"objective": {"metrics": [{"name": "val_macro_f1", "direction": "minimize"}, TWO[1]]}})
    assert any(loc == "objective.metrics.0" and "would reward worse models" in msg for loc, msg in found), (
        found
    )


def test_macro_f1_is_one_of_several_objectives_and_a_constraint() -> None:
    spec = StudySpec.model_validate(
        {
            "name": "f1-front",
            "objective": {
                "metrics": [{"name": "val_macro_f1", "direction": "maximize"}, TWO[1]],
                "constraints": ["val_macro_f1 >= 0.8", "val_loss <= 1"],
            },
        }
    )
    objective = spec.objective
    assert objective.directions == ("maximize", "minimize")
    assert objective.epoch_metric == "val_macro_f1"
    assert objective.measured() == ("val_macro_f1", "latency_ms", "val_loss")
    assert objective.parsed_constraints()[0] == Constraint("val_macro_f1", ">=", 0.8)
    assert objective.parsed_constraints()[0].violation(0.75) == pytest.approx(0.05)
    synthetic = StudySpec.model_validate(
        {
            "name": "f1-synthetic",
            "task": {"kind": "synthetic"},
            "objective": {
                "metrics": [
                    {"name": "val_macro_f1", "direction": "maximize"},
                    {"name": "train_seconds", "direction": "minimize"},
                ]
            },
        }
    )
    assert synthetic.objective.names == ("val_macro_f1", "train_seconds")
