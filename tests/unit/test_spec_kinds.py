"""The task kinds torch-module and python in a study spec: what each needs, and a free space with conditions."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from pydantic import ValidationError

from studies import StudySpec
from studies.sampling import sample_params
from studies.space import conditions, distributions
from studies.spec import FreeSpace, Space

MODULE_TASK: dict[str, Any] = {
    "kind": "torch-module",
    "model": "/models/pretrained_model.pth",
    "replace": "classifier.1",
    "inputs": {"kind": "hashed-text", "n_features": 4096},
}
PYTHON_SPACE: dict[str, Any] = {
    "optimizer": ["sgd", "adam"],
    "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"optimizer": "sgd"}},
    "depth": {"type": "int", "low": 1, "high": 3},
    "width_2": {"type": "int", "low": 8, "high": 64, "when": {"depth": {"ge": 2}}},
    "epochs": 4,
}


def python_spec(space: Any = PYTHON_SPACE, **task: Any) -> dict[str, Any]:
    return {"task": {"kind": "python", "entrypoint": "mypkg.train:run", **task}, "space": space}


def errors_of(spec: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        StudySpec.model_validate({"name": "s", **spec})
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in info.value.errors()]


def assert_rejected(spec: dict[str, Any], field: str, *words: str) -> None:
    found = errors_of(spec)
    assert any(loc == field and all(w in msg for w in words) for loc, msg in found), found


def test_a_torch_save_file_given_to_a_text_classification_study_points_to_torch_module() -> None:
    assert_rejected({"task": {"model": "/models/pretrained_model.pth"}}, "task", "is a file", "torch-module")


def test_a_torch_module_task_round_trips_with_freeze_defaulting_to_all_but_replaced() -> None:
    spec = StudySpec.model_validate({"name": "s", "task": MODULE_TASK})
    assert spec.task.freeze == "all-but-replaced"
    assert isinstance(spec.space, Space)
    stored = spec.model_dump(mode="json")
    # The text kind's fields stay out of a torch-module spec: they mean nothing to it.
    assert "finetune" not in stored["task"] and "max_length" not in stored["task"]
    assert StudySpec.model_validate(stored) == spec


@pytest.mark.parametrize(
    ("task", "words"),
    [
        ({"model": None}, ("needs model",)),
        ({"model": "builtin:all-MiniLM-L6-v2"}, ("needs model",)),
        ({"replace": None}, ("needs replace", "classifier.1")),
        ({"inputs": None}, ("needs inputs",)),
        ({"inputs": {"kind": "columns"}}, ("inputs kind columns", "hashed-text")),
        ({"finetune": "full"}, ("finetune applies only to kind text-classification",)),
        ({"entrypoint": "a.b:c"}, ("entrypoint applies only to kind python",)),
    ],
)
def test_a_torch_module_task_says_what_it_lacks_or_does_not_take(
    task: dict[str, Any], words: tuple[str]
) -> None:
    merged = {k: v for k, v in {**MODULE_TASK, **task}.items() if v is not None}
    assert_rejected({"task": merged}, "task", *words)


@pytest.mark.parametrize(
    ("task", "field", "words"),
    [
        ({"replace": "classifier[1]"}, "task.replace", ("dotted module path",)),
        ({"factory": "mypkg.models"}, "task.factory", ("package.module:function",)),
        (
            {"inputs": {"kind": "hashed-text", "n_features": 0}},
            "task.inputs.hashed-text.n_features",
            ("greater",),
        ),
        ({"freeze": "some"}, "task.freeze", ()),
    ],
)
def test_a_malformed_torch_module_field_is_named(task: dict[str, Any], field: str, words: tuple[str]) -> None:
    found = errors_of({"task": {**MODULE_TASK, **task}})
    assert any(loc.startswith(field) and all(w in msg for w in words) for loc, msg in found), found


def test_columns_inputs_read_local_files_and_a_freeze_list_names_modules_that_train() -> None:
    spec = StudySpec.model_validate(
        {
            "name": "s",
            "task": {
                **MODULE_TASK,
                "inputs": {"kind": "columns", "columns": ["x1", "x2"]},
                "data": {"train": "/data/train.csv"},
                "freeze": ["body.2"],
            },
            "space": {"encoder_learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
        }
    )
    assert spec.task.freeze == ["body.2"]


def test_a_pretrained_learning_rate_needs_pretrained_modules_that_train() -> None:
    lr = {"encoder_learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}
    assert_rejected({"task": MODULE_TASK, "space": lr}, "", "freeze all-but-replaced")
    StudySpec.model_validate({"name": "s", "task": {**MODULE_TASK, "freeze": "none"}, "space": lr})


def test_a_python_task_needs_an_entry_point_and_a_space_of_its_own() -> None:
    assert_rejected({"task": {"kind": "python"}, "space": {"x": 1}}, "task", "needs entrypoint")
    assert_rejected(
        {"task": {"kind": "python", "entrypoint": "mypkg.train:run"}}, "", "space", "needs its parameters"
    )
    assert_rejected(python_spec(entrypoint="train.py"), "task.entrypoint", "package.module:function")
    assert_rejected(python_spec(model="/models/m.pth"), "task", "model applies only to kind")


def test_a_python_space_keeps_the_users_names_order_and_conditions() -> None:
    spec = StudySpec.model_validate({"name": "s", **python_spec()})
    assert isinstance(spec.space, FreeSpace)
    assert list(spec.space.params()) == ["optimizer", "momentum", "depth", "width_2", "epochs"]
    assert spec.space.max_epochs() == 4
    assert spec.space.params()["optimizer"].choices == ["sgd", "adam"]  # a bare list is a list of choices
    assert StudySpec.model_validate(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize(
    ("space", "words"),
    [
        (
            {"m": {"type": "float", "low": 0, "high": 1, "when": {"optimizer": "sgd"}}, "optimizer": ["sgd"]},
            "not a parameter defined before",
        ),
        (
            {
                "optimizer": ["sgd", "adam"],
                "m": {"type": "float", "low": 0, "high": 1, "when": {"optimizer": "sgdd"}},
            },
            "never holds",
        ),
        (
            {
                "x": {"type": "float", "low": 0, "high": 1},
                "y": {"type": "int", "low": 1, "high": 2, "when": {"x": 0.5}},
            },
            "continuous range; compare it",
        ),
        (
            {"o": ["a", "b"], "y": {"type": "int", "low": 1, "high": 2, "when": {"o": {"ge": 1}}}},
            "not numbers",
        ),
        (
            {"d": [1, 2], "y": {"type": "int", "low": 1, "high": 2, "when": {"d": 2, "e": 1}}},
            "exactly one parameter",
        ),
    ],
)
def test_a_condition_that_cannot_work_is_refused(space: dict[str, Any], words: str) -> None:
    found = errors_of(python_spec(space))
    assert any(loc.startswith("space") and words in msg for loc, msg in found), found


def test_a_python_space_refuses_bad_names_and_the_grid_takes_conditions_on_a_discrete_space() -> None:
    assert_rejected(python_spec({"x y": 1}), "space.x y.[key]", "pattern")
    assert_rejected({**python_spec(), "sampler": {"name": "grid"}}, "", "space.momentum: the grid sampler")
    discrete = {**PYTHON_SPACE, "momentum": {**PYTHON_SPACE["momentum"], "step": 0.33}}
    StudySpec.model_validate({"name": "s", **python_spec(discrete), "sampler": {"name": "grid"}})


def test_the_built_in_kinds_search_only_the_built_in_names() -> None:
    assert_rejected({"space": {"momentum": 0.9}}, "space.momentum", "Extra inputs")
    assert_rejected(
        {"space": {"width": {"type": "int", "low": 8, "high": 64, "when": {"epochs": 2}}}},
        "space.width",
        "may name only depth",
    )


def test_conditional_parameters_are_drawn_only_when_their_condition_holds() -> None:
    spec = StudySpec.model_validate({"name": "s", **python_spec()})
    space, tests = distributions(spec.space), conditions(spec.space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen: list[dict[str, Any]] = []
    for _ in range(40):
        trial = study.ask()
        frozen = study._storage.get_trial(trial._trial_id)
        sample_params(study, frozen, space, tests)
        seen.append(dict(frozen.params))
    assert {p["optimizer"] for p in seen} == {"sgd", "adam"}
    assert all(("momentum" in p) == (p["optimizer"] == "sgd") for p in seen)
    assert all(("width_2" in p) == (p["depth"] >= 2) for p in seen)
    assert all(p["epochs"] == 4 for p in seen)
