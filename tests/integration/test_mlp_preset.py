"""The mlp-bbc-news preset: the built-in pretrained MLP, built once per cache folder, trusted only as built, fine-tuned.

The built-in model is really pretrained on the built-in tweets (seconds on a CPU) into a temporary cache folder;
one trial of the preset, at a small size, runs through the real trial runner on a worker that trusts no pickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from studies import StudyRepository, StudySpec, WorkerIdentity, load_spec_file, preset_path
from studies.artifacts import MODEL_ARTIFACT_ATTR, extract_model_archive, open_artifact_store
from worker.builtin_modules import (
    MLP_TWEETS_SENTIMENT,
    RECIPES,
    HashedTextMLP,
    builtin_files,
    load_builtin_module,
)
from worker.module_export import evaluate_module, load_best_module
from worker.runner import TrialRunner
from worker.tasks.interface import TaskHost
from worker.tasks.torch_module import TorchModule

BUILTIN = f"builtin:{MLP_TWEETS_SENTIMENT}"
WORKER = WorkerIdentity(host="test", pid=1, device="cpu")
SEARCHED = {"learning_rate", "batch_size", "epochs", "depth", "width", "activation", "optimizer"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A worker cache folder in which the built-in model has been built once."""
    folder = tmp_path_factory.mktemp("cache")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_builtin_module(BUILTIN, cache_dir=folder)
    finally:
        torch.set_num_threads(previous)
    return folder


def preset() -> dict[str, Any]:
    return load_spec_file(preset_path("mlp-bbc-news"))


def host(cache_dir: Path) -> TaskHost:
    # A worker whose operator trusts no pickled models: the built-in model must load all the same.
    return TaskHost(device=torch.device("cpu"), cache_dir=cache_dir, trust_pickled_models=False)


class LeavesAMark:
    """An object whose unpickling creates a folder: what a hostile file in a shared cache would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_the_preset_fine_tunes_the_builtin_mlp_on_bbc_news_searching_seven_parameters() -> None:
    spec = StudySpec.model_validate(preset())

    task = spec.task
    assert (task.kind, task.model, task.replace, task.data) == (
        "torch-module",
        BUILTIN,
        "classifier.1",
        "builtin:bbc-news",
    )
    assert task.inputs is not None and task.inputs.kind == "hashed-text"
    assert task.inputs.n_features == RECIPES[MLP_TWEETS_SENTIMENT].n_features
    space = spec.model_dump(mode="json")["space"]
    searched = {name for name, param in space.items() if isinstance(param, dict) and param.get("type")}
    assert searched == SEARCHED
    assert space["activation"]["choices"] == ["sigmoid", "tanh", "relu", "leaky_relu", "elu"]
    assert space["optimizer"]["choices"] == ["sgd", "adagrad", "adam"]
    assert space["learning_rate"]["log"]


def test_the_builtin_model_is_a_whole_pickled_module_pretrained_well_above_chance(cache_dir: Path) -> None:
    files = builtin_files(BUILTIN, cache_dir)

    classes = torch.serialization.get_unsafe_globals_in_checkpoint(files.model)
    assert "worker.builtin_modules.HashedTextMLP" in classes
    model = torch.load(files.model, weights_only=False)
    assert isinstance(model, HashedTextMLP)
    assert isinstance(model.classifier[1], torch.nn.Linear)
    assert (model.classifier[1].in_features, model.classifier[1].out_features) == (128, 3)
    record = json.loads(files.record.read_text(encoding="utf-8"))
    assert record["label_names"] == ["negative", "neutral", "positive"]
    assert record["validation_accuracy"] > record["majority_class_rate"] + 0.1


def test_a_second_prepare_reuses_the_built_model_without_the_pickle_switch(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = builtin_files(BUILTIN, cache_dir)
    before = (files.model.stat().st_mtime_ns, files.model.read_bytes())
    task = StudySpec.model_validate(preset()).task

    with caplog.at_level(logging.INFO, logger="worker.builtin_modules"):
        kind = TorchModule(host(cache_dir))
        kind.prepare(task)

    assert (files.model.stat().st_mtime_ns, files.model.read_bytes()) == before
    assert not [record for record in caplog.records if "building" in record.getMessage()]
    assert isinstance(kind.model(task).module, HashedTextMLP)


@pytest.mark.parametrize("swapped", ["the model file", "the model file and its record"])
def test_a_model_file_swapped_in_the_cache_is_never_unpickled_and_is_rebuilt(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, swapped: str
) -> None:
    shared = tmp_path / "shared-cache"
    shutil.copytree(cache_dir, shared)
    files = builtin_files(BUILTIN, shared)
    marker = tmp_path / "code-ran"
    torch.save(LeavesAMark(marker), files.model)
    if swapped == "the model file and its record":
        record = json.loads(files.record.read_text(encoding="utf-8"))
        record["sha256"] = hashlib.sha256(files.model.read_bytes()).hexdigest()
        files.record.write_text(json.dumps(record), encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="worker.builtin_modules"):
        loaded = load_builtin_module(BUILTIN, cache_dir=shared)

    assert not marker.exists()
    assert isinstance(loaded.module, HashedTextMLP)
    assert any("is not trusted" in record.getMessage() for record in caplog.records)
    # Rebuilt in place: the file is the built-in model again, and nothing of the swapped one ran.
    assert isinstance(torch.load(files.model, weights_only=False), HashedTextMLP)
    assert not marker.exists()


def test_one_trial_of_the_preset_fine_tunes_the_builtin_model_well_above_chance(
    repository: StudyRepository, cache_dir: Path, tmp_path: Path, study_name: str
) -> None:
    spec = preset()
    spec["name"] = study_name
    spec["task"]["max_examples"] = 500
    spec["space"] = {
        "learning_rate": 3e-3,
        "batch_size": 32,
        "epochs": 4,
        "depth": 1,
        "width": 64,
        "activation": "relu",
        "optimizer": "adam",
    }
    spec["sampler"] = {"name": "random", "seed": 0}
    spec["pruner"] = {"name": "none"}
    spec["budget"] = {"n_trials": 1}
    repository.create(StudySpec.model_validate(spec))
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    runner = TrialRunner(
        repository=repository, device=torch.device("cpu"), cache_dir=cache_dir, artifact_store=artifacts
    )

    outcome = runner.run(claim)

    trial = repository.trial(repository.get(study_name), claim.trial.number)
    assert outcome == "complete", trial.user_attrs.get("fail_reason")
    assert trial.state == TrialState.COMPLETE
    assert trial.value is not None and math.isfinite(trial.value)
    # Five topics: always answering the most common one is right about a quarter of the time.
    assert trial.user_attrs["val_accuracy"] > 0.6
    archive = tmp_path / "model.zip"
    optuna.artifacts.download_artifact(
        artifact_store=artifacts, file_path=str(archive), artifact_id=trial.user_attrs[MODEL_ARTIFACT_ATTR]
    )
    model = load_best_module(extract_model_archive(archive, tmp_path / "model"), cache_dir=cache_dir)
    assert evaluate_module(model)[0] == pytest.approx(trial.value, abs=1e-5)
    assert model.predict(["the striker scored twice as the club won the cup final"])[0] in model.labels
