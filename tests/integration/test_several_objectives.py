"""Studies of several objectives through the real runner and store: multi-objective TPE and NSGA-II beside a
running trial, values and constraints as Optuna stores them, a torch-module model measured, the API's front."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from studies import StudyRepository, StudySpec, WorkerIdentity
from studies.artifacts import MODEL_ARTIFACT_ATTR, PARAMS_FILE, open_artifact_store
from tests.entrypoints.models import HIDDEN, tabular_classifier
from tests.integration.test_torch_module_kind import write_columns
from worker.runner import TrialRunner

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")
OTHER = WorkerIdentity(host="test", pid=2, device="cpu")
MINIMIZE = {"direction": "minimize"}


def synthetic_spec(name: str, sampler: dict[str, Any]) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": name,
            "task": {"kind": "synthetic"},
            "space": {"epochs": {"type": "int", "low": 1, "high": 3}},
            "objective": {
                "metrics": [{"name": "val_loss", **MINIMIZE}, {"name": "train_seconds", **MINIMIZE}],
                "constraints": ["val_loss <= 1.0"],
            },
            "sampler": {**sampler, "seed": 5},
            "budget": {"n_trials": 8},
        }
    )


def non_dominated(trials: list[FrozenTrial]) -> list[int]:
    """The front recomputed from the trials as stored: feasible, and no feasible trial at least as good in
    every objective (all minimised here) and better in one."""
    feasible = [
        t for t in trials if t.state == TrialState.COMPLETE and all(v <= 0 for v in t.constraints.values())
    ]

    def beats(a: FrozenTrial, b: FrozenTrial) -> bool:
        assert a.values is not None and b.values is not None
        return all(x <= y for x, y in zip(a.values, b.values, strict=True)) and a.values != b.values

    return sorted(t.number for t in feasible if not any(beats(o, t) for o in feasible))


@pytest.mark.parametrize(
    "sampler", [{"name": "tpe", "n_startup_trials": 2}, {"name": "nsga2", "n_startup_trials": 2}]
)
def test_several_objectives_are_searched_beside_a_running_trial_and_stored_as_optuna_stores_them(
    repository: StudyRepository, study_name: str, tmp_path: Path, sampler: dict[str, Any]
) -> None:
    record = repository.create(synthetic_spec(study_name, sampler))
    runner = TrialRunner(repository=repository, device=torch.device("cpu"), cache_dir=tmp_path)
    # Held by another worker the whole time: the constant liar (TPE) and NSGA-II must sample around it.
    running = repository.claim(OTHER, study_names=[study_name])
    assert running is not None
    for _ in range(6):
        claim = repository.claim(WORKER, study_names=[study_name])
        assert claim is not None
        assert runner.run(claim) == "complete"

    study = optuna.load_study(study_name=study_name, storage=repository.storage)
    assert study.directions == [StudyDirection.MINIMIZE, StudyDirection.MINIMIZE]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 6
    for trial in trials:
        assert trial.values == [trial.user_attrs["val_loss"], trial.user_attrs["train_seconds"]]
        assert trial.constraints == {"val_loss <= 1": pytest.approx(trial.values[0] - 1.0)}
        # Optuna keeps no per-epoch values for several objectives.
        assert trial.intermediate_values == {}
    assert study.trials[running.trial.number].state == TrialState.RUNNING

    front = repository.pareto_front(record)
    assert [t.number for t in front] == non_dominated(study.trials)
    assert repository.progress(record).best_trial is None


def test_the_api_shows_the_front_and_names_what_is_wrong_with_a_rule(
    client: TestClient, repository: StudyRepository, study_name: str, tmp_path: Path
) -> None:
    record = repository.create(synthetic_spec(study_name, {"name": "random"}))
    runner = TrialRunner(repository=repository, device=torch.device("cpu"), cache_dir=tmp_path)
    for _ in range(4):
        claim = repository.claim(WORKER, study_names=[study_name])
        assert claim is not None
        runner.run(claim)
    front = [t.number for t in repository.pareto_front(record)]
    # Seeded: the same parameters and losses every run, some feasible, some not (val_loss above 1).
    assert front and len(front) < 4

    study = client.get(f"/v1/studies/{study_name}").json()
    assert (study["pareto_front_size"], study["best_value"], study["best_trial"]) == (len(front), None, None)
    listed = client.get(f"/v1/studies/{study_name}/trials").json()["items"]
    assert all(t["value"] is None and len(t["values"]) == 2 for t in listed)
    pareto = client.get(f"/v1/studies/{study_name}/pareto").json()
    assert [t["number"] for t in pareto["trials"]] == front
    assert pareto["metrics"] == ["val_loss", "train_seconds"] and pareto["constraints"] == ["val_loss <= 1"]

    url = f"/v1/studies/{study_name}/best-model"
    outside = next(t["number"] for t in listed if t["number"] not in front)
    for query, status, code, loc in [
        ({"prefer": "flops"}, 422, "validation_error", ["query", "prefer"]),
        ({"max_flops": "1"}, 422, "validation_error", ["query", "max_flops"]),
        ({"prefer": "latency_ms"}, 404, "best_model_not_found", None),
        ({"max_val_loss": "low"}, 422, "validation_error", ["query", "max_val_loss"]),
        ({"trial": 99}, 404, "trial_not_found", None),
        ({"trial": outside}, 404, "not_on_pareto_front", None),
        # A synthetic trial trains no model: on the front, and still nothing to download.
        ({"trial": front[0]}, 404, "best_model_not_found", None),
    ]:
        answer = client.get(url, params=query)
        assert answer.status_code == status, answer.text
        assert answer.json()["code"] == code
        if loc is not None:
            assert answer.json()["detail"][0]["loc"] == loc


def test_a_torch_module_trial_measures_its_model_and_keeps_it_on_the_front(
    repository: StudyRepository, study_name: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    torch.save(tabular_classifier().state_dict(), tmp_path / "state_dict.pth")
    spec = StudySpec.model_validate(
        {
            "name": study_name,
            "task": {
                "kind": "torch-module",
                "model": str(tmp_path / "state_dict.pth"),
                "factory": "tests.entrypoints.models:tabular_classifier",
                "replace": "classifier.1",
                "inputs": {"kind": "columns"},
                "data": {"train": str(write_columns(tmp_path / "columns.csv", 10))},
            },
            "space": {
                "learning_rate": 0.01,
                "batch_size": 8,
                "epochs": 2,
                "depth": 1,
                "width": 16,
                "activation": "relu",
                "optimizer": "adam",
            },
            "objective": {
                "metrics": [
                    {"name": "val_loss", **MINIMIZE},
                    {"name": "params_trainable", **MINIMIZE},
                    {"name": "latency_ms", **MINIMIZE},
                ],
                "constraints": ["model_size_mb <= 5"],
                "latency_batch_size": 2,
            },
            "sampler": {"name": "random"},
        }
    )
    repository.create(spec)
    store = open_artifact_store(str(tmp_path / "artifacts"))
    runner = TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=tmp_path / "cache",
        artifact_store=store,
        allowed_entrypoints=("tests.entrypoints",),
    )
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    assert runner.run(claim) == "complete"
    trial = repository.trial(repository.get(study_name), claim.trial.number)
    attrs = trial.user_attrs

    # Only the new head trains (freeze all-but-replaced): Linear(128, 16) and Linear(16, 3).
    assert attrs["params_trainable"] == HIDDEN * 16 + 16 + 16 * 3 + 3
    assert trial.values == [attrs["val_loss"], attrs["params_trainable"], attrs["latency_ms"]]
    assert attrs["latency_ms"] > 0 and attrs["latency_batch_size"] == 2 and attrs["latency_device"] == "cpu"
    # The first trial is the front: its model is kept, and model_size_mb is that archive's size.
    archive = store.open_reader(attrs[MODEL_ARTIFACT_ATTR]).read()
    assert attrs["model_size_mb"] == len(archive) / 1_000_000
    assert trial.constraints == {"model_size_mb <= 5": pytest.approx(len(archive) / 1_000_000 - 5)}
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        assert b'"number": 0' in opened.read(PARAMS_FILE)
