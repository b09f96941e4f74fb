"""A user's own data through the real runner, store and app: what loading found is on every trial and on the
study, and a path outside the worker's data roots fails the trial before the file is read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import FrozenTrial, TrialState

from service import ServiceSettings, create_app
from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from worker.data_roots import DataRoots
from worker.runner import TrialRunner

ROOT = Path(__file__).resolve().parents[2]
WORKER = WorkerIdentity(host="test", pid=1, device="cpu")
WORDS = {"positive": ("great", "lovely", "superb"), "negative": ("awful", "dreadful", "horrid")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows), encoding="utf-8")
    return path


def user_rows() -> list[tuple[str, str]]:
    """300 rows as a user's export might hold them: 185 distinct, 115 repeated, one label with one example."""
    distinct = [
        (f"this {words[i % 3]} thing number {i}", label) for i in range(92) for label, words in WORDS.items()
    ]
    distinct.append(("so-so at best", "mixed"))
    return distinct + distinct[:115]


def study(name: str, data: dict[str, str], *, n_trials: int = 1, **task: Any) -> StudySpec:
    """A head study on the built-in encoder with fixed parameters: one epoch, a trial in a second or two."""
    return StudySpec.model_validate(
        {
            "name": name,
            "task": {"data": data, **({} if "kind" in task else {"max_length": 32}), **task},
            "space": {"epochs": 1, "width": 16, "depth": 1, "batch_size": 16, "learning_rate": 0.01},
            "sampler": {"name": "random", "seed": 3},
            "pruner": {"name": "none"},
            "budget": {"n_trials": n_trials},
        }
    )


def run_next(repository: StudyRepository, runner: TrialRunner, name: str) -> tuple[str, FrozenTrial]:
    claim = repository.claim(WORKER, study_names=[name])
    assert claim is not None
    outcome = runner.run(claim)
    return outcome, repository.trial(repository.get(name), claim.trial.number)


def runner_for(repository: StudyRepository, cache_dir: Path) -> TrialRunner:
    return TrialRunner(repository=repository, device=torch.device("cpu"), cache_dir=cache_dir)


def study_warnings(repository: StudyRepository, name: str) -> list[str]:
    app = create_app(ServiceSettings(database_url="unused://", mount_dashboard=False), repository=repository)
    with TestClient(app) as http:
        response = http.get(f"/v1/studies/{name}")
    assert response.status_code == 200, response.text
    warnings: list[str] = response.json()["warnings"]
    return warnings


def test_duplicates_and_a_lone_label_are_on_every_trial_and_once_on_the_study(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    train = write_csv(tmp_path / "train.csv", user_rows())
    repository.create(study(study_name, {"train": str(train)}, n_trials=2))
    runner = runner_for(repository, tmp_path / "cache")
    trials = [run_next(repository, runner, study_name) for _ in range(2)]

    for outcome, trial in trials:
        assert outcome == "complete", trial.user_attrs.get("fail_reason")
        attrs = trial.user_attrs
        assert attrs["data_duplicates_dropped"] == 115 and attrs["data_conflicting_labels"] == 0
        assert attrs["data_validation_overlap_dropped"] == 0
        # With the duplicates dropped, validation holds no text training has: no perfect score for free.
        assert attrs["val_loss"] > 0.0
    warnings = trials[0][1].user_attrs["data_warnings"]
    assert any("115 duplicate rows" in warning for warning in warnings)
    assert any("no example of label ('mixed')" in warning for warning in warnings)
    assert study_warnings(repository, study_name) == warnings


def test_a_validation_file_loses_the_rows_training_has(
    repository: StudyRepository, tmp_path: Path, study_name: str
) -> None:
    rows = user_rows()[:184]
    train = write_csv(tmp_path / "train.csv", rows[:150])
    validation = write_csv(tmp_path / "validation.csv", rows[140:])
    repository.create(study(study_name, {"train": str(train), "validation": str(validation)}))
    outcome, trial = run_next(repository, runner_for(repository, tmp_path / "cache"), study_name)

    assert outcome == "complete", trial.user_attrs.get("fail_reason")
    assert trial.user_attrs["data_validation_overlap_dropped"] == 10
    assert any("10 rows dropped" in warning for warning in study_warnings(repository, study_name))


def test_the_study_lists_each_warning_its_trials_recorded_once_in_order(
    repository: StudyRepository, study_name: str
) -> None:
    repository.create(study(study_name, {"train": "train.csv"}, n_trials=3))
    for warnings in (["a lone label"], ["a lone label", "duplicates dropped"], []):
        claim = repository.claim(WORKER, study_names=[study_name])
        assert claim is not None
        attrs = {"data_warnings": warnings} if warnings else {}
        repository.complete(claim, 0.5, attrs)
    assert study_warnings(repository, study_name) == ["a lone label", "duplicates dropped"]


def test_a_study_without_warnings_lists_none(repository: StudyRepository, study_name: str) -> None:
    repository.create(study(study_name, {"train": "train.csv"}))
    assert study_warnings(repository, study_name) == []


def outside_cases(tmp_path: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """Studies whose data or model lies outside tmp_path/root, each with how its reason starts."""
    inside = write_csv(tmp_path / "root" / "train.csv", user_rows()[:60])
    outside = write_csv(tmp_path / "outside" / "train.csv", user_rows()[:60])
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "outside" / "model.pt")
    (tmp_path / "root" / "shared").symlink_to(tmp_path / "outside")
    escape = f"{tmp_path / 'root'}/../outside/train.csv"
    hashed = {"kind": "torch-module", "replace": "fc", "inputs": {"kind": "hashed-text", "n_features": 4}}
    return {
        "data outside": ({"data": {"train": str(outside)}}, f"training file {str(outside)!r}"),
        "data through ..": ({"data": {"train": escape}}, f"training file {escape!r}"),
        "validation through a symlink": (
            {"data": {"train": str(inside), "validation": str(tmp_path / "root" / "shared" / "train.csv")}},
            "validation file",
        ),
        "a model folder outside": (
            {"data": {"train": str(inside)}, "model": str(tmp_path / "outside")},
            "model folder",
        ),
        "a model file through a symlink": (
            {
                "data": {"train": str(inside)},
                "model": str(tmp_path / "root" / "shared" / "model.pt"),
                **hashed,
            },
            "model file",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "data outside",
        "data through ..",
        "validation through a symlink",
        "a model folder outside",
        "a model file through a symlink",
    ],
)
def test_a_path_outside_the_data_roots_fails_the_trial_with_a_reason_naming_the_setting(
    repository: StudyRepository,
    tmp_path: Path,
    study_name: str,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    task, starts = outside_cases(tmp_path)[case]
    monkeypatch.setenv("TUNEFLEET_DATA_ROOTS", str(tmp_path / "root"))
    repository.create(study(study_name, **task))
    outcome, trial = run_next(repository, runner_for(repository, tmp_path / "cache"), study_name)

    assert outcome == "fail" and trial.state == TrialState.FAIL
    reason = trial.user_attrs["fail_reason"]
    assert reason.startswith(starts) and "is not inside this worker's data roots" in reason
    assert "TUNEFLEET_DATA_ROOTS" in reason and "so-so" not in reason and "missing" not in reason


def test_a_runner_built_with_its_roots_reads_only_there_with_no_roots_in_the_environment(
    repository: StudyRepository, tmp_path: Path, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The roots a worker read at start-up reach its task kinds: nothing reads the environment at trial time.
    monkeypatch.delenv("TUNEFLEET_DATA_ROOTS")
    inside = write_csv(tmp_path / "root" / "train.csv", user_rows()[:60])
    outside = write_csv(tmp_path / "outside" / "train.csv", user_rows()[:60])
    runner = TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=tmp_path / "cache",
        data_roots=DataRoots.of([tmp_path / "root"]),
    )
    for name, train in ((f"{study_name}-inside", inside), (f"{study_name}-outside", outside)):
        repository.create(study(name, {"train": str(train)}))
    assert run_next(repository, runner, f"{study_name}-inside")[0] == "complete"
    outcome, trial = run_next(repository, runner, f"{study_name}-outside")
    assert outcome == "fail"
    reason = trial.user_attrs["fail_reason"]
    assert reason.startswith(f"training file {str(outside)!r} is not inside")
    assert f"data roots ({tmp_path / 'root'})" in reason


@pytest.mark.slow
def test_a_worker_started_with_data_root_reads_only_there(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    repository = StudyRepository(open_storage(url))
    train = write_csv(tmp_path / "outside" / "train.csv", user_rows()[:60])
    repository.create(study(study_name, {"train": str(train)}))
    env = {
        **os.environ,
        "TUNEFLEET_DATABASE_URL": url,
        "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"),
        "TUNEFLEET_POLL_INTERVAL_S": "0.2",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    (tmp_path / "root").mkdir()
    # The environment's roots (the tests' temporary folders) hold the file; the flag replaces them.
    command = [sys.executable, "-m", "worker", "--study", study_name, "--exit-when-idle", "--device", "cpu"]
    worker = subprocess.run(
        [*command, "--data-root", str(tmp_path / "root")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr
    (trial,) = repository.storage.get_all_trials(repository.get(study_name).optuna_study_id)
    repository.engine.dispose()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith(f"training file {str(train)!r} is not inside")
    assert str(tmp_path / "root") in trial.user_attrs["fail_reason"]
