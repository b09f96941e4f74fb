"""Validation macro-F1 as a study's objective: a real head-mode study on the built-in model, several objectives
with a constraint on it, and a kind python function that does not report it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.study import StudyDirection
from optuna.trial import TrialState

from studies import StudyRepository, StudySpec, WorkerIdentity
from tests.conftest import tiny_spec
from tests.integration.test_python_kind import run_study
from worker.runner import TrialRunner

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_all(repository: StudyRepository, runner: TrialRunner, name: str, n_trials: int) -> list[str]:
    outcomes = []
    for _ in range(n_trials):
        claim = repository.claim(WORKER, study_names=[name])
        assert claim is not None
        outcomes.append(runner.run(claim))
    return outcomes


@pytest.mark.slow
def test_a_head_study_on_macro_f1_maximizes_it_and_records_it_on_every_trial(
    repository: StudyRepository, client: TestClient, study_name: str, tmp_path: Path
) -> None:
    spec = tiny_spec(
        study_name,
        objective={"metric": "val_macro_f1"},
        space={"epochs": 3, "learning_rate": {"type": "float", "low": 0.001, "high": 0.05, "log": True}},
        pruner={"name": "median", "n_startup_trials": 1},
        budget={"n_trials": 2},
    )
    record = repository.create(StudySpec.model_validate(spec))
    assert record.spec.objective.directions == ("maximize",)
    runner = TrialRunner(repository=repository, device=torch.device("cpu"), cache_dir=tmp_path / "features")
    outcomes = run_all(repository, runner, study_name, 2)

    study = optuna.load_study(study_name=study_name, storage=repository.storage)
    assert study.direction == StudyDirection.MAXIMIZE
    for outcome, trial in zip(outcomes, study.trials, strict=True):
        attrs = trial.user_attrs
        # Pruned or complete, every trial records the macro-F1 of its last epoch beside its accuracy.
        assert 0.0 <= attrs["val_macro_f1"] <= 1.0 and 0.0 <= attrs["val_accuracy"] <= 1.0
        # Each epoch's value, as the pruner reads it, is that epoch's macro-F1.
        assert all(0.0 <= v <= 1.0 for v in trial.intermediate_values.values())
        if outcome == "complete":
            assert trial.state == TrialState.COMPLETE
            assert trial.value == attrs["val_macro_f1"]
            # The kept epoch is the one with the highest macro-F1, not the lowest loss.
            assert trial.value == max(trial.intermediate_values.values())
            assert trial.intermediate_values[attrs["chosen_epoch"]] == trial.value
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert completed

    shown = client.get(f"/v1/studies/{study_name}").json()
    best = max(completed, key=lambda t: t.value or 0.0)
    assert shown["best_value"] == pytest.approx(best.value)
    assert shown["best_trial"]["user_attrs"]["val_macro_f1"] == pytest.approx(best.value)
    report = client.get(f"/v1/studies/{study_name}/report")
    assert report.status_code == 200
    assert f"trial #{best.number}, val_macro_f1 {best.value:.6g}" in report.text


def test_several_objectives_and_a_constraint_read_the_kept_epochs_macro_f1(
    repository: StudyRepository, client: TestClient, study_name: str, tmp_path: Path
) -> None:
    spec = StudySpec.model_validate(
        {
            "name": study_name,
            "task": {"kind": "synthetic"},
            "space": {"epochs": {"type": "int", "low": 1, "high": 3}},
            "objective": {
                "metrics": [
                    {"name": "val_macro_f1", "direction": "maximize"},
                    {"name": "train_seconds", "direction": "minimize"},
                ],
                "constraints": ["val_macro_f1 >= 0.3"],
            },
            "sampler": {"name": "random", "seed": 5},
            "budget": {"n_trials": 4},
        }
    )
    record = repository.create(spec)
    runner = TrialRunner(repository=repository, device=torch.device("cpu"), cache_dir=tmp_path)
    assert run_all(repository, runner, study_name, 4) == ["complete"] * 4

    study = optuna.load_study(study_name=study_name, storage=repository.storage)
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    for trial in study.trials:
        f1 = trial.user_attrs["val_macro_f1"]
        assert 0.0 < f1 <= 1.0
        assert trial.values == [f1, trial.user_attrs["train_seconds"]]
        assert trial.constraints == {"val_macro_f1 >= 0.3": pytest.approx(0.3 - f1)}
    pareto = client.get(f"/v1/studies/{study_name}/pareto").json()
    assert pareto["metrics"] == ["val_macro_f1", "train_seconds"]
    assert [t["number"] for t in pareto["trials"]] == [t.number for t in repository.pareto_front(record)]
    # A rule may prefer it and bound it: known metrics, so the answer is only that a synthetic trial keeps no model.
    answer = client.get(
        f"/v1/studies/{study_name}/best-model", params={"prefer": "val_macro_f1", "min_val_macro_f1": "0.3"}
    )
    assert (answer.status_code, answer.json()["code"]) == (404, "best_model_not_found"), answer.text


def test_a_python_function_that_does_not_report_macro_f1_fails_saying_so(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    # The function reports val_loss, val_accuracy and train_loss each epoch, not val_macro_f1.
    outcome, trial = run_study(
        repository, tmp_path, study_name, "train", objective={"metric": "val_macro_f1"}
    )
    assert outcome == "fail"
    assert trial.state == TrialState.FAIL
    assert "has no val_macro_f1, the study's objective metric" in trial.user_attrs["fail_reason"]
