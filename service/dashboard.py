"""optuna-dashboard on the same store, mounted at / (its front end hard-codes /api, /static, /dashboard)."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from itertools import chain
from types import TracebackType
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import bottle
from a2wsgi import WSGIMiddleware
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from optuna.storages import BaseStorage
from optuna_dashboard import wsgi
from starlette.routing import BaseRoute, Match, Mount, Router, get_route_path
from starlette.types import Scope

from service.errors import (
    INVALID_REQUEST,
    error_response,
    internal_error_response,
    store_unavailable_response,
)
from service.outage import StoreOutageLog
from studies.resilience import is_transient

log = logging.getLogger("tunefleet.service")

# Our REST prefix: a path under it never reaches the dashboard, even one no route of ours matches.
API_PREFIX = "/v1"
# Optuna keeps study names in a column of 512 characters.
STUDY_NAME_MAX = 512
# Distinct dashboard failures remembered, so that a client retrying one does not log it again.
REMEMBERED_FAILURES = 256

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class _DashboardMount(Mount):
    """The dashboard's catch-all at /, minus the paths the service owns.

    A plain Mount("/") matches every path, so a wrong method on one of our routes (PUT /v1/studies)
    or an unknown /v1 path would get the dashboard's HTML 404 instead of our JSON 405 or 404.
    """

    def __init__(self, router: Router, app: WSGIMiddleware) -> None:
        super().__init__("/", app=app)  # type: ignore[arg-type]
        self._router = router

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http":
            path = get_route_path(scope)
            if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
                return Match.NONE, {}
            siblings: list[BaseRoute] = list(self._router.routes)
            for route in siblings:
                if route is self:
                    break
                if route.matches(scope)[0] is not Match.NONE:
                    return Match.NONE, {}  # one of ours, with another method: the router answers 405
        return super().matches(scope)


class _Capture:
    """What the dashboard logged as an error while it handled one request, and the exception behind it."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []
        self.error: BaseException | None = None


_capturing = threading.local()


class _CaptureDashboardErrors(logging.Filter):
    """Holds back the dashboard's own error lines while a request is guarded on this thread.

    Its API views catch every exception, log it with a stack and answer {"reason": ...} with a 500; the
    guard answers in the service's shape and logs the failure itself, once, from what is kept here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        capture: _Capture | None = getattr(_capturing, "capture", None)
        if capture is None or record.levelno < logging.ERROR:
            return True
        capture.records.append(record)
        if capture.error is None:
            # The views log inside their `except` block, without exc_info: the exception is still current.
            capture.error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return False


_CAPTURE_FILTER = _CaptureDashboardErrors()


def _hold_back_dashboard_errors() -> None:
    # A logger's filter sees only the records logged on that very logger, so each of the dashboard's.
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.split(".")[0] != "optuna_dashboard" or not isinstance(logger, logging.Logger):
            continue
        if _CAPTURE_FILTER not in logger.filters:
            logger.addFilter(_CAPTURE_FILTER)


class _FailureLog:
    """Logs each distinct dashboard failure once with its traceback; the same one again only at debug."""

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._lock = threading.Lock()

    def failed(
        self, method: str, path: str, error: BaseException | None, records: list[logging.LogRecord]
    ) -> None:
        what = f"{type(error).__name__}: {error}" if error is not None else _first_line(records)
        key = (method, path, what)
        with self._lock:
            again = key in self._seen
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > REMEMBERED_FAILURES:
                self._seen.popitem(last=False)
        if again:
            log.debug("dashboard failed again during %s %s: %s", method, path, what)
            return
        exc_info: ExcInfo | None = (type(error), error, error.__traceback__) if error is not None else None
        if exc_info is None and records:
            # No exception to format: the dashboard's own lines, its stack as it wrote it.
            what = "\n".join(record.getMessage() for record in records)
        log.error("dashboard failed during %s %s: %s", method, path, what, exc_info=exc_info)


def _first_line(records: list[logging.LogRecord]) -> str:
    if not records:
        return "it answered a server error"
    return records[0].getMessage().splitlines()[0]


def _body_problem(environ: WSGIEnvironment, method: str, path: str) -> tuple[str, str] | None:
    """Why the dashboard cannot take this request's body, with the error code; None when it can.

    Every view of the dashboard's API that reads a body reads a JSON object and fails with a 500 on
    anything else (an array, text), so such bodies are answered here; the body is put back to be read.
    """
    if method not in ("POST", "PUT", "PATCH") or not path.startswith("/api/"):
        return None
    body = environ["wsgi.input"].read()
    if not body:
        # Read as no fields at all: a view that takes no body (skip a trial) ignores it, and one that
        # reads fields answers its own 400 for a missing one instead of failing on a body of None.
        body, environ["CONTENT_TYPE"] = b"{}", "application/json"
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)  # the server has already taken the chunks apart
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", "application/json-rpc"):
        return "body: must be a JSON object (Content-Type: application/json)", INVALID_REQUEST
    try:
        data = json.loads(body)
    except (ValueError, TypeError, RecursionError) as error:  # RecursionError: nested too deep
        return f"body: not JSON: {str(error)[:200]}", "invalid_json"
    if not isinstance(data, dict):
        return "body: must be a JSON object", INVALID_REQUEST
    if method == "POST" and path.rstrip("/") == "/api/studies":
        return _new_study_problem(data)
    return None


def _new_study_problem(data: dict[str, Any]) -> tuple[str, str] | None:
    """Why a body for POST /api/studies cannot create a study; None when it can."""
    # The dashboard reads `directions` as a list of strings and failed with a 500 on anything else (a
    # nested list, a number), and a study name as text.
    name = data.get("study_name")
    if not isinstance(name, str) or not name:
        return f"study_name: must be a non-empty string, got {_shown(name)}", INVALID_REQUEST
    if len(name) > STUDY_NAME_MAX or "\x00" in name or not _is_utf8(name):
        return f"study_name: must be text of at most {STUDY_NAME_MAX} characters, no NUL", INVALID_REQUEST
    directions = data.get("directions")
    if not isinstance(directions, list) or not directions:
        return f"directions: must be a non-empty list, got {_shown(directions)}", INVALID_REQUEST
    for index, direction in enumerate(directions):
        if not isinstance(direction, str) or direction.lower() not in ("minimize", "maximize"):
            problem = f"directions[{index}]: must be 'minimize' or 'maximize', got {_shown(direction)}"
            return problem, INVALID_REQUEST
    return None


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a \ud800 escape
        return False
    return True


def _answer(start_response: StartResponse, response: JSONResponse) -> list[bytes]:
    status = f"{response.status_code} {HTTPStatus(response.status_code).phrase}"
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.raw_headers]
    start_response(status, headers)
    return [bytes(response.body)]


class _Chunks:
    """Chunks to send before or instead of the app's own, keeping the app's close() (it closes files)."""

    def __init__(self, chunks: Iterable[bytes], body: Iterable[bytes]) -> None:
        self._chunks = chunks
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def close(self) -> None:
        """Close the app's own body, as a WSGI server closes what the app returned."""
        getattr(self._body, "close", lambda: None)()


class _GuardedDashboard:
    """The dashboard's WSGI app, made to answer every failure in the service's JSON error shape."""

    def __init__(self, app: WSGIApplication, outage: StoreOutageLog) -> None:
        self._app = app
        self._outage = outage
        self._failures = _FailureLog()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # The dashboard reads Accept-Encoding with no default: a client that sends none (curl, a probe)
        # got a 500 for every static file. Absent, it means any encoding; identity is the one we choose.
        environ.setdefault("HTTP_ACCEPT_ENCODING", "identity")
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        problem = _body_problem(environ, method, path)
        if problem is not None:
            return _answer(start_response, error_response(400, *problem))

        started: list[Any] = []
        written: list[bytes] = []

        def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers, exc_info]
            return written.append

        capture = _Capture()
        _capturing.capture = capture
        try:
            body = self._app(environ, hold)
            if not started:  # an app may start its response with its first chunk
                chunks = iter(body)
                written.append(next(chunks, b""))
                body = _Chunks(chunks, body)
        except Exception as error:
            return self._failed(start_response, method, path, error, capture.records)
        finally:
            _capturing.capture = None
        status = int(str(started[0]).split(" ", 1)[0]) if started else 500
        if status >= 500:
            getattr(body, "close", lambda: None)()
            return self._failed(start_response, method, path, capture.error, capture.records)
        for record in capture.records:  # an error line the dashboard logged but answered well: let it out
            logging.getLogger(record.name).handle(record)
        start_response(*started)
        return _Chunks(chain(written, body), body) if written else body

    def _failed(
        self,
        start_response: StartResponse,
        method: str,
        path: str,
        error: BaseException | None,
        records: list[logging.LogRecord],
    ) -> list[bytes]:
        if error is not None and is_transient(error):
            if not self._outage.down:  # else the outage's own line has said it
                self._failures.failed(method, path, error, records)
            return _answer(start_response, store_unavailable_response())
        self._failures.failed(method, path, error, records)
        return _answer(start_response, internal_error_response())


def mount_dashboard(app: FastAPI, storage: BaseStorage, outage: StoreOutageLog) -> None:
    """Mount the dashboard last, so every /v1 and health route wins over its catch-all."""
    dashboard = wsgi(storage)
    if isinstance(dashboard, bottle.Bottle):
        # Let a page's exception reach the guard, not bottle's HTML error page with a line on stdout.
        dashboard.config["catchall"] = False
    _hold_back_dashboard_errors()
    guarded = _GuardedDashboard(dashboard, outage)
    app.router.routes.append(_DashboardMount(app.router, WSGIMiddleware(guarded)))  # type: ignore[arg-type]
