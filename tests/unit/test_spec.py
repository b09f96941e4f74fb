"""The study spec: every bad input is rejected with a message that names the field."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from studies import StudySpec, load_spec_file, preset_path
from studies.sampling import grid_points
from studies.space import conditions, distributions, grid, grid_combinations
from studies.spec import DEFAULT_COST_WEIGHT, DEFAULT_PATIENCE, MAX_GRID_POINTS, Budget, grid_size
from tunefleet import spec_defaults

README = Path(__file__).resolve().parents[2] / "README.md"


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


def test_the_readme_shows_the_spec_defaults_the_code_has() -> None:
    readme = README.read_text(encoding="utf-8")
    assert spec_defaults.readme_block() in readme, (
        "README.md's spec defaults differ from studies/spec.py: run `make readme`"
    )


def test_the_defaults_block_is_the_spec_a_study_given_only_its_name_gets() -> None:
    shown = yaml.safe_load(spec_defaults.defaults_yaml())
    spec = StudySpec(name=spec_defaults.STUDY_NAME)
    assert shown == spec.model_dump(mode="json")
    assert StudySpec.model_validate(shown) == spec


def test_the_readme_example_is_a_valid_spec_and_says_it_is_not_the_defaults() -> None:
    readme = README.read_text(encoding="utf-8")
    example = re.search(r"\*\*An example, not the defaults:\*\*.*?```yaml\n(.*?)```", readme, re.DOTALL)
    assert example is not None
    spec = StudySpec.model_validate(yaml.safe_load(example.group(1)))
    assert spec.space != StudySpec(name=spec.name).space


def test_the_defaults_the_readme_states_in_prose_are_the_codes() -> None:
    text = " ".join(README.read_text(encoding="utf-8").split())
    budget = Budget()
    for said in (
        f"`objective.patience` epochs (default {DEFAULT_PATIENCE})",
        f"`sampler.cost_weight` (default {DEFAULT_COST_WEIGHT})",
        f"`budget.max_retries` per trial, default {budget.max_retries})",
        f"(`budget.max_consecutive_failures`, default {budget.max_consecutive_failures};",
    ):
        assert said in text


def test_the_generator_says_a_stale_readme_is_stale_and_rewrites_only_its_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    stale = "# Title\n\n<!-- spec-defaults -->\nold\n<!-- /spec-defaults -->\n\nThe rest.\n"
    readme.write_text(stale, encoding="utf-8")
    assert spec_defaults.main(["--check", str(readme)]) == 1
    assert "run `make readme`" in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == stale
    assert spec_defaults.main([str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == f"# Title\n\n{spec_defaults.readme_block()}\n\nThe rest.\n"
    assert spec_defaults.main(["--check", str(readme)]) == 0
    readme.write_text("no block here\n", encoding="utf-8")
    assert spec_defaults.main([str(readme)]) == 2


HIDDEN = {"depth": {"ge": 1}}


def test_the_default_space_draws_width_and_activation_only_for_hidden_layers() -> None:
    spec = StudySpec.model_validate({"name": "s"})
    stored = spec.model_dump(mode="json")["space"]
    assert stored["width"]["when"] == HIDDEN and stored["activation"]["when"] == HIDDEN
    assert all("when" not in stored[name] for name in ("learning_rate", "batch_size", "epochs", "depth"))
    assert spec.space.is_conditional()
    # The stored spec reads back as the same spec, condition and all.
    assert StudySpec.model_validate(stored_spec := spec.model_dump(mode="json")) == spec
    assert stored_spec["space"] == stored
    tests = conditions(spec.space)
    assert sorted(tests) == ["activation", "width"]
    assert not tests["width"]({"depth": 0}) and tests["width"]({"depth": 2})


@pytest.mark.parametrize(
    ("depth", "when"),
    [
        ({"type": "int", "low": 1, "high": 3}, None),  # every head has hidden layers: always drawn
        ([2, 4], None),
        (0, HIDDEN),  # a linear head only: never drawn
        ([0, 3], HIDDEN),
    ],
)
def test_a_users_depth_decides_whether_width_and_activation_are_conditional(depth: Any, when: Any) -> None:
    spec = StudySpec.model_validate({"name": "s", "space": {"depth": depth, "width": 64}})
    stored = spec.model_dump(mode="json")["space"]
    expected_width = 64 if when is None else {"type": "fixed", "value": 64, "when": when}
    assert stored["width"] == expected_width
    assert stored["activation"].get("when") == when


def test_a_users_own_condition_on_a_built_in_parameter_is_kept() -> None:
    every_depth = {"type": "int", "low": 8, "high": 64, "when": {"depth": {"ge": 0}}}
    by_optimizer = {"type": "float", "low": 1e-5, "high": 1e-3, "log": True, "when": {"optimizer": ["adamw"]}}
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "task": {"finetune": "full"},
            "space": {"width": every_depth, "depth": [0, 1, 2], "encoder_learning_rate": by_optimizer},
        }
    )
    stored = spec.model_dump(mode="json")["space"]
    assert stored["width"]["when"] == {"depth": {"ge": 0}}  # drawn for a linear head too, as written
    assert stored["activation"]["when"] == HIDDEN
    assert stored["encoder_learning_rate"]["when"] == {"optimizer": ["adamw"]}
    assert conditions(spec.space)["width"]({"depth": 0})


@pytest.mark.parametrize(
    ("space", "field", "words"),
    [
        (
            {"learning_rate": {"type": "float", "low": 0.001, "high": 0.1, "when": {"depth": 1}}},
            "space.learning_rate",
            "every trial needs learning_rate",
        ),
        (
            {"depth": {"type": "int", "low": 0, "high": 2, "when": {"epochs": 3}}},
            "space.depth",
            "cannot have when",
        ),
        (
            {"activation": {"type": "categorical", "choices": ["relu"], "when": {"optimizer": "adam"}}},
            "space.activation",
            "'optimizer', which is not a parameter defined before 'activation'",
        ),
        (
            {"width": {"type": "int", "low": 8, "high": 64, "when": {"momentum": 1}}},
            "space.width",
            "'momentum', which is not a parameter defined before 'width'",
        ),
        (
            {"width": {"type": "int", "low": 8, "high": 64, "when": {"batch_size": 16}}},
            "space.width",
            "may name only depth",
        ),
        (
            {"width": {"type": "int", "low": 8, "high": 64, "when": {"depth": {"ge": 2}}}},
            "space.width",
            "every depth of 1 or more",
        ),
        (
            {"activation": {"type": "categorical", "choices": ["relu"], "when": {"depth": 5}}},
            "space.activation",
            "when depth is 5 never holds",
        ),
        (
            {
                "encoder_learning_rate": {
                    "type": "float",
                    "low": 1e-5,
                    "high": 1e-3,
                    "when": {"optimizer": "sgdd"},
                }
            },
            "space.encoder_learning_rate",
            "never holds",
        ),
    ],
)
def test_a_condition_on_a_built_in_parameter_that_cannot_work_is_refused_naming_it(
    space: dict[str, Any], field: str, words: str
) -> None:
    found = errors_of({"task": {"finetune": "full"}, "space": space})
    assert any(loc == field and words in msg for loc, msg in found), found


def test_a_grid_over_the_conditional_space_has_no_dead_combinations() -> None:
    spec = StudySpec.model_validate(
        {
            "name": "g",
            "sampler": {"name": "grid", "seed": 3},
            "space": {
                "learning_rate": [0.01, 0.1],
                "batch_size": 32,
                "epochs": 2,
                "depth": [0, 1, 2],
                "width": [16, 64],
                "activation": ["relu", "tanh"],
                "optimizer": "adam",
            },
        }
    )
    points = grid_combinations(spec.space)
    # Two learning rates times: one linear head, and 2 widths x 2 activations at each of depths 1 and 2.
    assert len(points) == 2 * (1 + 2 * 2 * 2)
    assert grid_size(spec.space.params(), limit=MAX_GRID_POINTS) == len(points)
    linear = [p for p in points if p["depth"] == 0]
    assert len(linear) == 2 and all("width" not in p and "activation" not in p for p in linear)
    assert all({"width", "activation"} <= p.keys() for p in points if p["depth"] >= 1)
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert sorted(map(repr, grid_points(spec))) == sorted(map(repr, points))


def test_a_grid_without_conditions_keeps_its_points_and_their_order() -> None:
    space = {"learning_rate": [0.01, 0.1], "epochs": [1, 2, 3], "depth": [1, 2], "width": [8, 16]}
    spec = StudySpec.model_validate({"name": "g", "sampler": {"name": "grid"}, "space": space})
    values = grid(spec.space)
    assert grid_combinations(spec.space) == [
        dict(zip(values, combination, strict=True)) for combination in itertools.product(*values.values())
    ]


def test_a_grid_too_large_is_refused_counting_only_live_combinations() -> None:
    wide = {"type": "int", "low": 1, "high": 400}
    space = {"learning_rate": 0.01, "batch_size": 16, "epochs": wide, "depth": [0, 1], "width": wide}
    space |= {"activation": "relu", "optimizer": "adam"}
    # 400 epochs x (one linear head + 400 widths) = 160,400 points: too many.
    assert any(
        "more than 100000 points" in msg
        for _, msg in errors_of({"sampler": {"name": "grid"}, "space": space})
    )
    # With depth fixed at 0 width is never drawn: 400 points.
    spec = StudySpec.model_validate(
        {"name": "g", "sampler": {"name": "grid"}, "space": {**space, "depth": 0}}
    )
    assert len(grid_combinations(spec.space)) == 400
