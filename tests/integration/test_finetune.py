"""Own data, own model, every fine-tune mode, and the best model taken away: real runner, store and app.

The model is a tiny randomly initialised BERT saved as a local Hugging Face folder (built-in tokenizer
files, no download), so a last-k or full trial takes well under a second on a CPU.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from safetensors.torch import load_file

from service import ServiceSettings, create_app
from studies import StudyRepository, StudySpec, open_storage
from studies.artifacts import MODEL_ARTIFACT_ATTR, open_artifact_store
from tests.finetune_spec import finetune_spec as spec
from tests.finetune_spec import run_next, write_csv
from tunefleet.client import ApiError, TunefleetClient
from worker.export import evaluate, load_best_model
from worker.model import builtin_model_folder
from worker.runner import TrialRunner

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-block, 32-wide BERT with random weights and the built-in model's tokenizer."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    builtin = builtin_model_folder("all-MiniLM-L6-v2")
    for name in TOKENIZER_FILES:
        shutil.copy(builtin / name, folder / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("data")
    return {
        "train": str(write_csv(folder / "train.csv", 8)),
        "validation": str(write_csv(folder / "validation.csv", 3, offset=100)),
    }


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[StudyRepository]:
    # SQLite only: what is tested here is the fine-tuning, not the store (the storage suites run both).
    repo = StudyRepository(open_storage(f"sqlite:///{tmp_path / 'store.db'}"))
    yield repo
    repo.engine.dispose()


def runner_for(repository: StudyRepository, tmp_path: Path, *, keep_models: bool = True) -> TrialRunner:
    return TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=tmp_path / "features",
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")) if keep_models else None,
    )


@pytest.mark.parametrize("finetune", ["last-k", "head", "full"])
def test_the_best_model_downloads_and_reproduces_the_trials_validation_loss(
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
    finetune: str,
) -> None:
    repository.create(spec(study_name, tiny_model, data_files, finetune))
    settings = ServiceSettings(
        database_url="unused://", artifact_dir=str(tmp_path / "artifacts"), mount_dashboard=False
    )
    with TestClient(create_app(settings, repository=repository)) as http:
        client = TunefleetClient("http://testserver")
        client._http = http  # the snippet's client, talking to the app in this process

        with pytest.raises(ApiError) as nothing_yet:
            client.download_best_model(study_name, tmp_path / "early")
        assert (nothing_yet.value.status, nothing_yet.value.code) == (404, "best_model_not_found")

        runner = runner_for(repository, tmp_path)
        outcome, trial = run_next(runner, repository, study_name)
        assert outcome == "complete", trial.user_attrs.get("fail_reason")
        assert sorted(trial.intermediate_values) == [1, 2]
        assert trial.user_attrs[MODEL_ARTIFACT_ATTR]

        # What README's "Taking the best model away" says, line by line.
        folder = client.download_best_model(study_name, tmp_path / "best-model")
        model = load_best_model(folder)
        val_loss, val_accuracy = evaluate(model)

    assert folder.name == f"{study_name}-trial-{trial.number}-model"
    assert val_loss == pytest.approx(trial.value, abs=1e-5)
    assert val_accuracy == pytest.approx(trial.user_attrs["val_accuracy"])
    assert model.labels == ["negative", "neutral", "positive"]
    assert model.params["number"] == trial.number and model.params["seed"] == trial.user_attrs["seed"]
    assert model.params["params"] == trial.params
    assert model.config["finetune"] == finetune and model.config["head"]["depth"] == 1
    assert len(model.predict(["this great thing is lovely"])) == 1
    saved = {
        name.split(".")[0] + "." + name.split(".")[1] for name in load_file(folder / "weights.safetensors")
    }
    expected_encoder = {
        "head": set(),
        "last-k": {"encoder.encoder"},  # only the top block: encoder.encoder.layer.1.*
        "full": {"encoder.embeddings", "encoder.encoder", "encoder.pooler"},
    }[finetune]
    assert saved == {"head.0", "head.2"} | expected_encoder
    if finetune == "last-k":
        assert all(
            ".layer.1." in name for name in load_file(folder / "weights.safetensors") if "layer" in name
        )


def test_only_a_trial_that_beats_the_best_saves_its_model(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    repository.create(
        spec(
            study_name,
            tiny_model,
            data_files,
            "head",
            space={"learning_rate": {"type": "categorical", "choices": [0.03, 1e-6]}, "epochs": 1},
            sampler={"name": "grid", "seed": 1},
        )
    )
    runner = runner_for(repository, tmp_path)
    trials = [run_next(runner, repository, study_name)[1] for _ in range(2)]
    best, worse = sorted(trials, key=lambda t: t.value)
    assert MODEL_ARTIFACT_ATTR in best.user_attrs
    # The first trial always saves (nothing to beat); the second saves only if it is better.
    assert (MODEL_ARTIFACT_ATTR in worse.user_attrs) == (worse.number < best.number)


def test_rerunning_a_trials_parameters_with_its_seed_gives_the_same_validation_loss(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    for finetune in ("head", "last-k"):
        name = f"{study_name}-{finetune}"
        repository.create(spec(name, tiny_model, data_files, finetune))
        _, first = run_next(runner_for(repository, tmp_path, keep_models=False), repository, name)
        study = optuna.load_study(study_name=name, storage=repository.storage)
        study.enqueue_trial(first.params, user_attrs={"seed": first.user_attrs["seed"]})
        # A fresh runner: nothing carried over in memory but the pristine encoder.
        _, rerun = run_next(runner_for(repository, tmp_path, keep_models=False), repository, name)
        assert rerun.number != first.number
        assert rerun.params == first.params and rerun.user_attrs["seed"] == first.user_attrs["seed"]
        assert rerun.intermediate_values == first.intermediate_values, finetune


def test_trials_in_one_process_never_see_each_others_encoder_updates(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    repository.create(spec(study_name, tiny_model, data_files, "full", budget={"n_trials": 3}))
    runner = runner_for(repository, tmp_path, keep_models=False)
    first = run_next(runner, repository, study_name)[1]
    run_next(runner, repository, study_name)
    study = optuna.load_study(study_name=study_name, storage=repository.storage)
    study.enqueue_trial(first.params, user_attrs={"seed": first.user_attrs["seed"]})
    third = run_next(runner, repository, study_name)[1]
    assert third.intermediate_values == first.intermediate_values


def test_k_larger_than_the_model_fails_the_trial_with_a_clear_reason(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    body = spec(study_name, tiny_model, data_files, "last-k").model_dump(mode="json")
    body["task"]["k"] = 5
    repository.create(StudySpec.model_validate(body))
    outcome, trial = run_next(runner_for(repository, tmp_path), repository, study_name)
    assert outcome == "fail"
    assert trial.user_attrs["fail_reason"] == "finetune last-k with k=5, but the model has 2 blocks"


@pytest.mark.parametrize("damage", ["weights", "config"])
def test_a_broken_model_folder_fails_the_trial_with_a_clear_reason(
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
    damage: str,
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    if damage == "weights":
        (broken / "model.safetensors").write_bytes(b"not a safetensors file")
        expected = f"cannot load the model in {broken}"
    else:
        (broken / "config.json").unlink()
        expected = f"model folder {broken} has no config.json"
    repository.create(spec(study_name, broken, data_files, "last-k"))
    outcome, trial = run_next(runner_for(repository, tmp_path), repository, study_name)
    assert outcome == "fail"
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith(expected)


def test_the_best_model_route_says_404_with_a_code(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    settings = ServiceSettings(
        database_url="unused://", artifact_dir=str(tmp_path / "a"), mount_dashboard=False
    )
    with TestClient(create_app(settings, repository=repository)) as http:
        missing = http.get("/v1/studies/no-such-study/best-model")
        assert missing.status_code == 404 and missing.json()["code"] == "study_not_found"
        repository.create(spec(study_name, tiny_model, data_files, "head"))
        empty = http.get(f"/v1/studies/{study_name}/best-model")
        assert empty.status_code == 404
        assert empty.json() == {
            "detail": f"study {study_name!r} has no best model: it has no completed trial yet",
            "code": "best_model_not_found",
        }
        # A trial completed by a worker that keeps no models: the study has a best trial but no model.
        run_next(runner_for(repository, tmp_path, keep_models=False), repository, study_name)
        unsaved = http.get(f"/v1/studies/{study_name}/best-model")
        assert unsaved.status_code == 404 and "saved no model" in unsaved.json()["detail"]
