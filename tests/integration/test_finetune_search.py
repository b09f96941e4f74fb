"""A space that searches finetune: head, last-k and lora trials of one study in one worker process, in that
mixed order, each training, measuring and saving the model of its own mode (real runner, SQLite store, app)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service import ServiceSettings, create_app
from studies import StudyRepository, StudySpec, open_storage
from studies.artifacts import MODEL_ARTIFACT_ATTR, open_artifact_store
from tests.finetune_spec import run_next
from tunefleet.client import TunefleetClient
from worker.export import evaluate, load_best_model
from worker.runner import TrialRunner

LORA = {"lora_rank": 4, "lora_alpha": 2.0, "lora_dropout": 0.1, "lora_targets": "attention"}

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[StudyRepository]:
    repo = StudyRepository(open_storage(f"sqlite:///{tmp_path / 'store.db'}"))
    yield repo
    repo.engine.dispose()


def searching_spec(name: str, model: Path, data: dict[str, str], **objective: Any) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": name,
            "task": {"model": str(model), "data": data, "k": 1, "max_length": 32},
            "objective": objective or {"metric": "val_loss"},
            "space": {
                "finetune": ["head", "last-k", "lora"],
                "learning_rate": 0.01,
                "batch_size": 8,
                "epochs": 2,
                "depth": 1,
                "width": 16,
                "activation": "relu",
                "optimizer": "adam",
                "encoder_learning_rate": 0.001,
                "lora_rank": 4,
            },
            "sampler": {"name": "random", "seed": 3},
            "pruner": {"name": "none"},
            "budget": {"n_trials": 3},
        }
    )


def test_one_process_runs_lora_then_last_k_then_head_each_in_its_own_mode(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    objective = {
        "metrics": [
            {"name": "val_loss", "direction": "minimize"},
            {"name": "params_trainable", "direction": "minimize"},
            {"name": "model_size_mb", "direction": "minimize"},
        ]
    }
    repository.create(searching_spec(study_name, tiny_model, data_files, **objective))
    # Enqueued in this order: a lora trial leaves the process's encoder with its weights frozen (its adapters
    # share them), and the last-k trial after it must still train its top block.
    repository.enqueue(study_name, [{"finetune": "lora"}, {"finetune": "last-k"}, {"finetune": "head"}])
    runner = TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=tmp_path / "features",
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
    )
    trials = {}
    for _ in range(3):
        outcome, trial = run_next(runner, repository, study_name)
        assert outcome == "complete", trial.user_attrs.get("fail_reason")
        trials[trial.params["finetune"]] = trial
    assert [trials[mode].number for mode in ("lora", "last-k", "head")] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials.values())

    # Each trial drew only the parameters its mode reads.
    assert trials["lora"].params.items() >= {**LORA, "encoder_learning_rate": 0.001}.items()
    assert (
        "lora_rank" not in trials["last-k"].params
        and trials["last-k"].params["encoder_learning_rate"] == 0.001
    )
    assert not {"lora_rank", "encoder_learning_rate"} & set(trials["head"].params)

    # A 16-wide head on 32 features for 3 labels: 32*16 + 16 + 16*3 + 3 weights. lora adds rank-4 adapters on
    # four attention layers of two blocks; last-k the whole top block (thousands of weights).
    trainable = {mode: t.user_attrs["params_trainable"] for mode, t in trials.items()}
    head = 32 * 16 + 16 + 16 * 3 + 3
    assert trainable["head"] == head
    assert trainable["lora"] == head + 2 * 4 * (4 * 32 + 32 * 4)
    assert trainable["last-k"] > trainable["lora"] > trainable["head"]

    # The head trial has the fewest trainable weights and the smallest files: it joins the front, as the first
    # trial (lora) did, and each one's download rebuilds a model of its own mode.
    settings = ServiceSettings(
        database_url="unused://", artifact_dir=str(tmp_path / "artifacts"), mount_dashboard=False
    )
    with TestClient(create_app(settings, repository=repository)) as http:
        client = TunefleetClient("http://testserver")
        client._http = http
        for mode in ("lora", "head"):
            trial = trials[mode]
            assert trial.user_attrs[MODEL_ARTIFACT_ATTR]
            folder = client.download_best_model(study_name, tmp_path / mode, trial=trial.number)
            model = load_best_model(folder)
            assert model.params["params"]["finetune"] == mode and model.config["finetune"] == mode
            assert model.config["k"] is None and model.config["task"]["finetune"] == mode
            assert evaluate(model)[0] == pytest.approx(trial.user_attrs["val_loss"], abs=1e-5)


def test_a_last_k_trial_of_a_searching_study_saves_a_last_k_model(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    repository.create(searching_spec(study_name, tiny_model, data_files))
    repository.enqueue(study_name, [{"finetune": "last-k"}])
    runner = TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=tmp_path / "features",
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
    )
    outcome, trial = run_next(runner, repository, study_name)
    assert outcome == "complete", trial.user_attrs.get("fail_reason")
    settings = ServiceSettings(
        database_url="unused://", artifact_dir=str(tmp_path / "artifacts"), mount_dashboard=False
    )
    with TestClient(create_app(settings, repository=repository)) as http:
        client = TunefleetClient("http://testserver")
        client._http = http
        model = load_best_model(client.download_best_model(study_name, tmp_path / "best"))
    assert model.params["params"]["finetune"] == "last-k"
    assert (model.config["finetune"], model.config["k"]) == ("last-k", 1)
    assert evaluate(model)[0] == pytest.approx(trial.value, abs=1e-5)
