"""The fleet with real worker processes, real signals and a real PostgreSQL: budgets, deaths, outages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from optuna.trial import FrozenTrial, TrialState

from service import ServiceSettings, create_app
from studies import StudyRepository, StudySpec, open_storage
from studies.checkpoints import CHECKPOINT_ATTR
from studies.fleet import Fleet
from studies.storage import normalize_url
from tests.faults import OutageProxy
from tests.finetune_spec import finetune_spec, tiny_bert, write_csv
from tests.live import wait_for

pytestmark = pytest.mark.slow

HEARTBEAT_S = "0.3"
GRACE_S = "2"


def synthetic_spec(
    name: str, n_trials: int, *, epochs: int = 3, sleep_s: float = 0.002, **extra: Any
) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": name,
            "task": {"kind": "synthetic", "epoch_sleep_s": sleep_s},
            "space": {"epochs": epochs},
            "sampler": {"name": "random", "seed": 1},
            "pruner": {"name": "none"},
            "budget": {"n_trials": n_trials},
            **extra,
        }
    )


class Workers:
    """Starts `tunefleet worker` processes on one store and cleans them all up."""

    def __init__(self, url: str, tmp_path: Path, grace_s: str = GRACE_S) -> None:
        self.url = url
        self.grace_s = grace_s
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "TUNEFLEET_DATABASE_URL": self.url,
            "TUNEFLEET_HEARTBEAT_INTERVAL_S": HEARTBEAT_S,
            "TUNEFLEET_GRACE_PERIOD_S": self.grace_s,
            "TUNEFLEET_POLL_INTERVAL_S": "0.2",
            "TUNEFLEET_CACHE_DIR": str(self.tmp_path / "cache"),
            "TUNEFLEET_ARTIFACT_DIR": str(self.tmp_path / "artifacts"),
            "PYTHONUNBUFFERED": "1",
        }
        log = open(self.tmp_path / f"worker-{len(self.processes)}.log", "wb")  # noqa: SIM115 - process owns it
        process = subprocess.Popen(
            [sys.executable, "-m", "tunefleet", "worker", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("worker-*.log")))

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """The test PostgreSQL, with an application name only this test's processes use."""
    return f"{postgres_url}?application_name=tf-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    made: list[Workers] = []

    def make(url: str, grace_s: str = GRACE_S) -> Workers:
        made.append(Workers(url, tmp_path, grace_s))
        return made[-1]

    yield make
    for group in made:
        group.stop_all()


def all_trials(repository: StudyRepository, name: str) -> list[FrozenTrial]:
    record = repository.get(name)
    return repository.storage.get_all_trials(record.optuna_study_id, deepcopy=False)


def running_trial(repository: StudyRepository, name: str) -> FrozenTrial | None:
    """A trial that is well under way: RUNNING, its parameters set and an epoch reported."""
    return next(
        (t for t in all_trials(repository, name) if t.state == TrialState.RUNNING and t.intermediate_values),
        None,
    )


def test_eight_workers_racing_five_studies_never_overshoot_a_budget(
    pg_url: str, workers: Callable[[str], Workers], study_name: str
) -> None:
    repository = StudyRepository(open_storage(pg_url))
    names = [f"{study_name}-{run}" for run in range(5)]
    for name in names:
        repository.create(synthetic_spec(name, 40))
    # Not a dead-worker test: a generous grace period keeps a CPU-starved heartbeat on a loaded
    # 2-core machine from being taken for a death (whose retry the budget rightly allows).
    fleet = workers(pg_url, "30")
    study_args = [arg for name in names for arg in ("--study", name)]
    processes = [fleet.start(*study_args, "--exit-when-idle") for _ in range(8)]
    for process in processes:
        assert process.wait(timeout=240) == 0, fleet.logs()
    for name in names:
        trials = all_trials(repository, name)
        assert sorted(t.number for t in trials) == list(range(40)), name
        assert {t.state for t in trials} == {TrialState.COMPLETE}
        assert repository.progress(repository.get(name)).state == "completed"
    assert "Traceback" not in fleet.logs()


def test_two_workers_on_sqlite_fill_the_budget_exactly(
    tmp_path: Path, workers: Callable[[str], Workers], study_name: str
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    repository = StudyRepository(open_storage(url))
    repository.create(synthetic_spec(study_name, 20))
    fleet = workers(url, "30")
    processes = [fleet.start("--study", study_name, "--exit-when-idle") for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=120) == 0, fleet.logs()
    trials = all_trials(repository, study_name)
    assert sorted(t.number for t in trials) == list(range(20))
    assert {t.state for t in trials} == {TrialState.COMPLETE}


def test_a_killed_workers_trial_is_retried_by_a_live_worker(
    pg_url: str, workers: Callable[[str], Workers], study_name: str
) -> None:
    repository = StudyRepository(open_storage(pg_url))
    repository.create(synthetic_spec(study_name, 3, epochs=4, sleep_s=0.4))
    fleet = workers(pg_url)
    doomed = fleet.start("--study", study_name)
    lost = wait_for(lambda: running_trial(repository, study_name), timeout_s=60, what="a running trial")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    survivor = fleet.start("--study", study_name)

    with TestClient(create_app(ServiceSettings(grace_period_s=2.0), repository=repository)) as client:
        seen = wait_for(
            lambda: [
                w
                for w in client.get("/v1/workers").json()
                if w["pid"] == doomed.pid and w["status"] == "lost"
            ],
            timeout_s=30,
            what="the killed worker to be listed as lost",
        )
        assert seen[0]["host"]
        wait_for(
            lambda: repository.progress(repository.get(study_name)).state == "completed",
            timeout_s=90,
            what="the study to finish",
        )
    survivor.terminate()
    assert survivor.wait(timeout=15) == 0
    trials = {t.number: t for t in all_trials(repository, study_name)}
    # The snapshot may predate some of the trial's parameters: read it again now that it has ended.
    lost = failed = trials[lost.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == "worker lost"
    retry = next(t for t in trials.values() if t.user_attrs.get("retry_of") == lost.number)
    assert retry.state == TrialState.COMPLETE
    assert retry.params == lost.params
    assert retry.user_attrs["seed"] == lost.user_attrs["seed"]
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 3


def test_a_paused_workers_late_report_is_rejected_not_written_over_the_retry(
    pg_url: str, workers: Callable[[str], Workers], study_name: str
) -> None:
    repository = StudyRepository(open_storage(pg_url))
    repository.create(synthetic_spec(study_name, 2, epochs=3, sleep_s=0.5))
    fleet = workers(pg_url)
    paused = fleet.start("--study", study_name)
    lost = wait_for(lambda: running_trial(repository, study_name), timeout_s=60, what="a running trial")
    paused.send_signal(signal.SIGSTOP)
    fleet.start("--study", study_name)
    wait_for(
        lambda: repository.storage.get_trial(lost._trial_id).state == TrialState.FAIL,
        timeout_s=30,
        what="the paused worker's trial to be declared lost",
    )
    paused.send_signal(signal.SIGCONT)
    wait_for(
        lambda: repository.progress(repository.get(study_name)).state == "completed",
        timeout_s=60,
        what="the study to finish",
    )
    wait_for(lambda: "declared lost" in fleet.logs(), timeout_s=15, what="the paused worker to notice")
    assert repository.storage.get_trial(lost._trial_id).state == TrialState.FAIL
    assert repository.storage.get_trial(lost._trial_id).user_attrs["fail_reason"] == "worker lost"
    completed = [t for t in all_trials(repository, study_name) if t.state == TrialState.COMPLETE]
    assert len(completed) == 2
    assert paused.poll() is None, "the paused worker must carry on after it was declared lost"


def test_sigterm_hands_the_trial_back_and_exits_within_ten_seconds(
    pg_url: str, workers: Callable[[str], Workers], study_name: str
) -> None:
    repository = StudyRepository(open_storage(pg_url))
    repository.create(synthetic_spec(study_name, 1, epochs=3, sleep_s=20.0))
    fleet = workers(pg_url)
    worker = fleet.start("--study", study_name)
    trial = wait_for(lambda: running_trial(repository, study_name), timeout_s=60, what="a running trial")
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0
    assert time.monotonic() - sent < 10
    given_back = repository.storage.get_trial(trial._trial_id)
    assert given_back.state == TrialState.WAITING
    assert given_back.params == trial.params
    workers_seen = Fleet(repository).workers(include_stopped=True)
    assert any(w.pid == worker.pid and w.state == "stopped" for w in workers_seen)


def test_workers_ride_out_terminated_connections_and_lose_nothing(
    pg_url: str, postgres_url: str, workers: Callable[[str], Workers], study_name: str
) -> None:
    repository = StudyRepository(open_storage(pg_url))
    repository.create(synthetic_spec(study_name, 30, epochs=3, sleep_s=0.05))
    fleet = workers(pg_url)
    processes = [fleet.start("--study", study_name, "--exit-when-idle") for _ in range(3)]
    application_name = pg_url.rsplit("application_name=", 1)[1]
    admin = sa.create_engine(normalize_url(postgres_url))
    wait_for(lambda: running_trial(repository, study_name), timeout_s=60, what="the study to start")
    killed = 0
    for _ in range(4):
        with admin.begin() as connection:
            killed += len(
                connection.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": application_name},
                ).all()
            )
        time.sleep(0.7)
    admin.dispose()
    assert killed > 0
    for process in processes:
        assert process.wait(timeout=120) == 0, fleet.logs()
    trials = all_trials(repository, study_name)
    assert sorted(t.number for t in trials) == list(range(30))
    assert {t.state for t in trials} == {TrialState.COMPLETE}


def test_the_service_is_not_ready_during_an_outage_and_the_study_finishes_after(
    postgres_url: str, workers: Callable[[str], Workers], study_name: str
) -> None:
    target = sa.engine.make_url(normalize_url(postgres_url))
    proxy = OutageProxy(target.host or "127.0.0.1", target.port or 5432)
    url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        repository = StudyRepository(open_storage(url))
        repository.create(synthetic_spec(study_name, 12, epochs=3, sleep_s=0.1))
        fleet = workers(url)
        processes = [fleet.start("--study", study_name, "--exit-when-idle") for _ in range(2)]
        with TestClient(create_app(ServiceSettings(), repository=repository)) as client:
            wait_for(lambda: running_trial(repository, study_name), timeout_s=60, what="the study to start")
            proxy.cut()
            assert client.get("/readyz").status_code == 503
            response = client.get(f"/v1/studies/{study_name}")
            assert response.status_code == 503
            assert response.json()["code"] == "store_unavailable"
            assert client.get("/healthz").status_code == 200
            time.sleep(3)
            proxy.restore()
            wait_for(lambda: client.get("/readyz").status_code == 200, timeout_s=30, what="readiness")
        for process in processes:
            assert process.wait(timeout=120) == 0, fleet.logs()
        trials = all_trials(repository, study_name)
        assert sorted(t.number for t in trials) == list(range(12))
        assert {t.state for t in trials} == {TrialState.COMPLETE}
        logs = fleet.logs()
        assert "store unavailable" in logs
        assert "Traceback" not in logs
    finally:
        proxy.close()


def test_the_launcher_restarts_a_killed_child_and_stops_all_on_sigterm(
    pg_url: str, workers: Callable[[str], Workers], study_name: str
) -> None:
    repository = StudyRepository(open_storage(pg_url))
    repository.create(synthetic_spec(study_name, 1))
    fleet = Fleet(repository)
    launcher = workers(pg_url).start("--processes", "2", "--study", study_name + "-idle")

    def parent_of(pid: int) -> int | None:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None

    def live_pids() -> set[int]:
        # Only this launcher's children: the shared test database may list other runs' workers.
        alive = {w.pid for w in fleet.workers() if w.state in ("idle", "busy")}
        return {pid for pid in alive if parent_of(pid) == launcher.pid}

    first = wait_for(lambda: (p := live_pids()) and len(p) == 2 and p, timeout_s=60, what="two children")
    victim = sorted(first)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(live_pids() - {victim}) == 2,
        timeout_s=60,
        what="the killed child to be replaced",
    )
    children = live_pids() - {victim}
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=20) == 0
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_broken_study_is_failed_and_the_worker_moves_on(
    pg_url: str, workers: Callable[[str], Workers], study_name: str, tmp_path: Path
) -> None:
    repository = StudyRepository(open_storage(pg_url))
    broken = StudySpec.model_validate(
        {
            "name": study_name + "-broken",
            "task": {"model": str(tmp_path / "missing-model")},
            "budget": {"n_trials": 20},
            "priority": 10,
        }
    )
    repository.create(broken)
    repository.create(synthetic_spec(study_name + "-fine", 3))
    worker = workers(pg_url).start(
        "--study", study_name + "-broken", "--study", study_name + "-fine", "--exit-when-idle"
    )
    assert worker.wait(timeout=90) == 0
    record = repository.get(study_name + "-broken")
    assert record.state == "failed"
    assert "missing-model" in (record.state_reason or "")
    assert repository.trial_counts(record)["fail"] == 3
    assert repository.progress(repository.get(study_name + "-fine")).state == "completed"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_trial_cut_off_mid_run_resumes_on_another_worker_from_its_checkpoint(
    pg_url: str,
    workers: Callable[[str], Workers],
    study_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    # A real encoder fine-tuned for real (a tiny BERT, every layer trained), checkpointed after every epoch.
    (tmp_path / "model").mkdir()
    model = tiny_bert(tmp_path / "model")
    data = {
        "train": str(write_csv(tmp_path / "train.csv", 120)),
        "validation": str(write_csv(tmp_path / "validation.csv", 20, offset=1000)),
    }
    spec = finetune_spec(
        study_name,
        model,
        data,
        "full",
        space={"epochs": 4},
        objective={"metric": "val_loss", "direction": "minimize", "value": "best", "patience": 0},
        budget={"n_trials": 2, "max_retries": 1},
    )
    repository = StudyRepository(open_storage(pg_url))
    repository.create(spec)
    # Twice the same trial, same seed: the first is cut off and resumed, the second runs undisturbed.
    repository.enqueue(study_name, [{}, {}], user_attrs=[{"seed": 7}, {"seed": 7}])
    monkeypatch.setenv("TUNEFLEET_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("TUNEFLEET_CHECKPOINT_INTERVAL_S", "0")
    fleet = workers(pg_url)
    first = fleet.start("--study", study_name)
    checkpointed = wait_for(
        lambda: next(
            (
                t
                for t in all_trials(repository, study_name)
                if t.state == TrialState.RUNNING and CHECKPOINT_ATTR in t.system_attrs
            ),
            None,
        ),
        timeout_s=120,
        what="a checkpoint of the running trial",
        every_s=0.05,
    )
    first.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
    first.wait(timeout=30)
    cut_off = repository.storage.get_trial(checkpointed._trial_id)
    # SIGTERM hands the trial itself back; a killed worker's trial is failed by the reaper and retried.
    assert cut_off.state == (TrialState.WAITING if how == "SIGTERM" else TrialState.RUNNING)
    assert len(cut_off.intermediate_values) < 4 or how == "SIGTERM", "the trial was cut off mid-run"

    second = fleet.start("--study", study_name, "--exit-when-idle")
    assert second.wait(timeout=240) == 0, fleet.logs()
    completed = [t for t in all_trials(repository, study_name) if t.state == TrialState.COMPLETE]
    (resumed,) = [t for t in completed if "resumed_from_epoch" in t.user_attrs]
    (whole,) = [t for t in completed if "resumed_from_epoch" not in t.user_attrs]
    assert resumed.user_attrs["resumed_from_epoch"] >= checkpointed.system_attrs[CHECKPOINT_ATTR]["epoch"]
    if how == "SIGKILL":
        assert resumed.user_attrs["retry_of"] == checkpointed.number
    else:
        assert resumed.number == checkpointed.number
    assert "resumed after epoch" in fleet.logs()
    assert len(whole.intermediate_values) == 4
    assert resumed.intermediate_values == whole.intermediate_values
    assert resumed.user_attrs["val_loss"] == whole.user_attrs["val_loss"]
    assert list((tmp_path / "artifacts").rglob("checkpoint-*")) == []
