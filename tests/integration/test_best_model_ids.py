"""A best trial whose model_artifact_id is not one a worker wrote gets a 404 with a code, never a 500 or a file."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from studies import StudyRepository, StudySpec, WorkerIdentity
from studies.artifacts import MODEL_ARTIFACT_ATTR

WORKER = WorkerIdentity(host="ids", pid=1, device="cpu")


@pytest.mark.parametrize("artifact_id", ["../../../etc/passwd", "not-a-uuid", "a/b", "", 42])
def test_a_malformed_model_artifact_id_is_a_404_naming_the_trial(
    client: TestClient, repository: StudyRepository, study_name: str, artifact_id: object
) -> None:
    spec = {
        "name": study_name,
        "task": {"kind": "synthetic"},
        "space": {"epochs": 1},
        "budget": {"n_trials": 1},
    }
    repository.create(StudySpec.model_validate(spec))
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    repository.complete(claim, 0.5, {MODEL_ARTIFACT_ATTR: artifact_id})
    response = client.get(f"/v1/studies/{study_name}/best-model")
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "best_model_not_found"
    if artifact_id:
        assert f"trial 0 records a malformed {MODEL_ARTIFACT_ATTR}" in response.json()["detail"]
