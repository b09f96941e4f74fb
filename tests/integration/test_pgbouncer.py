"""Behind PgBouncer in transaction mode a worker needs one server session at a time, at start-up and after."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from bench import pgbouncer
from studies import StudyRepository, StudySpec, open_storage
from tests.conftest import required_in_ci
from worker.loop import LoopOptions, build_runner, run_loop
from worker.settings import WorkerSettings

pytestmark = pytest.mark.slow


@pytest.fixture
def one_session(postgres_url: str) -> Iterator[str]:
    """A PgBouncer with one PostgreSQL session and a short wait: any client that holds the session in a
    transaction while it asks for a second one is cut off after 3 s instead of hanging."""
    if pgbouncer.available() is None:
        required_in_ci(f"pgbouncer is needed for this test: {pgbouncer.INSTALL_HINT}")
    with pgbouncer.pgbouncer(postgres_url, server_pool_size=1, query_wait_timeout_s=3) as url:
        yield url


def test_opening_the_store_needs_one_server_session(one_session: str) -> None:
    # Optuna's schema check reads the alembic revision on a second connection while its first holds a
    # transaction open: a fleet starting at once behind a pool of N sessions would deadlock once N workers
    # each held one, until PgBouncer's query_wait_timeout cut them all off.
    storage = open_storage(one_session, pool_size=1)
    try:
        StudyRepository(storage)
    finally:
        storage.engine.dispose()


def test_a_worker_runs_trials_through_a_single_server_session(
    one_session: str, postgres_url: str, study_name: str, tmp_path: Path
) -> None:
    repository = StudyRepository(open_storage(postgres_url))
    repository.create(
        StudySpec.model_validate(
            {
                "name": study_name,
                "task": {"kind": "synthetic", "epoch_sleep_s": 0.01},
                "space": {"epochs": 3},
                "sampler": {"name": "tpe", "seed": 3, "n_startup_trials": 2},
                "pruner": {"name": "median", "n_startup_trials": 1},
                "budget": {"n_trials": 6},
            }
        )
    )
    settings = WorkerSettings(
        database_url=one_session,
        device="cpu",
        pool_size=1,
        heartbeat_interval_s=0.2,
        poll_interval_s=0.1,
        cache_dir=tmp_path / "cache",
        artifact_dir=str(tmp_path / "artifacts"),
    )
    runner, identity = build_runner(settings)
    try:
        done = run_loop(
            runner, identity, LoopOptions(study_names=(study_name,), exit_when_idle=True), settings
        )
    finally:
        runner.repository.engine.dispose()
    assert done == 6
    trials = repository.storage.get_all_trials(repository.get(study_name).optuna_study_id)
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len(trials) == 6
    assert socket.gethostname() in {t.user_attrs["worker"].split(":")[0] for t in trials}
