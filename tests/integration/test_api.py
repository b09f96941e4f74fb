"""The REST API through a real app on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from studies import StudyRepository, WorkerIdentity
from tests.conftest import tiny_spec

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")


def test_create_study_returns_201_with_location(client: TestClient, study_name: str) -> None:
    response = client.post("/v1/studies", json=tiny_spec(study_name))
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/studies/{study_name}"
    body = response.json()
    assert body["name"] == study_name
    assert body["state"] == "running"
    assert body["n_trials"] == 3
    assert body["spec"]["sampler"]["seed"] == 7
    assert body["best_trial"] is None


def test_create_study_returns_409_when_name_taken(client: TestClient, study_name: str) -> None:
    assert client.post("/v1/studies", json=tiny_spec(study_name)).status_code == 201
    response = client.post("/v1/studies", json=tiny_spec(study_name))
    assert response.status_code == 409
    assert response.json() == {"detail": f"study {study_name!r} already exists", "code": "study_exists"}


def test_create_study_returns_409_when_a_plain_optuna_study_has_the_name(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    import optuna

    optuna.create_study(study_name=study_name, storage=repository.storage)
    assert client.post("/v1/studies", json=tiny_spec(study_name)).status_code == 409


def test_unseeded_study_records_the_seed_it_drew(client: TestClient, study_name: str) -> None:
    body = client.post("/v1/studies", json=tiny_spec(study_name, sampler={"name": "random"})).json()
    assert isinstance(body["spec"]["sampler"]["seed"], int)


@pytest.mark.parametrize(
    ("patch", "loc", "words"),
    [
        ({"unknown_key": 1}, ["body", "unknown_key"], "Extra inputs"),
        ({"space": {"epochs": {"type": "int", "low": 5, "high": 2}}}, ["body", "space", "epochs"], "exceed"),
        (
            {"space": {"learning_rate": {"type": "float", "low": -1.0, "high": 0.1, "log": True}}},
            ["body", "space", "learning_rate"],
            "low > 0",
        ),
        (
            {"space": {"batch_size": {"type": "categorical", "choices": []}}},
            ["body", "space", "batch_size"],
            "empty",
        ),
        (
            {"space": {"activation": {"type": "categorical", "choices": ["mish"]}}},
            ["body", "space", "activation"],
            "unknown activation",
        ),
        ({"space": {"optimizer": "rmsprop"}}, ["body", "space", "optimizer"], "unknown optimizer"),
        ({"budget": {"n_trials": 0}}, ["body", "budget", "n_trials"], "greater than or equal to 1"),
        ({"name": "../etc"}, ["body", "name"], "pattern"),
    ],
)
def test_bad_spec_returns_422_naming_the_field(
    client: TestClient, study_name: str, patch: dict[str, Any], loc: list[str], words: str
) -> None:
    response = client.post("/v1/studies", json={**tiny_spec(study_name), **patch})
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(d["loc"] == loc and words in d["msg"] for d in details), details


def test_undecodable_body_returns_4xx_not_500(client: TestClient) -> None:
    response = client.post(
        "/v1/studies", content=b"\xff\xfe not json", headers={"content-type": "application/json"}
    )
    assert response.status_code in (400, 422)
    assert "detail" in response.json()


def test_unknown_study_returns_404_with_code(client: TestClient) -> None:
    for path in ("/v1/studies/nope", "/v1/studies/nope/trials", "/v1/studies/nope/trials/0"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["code"] == "study_not_found"


def test_list_shows_created_studies_with_counts(client: TestClient, study_name: str) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    listed = {s["name"]: s for s in client.get("/v1/studies").json()["items"]}
    assert listed[study_name]["trial_counts"]["complete"] == 0
    assert listed[study_name]["state"] == "running"


def test_study_shows_progress_and_best_trial_after_trials_finish(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    for value in (0.9, 0.4):
        claim = repository.claim(WORKER, study_names=[study_name])
        assert claim is not None
        claim.trial.report(value + 0.1, 1)
        repository.complete(claim, value, {"val_accuracy": 0.5})
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    repository.fail(claim, "NaN loss at epoch 1")

    body = client.get(f"/v1/studies/{study_name}").json()
    assert body["state"] == "completed"
    assert body["n_finished"] == 3
    assert body["trial_counts"]["complete"] == 2
    assert body["trial_counts"]["fail"] == 1
    assert body["best_value"] == pytest.approx(0.4)
    assert body["best_trial"]["number"] == 1
    assert body["best_trial"]["intermediate_values"] == {"1": pytest.approx(0.5)}

    failed = client.get(f"/v1/studies/{study_name}/trials", params={"state": "fail"}).json()
    assert failed["total"] == 1
    assert failed["items"][0]["fail_reason"] == "NaN loss at epoch 1"

    page = client.get(f"/v1/studies/{study_name}/trials", params={"offset": 1, "limit": 1}).json()
    assert page["total"] == 3
    assert [t["number"] for t in page["items"]] == [1]

    trial = client.get(f"/v1/studies/{study_name}/trials/0").json()
    assert trial["params"].keys() >= {"learning_rate", "batch_size", "epochs", "depth", "width"}
    assert trial["user_attrs"]["worker"] == "test:1"
    assert isinstance(trial["user_attrs"]["seed"], int)
    assert client.get(f"/v1/studies/{study_name}/trials/99").json()["code"] == "trial_not_found"


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"state": "bogus"}])
def test_bad_trial_page_query_returns_422(client: TestClient, study_name: str, query: dict[str, Any]) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    assert client.get(f"/v1/studies/{study_name}/trials", params=query).status_code == 422


def test_stop_halts_claims_and_resume_reopens_them(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    assert client.post(f"/v1/studies/{study_name}/stop").json()["state"] == "stopped"
    assert repository.claim(WORKER, study_names=[study_name]) is None
    assert client.post(f"/v1/studies/{study_name}/resume").json()["state"] == "running"
    assert repository.claim(WORKER, study_names=[study_name]) is not None


def test_dashboard_lists_the_study_from_the_same_store(client: TestClient, study_name: str) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    response = client.get("/api/studies")
    assert response.status_code == 200
    assert study_name in {s["study_name"] for s in response.json()["study_summaries"]}


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_studies_are_listed_a_page_at_a_time_newest_first(client: TestClient, study_name: str) -> None:
    names = [f"{study_name}-{i}" for i in range(3)]
    for name in names:
        assert client.post("/v1/studies", json=tiny_spec(name)).status_code == 201
    first = client.get("/v1/studies", params={"limit": 2}).json()
    assert (first["offset"], first["limit"]) == (0, 2)
    assert first["total"] >= 3
    assert [s["name"] for s in first["items"]] == [names[2], names[1]]
    second = client.get("/v1/studies", params={"limit": 2, "offset": 2}).json()
    assert second["items"][0]["name"] == names[0]
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
        response = client.get("/v1/studies", params=bad)
        assert response.status_code == 422
        assert next(iter(bad)) in response.text
