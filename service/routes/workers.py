"""/v1/workers: the fleet as the registry sees it, live and lost."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from service.dependencies import Repository
from service.schemas import UtcDatetime
from studies.fleet import Fleet
from studies.tables import utcnow

router = APIRouter(prefix="/v1/workers", tags=["workers"])


class WorkerRead(BaseModel):
    """One worker process: where it runs, what it runs, and when it last proved alive."""

    worker_id: str
    host: str
    pid: int
    device: str
    status: str
    study_name: str | None
    trial_number: int | None
    started_at: UtcDatetime
    heartbeat_at: UtcDatetime
    heartbeat_age_s: float


@router.get("", response_model=list[WorkerRead])
def list_workers(
    request: Request,
    repository: Repository,
    include_stopped: Annotated[bool, Query(description="also workers that exited on purpose")] = False,
) -> list[WorkerRead]:
    """Workers seen in the last day: busy, idle, or lost (silent past the grace period); newest first."""
    grace_s = request.app.state.settings.grace_period_s
    now = utcnow()
    return [
        WorkerRead(
            worker_id=row.worker_id,
            host=row.host,
            pid=row.pid,
            device=row.device,
            status=row.status(grace_s=grace_s, now=now),
            study_name=row.study_name,
            trial_number=row.trial_number,
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
            heartbeat_age_s=round((now - row.heartbeat_at).total_seconds(), 3),
        )
        for row in Fleet(repository).workers(include_stopped=include_stopped)
    ]
