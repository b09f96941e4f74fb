"""A worker's trial runner on the real built-in model and a tiny seeded subset of BBC News."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from studies import StudyRepository, StudySpec, WorkerIdentity
from studies.artifacts import (
    MODEL_ARTIFACT_ATTR,
    PARAMS_FILE,
    ArtifactStore,
    extract_model_archive,
    open_artifact_store,
)
from tests.conftest import tiny_spec
from worker.runner import TrialRunner

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


def runner_for(
    repository: StudyRepository, cache_dir: Path, artifact_store: ArtifactStore | None = None
) -> TrialRunner:
    return TrialRunner(
        repository=repository, device=torch.device("cpu"), cache_dir=cache_dir, artifact_store=artifact_store
    )


def run_one(
    repository: StudyRepository,
    cache_dir: Path,
    name: str,
    artifact_store: ArtifactStore | None = None,
    **spec: Any,
) -> tuple[str, Any]:
    repository.create(StudySpec.model_validate(tiny_spec(name, **spec)))
    claim = repository.claim(WORKER, study_names=[name])
    assert claim is not None
    outcome = runner_for(repository, cache_dir, artifact_store).run(claim)
    return outcome, repository.trial(repository.get(name), claim.trial.number)


def test_a_trial_reports_every_epoch_and_records_its_results(
    repository: StudyRepository, cache_dir: Path, study_name: str
) -> None:
    outcome, trial = run_one(
        repository,
        cache_dir,
        study_name,
        space={"epochs": 3, "learning_rate": 0.01, "optimizer": "adam", "batch_size": 16},
        pruner={"name": "none"},
    )
    assert outcome == "complete"
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert trial.value == pytest.approx(min(trial.intermediate_values.values()))
    attrs = trial.user_attrs
    assert 0.0 <= attrs["val_accuracy"] <= 1.0
    assert attrs["train_s"] > 0
    # Reporting three epochs to the store is timed apart from training, and within the trial's time.
    assert attrs["report_s"] > 0
    assert attrs["train_s"] + attrs["report_s"] <= attrs["trial_s"]
    assert attrs["worker"] == "test:1" and attrs["device"] == "cpu"
    assert isinstance(attrs["seed"], int)


def test_a_trial_whose_loss_stops_falling_ends_early_and_completes_with_its_best_epoch(
    repository: StudyRepository, cache_dir: Path, study_name: str, tmp_path: Path
) -> None:
    # A large step on 80 examples overfits within a few epochs: the validation loss turns up and stays up.
    space = {"epochs": 30, "learning_rate": 0.05, "optimizer": "adam", "batch_size": 16, "width": 64}
    store = open_artifact_store(str(tmp_path / "artifacts"))
    outcome, trial = run_one(
        repository,
        cache_dir,
        study_name,
        store,
        space=space,
        pruner={"name": "none"},
        objective={"patience": 2},
    )
    assert outcome == "complete"
    assert trial.state == TrialState.COMPLETE
    losses = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
    assert len(losses) < 30
    # It stopped exactly when two epochs in a row had not beaten the best before them.
    assert min(losses[-2:]) >= min(losses[:-2])
    assert all(min(losses[i - 2 : i]) < min(losses[: i - 2]) for i in range(3, len(losses)))
    assert trial.value == pytest.approx(min(losses))
    attrs = trial.user_attrs
    assert attrs["stopped_early"] == "no better validation metric in 2 epochs"
    assert attrs["epochs_run"] == len(losses)
    assert losses[attrs["chosen_epoch"] - 1] == pytest.approx(trial.value)
    # Its model is kept like any completed trial's: the weights of its best epoch.
    archive = tmp_path / "model.zip"
    optuna.artifacts.download_artifact(
        artifact_store=store, file_path=str(archive), artifact_id=attrs[MODEL_ARTIFACT_ATTR]
    )
    saved = json.loads((extract_model_archive(archive, tmp_path / "model") / PARAMS_FILE).read_text())
    assert saved["epoch"] == attrs["chosen_epoch"]


def test_patience_zero_runs_every_epoch(
    repository: StudyRepository, cache_dir: Path, study_name: str
) -> None:
    space = {"epochs": 8, "learning_rate": 0.05, "optimizer": "adam", "batch_size": 16, "width": 64}
    outcome, trial = run_one(
        repository, cache_dir, study_name, space=space, pruner={"name": "none"}, objective={"patience": 0}
    )
    assert outcome == "complete"
    assert sorted(trial.intermediate_values) == list(range(1, 9))
    assert "stopped_early" not in trial.user_attrs


def test_a_diverging_trial_fails_with_its_reason_and_the_worker_goes_on(
    repository: StudyRepository, cache_dir: Path, study_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="tunefleet.worker")
    outcome, trial = run_one(
        repository,
        cache_dir,
        study_name,
        space={
            "learning_rate": 10.0,
            "optimizer": "sgd",
            "epochs": 3,
            "depth": 2,
            "width": 64,
            "batch_size": 16,
        },
        budget={"n_trials": 2},
        pruner={"name": "none"},
    )
    assert outcome == "fail"
    assert trial.state == TrialState.FAIL
    assert "loss at epoch" in trial.user_attrs["fail_reason"]
    assert "nan" in trial.user_attrs["fail_reason"].lower() or "inf" in trial.user_attrs["fail_reason"]
    # The worker's log says why, not only "fail in 0.0s": its operator need not ask the store.
    said = [r.getMessage() for r in caplog.records if r.name == "tunefleet.worker"]
    assert f"trial 0 of {study_name} failed: {trial.user_attrs['fail_reason']}" in said
    # The same runner takes the next trial as if nothing happened.
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    assert runner_for(repository, cache_dir).run(claim) in ("fail", "complete")
    assert repository.progress(repository.get(study_name)).state == "completed"


def test_a_stopped_study_ends_its_running_trial_at_the_next_epoch(
    repository: StudyRepository, cache_dir: Path, study_name: str
) -> None:
    repository.create(
        StudySpec.model_validate(tiny_spec(study_name, space={"epochs": 5}, pruner={"name": "none"}))
    )
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    repository.set_state(study_name, "stopped", "stopped by user")
    assert runner_for(repository, cache_dir).run(claim) == "pruned"
    trial = repository.trial(repository.get(study_name), claim.trial.number)
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["fail_reason"] == "study stopped"
    assert list(trial.intermediate_values) == [1]


def test_a_worker_told_to_stop_hands_its_trial_back(
    repository: StudyRepository, cache_dir: Path, study_name: str
) -> None:
    repository.create(
        StudySpec.model_validate(tiny_spec(study_name, space={"epochs": 5}, budget={"n_trials": 1}))
    )
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    runner = runner_for(repository, cache_dir)
    runner.stopping.set()
    assert runner.run(claim) == "requeued"
    rerun = repository.claim(WORKER, study_names=[study_name])
    assert rerun is not None
    assert (rerun.trial.number, rerun.params) == (claim.trial.number, claim.params)


def test_a_worker_told_to_stop_while_building_the_feature_cache_hands_its_trial_back_at_once(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    # It built the whole cache first (44 s on BBC News with 2 cores), then handed the trial back.
    repository.create(StudySpec.model_validate(tiny_spec(study_name, budget={"n_trials": 1})))
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    fresh_cache = tmp_path / "fresh-cache"
    runner = runner_for(repository, fresh_cache)
    runner.stopping.set()
    assert runner.run(claim) == "requeued"
    assert not list(fresh_cache.glob("features-*.pt"))


def test_a_missing_model_folder_fails_the_trial_with_a_clear_reason(
    repository: StudyRepository, cache_dir: Path, study_name: str, tmp_path: Path
) -> None:
    outcome, trial = run_one(
        repository,
        cache_dir,
        study_name,
        task={"model": str(tmp_path / "no-such-model"), "max_examples": 100},
    )
    assert outcome == "fail"
    assert "does not exist on this worker" in trial.user_attrs["fail_reason"]
