"""The worker registry: each worker is judged by its own grace period, whoever reaps."""

from __future__ import annotations

from datetime import timedelta

from studies import StudyRepository, WorkerIdentity
from studies.fleet import Fleet
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
