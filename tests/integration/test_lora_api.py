"""A finetune lora spec through the REST API on SQLite and PostgreSQL: 422s that name the field, the defaults stored."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import tiny_spec


@pytest.mark.parametrize(
    ("task", "space", "loc", "words"),
    [
        ({}, {"lora_rank": 8}, ["body"], "space.lora_rank applies only to finetune lora, not finetune head"),
        ({"finetune": "lora", "k": 1}, {}, ["body", "task"], "k applies only to finetune last-k, not lora"),
        (
            {"finetune": "lora"},
            {"lora_targets": "all"},
            ["body", "space", "lora_targets"],
            "unknown lora_targets",
        ),
        ({"finetune": "lora"}, {"lora_dropout": 2.0}, ["body", "space", "lora_dropout"], "<= 0.9"),
    ],
)
def test_a_bad_lora_spec_is_a_422_naming_the_field(
    client: TestClient,
    study_name: str,
    task: dict[str, Any],
    space: dict[str, Any],
    loc: list[str],
    words: str,
) -> None:
    body = tiny_spec(study_name)
    body["task"].update(task)
    body["space"].update(space)
    response = client.post("/v1/studies", json=body)
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(d["loc"] == loc and words in d["msg"] for d in details), details


def test_a_lora_study_is_stored_with_the_lora_parameters_it_searches(
    client: TestClient, study_name: str
) -> None:
    body = tiny_spec(study_name)
    body["task"]["finetune"] = "lora"
    body["space"]["lora_rank"] = [4, 8]
    assert client.post("/v1/studies", json=body).status_code == 201
    space = client.get(f"/v1/studies/{study_name}").json()["spec"]["space"]
    assert space["lora_rank"] == {"type": "categorical", "choices": [4, 8]}
    assert (space["lora_alpha"], space["lora_dropout"], space["lora_targets"]) == (2.0, 0.1, "attention")
