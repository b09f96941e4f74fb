"""finetune lora in a study spec: its four parameters, their defaults, and where they do not belong."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from studies import StudySpec
from studies.space import distributions
from studies.spec import LORA_DEFAULTS, Param

README = Path(__file__).resolve().parents[2] / "README.md"
MODULE_TASK: dict[str, Any] = {
    "kind": "torch-module",
    "model": "/models/pretrained_model.pth",
    "replace": "classifier.1",
    "inputs": {"kind": "hashed-text", "n_features": 4096},
    "freeze": "none",
}


def errors_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        StudySpec.model_validate({"name": "s", **body})
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in info.value.errors()]


def assert_rejected(body: dict[str, Any], field: str, *words: str) -> None:
    found = errors_of(body)
    assert any(loc == field and all(w in msg for w in words) for loc, msg in found), found


def test_a_lora_study_without_lora_parameters_searches_the_documented_defaults() -> None:
    spec = StudySpec.model_validate({"name": "s", "task": {"finetune": "lora"}})
    stored = spec.model_dump(mode="json")["space"]
    assert {name: stored[name] for name in LORA_DEFAULTS} == LORA_DEFAULTS
    # Written into the stored spec: every worker rebuilds the same space, and each trial records all four.
    assert list(distributions(spec.space))[-4:] == ["lora_rank", "lora_alpha", "lora_dropout", "lora_targets"]
    assert StudySpec.model_validate(spec.model_dump(mode="json")) == spec


def test_a_lora_study_keeps_the_lora_parameters_it_gives_and_fills_in_the_rest() -> None:
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "task": {"finetune": "lora"},
            "space": {
                "lora_rank": [4, 16],
                "lora_targets": ["attention", "attention+ffn"],
                "encoder_learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            },
        }
    )
    params = spec.space.params()
    assert params["lora_rank"] == Param.model_validate([4, 16])
    assert params["lora_targets"].choices == ["attention", "attention+ffn"]
    assert params["lora_alpha"] == Param.model_validate(LORA_DEFAULTS["lora_alpha"])
    assert params["encoder_learning_rate"].high == 1e-3


def test_the_grid_sampler_takes_a_lora_study_with_its_defaults() -> None:
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "task": {"finetune": "lora"},
            "space": {"learning_rate": 0.01, "batch_size": 16, "epochs": 2, "depth": 0, "optimizer": "adam"},
            "sampler": {"name": "grid"},
        }
    )
    assert spec.space.params()["lora_rank"].discrete_values() == list(range(4, 33))


@pytest.mark.parametrize(
    ("task", "mode"),
    [({}, "finetune head"), ({"finetune": "full"}, "finetune full"), (MODULE_TASK, "kind torch-module")],
)
def test_lora_parameters_outside_finetune_lora_are_rejected_naming_them(
    task: dict[str, Any], mode: str
) -> None:
    assert_rejected(
        {"task": task, "space": {"lora_rank": 8}},
        "",
        f"space.lora_rank applies only to finetune lora, not {mode}",
    )
    assert_rejected(
        {"task": task, "space": {"lora_alpha": 1.0, "lora_dropout": 0.1}},
        "",
        "space.lora_alpha, space.lora_dropout apply only to finetune lora",
    )


def test_k_with_finetune_lora_is_rejected() -> None:
    assert_rejected(
        {"task": {"finetune": "lora", "k": 2}}, "task", "k applies only to finetune last-k, not lora"
    )


@pytest.mark.parametrize(
    ("space", "field", "words"),
    [
        ({"lora_rank": 0}, "space.lora_rank", ">= 1"),
        ({"lora_rank": {"type": "float", "low": 2.0, "high": 8.0}}, "space.lora_rank", "an int range"),
        ({"lora_rank": {"type": "int", "low": 2, "high": 4096, "log": True}}, "space.lora_rank", "<= 1024"),
        ({"lora_alpha": 0}, "space.lora_alpha", "> 0"),
        ({"lora_alpha": {"type": "int", "low": 8, "high": 32}}, "space.lora_alpha", "a float range"),
        ({"lora_dropout": {"type": "float", "low": 0.0, "high": 0.95}}, "space.lora_dropout", "<= 0.9"),
        ({"lora_dropout": -0.1}, "space.lora_dropout", ">= 0"),
        (
            {"lora_targets": "mlp"},
            "space.lora_targets",
            "unknown lora_targets 'mlp'; choose from attention, attention+ffn",
        ),
        ({"lora_targets": {"type": "int", "low": 1, "high": 2}}, "space.lora_targets", "list of choices"),
        (
            {"lora_dropout": {"type": "float", "low": 0.0, "high": 0.3, "when": {"depth": {"ge": 1}}}},
            "space.lora_dropout",
            "cannot have when",
        ),
    ],
)
def test_bad_lora_parameters_are_rejected_with_the_field_named(
    space: dict[str, Any], field: str, words: str
) -> None:
    assert_rejected({"task": {"finetune": "lora"}, "space": space}, field, words)


def test_the_readme_shows_the_lora_defaults_the_code_has() -> None:
    readme = README.read_text(encoding="utf-8")
    block = re.search(r"\*\*LoRA \(`finetune: lora`\)\*\*.*?```yaml\n(.*?)```", readme, re.DOTALL)
    assert block is not None
    shown = yaml.safe_load(textwrap.dedent(block.group(1)))
    assert {name: shown["space"][name] for name in LORA_DEFAULTS} == LORA_DEFAULTS
    spec = StudySpec.model_validate({"name": "s", **shown})
    assert spec.task.finetune == "lora" and spec.space.encoder_learning_rate is not None
