"""Retries store calls through a lost connection or a restarting database, one log line per outage."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy.exc

log = logging.getLogger("tunefleet.store")

T = TypeVar("T")
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


def is_transient(error: BaseException) -> bool:
    """A connection-level failure that a retry may get past (not a constraint or a bug)."""
    # Optuna wraps every SQLAlchemy error in StorageInternalError; look at what it wraps.
    # Optuna wraps SQLAlchemy errors in StorageInternalError, and a session broken by a dropped
    # connection fails later with PendingRollbackError: look through the whole chain.
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(
            seen,
            sqlalchemy.exc.OperationalError
            | sqlalchemy.exc.InterfaceError
            | sqlalchemy.exc.PendingRollbackError,
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# A password as a driver may quote it: `password=...` in a connection string, or `//user:password@` in a URL.
_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)|(//[^:/@\s]+:)[^@\s]*@", re.IGNORECASE)


def store_error_reason(error: BaseException) -> str:
    """What the database driver said, on one line and without a password.

    A wrong host, database name or password fails the same way an outage does, and is retried the same way
    (a database being created or restarted reads alike): the log line must say which it is.
    """
    seen: BaseException | None = error
    text = f"{type(error).__name__}: {error}"
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.orig is not None:
            text = f"{type(seen).__name__}: {seen.orig}"
            break
        seen = seen.__cause__ or seen.__context__
    text = " ".join(text.split())
    text = _PASSWORD.sub(lambda m: f"{m.group(1)}***" if m.group(1) else f"{m.group(3)}***@", text)
    return text[:400]


class GaveUp(Exception):
    """The store stayed unreachable for longer than the caller would wait, or the caller was stopped."""


def with_retry(
    call: Callable[[], T],
    *,
    what: str,
    max_wait_s: float = 600.0,
    stop: threading.Event | None = None,
    reset: Callable[[], None] | None = None,
) -> T:
    """Run call(), retrying with backoff while the store is unreachable; GaveUp after max_wait_s."""
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            result = call()
        except Exception as error:
            if not is_transient(error):
                raise
            waited = time.monotonic() - started
            if waited > max_wait_s or (stop is not None and stop.is_set()):
                raise GaveUp(f"{what}: store unreachable for {waited:.0f}s") from error
            if reset is not None:
                reset()
            if attempt == 0:
                log.warning(
                    "store unavailable during %s (%s); retrying with backoff", what, store_error_reason(error)
                )
            pause_s = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            if stop is not None:
                stop.wait(pause_s)
            else:
                time.sleep(pause_s)
            attempt += 1
            continue
        if attempt:
            log.info("store reachable again: %s succeeded after %d retries", what, attempt)
        return result
