"""The worker registry: each worker is judged by its own grace period, whoever reaps."""

from __future__ import annotations

import time
from datetime import timedelta

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from studies import StudyRepository, StudySpec, WorkerIdentity
from studies.fleet import Fleet, Reaper
from studies.tables import leases_table, utcnow, workers_table
from tests.conftest import tiny_spec


def silence(repository: StudyRepository, worker_id: str, seconds: float) -> None:
    with repository.engine.begin() as connection:
        connection.execute(
            workers_table.update()
            .where(workers_table.c.worker_id == worker_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_a_worker_is_reaped_only_past_its_own_grace_period(
    repository: StudyRepository, study_name: str
) -> None:
    fleet = Fleet(repository)
    patient = WorkerIdentity(host="h", pid=1, device="cpu", worker_id=f"{study_name}-patient")
    hasty = WorkerIdentity(host="h", pid=2, device="cpu", worker_id=f"{study_name}-hasty")
    fleet.register(patient, grace_s=60.0)
    fleet.register(hasty, grace_s=2.0)
    silence(repository, patient.worker_id, 5)
    silence(repository, hasty.worker_id, 5)
    # This reaper's own setting (2 s) must not condemn a worker that asked for 60 s.
    reaped = fleet.reap(grace_s=2.0)
    assert hasty.worker_id in reaped
    assert patient.worker_id not in reaped
    assert fleet.heartbeat(patient.worker_id) is True
    assert fleet.heartbeat(hasty.worker_id) is False


def test_a_heartbeat_after_the_judgement_wins_over_the_reaper(
    repository: StudyRepository, study_name: str
) -> None:
    fleet = Fleet(repository)
    worker = WorkerIdentity(host="h", pid=3, device="cpu", worker_id=f"{study_name}-late")
    fleet.register(worker, grace_s=1.0)
    silence(repository, worker.worker_id, 5)
    assert fleet.heartbeat(worker.worker_id) is True
    assert worker.worker_id not in fleet.reap(grace_s=1.0)


def test_one_reaper_sweeps_for_the_fleet_until_it_lets_go(
    repository: StudyRepository, study_name: str
) -> None:
    fleet = Fleet(repository)
    lease = f"{study_name}-lease"
    assert fleet.take_lease(lease, "first", ttl_s=60.0)
    assert fleet.take_lease(lease, "first", ttl_s=60.0)  # the holder renews
    assert not fleet.take_lease(lease, "second", ttl_s=60.0)
    fleet.release_lease(lease, "first")
    assert fleet.take_lease(lease, "second", ttl_s=60.0)
    assert not fleet.take_lease(lease, "first", ttl_s=60.0)
    # A holder that died (no release) is replaced once its lease has run out. The clock is moved in
    # the store, not slept through: a short real lease could run out early on a loaded machine.
    with repository.engine.begin() as connection:
        connection.execute(
            leases_table.update()
            .where(leases_table.c.name == lease)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert fleet.take_lease(lease, "first", ttl_s=60.0)


def test_a_reaper_without_the_lease_leaves_silent_workers_alone(
    repository: StudyRepository, study_name: str
) -> None:
    fleet = Fleet(repository)
    lease = f"{study_name}-reaper"
    holder = Reaper(fleet, grace_s=1.0, interval_s=0.01, lease=lease)
    other = Reaper(fleet, grace_s=1.0, interval_s=0.01, lease=lease)
    assert fleet.take_lease(lease, holder.holder, ttl_s=60.0)
    silent = WorkerIdentity(host="h", pid=4, device="cpu", worker_id=f"{study_name}-silent")
    fleet.register(silent, grace_s=1.0)
    silence(repository, silent.worker_id, 30)
    time.sleep(0.02)
    assert other.tick() == []
    assert silent.worker_id in holder.tick()
    holder.release()
    other.release()


def test_a_reaper_sweeps_at_most_twice_an_interval_and_renews_on_early_beats(
    repository: StudyRepository, study_name: str
) -> None:
    # Workers beat at 3/4 to 1 interval apart (jittered): a holder that skipped such a beat would
    # renew its two-interval lease only every second beat, and could lose it.
    fleet = Fleet(repository)
    lease = f"{study_name}-reaper"
    # A long interval, and its half passed by moving the reaper's clock: a loaded machine cannot take
    # half a minute between two ticks, where it could take half a second.
    reaper = Reaper(fleet, grace_s=1.0, interval_s=60.0, lease=lease)
    silent = [
        WorkerIdentity(host="h", pid=5 + i, device="cpu", worker_id=f"{study_name}-s{i}") for i in range(2)
    ]
    fleet.register(silent[0], grace_s=1.0)
    silence(repository, silent[0].worker_id, 30)
    assert silent[0].worker_id in reaper.tick()
    fleet.register(silent[1], grace_s=1.0)
    silence(repository, silent[1].worker_id, 30)
    assert reaper.tick() == []
    reaper._last_run -= 30.5
    assert silent[1].worker_id in reaper.tick()
    reaper.release()


def test_a_lost_workers_trial_whose_study_was_deleted_does_not_stop_the_sweep(
    repository: StudyRepository, study_name: str
) -> None:
    # A worker is declared lost, then its study is deleted (here as the dashboard and the optuna CLI
    # do) before a sweep retries its trial: the trial is gone, and a sweep that failed on it would fail
    # on it at every tick, leaving every other lost worker's trial RUNNING for good.
    fleet = Fleet(repository)
    doomed, kept = f"{study_name}-deleted", f"{study_name}-kept"
    gone = WorkerIdentity(host="h", pid=6, device="cpu", worker_id=f"{study_name}-gone")
    other = WorkerIdentity(host="h", pid=7, device="cpu", worker_id=f"{study_name}-other")
    claims = {}
    for name, worker in ((doomed, gone), (kept, other)):
        repository.create(StudySpec.model_validate(tiny_spec(name)))
        fleet.register(worker, grace_s=1.0)
        claims[name] = repository.claim(worker, study_names=[name])
        assert claims[name] is not None
    with repository.engine.begin() as connection:
        connection.execute(
            workers_table.update().where(workers_table.c.worker_id == gone.worker_id).values(state="lost")
        )
    optuna.delete_study(study_name=doomed, storage=repository.storage)
    silence(repository, other.worker_id, 30)
    assert other.worker_id in fleet.reap(grace_s=1.0)
    retried = repository.storage.get_trial(claims[kept].trial._trial_id)
    assert retried.state == TrialState.FAIL and retried.user_attrs["fail_reason"] == "worker lost"
    with repository.engine.begin() as connection:
        row = connection.execute(
            sa.select(workers_table.c.trial_id).where(workers_table.c.worker_id == gone.worker_id)
        ).one()
    assert row.trial_id is None


def test_a_sweep_forgets_workers_gone_for_a_week_after_retrying_their_trials(
    repository: StudyRepository, study_name: str
) -> None:
    # Every worker process leaves a row; a fleet restarted daily grew the table without end.
    fleet = Fleet(repository)
    rows = {
        name: WorkerIdentity(host="h", pid=10 + i, device="cpu", worker_id=f"{study_name}-{name}")
        for i, name in enumerate(("old-stopped", "new-stopped", "old-lost"))
    }
    for worker in rows.values():
        fleet.register(worker, grace_s=1.0)
    fleet.deregister(rows["old-stopped"].worker_id)
    fleet.deregister(rows["new-stopped"].worker_id)
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    claim = repository.claim(rows["old-lost"], study_names=[study_name])
    assert claim is not None
    silence(repository, rows["old-stopped"].worker_id, 8 * 24 * 3600)
    silence(repository, rows["new-stopped"].worker_id, 24 * 3600)
    silence(repository, rows["old-lost"].worker_id, 8 * 24 * 3600)
    assert rows["old-lost"].worker_id in fleet.reap(grace_s=1.0)
    # The lost worker's trial was retried before its row was forgotten.
    assert repository.storage.get_trial(claim.trial._trial_id).state == TrialState.FAIL
    with repository.engine.begin() as connection:
        left = set(
            connection.execute(
                sa.select(workers_table.c.worker_id).where(
                    workers_table.c.worker_id.in_([w.worker_id for w in rows.values()])
                )
            ).scalars()
        )
    assert left == {rows["new-stopped"].worker_id}


def test_a_lost_workers_row_never_fails_a_trial_another_worker_now_runs(
    repository: StudyRepository, study_name: str
) -> None:
    # SQLite reuses a deleted trial's id: a lost worker's row can name an id that now belongs to a trial a
    # live worker runs. Made here by a lost row naming the live worker's trial, as such a reuse leaves it.
    fleet = Fleet(repository)
    lost = WorkerIdentity(host="h", pid=20, device="cpu", worker_id=f"{study_name}-lost")
    live = WorkerIdentity(host="h", pid=21, device="cpu", worker_id=f"{study_name}-live")
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    fleet.register(lost, grace_s=1.0)
    fleet.register(live, grace_s=60.0)
    claim = repository.claim(live, study_names=[study_name])
    assert claim is not None
    with repository.engine.begin() as connection:
        connection.execute(
            workers_table.update()
            .where(workers_table.c.worker_id == lost.worker_id)
            .values(state="lost", study_name=study_name, trial_id=claim.trial._trial_id, trial_number=0)
        )
    fleet.reap(grace_s=1.0)
    assert repository.storage.get_trial(claim.trial._trial_id).state == TrialState.RUNNING
    with repository.engine.begin() as connection:
        row = connection.execute(
            sa.select(workers_table.c.trial_id).where(workers_table.c.worker_id == lost.worker_id)
        ).one()
    assert row.trial_id is None
