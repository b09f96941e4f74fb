"""A space that searches finetune: the forms it takes, the conditions it adds, and each refusal naming its field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from studies import StudySpec
from studies.sampling import grid_points
from studies.space import conditions, grid_combinations
from studies.spec import LORA_PARAMS, load_spec_file, preset_path

MODES = ["head", "last-k", "lora"]


def spec_of(**body: Any) -> StudySpec:
    return StudySpec.model_validate({"name": "s", **body})


def errors_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        spec_of(**body)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in info.value.errors()]


def assert_rejected(body: dict[str, Any], field: str, *words: str) -> None:
    found = errors_of(body)
    assert any(loc == field and all(w in msg for w in words) for loc, msg in found), found


def test_a_searched_finetune_draws_the_lora_parameters_only_for_lora_and_the_encoder_rate_only_off_head() -> (
    None
):
    spec = spec_of(
        task={"k": 2}, space={"finetune": MODES, "encoder_learning_rate": 0.001, "lora_rank": [4, 8]}
    )
    space = spec.model_dump(mode="json")["space"]
    assert space["finetune"] == {"type": "categorical", "choices": MODES}
    assert space["encoder_learning_rate"] == {
        "type": "fixed",
        "value": 0.001,
        "when": {"finetune": ["last-k", "lora"]},
    }
    assert space["lora_rank"] == {"type": "categorical", "choices": [4, 8], "when": {"finetune": "lora"}}
    # The defaults a lora study gets, each under the same condition.
    assert space["lora_alpha"] == {"type": "fixed", "value": 2.0, "when": {"finetune": "lora"}}
    assert list(spec.space.params())[7:] == ["finetune", "encoder_learning_rate", *LORA_PARAMS]
    checks = conditions(spec.space)
    assert not checks["lora_rank"]({"finetune": "last-k"}) and checks["lora_rank"]({"finetune": "lora"})
    assert not checks["encoder_learning_rate"]({"finetune": "head"})
    assert spec.finetune_modes() == tuple(MODES) and spec.space_searches_finetune()
    # Stored without task.finetune (the default would read as set) and read back the same.
    stored = spec.model_dump(mode="json")
    assert "finetune" not in stored["task"] and stored["task"]["k"] == 2
    assert StudySpec.model_validate(stored) == spec


def test_a_single_encoder_mode_needs_no_condition_on_the_encoder_rate() -> None:
    spec = spec_of(space={"finetune": ["full", "lora"], "encoder_learning_rate": 0.001})
    assert spec.space.encoder_learning_rate is not None and spec.space.encoder_learning_rate.when is None
    assert spec.space.lora_rank is not None and spec.space.lora_rank.when == {"finetune": "lora"}
    one = spec_of(
        space={
            "finetune": ["head", "full"],
            "encoder_learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3},
        }
    )
    assert one.space.encoder_learning_rate is not None
    assert one.space.encoder_learning_rate.when == {"finetune": "full"}


def test_a_fixed_finetune_in_the_space_is_a_one_mode_study() -> None:
    spec = spec_of(space={"finetune": "lora"})
    assert spec.model_dump(mode="json")["space"]["finetune"] == "lora"
    assert spec.finetune_modes() == ("lora",) and spec.space.lora_rank is not None
    assert StudySpec.model_validate(spec.model_dump(mode="json")) == spec


def test_a_spec_without_a_searched_finetune_is_stored_as_before() -> None:
    for body in ({}, {"task": {"finetune": "lora"}}, {"task": {"finetune": "last-k", "k": 1}}):
        spec = spec_of(**body)
        stored = spec.model_dump(mode="json")
        assert "finetune" not in stored["space"] and stored["task"]["finetune"] == body.get("task", {}).get(
            "finetune", "head"
        )
        assert all(p.when is None for name, p in spec.space.params().items() if name in LORA_PARAMS)
        assert not spec.space_searches_finetune()


def test_the_grid_sampler_enumerates_each_mode_with_only_its_parameters() -> None:
    spec = spec_of(
        task={"k": 1},
        space={
            "learning_rate": 0.01,
            "batch_size": 8,
            "epochs": 1,
            "depth": 0,
            "optimizer": "adam",
            "finetune": MODES,
            "encoder_learning_rate": [0.001, 0.0001],
            "lora_rank": [4, 8],
        },
        sampler={"name": "grid"},
    )
    points = grid_combinations(spec.space)
    # head: 1; last-k: 2 encoder rates; lora: 2 rates x 2 ranks.
    assert len(points) == 1 + 2 + 4
    assert [p for p in points if p["finetune"] == "head"] == [
        {
            "learning_rate": 0.01,
            "batch_size": 8,
            "epochs": 1,
            "depth": 0,
            "optimizer": "adam",
            "finetune": "head",
        }
    ]
    assert all(("lora_rank" in p) == (p["finetune"] == "lora") for p in points)
    assert sorted(map(repr, grid_points(spec))) == sorted(map(repr, points))


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (
            {"task": {"finetune": "head"}, "space": {"finetune": MODES}},
            "",
            ["task.finetune: the space searches finetune; leave task.finetune out"],
        ),
        ({"space": {"finetune": MODES}}, "", ["task.k", "searches last-k, which needs k"]),
        (
            {"task": {"k": 1}, "space": {"finetune": ["head", "lora"]}},
            "",
            ["task.k applies only to finetune last-k"],
        ),
        ({"task": {"k": 1}}, "", ["task.k applies only to finetune last-k, not head"]),
        ({"space": {"finetune": ["head", "sideways"]}}, "space.finetune", ["unknown finetune 'sideways'"]),
        (
            {
                "space": {
                    "finetune": {"type": "categorical", "choices": ["head", "lora"], "when": {"depth": 1}}
                }
            },
            "space.finetune",
            ["every trial needs finetune, so it cannot have when"],
        ),
        (
            {"space": {"finetune": ["head", "full"], "lora_rank": 8}},
            "",
            ["space.lora_rank applies only to finetune lora, which space.finetune does not search"],
        ),
        (
            {"space": {"finetune": "head", "encoder_learning_rate": 0.001}},
            "",
            ["space.encoder_learning_rate applies only to finetune last-k or full"],
        ),
        (
            {
                "space": {
                    "finetune": ["head", "full"],
                    "encoder_learning_rate": {"type": "fixed", "value": 0.001, "when": {"optimizer": "adam"}},
                }
            },
            "space",
            ["encoder_learning_rate: the space searches finetune", "{finetune: full}"],
        ),
        (
            {
                "space": {
                    "finetune": ["head", "lora"],
                    "lora_rank": {"type": "int", "low": 2, "high": 4, "when": {"depth": 1}},
                }
            },
            "space.lora_rank",
            ["cannot have when"],
        ),
        (
            {
                "task": {"finetune": "lora"},
                "space": {"lora_rank": {"type": "int", "low": 2, "high": 4, "when": {"finetune": "lora"}}},
            },
            "space.lora_rank",
            ["when names 'finetune', which this space does not set"],
        ),
        (
            {"task": {"kind": "synthetic"}, "space": {"finetune": MODES}},
            "",
            ["space.finetune applies only to kind text-classification"],
        ),
    ],
)
def test_a_bad_searched_finetune_is_refused_naming_the_field(
    body: dict[str, Any], field: str, words: list[str]
) -> None:
    assert_rejected(body, field, *words)


def test_the_pareto_preset_searches_the_three_modes_against_latency_and_size() -> None:
    spec = StudySpec.model_validate(load_spec_file(preset_path("bbc-news-minilm-pareto")))
    assert spec.finetune_modes() == ("head", "last-k", "lora") and spec.task.k is not None
    assert spec.objective.names == ("val_loss", "latency_ms", "model_size_mb")
    assert spec.objective.directions == ("minimize", "minimize", "minimize")
    assert spec.pruner.name == "none" and spec.sampler.seed is not None
    assert {"depth", "width"} <= {name for name, p in spec.space.params().items() if p.type != "fixed"}
