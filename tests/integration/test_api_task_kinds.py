"""The REST API takes torch-module and python studies, and refuses a model reference of the wrong kind with a 422."""

from __future__ import annotations

from fastapi.testclient import TestClient

from studies import StudyRepository, WorkerIdentity

WORKER = WorkerIdentity(host="api", pid=1, device="cpu")


def test_a_python_study_is_created_stored_as_written_and_claimed_with_its_own_parameters(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    space = {
        "optimizer": ["sgd", "adam"],
        "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
        "epochs": 2,
    }
    body = {
        "name": study_name,
        "task": {"kind": "python", "entrypoint": "mypkg.train:run"},
        "space": space,
        "sampler": {"name": "random", "seed": 1},
        "budget": {"n_trials": 6},
    }
    response = client.post("/v1/studies", json=body)
    assert response.status_code == 201, response.text
    stored = client.get(f"/v1/studies/{study_name}").json()["spec"]
    assert stored["task"] == {"kind": "python", "entrypoint": "mypkg.train:run"}
    assert stored["space"]["momentum"]["when"] == {"optimizer": "sgd"}
    for _ in range(6):
        claim = repository.claim(WORKER, study_names=[study_name])
        assert claim is not None
        params = claim.trial.params
        assert set(params) == (
            {"optimizer", "momentum", "epochs"} if params["optimizer"] == "sgd" else {"optimizer", "epochs"}
        )
        repository.complete(claim, 1.0, {})


def test_a_torch_save_file_as_a_text_classification_model_is_a_422_pointing_to_torch_module(
    client: TestClient, study_name: str
) -> None:
    response = client.post(
        "/v1/studies", json={"name": study_name, "task": {"model": "/models/pretrained_model.pth"}}
    )
    assert response.status_code == 422, response.text
    [detail] = response.json()["detail"]
    assert detail["loc"] == ["body", "task"]
    assert "torch-module" in detail["msg"]


def test_a_torch_module_study_without_the_layer_to_replace_is_a_422_saying_so(
    client: TestClient, study_name: str
) -> None:
    task = {
        "kind": "torch-module",
        "model": "/models/m.pth",
        "inputs": {"kind": "hashed-text", "n_features": 64},
    }
    response = client.post("/v1/studies", json={"name": study_name, "task": task})
    assert response.status_code == 422, response.text
    assert "needs replace" in response.text
