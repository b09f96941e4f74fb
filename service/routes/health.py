"""Liveness and readiness probes."""

import sqlalchemy as sa
from fastapi import APIRouter

from service.dependencies import Repository
from service.schemas import HealthRead
from studies.errors import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthRead)
def healthz() -> HealthRead:
    """The process is up."""
    return HealthRead(status="ok")


@router.get(
    "/readyz", response_model=HealthRead, responses={503: {"description": "the store is unreachable"}}
)
def readyz(repository: Repository) -> HealthRead:
    """The store answers a query."""
    try:
        with repository.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as error:
        raise StoreUnavailable("the study store is unreachable") from error
    return HealthRead(status="ready")
