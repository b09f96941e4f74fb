"""The one table that maps domain errors to HTTP statuses, and the handlers that apply it."""

from __future__ import annotations

import logging

import optuna
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from studies.errors import (
    InvalidStudyState,
    StoreUnavailable,
    StudyAlreadyExists,
    StudyNotFound,
    TrialNotFound,
    TunefleetError,
)

log = logging.getLogger("tunefleet.service")

HTTP_STATUS: dict[type[TunefleetError], int] = {
    StudyNotFound: 404,
    TrialNotFound: 404,
    StudyAlreadyExists: 409,
    InvalidStudyState: 409,
    StoreUnavailable: 503,
}


def error_response(status: int, detail: str, code: str) -> JSONResponse:
    """The JSON body every error shares: a readable detail and a stable code."""
    return JSONResponse(status_code=status, content={"detail": detail, "code": code})


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TunefleetError)
    status = next((s for cls, s in HTTP_STATUS.items() if isinstance(exc, cls)), 400)
    return error_response(status, str(exc), exc.code)


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    # The driver's message can carry host names and SQL: log it, answer without it.
    log.warning("store unavailable during %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return error_response(503, "the study store is unavailable; try again shortly", StoreUnavailable.code)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error during %s %s", request.method, request.url.path)
    return error_response(500, "internal server error", "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; route code raises domain errors and never builds error bodies."""
    app.add_exception_handler(TunefleetError, _domain_error)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _store_error)
    app.add_exception_handler(sqlalchemy.exc.InterfaceError, _store_error)
    app.add_exception_handler(optuna.exceptions.StorageInternalError, _store_error)
    app.add_exception_handler(Exception, _unexpected)
