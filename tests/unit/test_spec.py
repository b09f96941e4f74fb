"""The study spec: every bad input is rejected with a message that names the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from studies import StudySpec, load_spec_file, preset_path
from studies.space import distributions, grid
from studies.spec import DEFAULT_COST_WEIGHT, DEFAULT_PATIENCE, Budget
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
