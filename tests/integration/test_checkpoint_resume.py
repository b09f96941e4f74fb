"""A trial handed back, or retried after its worker was lost, resumes from its checkpoint in the artifact store:
real runner, real training in every fine-tune mode, real store; its epochs equal those of a run never stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from studies import Claim, StudyRepository, StudySpec, open_storage
from studies.artifacts import open_artifact_store
from studies.checkpoints import CHECKPOINT_ATTR
from tests.entrypoints.models import TextClassifier
from tests.finetune_spec import CPU_WORKER, run_next, write_csv
from tests.finetune_spec import finetune_spec as spec
from worker.runner import TrialRunner

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPOCHS = 4
NO_PATIENCE = {"metric": "val_loss", "direction": "minimize", "value": "best", "patience": 0}


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[StudyRepository]:
    repo = StudyRepository(open_storage(f"sqlite:///{tmp_path / 'store.db'}"))
    yield repo
    repo.engine.dispose()


def runner_for(repository: StudyRepository, tmp_path: Path) -> TrialRunner:
    # A fresh runner each time: nothing carries over in memory between a trial's runs but the pristine model.
    return TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=tmp_path / "features",
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
        checkpoint_interval_s=0,
    )


def checkpoint_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "artifacts").rglob("checkpoint-*"))


def on_report_of(
    monkeypatch: pytest.MonkeyPatch, repository: StudyRepository, epoch: int, then: Callable[[], None]
) -> None:
    """Call then() once the trial's report of the epoch is written: as a SIGTERM arriving during that epoch's end."""
    report = repository.report

    def reporting(claim: Claim, value: float, step: int) -> None:
        report(claim, value, step)
        if step == epoch:
            then()

    monkeypatch.setattr(repository, "report", reporting)


def rerun_of(repository: StudyRepository, name: str, whole: FrozenTrial) -> None:
    study = optuna.load_study(study_name=name, storage=repository.storage)
    study.enqueue_trial(whole.params, user_attrs={"seed": whole.user_attrs["seed"]})


@pytest.mark.parametrize("finetune", ["head", "last-k", "full", "lora"])
def test_a_trial_handed_back_resumes_after_its_last_checkpoint_as_if_never_stopped(
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
    finetune: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repository.create(
        spec(study_name, tiny_model, data_files, finetune, space={"epochs": EPOCHS}, objective=NO_PATIENCE)
    )
    outcome, whole = run_next(runner_for(repository, tmp_path), repository, study_name)
    assert outcome == "complete" and len(whole.intermediate_values) == EPOCHS
    assert checkpoint_files(tmp_path) == []  # a finished trial keeps none

    rerun_of(repository, study_name, whole)
    stopped = runner_for(repository, tmp_path)
    on_report_of(monkeypatch, repository, 3, stopped.stopping.set)
    outcome, handed_back = run_next(stopped, repository, study_name)
    assert outcome == "requeued" and handed_back.state == TrialState.WAITING
    # Stopped at epoch 3's report, before its checkpoint: the last one is after epoch 2.
    assert handed_back.system_attrs[CHECKPOINT_ATTR]["epoch"] == 2
    assert len(checkpoint_files(tmp_path)) == 1

    monkeypatch.undo()
    outcome, resumed = run_next(runner_for(repository, tmp_path), repository, study_name)
    assert outcome == "complete"
    assert resumed.number == handed_back.number
    assert resumed.user_attrs["resumed_from_epoch"] == 2
    assert resumed.intermediate_values == whole.intermediate_values
    for key in ("val_loss", "val_accuracy", "val_macro_f1", "chosen_epoch"):
        assert resumed.user_attrs[key] == whole.user_attrs[key], key
    assert checkpoint_files(tmp_path) == []


def test_the_retry_of_a_lost_workers_trial_resumes_from_its_checkpoint(
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repository.create(
        spec(study_name, tiny_model, data_files, "last-k", space={"epochs": EPOCHS}, objective=NO_PATIENCE)
    )
    _, whole = run_next(runner_for(repository, tmp_path), repository, study_name)
    rerun_of(repository, study_name, whole)
    silent = runner_for(repository, tmp_path)
    on_report_of(monkeypatch, repository, 3, silent.lost.set)
    claim = repository.claim(CPU_WORKER, study_names=[study_name])
    assert claim is not None
    assert silent.run(claim) == "abandoned"
    # The reaper's part: the lost worker's trial fails and a copy, same parameters and seed, is queued.
    assert repository.retry_lost_trial(claim.trial._trial_id, "worker lost") is not None
    monkeypatch.undo()

    outcome, retry = run_next(runner_for(repository, tmp_path), repository, study_name)
    assert outcome == "complete"
    assert retry.user_attrs["retry_of"] == claim.trial.number
    assert retry.user_attrs["resumed_from_epoch"] == 2
    # The copy has no reports of its own from before: the epochs it resumed after are reported again.
    assert retry.intermediate_values == whole.intermediate_values
    assert checkpoint_files(tmp_path) == []


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_an_unreadable_checkpoint_costs_its_epochs_not_the_trial(
    damage: str,
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repository.create(
        spec(study_name, tiny_model, data_files, "head", space={"epochs": EPOCHS}, objective=NO_PATIENCE)
    )
    _, whole = run_next(runner_for(repository, tmp_path), repository, study_name)
    rerun_of(repository, study_name, whole)
    stopped = runner_for(repository, tmp_path)
    on_report_of(monkeypatch, repository, 3, stopped.stopping.set)
    run_next(stopped, repository, study_name)
    monkeypatch.undo()
    (only,) = (tmp_path / "artifacts").rglob("checkpoint-*")
    if damage == "corrupt":
        only.write_bytes(b"not a checkpoint")
    else:
        # As on another node whose artifact folder is its own: the checkpoint is not there.
        only.unlink()

    outcome, rerun = run_next(runner_for(repository, tmp_path), repository, study_name)
    assert outcome == "complete"
    assert "resumed_from_epoch" not in rerun.user_attrs
    assert "after epoch 2 could not be read" in rerun.user_attrs["checkpoint_error"]
    assert rerun.intermediate_values == whole.intermediate_values
    assert checkpoint_files(tmp_path) == []


def test_a_torch_module_trial_resumes_with_its_dropout_and_trained_layers_as_they_were(
    repository: StudyRepository, tmp_path: Path, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The user's own TorchScript model, every layer trained (freeze none), with a dropout layer drawing from
    # torch's global random state: the checkpoint must carry that state too.
    torch.manual_seed(0)
    torch.jit.script(TextClassifier(n_inputs=64)).save(str(tmp_path / "model.pt"))
    body = {
        "name": study_name,
        "task": {
            "kind": "torch-module",
            "model": str(tmp_path / "model.pt"),
            "replace": "classifier.1",
            "freeze": "none",
            "inputs": {"kind": "hashed-text", "n_features": 64},
            "data": {"train": str(write_csv(tmp_path / "texts.csv", 12))},
        },
        "space": {
            "learning_rate": 0.01,
            "batch_size": 4,
            "epochs": EPOCHS,
            "depth": 1,
            "width": 16,
            "activation": "relu",
            "optimizer": "adamw",
        },
        "sampler": {"name": "random", "seed": 3},
        "pruner": {"name": "none"},
        "objective": NO_PATIENCE,
        "budget": {"n_trials": 2},
    }
    repository.create(StudySpec.model_validate(body))
    _, whole = run_next(runner_for(repository, tmp_path), repository, study_name)
    rerun_of(repository, study_name, whole)
    stopped = runner_for(repository, tmp_path)
    on_report_of(monkeypatch, repository, 2, stopped.stopping.set)
    assert run_next(stopped, repository, study_name)[0] == "requeued"
    monkeypatch.undo()

    outcome, resumed = run_next(runner_for(repository, tmp_path), repository, study_name)
    assert outcome == "complete"
    assert resumed.user_attrs["resumed_from_epoch"] == 1
    assert resumed.intermediate_values == whole.intermediate_values
