"""The worker registry: each worker is judged by its own grace period, whoever reaps."""

from __future__ import annotations

import time
from datetime import timedelta

from studies import StudyRepository, WorkerIdentity
from studies.fleet import Fleet, Reaper
from studies.tables import utcnow, workers_table


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
    assert fleet.take_lease(lease, "second", ttl_s=0.05)
    assert not fleet.take_lease(lease, "first", ttl_s=60.0)
    time.sleep(0.1)
    # A holder that died (no release) is replaced once its lease has run out.
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
    reaper = Reaper(fleet, grace_s=1.0, interval_s=1.0, lease=lease)
    silent = [
        WorkerIdentity(host="h", pid=5 + i, device="cpu", worker_id=f"{study_name}-s{i}") for i in range(2)
    ]
    fleet.register(silent[0], grace_s=1.0)
    silence(repository, silent[0].worker_id, 30)
    assert silent[0].worker_id in reaper.tick()
    fleet.register(silent[1], grace_s=1.0)
    silence(repository, silent[1].worker_id, 30)
    assert reaper.tick() == []
    time.sleep(0.55)
    assert silent[1].worker_id in reaper.tick()
    reaper.release()
