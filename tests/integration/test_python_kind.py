"""Kind python: the user's own training function, run by the trial runner and by real worker processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import load_file

from service import ServiceSettings, create_app
from studies import StudyRepository, StudySpec, open_storage
from studies.artifacts import (
    CONFIG_FILE,
    LABELS_FILE,
    MODEL_ARTIFACT_ATTR,
    PARAMS_FILE,
    WEIGHTS_FILE,
    extract_model_archive,
    open_artifact_store,
)
from tests.entrypoints import training
from tests.finetune_spec import CPU_WORKER, run_next
from tests.integration.test_fleet import Workers, all_trials, running_trial, wait_for
from tunefleet.client import TunefleetClient
from worker.entrypoints import is_allowed
from worker.epochs import NonFiniteLoss
from worker.export import load_best_model
from worker.runner import OUT_OF_MEMORY_CONSTRAINT, TrialRunner
from worker.tasks.python_entrypoint import CHECKPOINTS_FOLDER
from worker.user_trial import Trial, TrialUsageError

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINTS = "tests.entrypoints"
TRAINING = f"{ENTRYPOINTS}.training"


def python_spec(name: str, entrypoint: str, **overrides: Any) -> StudySpec:
    """A kind python study of one trial: the MLP's space, random sampler, no pruner."""
    body: dict[str, Any] = {
        "name": name,
        "task": {
            "kind": "python",
            "entrypoint": entrypoint if ":" in entrypoint else f"{TRAINING}:{entrypoint}",
        },
        "space": {"epochs": 3, "hidden": [8, 16], "learning_rate": 0.05},
        "sampler": {"name": "random", "seed": 5},
        "pruner": {"name": "none"},
        "budget": {"n_trials": 1},
    }
    body.update(overrides)
    return StudySpec.model_validate(body)


def runner_for(
    repository: StudyRepository, tmp_path: Path, allowed: tuple[str, ...] = (ENTRYPOINTS,)
) -> TrialRunner:
    return TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=tmp_path / "cache",
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
        allowed_entrypoints=allowed,
    )


def run_study(
    repository: StudyRepository,
    tmp_path: Path,
    name: str,
    entrypoint: str,
    allowed: tuple[str, ...] = (ENTRYPOINTS,),
    **overrides: Any,
) -> tuple[str, FrozenTrial]:
    repository.create(python_spec(name, entrypoint, **overrides))
    return run_next(runner_for(repository, tmp_path, allowed), repository, name)


def downloaded_model(trial: FrozenTrial, tmp_path: Path) -> Path:
    """The trial's model archive from the artifact store, unpacked."""
    archive = tmp_path / f"model-{trial.number}.zip"
    optuna.artifacts.download_artifact(
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
        file_path=str(archive),
        artifact_id=trial.user_attrs[MODEL_ARTIFACT_ATTR],
    )
    return extract_model_archive(archive, tmp_path / f"model-{trial.number}")


def reloaded_val_loss(folder: Path) -> float:
    """The downloaded weights in the user's own model, evaluated on the validation set as the function did."""
    saved = json.loads((folder / PARAMS_FILE).read_text())
    model = training.build_model(saved["params"])
    model.load_state_dict(load_file(folder / WEIGHTS_FILE))
    _, _, x_val, y_val = training.make_data()
    return training.evaluate(model, x_val, y_val)[0]


def test_a_python_trial_reports_each_epoch_and_its_model_reloads_into_the_users_own(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    outcome, trial = run_study(repository, tmp_path, study_name, "train")
    assert outcome == "complete", trial.user_attrs.get("fail_reason")
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert trial.value == pytest.approx(min(trial.intermediate_values.values()))
    attrs = trial.user_attrs
    chosen = attrs["chosen_epoch"]
    assert trial.intermediate_values[chosen] == pytest.approx(trial.value)
    # Every metric of the chosen epoch is recorded, not only the objective's.
    assert set(attrs["metrics"]) == {"val_loss", "val_accuracy", "train_loss"}
    assert attrs["metrics"]["val_loss"] == pytest.approx(trial.value)
    assert attrs["val_accuracy"] == pytest.approx(attrs["metrics"]["val_accuracy"])

    folder = downloaded_model(trial, tmp_path)
    assert json.loads((folder / PARAMS_FILE).read_text())["epoch"] == chosen
    assert json.loads((folder / LABELS_FILE).read_text()) == training.LABELS
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["kind"] == "python" and config["entrypoint"] == f"{TRAINING}:train"
    assert config["model"] == {"hidden": trial.params["hidden"]}
    assert reloaded_val_loss(folder) == pytest.approx(trial.value, abs=1e-6)
    assert not (tmp_path / "cache" / CHECKPOINTS_FOLDER / study_name / str(trial.number)).exists()


def test_returned_metrics_are_the_value_of_a_trial_that_reported_no_epoch(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    outcome, trial = run_study(repository, tmp_path, study_name, "returns_metrics")
    assert outcome == "complete", trial.user_attrs.get("fail_reason")
    assert trial.intermediate_values == {}
    assert trial.user_attrs["epochs_run"] == 1
    # Saved before it returned: the weights go with the returned metrics.
    assert reloaded_val_loss(downloaded_model(trial, tmp_path)) == pytest.approx(trial.value, abs=1e-6)


@pytest.mark.parametrize("function", ["saves_after_report", "saves_before_report"])
@pytest.mark.parametrize(("value", "kept_epoch"), [("best", 2), ("final", 3)])
def test_the_model_kept_is_the_one_saved_at_the_epoch_the_objective_keeps(
    repository: StudyRepository, tmp_path: Path, study_name: str, function: str, value: str, kept_epoch: int
) -> None:
    outcome, trial = run_study(repository, tmp_path, study_name, function, objective={"value": value})
    assert outcome == "complete", trial.user_attrs.get("fail_reason")
    assert trial.value == training.MARKER_LOSSES[kept_epoch - 1]
    assert trial.user_attrs["chosen_epoch"] == kept_epoch
    folder = downloaded_model(trial, tmp_path)
    assert load_file(folder / WEIGHTS_FILE)["weight"].item() == kept_epoch
    assert json.loads((folder / PARAMS_FILE).read_text())["epoch"] == kept_epoch


def test_a_report_after_a_stop_raises_it_and_a_stalled_trial_completes_with_its_best_epoch(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    outcome, trial = run_study(repository, tmp_path, study_name, "ignores_stops", objective={"patience": 2})
    assert outcome == "complete", trial.user_attrs.get("fail_reason")
    # The fourth report answered True; the fifth raised the stop out of the function, unrecorded.
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]
    assert trial.user_attrs["stopped_early"] == "no better validation metric in 2 epochs"
    assert (trial.value, trial.user_attrs["chosen_epoch"]) == (1.0, 2)
    folder = downloaded_model(trial, tmp_path)
    assert load_file(folder / WEIGHTS_FILE)["weight"].item() == 2
    assert json.loads((folder / LABELS_FILE).read_text()) == ["epoch"]


def test_conditional_parameters_reach_the_function_only_when_their_condition_holds(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    space = {
        "optimizer": ["adam", "sgd"],
        "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimizer": "sgd"}},
    }
    repository.create(python_spec(study_name, "params_seen", space=space, budget={"n_trials": 6}))
    runner = runner_for(repository, tmp_path)
    trials = [run_next(runner, repository, study_name)[1] for _ in range(6)]
    assert {t.params["optimizer"] for t in trials} == {"adam", "sgd"}
    for trial in trials:
        seen = trial.user_attrs["metrics"]
        if trial.params["optimizer"] == "sgd":
            assert seen["has_momentum"] == 1.0 and seen["momentum"] == pytest.approx(trial.params["momentum"])
        else:
            assert "momentum" not in trial.params and seen["has_momentum"] == 0.0


FAILURES = [
    pytest.param(
        f"{ENTRYPOINTS}.unimportable:train",
        (TRAINING,),
        [
            f"entry point {ENTRYPOINTS}.unimportable:train is not allowed on this worker",
            f"it allows only {TRAINING}",
            "tunefleet worker --allow-entrypoint tests",
            "TUNEFLEET_ALLOWED_ENTRYPOINTS=tests",
        ],
        False,
        id="not-allowed-so-not-imported",
    ),
    pytest.param(
        "train",
        (),
        ["is not allowed on this worker (it allows none)", "--allow-entrypoint"],
        False,
        id="none-allowed",
    ),
    pytest.param(
        f"{ENTRYPOINTS}.unimportable:train",
        (ENTRYPOINTS,),
        [
            f"module {ENTRYPOINTS}.unimportable does not import"
            " (ModuleNotFoundError: No module named 'tunefleet_missing_dependency')"
        ],
        True,
        id="import-error",
    ),
    pytest.param(
        f"{ENTRYPOINTS}.no_such_module:train",
        (ENTRYPOINTS,),
        [f"No module named '{ENTRYPOINTS}.no_such_module'", "installed on this worker, or on its PYTHONPATH"],
        False,
        id="no-such-module",
    ),
    pytest.param(
        "no_such_function",
        (ENTRYPOINTS,),
        [f"module {TRAINING} has no attribute no_such_function"],
        False,
        id="missing-function",
    ),
    pytest.param(
        "not_a_function",
        (ENTRYPOINTS,),
        [f"{TRAINING}.not_a_function is of type int"],
        False,
        id="not-callable",
    ),
    pytest.param(
        "takes_two_arguments",
        (f"{TRAINING}:takes_two_arguments",),
        ["must take one argument, the trial", "takes_two_arguments(trial"],
        False,
        id="wrong-signature",
    ),
    pytest.param("raises", (ENTRYPOINTS,), ["ValueError: no column named 'label'"], True, id="raises"),
    pytest.param(
        "never_reports",
        (ENTRYPOINTS,),
        ["the training function returned without reporting an epoch"],
        False,
        id="never-reports",
    ),
    pytest.param("diverges", (ENTRYPOINTS,), ["NaN val_loss at epoch 2"], False, id="nan"),
]


@pytest.mark.parametrize(("entrypoint", "allowed", "reason_says", "traceback"), FAILURES)
def test_a_trial_whose_entry_point_cannot_run_fails_with_a_reason_the_user_can_act_on(
    repository: StudyRepository,
    tmp_path: Path,
    study_name: str,
    caplog: pytest.LogCaptureFixture,
    entrypoint: str,
    allowed: tuple[str, ...],
    reason_says: list[str],
    traceback: bool,
) -> None:
    caplog.set_level("WARNING", logger="tunefleet.worker")
    outcome, trial = run_study(repository, tmp_path, study_name, entrypoint, allowed)
    assert outcome == "fail"
    assert trial.state == TrialState.FAIL
    reason = trial.user_attrs["fail_reason"]
    for part in reason_says:
        assert part in reason
    assert f"trial 0 of {study_name} failed: {reason}" in caplog.text
    # Code that broke gets its traceback in the worker's log; a reason the user can act on alone says enough.
    assert ("Traceback" in caplog.text) == traceback
    if entrypoint == "raises":
        assert "in _read_data" in caplog.text and reason == "ValueError: no column named 'label'"


def test_an_allow_list_admits_packages_modules_and_single_functions() -> None:
    entrypoint = "mypkg.train:run"
    for allowed in (["mypkg"], ["mypkg.train"], ["mypkg.train:run"], ["other", " mypkg "]):
        assert is_allowed(entrypoint, allowed), allowed
    for allowed in ([], ["mypk"], ["mypkg.tr"], ["mypkg.train:other"], ["mypkg.train.run"], [""]):
        assert not is_allowed(entrypoint, allowed), allowed


def test_user_code_out_of_memory_prunes_the_trial_as_infeasible_and_the_worker_goes_on(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    space = {"epochs": 2, "batch_size": 512}
    outcome, trial = run_study(repository, tmp_path, study_name, "out_of_memory", space=space)
    assert outcome == "out of memory"
    assert trial.state == TrialState.PRUNED
    assert (
        trial.user_attrs["fail_reason"]
        == "out of memory: tried to allocate 2.00 GiB (epochs=2, batch_size=512)"
    )
    assert trial.constraints == {OUT_OF_MEMORY_CONSTRAINT: 1.0}
    repository.create(python_spec(f"{study_name}-fits", "out_of_memory", space={**space, "batch_size": 32}))
    outcome, trial = run_next(runner_for(repository, tmp_path), repository, f"{study_name}-fits")
    assert outcome == "complete" and trial.constraints == {}


def test_out_of_memory_without_a_batch_size_names_every_parameter_of_the_trial(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    space = {"epochs": 2, "hidden": 4096}
    outcome, trial = run_study(repository, tmp_path, study_name, "out_of_memory_wide", space=space)
    assert (outcome, trial.state) == ("out of memory", TrialState.PRUNED)
    assert trial.user_attrs["fail_reason"] == "out of memory (epochs=2, hidden=4096)"


def test_three_alike_failures_of_user_code_fail_the_study(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    repository.create(python_spec(study_name, "raises", budget={"n_trials": 10}))
    runner = runner_for(repository, tmp_path)
    assert [run_next(runner, repository, study_name)[0] for _ in range(3)] == ["fail"] * 3
    record = repository.get(study_name)
    assert record.state == "failed"
    assert record.state_reason == "the first 3 trials failed: ValueError: no column named 'label'"
    assert repository.claim(CPU_WORKER, study_names=[study_name]) is None


def test_a_trial_handed_back_keeps_its_checkpoint_folder_and_its_rerun_resumes_from_it(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    repository.create(python_spec(study_name, "counts_runs", space={"epochs": 1}))
    stopping = runner_for(repository, tmp_path)
    stopping.stopping.set()
    outcome, trial = run_next(stopping, repository, study_name)
    assert outcome == "requeued" and trial.state == TrialState.WAITING
    folder = tmp_path / "cache" / CHECKPOINTS_FOLDER / study_name / str(trial.number)
    assert (folder / "runs.txt").read_text() == "1"

    outcome, rerun = run_next(runner_for(repository, tmp_path), repository, study_name)
    assert outcome == "complete" and rerun.number == trial.number
    assert rerun.value == 2.0  # its second run, which found the first one's checkpoint
    assert not folder.exists()


def test_a_trial_made_by_hand_checks_each_report_as_a_worker_does() -> None:
    trial = Trial({"width": 8}, metric="val_accuracy")
    with pytest.raises(TrialUsageError, match="has no val_accuracy, the study's objective metric"):
        trial.report(1, val_loss=0.4)
    assert trial.report(1, val_accuracy=0.5, val_loss=0.4) is False
    with pytest.raises(TrialUsageError, match="after epoch 1: each report is of a later epoch"):
        trial.report(1, val_accuracy=0.6)
    with pytest.raises(TrialUsageError, match="f1 is 'high', not a number"):
        trial.report(2, val_accuracy=0.6, f1="high")  # type: ignore[arg-type]
    with pytest.raises(NonFiniteLoss, match="inf val_loss at epoch 2"):
        trial.report(2, val_accuracy=0.6, val_loss=math.inf)
    with pytest.raises(TrialUsageError, match=r"takes a torch\.nn\.Module, not a dict"):
        trial.save_model({"weight": torch.zeros(1)})  # type: ignore[arg-type]
    assert trial.should_stop() is False


def test_tunefleet_gives_users_the_trial_class_without_importing_torch_until_asked() -> None:
    code = (
        "import sys, tunefleet; assert 'torch' not in sys.modules and 'worker' not in sys.modules;"
        " from tunefleet import Trial; trial = Trial({'width': 8});"
        " assert trial.report(1, val_loss=0.5) is False and trial.params == {'width': 8}; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.slow
def test_two_worker_processes_run_a_python_study_and_a_stopped_workers_trial_reruns_with_its_seed(
    store_url: str, tmp_path: Path, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_ALLOWED_ENTRYPOINTS", ENTRYPOINTS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    repository = StudyRepository(open_storage(store_url))
    space = {
        "epochs": 3,
        "hidden": [8, 16],
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
        "optimizer": ["adam", "sgd"],
        "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimizer": "sgd"}},
        "epoch_sleep_s": 0.8,
    }
    repository.create(python_spec(study_name, "train", space=space, budget={"n_trials": 4}))
    # A generous grace period: a slow heartbeat on a busy machine must not pass for a lost worker.
    fleet = Workers(store_url, tmp_path, grace_s="30")
    try:
        processes = [fleet.start("--study", study_name, "--exit-when-idle") for _ in range(2)]
        stopped = wait_for(
            lambda: running_trial(repository, study_name), timeout_s=120, what="a running trial"
        )
        pid = int(stopped.user_attrs["worker"].rsplit(":", 1)[1])
        doomed = next(p for p in processes if p.pid == pid)
        survivor = next(p for p in processes if p.pid != pid)
        doomed.send_signal(signal.SIGTERM)
        assert doomed.wait(timeout=30) == 0, fleet.logs()
        after = repository.storage.get_trial(stopped._trial_id)
        # Handed back, not failed: waiting again, or already taken by the other worker.
        assert after.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
        assert after.state == TrialState.WAITING or after.user_attrs["worker"].endswith(f":{survivor.pid}")
        assert survivor.wait(timeout=180) == 0, fleet.logs()
    finally:
        fleet.stop_all()
    logs = fleet.logs()
    assert f"trial {stopped.number} of {study_name}: requeued" in logs
    assert "Traceback" not in logs

    trials = all_trials(repository, study_name)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert not any("retry_of" in t.user_attrs for t in trials)
    assert repository.progress(repository.get(study_name)).state == "completed"
    rerun = next(t for t in trials if t.number == stopped.number)
    assert rerun.params == stopped.params and rerun.user_attrs["seed"] == stopped.user_attrs["seed"]
    assert rerun.user_attrs["worker"].endswith(f":{survivor.pid}")
    # The same seed and parameters train the same model: its first epoch is the stopped run's first epoch.
    assert rerun.intermediate_values[1] == pytest.approx(stopped.intermediate_values[1], rel=1e-6)
    for trial in trials:
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd")

    settings = ServiceSettings(
        database_url="unused://", artifact_dir=str(tmp_path / "artifacts"), mount_dashboard=False
    )
    with TestClient(create_app(settings, repository=repository)) as http:
        client = TunefleetClient("http://testserver")
        client._http = http  # the client a user runs, talking to the app in this process
        folder = client.download_best_model(study_name, tmp_path / "best-model")
    best = min(trials, key=lambda t: t.value if t.value is not None else math.inf)
    assert json.loads((folder / PARAMS_FILE).read_text())["number"] == best.number
    assert json.loads((folder / LABELS_FILE).read_text()) == training.LABELS
    assert reloaded_val_loss(folder) == pytest.approx(best.value, abs=1e-6)
    with pytest.raises(ValueError, match=r"build your model and load weights\.safetensors"):
        load_best_model(folder)  # the built-in loader knows no user's model: it says what to do instead
    repository.engine.dispose()


def test_a_worker_that_does_not_allow_the_entry_point_leaves_the_study_to_one_that_does(
    repository: StudyRepository, study_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Claimed and failed, its trials would fail the study through the breaker in a fleet where only some
    # workers allow the code; left unclaimed, they wait for a worker that does.
    repository.create(python_spec(study_name, "train", budget={"n_trials": 2}))
    refusing = runner_for(repository, tmp_path, allowed=("otherpkg",))
    with caplog.at_level("WARNING", logger="tunefleet.worker"):
        for _ in range(3):
            assert repository.claim(CPU_WORKER, study_names=[study_name], can_run=refusing.can_run) is None
    said = [
        r.getMessage()
        for r in caplog.records
        if r.name == "tunefleet.worker" and study_name in r.getMessage()
    ]
    assert len(said) == 1 and "does not allow" in said[0] and "--allow-entrypoint tests" in said[0]
    assert repository.get(study_name).n_claimed == 0
    allowing = runner_for(repository, tmp_path)
    claim = repository.claim(CPU_WORKER, study_names=[study_name], can_run=allowing.can_run)
    assert claim is not None and claim.study_name == study_name
