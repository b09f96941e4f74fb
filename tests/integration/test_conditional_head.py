"""A linear head has no width or activation: claims, grids, the stored spec, a trial and its downloaded model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from studies import StudyRepository, StudySpec, WorkerIdentity
from studies.artifacts import (
    CONFIG_FILE,
    MODEL_ARTIFACT_ATTR,
    PARAMS_FILE,
    extract_model_archive,
    open_artifact_store,
)
from tests.conftest import tiny_spec
from worker.export import evaluate, load_best_model
from worker.runner import TrialRunner

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")
HIDDEN_LAYER_PARAMS = {"width", "activation"}


@pytest.mark.parametrize("sampler", [{"name": "tpe", "n_startup_trials": 4}, {"name": "random"}])
def test_a_depth_0_trial_has_no_width_or_activation_in_the_store_and_a_deeper_one_has_both(
    repository: StudyRepository, study_name: str, sampler: dict[str, object]
) -> None:
    spec = {"name": study_name, "sampler": {**sampler, "seed": 5}, "budget": {"n_trials": 16}}
    repository.create(StudySpec.model_validate(spec))
    rng = random.Random(0)
    depths = set()
    for _ in range(16):
        claim = repository.claim(WORKER, study_names=[study_name])
        assert claim is not None
        stored = repository.storage.get_trial(claim.trial._trial_id).params
        assert stored == claim.params
        depths.add(stored["depth"])
        if stored["depth"] == 0:
            assert not HIDDEN_LAYER_PARAMS & stored.keys(), stored
        else:
            assert stored.keys() >= HIDDEN_LAYER_PARAMS, stored
        # Timed as a worker times a trial, so TPE's cost model is fitted once five trials are finished.
        seconds_per_epoch = 0.2 + stored.get("width", 0) / 512
        repository.complete(claim, rng.uniform(0.1, 1.0), {"trial_s": 3 * seconds_per_epoch, "epochs_run": 3})
    assert depths == {0, 1, 2}


def test_a_grid_hands_out_each_live_combination_once_and_no_linear_head_with_a_width(
    repository: StudyRepository, study_name: str
) -> None:
    space = {
        "learning_rate": [0.01, 0.1],
        "batch_size": 16,
        "epochs": 1,
        "depth": [0, 1],
        "width": [8, 16],
        "activation": "relu",
        "optimizer": "adam",
    }
    spec = tiny_spec(study_name, sampler={"name": "grid", "seed": 1}, space=space, budget={"n_trials": 50})
    repository.create(StudySpec.model_validate(spec))
    seen = []
    while (claim := repository.claim(WORKER, study_names=[study_name])) is not None:
        seen.append(tuple(sorted(repository.storage.get_trial(claim.trial._trial_id).params.items())))
        repository.complete(claim, 1.0, {})
    linear = [dict(p) for p in seen if dict(p)["depth"] == 0]
    assert len(seen) == len(set(seen)) == 2 * (1 + 2)
    assert len(linear) == 2 and not any(HIDDEN_LAYER_PARAMS & p.keys() for p in linear)


# Eight trials are few for Optuna's importances, which says so: not what this test is about.
@pytest.mark.filterwarnings("ignore:Some regimes for parameter")
def test_the_stored_spec_says_the_condition_and_a_bad_one_is_a_422_naming_the_field(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    body = {"name": study_name, "sampler": {"name": "random", "seed": 2}, "budget": {"n_trials": 8}}
    assert client.post("/v1/studies", json=body).status_code == 201
    space = client.get(f"/v1/studies/{study_name}").json()["spec"]["space"]
    assert space["width"]["when"] == space["activation"]["when"] == {"depth": {"ge": 1}}
    while (claim := repository.claim(WORKER, study_names=[study_name])) is not None:
        repository.complete(claim, 0.1 * claim.params["depth"] + 0.01 * claim.trial.number, {})
    trials = client.get(f"/v1/studies/{study_name}/trials").json()["items"]
    assert {t["params"]["depth"] == 0 for t in trials} == {True, False}
    assert all((t["params"].keys() >= HIDDEN_LAYER_PARAMS) == (t["params"]["depth"] > 0) for t in trials)
    # The report's plots (importances, parallel coordinates) take trials without width and activation.
    report = client.get(f"/v1/studies/{study_name}/report")
    assert report.status_code == 200 and "Parallel coordinates" in report.text
    bad = {"width": {"type": "int", "low": 8, "high": 64, "when": {"depth": {"ge": 2}}}}
    response = client.post("/v1/studies", json={"name": f"{study_name}-bad", "space": bad})
    assert response.status_code == 422, response.text
    [detail] = response.json()["detail"]
    assert detail["loc"] == ["body", "space", "width"]
    assert "every depth of 1 or more" in detail["msg"]


def test_a_linear_head_study_completes_and_its_model_records_no_width_or_activation(
    repository: StudyRepository, study_name: str, tmp_path: Path
) -> None:
    space = {"epochs": 2, "learning_rate": 0.05, "batch_size": 16, "depth": 0, "optimizer": "adam"}
    repository.create(StudySpec.model_validate(tiny_spec(study_name, space=space, pruner={"name": "none"})))
    store = open_artifact_store(str(tmp_path / "artifacts"))
    runner = TrialRunner(
        repository=repository, device=torch.device("cpu"), cache_dir=tmp_path / "cache", artifact_store=store
    )
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    assert runner.run(claim) == "complete"
    trial = repository.trial(repository.get(study_name), claim.trial.number)
    assert trial.state == TrialState.COMPLETE
    assert not HIDDEN_LAYER_PARAMS & trial.params.keys()
    archive = tmp_path / "model.zip"
    optuna.artifacts.download_artifact(
        artifact_store=store, file_path=str(archive), artifact_id=trial.user_attrs[MODEL_ARTIFACT_ATTR]
    )
    folder = extract_model_archive(archive, tmp_path / "model")
    saved = json.loads((folder / PARAMS_FILE).read_text())
    assert saved["params"] == trial.params
    assert json.loads((folder / CONFIG_FILE).read_text())["head"] == {
        "input_size": 384,
        "n_classes": 5,
        "depth": 0,
    }
    model = load_best_model(folder)
    assert len(model.head) == 1  # one Linear: the linear probe that trained
    loss, _ = evaluate(model)
    assert loss == pytest.approx(trial.value, rel=1e-4)
