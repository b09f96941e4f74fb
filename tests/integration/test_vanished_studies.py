"""A study deleted or renamed outside the REST API, under a running worker: the worker drops the trial and goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service import ServiceSettings, create_app
from studies import StudyRepository, StudySpec, open_storage
from studies.lifecycle import COPIED_WHILE_RUNNING
from tests.live import wait_for

pytestmark = pytest.mark.slow

OPTUNA = Path(sys.executable).parent / "optuna"
DROPPED = "is gone: its study was deleted or renamed outside tunefleet; dropping it"


def synthetic_spec(name: str, n_trials: int, *, epochs: int, sleep_s: float, priority: int = 0) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": name,
            "task": {"kind": "synthetic", "epoch_sleep_s": sleep_s},
            "space": {"epochs": epochs},
            "sampler": {"name": "random", "seed": 1},
            "pruner": {"name": "none"},
            # Every epoch runs: a plateau must not end the slow trial before the test deletes its study.
            "objective": {"patience": 0},
            "budget": {"n_trials": n_trials},
            "priority": priority,
        }
    )


class Worker:
    """One `tunefleet worker` process on the store, its output in a file."""

    def __init__(self, url: str, tmp_path: Path, *args: str) -> None:
        self.log = tmp_path / "worker.log"
        env = {
            **os.environ,
            "TUNEFLEET_DATABASE_URL": url,
            "TUNEFLEET_HEARTBEAT_INTERVAL_S": "0.3",
            "TUNEFLEET_GRACE_PERIOD_S": "2",
            "TUNEFLEET_POLL_INTERVAL_S": "0.2",
            "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"),
            "TUNEFLEET_ARTIFACT_DIR": str(tmp_path / "artifacts"),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tunefleet", "worker", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self) -> int:
        return self.process.wait(timeout=120)


@pytest.fixture
def doomed(
    store_url: str, tmp_path: Path, study_name: str
) -> Iterator[tuple[StudyRepository, Worker, TestClient]]:
    """A worker well into a trial of a slow study (`study_name`), with a quick study (`-next`) waiting, and
    the service on the same store: its dashboard, and its reaper."""
    repository = StudyRepository(open_storage(store_url))
    # A minute of epochs: on a loaded machine `optuna delete-study` alone may take many seconds (the trial once
    # ended, after half a minute, before the CLI's delete landed). The worker drops the trial at its next report
    # after the delete, so a longer trial costs a passing test nothing.
    repository.create(synthetic_spec(study_name, 1, epochs=120, sleep_s=0.5, priority=10))
    repository.create(synthetic_spec(f"{study_name}-next", 2, epochs=1, sleep_s=0.01))
    worker = Worker(
        store_url, tmp_path, "--study", study_name, "--study", f"{study_name}-next", "--exit-when-idle"
    )
    settings = ServiceSettings(grace_period_s=2.0, heartbeat_interval_s=0.3)
    try:
        with TestClient(create_app(settings, repository=repository)) as client:
            study_id = repository.get(study_name).optuna_study_id
            wait_for(
                lambda: any(
                    t.intermediate_values for t in repository.storage.get_all_trials(study_id, deepcopy=False)
                ),
                timeout_s=60,
                what="the slow study's trial to report an epoch",
            )
            yield repository, worker, client
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait()
        repository.engine.dispose()


def assert_worker_dropped_it_and_went_on(
    repository: StudyRepository, worker: Worker, study_name: str
) -> None:
    assert worker.wait() == 0, worker.output()
    output = worker.output()
    assert f"trial 0 of {study_name} {DROPPED}" in output, output
    assert "Traceback" not in output, output
    following = repository.get(f"{study_name}-next")
    assert repository.trial_counts(following)["complete"] == 2
    assert repository.progress(following).state == "completed"


def running_trials(repository: StudyRepository, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=repository.storage).get_trials(
        states=(TrialState.RUNNING,)
    )


def test_a_study_deleted_in_the_dashboard_under_a_running_worker(
    doomed: tuple[StudyRepository, Worker, TestClient], study_name: str
) -> None:
    repository, worker, client = doomed
    study_id = repository.get(study_name).optuna_study_id
    assert client.delete(f"/api/studies/{study_id}").status_code == 204
    assert_worker_dropped_it_and_went_on(repository, worker, study_name)
    assert study_name not in optuna.get_all_study_names(repository.storage)


def test_a_study_deleted_with_the_optuna_cli_under_a_running_worker(
    doomed: tuple[StudyRepository, Worker, TestClient], store_url: str, study_name: str
) -> None:
    repository, worker, _ = doomed
    # Optuna's delete ignores the integrity error of a row written under the study meanwhile (on PostgreSQL, an
    # epoch's value of the running trial, about one run in three here) and exits 0 with the study in place: a user
    # sees it still listed and runs the command again, as here. tunefleet's own deletes lock the rows first.
    for _ in range(10):
        deleted = subprocess.run(
            [str(OPTUNA), "delete-study", "--storage", store_url, "--study-name", study_name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        if study_name not in optuna.get_all_study_names(repository.storage):
            break
    assert_worker_dropped_it_and_went_on(repository, worker, study_name)
    assert study_name not in optuna.get_all_study_names(repository.storage)


def test_a_study_renamed_in_the_dashboard_under_a_running_worker(
    doomed: tuple[StudyRepository, Worker, TestClient], study_name: str
) -> None:
    # The rename copies the study, its running trial included, under the new name and deletes the original:
    # the worker ran the original, and the reaper fails the copy, which no worker runs.
    repository, worker, client = doomed
    study_id = repository.get(study_name).optuna_study_id
    renamed = f"{study_name}-renamed"
    response = client.post(f"/api/studies/{study_id}/rename", json={"study_name": renamed})
    assert response.status_code == 201, response.text
    assert_worker_dropped_it_and_went_on(repository, worker, study_name)
    wait_for(
        lambda: not running_trials(repository, renamed), timeout_s=60, what="the reaper to fail the copy"
    )
    [copied] = optuna.load_study(study_name=renamed, storage=repository.storage).trials
    assert copied.state == TrialState.FAIL
    assert copied.user_attrs["fail_reason"] == COPIED_WHILE_RUNNING
    assert copied.intermediate_values  # what the trial had reported when it was copied


def test_sigterm_after_the_study_was_deleted_exits_cleanly(
    store_url: str, tmp_path: Path, study_name: str
) -> None:
    # The hand-back on SIGTERM finds the trial gone with its study: nothing to hand back, exit 0.
    repository = StudyRepository(open_storage(store_url))
    repository.create(synthetic_spec(study_name, 1, epochs=3, sleep_s=30.0))
    worker = Worker(store_url, tmp_path, "--study", study_name)
    try:
        study_id = repository.get(study_name).optuna_study_id
        wait_for(
            lambda: repository.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)),
            timeout_s=60,
            what="the trial to start",
        )
        optuna.delete_study(study_name=study_name, storage=repository.storage)
        worker.process.send_signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output()
        output = worker.output()
        assert f"trial 0 of {study_name} {DROPPED}" in output, output
        assert "Traceback" not in output, output
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait()
        repository.engine.dispose()
