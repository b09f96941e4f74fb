"""The one table that maps domain errors to HTTP statuses, and the handlers that apply it."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import optuna
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from service.outage import StoreOutageLog
from studies.errors import (
    AuthenticationRequired,
    BestModelNotFound,
    InvalidStudyState,
    PayloadTooLarge,
    PermissionDenied,
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
    AuthenticationRequired: 401,
    PermissionDenied: 403,
    PayloadTooLarge: 413,
    BestModelNotFound: 404,
}

# Codes for the errors FastAPI and Starlette raise themselves; any other status: http_<status>.
HTTP_CODES: dict[int, str] = {
    # FastAPI answers 400 only to a body it cannot even parse (not UTF-8, nested too deep, a 5000-digit
    # number); a syntax error in JSON is its 422 json_invalid. Both are invalid_json to a client.
    400: "invalid_json",
    404: "not_found",
    405: "method_not_allowed",
    413: PayloadTooLarge.code,
}
# A body the mounted dashboard would choke on (its directions nested in lists, say): 400 with this code.
INVALID_REQUEST = "invalid_request"
# Anything else that went wrong inside: logged with its traceback, answered without it.
INTERNAL_ERROR = "internal_error"


class ErrorJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: an error may echo a client's string that UTF-8
    cannot encode (a lone surrogate from a \\ud800 escape), and an error must never fail to render."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(_finite(content), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii")


def _finite(value: Any) -> Any:
    # Python's json module reads NaN and Infinity, so a validation error can echo one; JSON has neither.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def error_response(
    status: int, detail: str, code: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON body every error shares: a readable detail and a stable code."""
    return ErrorJSONResponse(status_code=status, content={"detail": detail, "code": code}, headers=headers)


def domain_error_response(exc: TunefleetError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The response for a domain error, by the table; also used by the ASGI middlewares (auth, body limit)."""
    status = next((s for cls, s in HTTP_STATUS.items() if isinstance(exc, cls)), 400)
    if isinstance(exc, AuthenticationRequired) and headers is None:
        headers = {"WWW-Authenticate": 'Bearer realm="tunefleet"'}
    return error_response(status, str(exc), exc.code, headers)


def store_unavailable_response() -> JSONResponse:
    """The 503 for a store that does not answer; the driver's message can carry host names and SQL."""
    return error_response(503, "the study store is unavailable; try again shortly", StoreUnavailable.code)


def internal_error_response() -> JSONResponse:
    """The 500 for a bug: the log has the traceback, the client gets nothing of it."""
    return error_response(500, "internal server error", INTERNAL_ERROR)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TunefleetError)
    return domain_error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's shape ({"detail": [{"loc", "msg", "type", ...}]}) plus the stable code every error has.
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    malformed = bool(errors) and all(e.get("type") == "json_invalid" for e in errors)
    code = "invalid_json" if malformed else "validation_error"
    return ErrorJSONResponse(status_code=422, content={"detail": jsonable_encoder(errors), "code": code})


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own errors: an unknown path (404), a method the path does not have (405, with Allow).
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304) or exc.status_code < 200:
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return error_response(exc.status_code, str(exc.detail), code, headers)


def _allowed_methods(request: Request) -> list[str]:
    # Starlette's Allow names only the first route that matched the path; GET and POST /v1/studies are
    # two routes, and RFC 9110 wants every method the resource has: ask the router about each.
    routes = request.app.router.routes
    return [
        method
        for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    outage: StoreOutageLog | None = getattr(request.app.state, "store_outage", None)
    if outage is not None and outage.down:
        # Said once when the outage began (service/outage.py); a readiness probe must not repeat it.
        log.debug("store unavailable during %s %s: %s", request.method, request.url.path, type(exc).__name__)
    else:
        # A failure on a live connection (a lock timeout, a table gone): rare, so each one is told.
        log.warning(
            "store unavailable during %s %s: %s", request.method, request.url.path, type(exc).__name__
        )
    return store_unavailable_response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error during %s %s", request.method, request.url.path)
    return internal_error_response()


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; route code raises domain errors and never builds error bodies."""
    app.add_exception_handler(TunefleetError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _store_error)
    app.add_exception_handler(sqlalchemy.exc.InterfaceError, _store_error)
    app.add_exception_handler(optuna.exceptions.StorageInternalError, _store_error)
    app.add_exception_handler(Exception, _unexpected)
