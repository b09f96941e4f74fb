"""Store outages in the service's log: one warning when the store stops answering, one line when it is back."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import ExceptionContext

from studies.resilience import store_error_reason
from studies.storage import redact_password

log = logging.getLogger("tunefleet.service")


class StoreOutageLog:
    """Whether one engine's store answers, told to the log once per change instead of once per request.

    A readiness probe or a dashboard polling the store during an outage meets the same failure several
    times a second; the log says when the outage started and, once a connection succeeds again, how long
    it lasted.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._failed_connections = 0

    @property
    def down(self) -> bool:
        """The last thing seen of the store was a failed connection."""
        return self._down_since is not None

    def unreachable(self, error: BaseException) -> None:
        """A connection to the store failed: log it if the store was up until now."""
        with self._lock:
            self._failed_connections += 1
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self._failed_connections = 1
        reason = redact_password(store_error_reason(error), self._url)
        log.warning("store unavailable (%s); answering 503 store_unavailable until it is back", reason)

    def reachable(self) -> None:
        """A connection to the store works: log the end of the outage if there was one."""
        if self._down_since is None:  # the usual case, on every checkout: no lock taken
            return
        with self._lock:
            if self._down_since is None:
                return
            lasted_s = time.monotonic() - self._down_since
            failed, self._down_since = self._failed_connections, None
        log.info(
            "store reachable again after %.1f s unavailable (%d failed connection attempts)", lasted_s, failed
        )

    def _on_error(self, context: ExceptionContext) -> None:
        # A stale pooled connection failing its pre-ping is replaced at once: that is no outage. A
        # statement failing on a live connection (a constraint, a lock timeout) is no outage either.
        if context.is_pre_ping:
            return
        if context.connection is None or context.is_disconnect:
            self.unreachable(context.sqlalchemy_exception or context.original_exception)

    def _on_checkout(self, *_: Any) -> None:
        # The pool hands out a connection only once it is new or has passed its pre-ping.
        self.reachable()


_OUTAGE_LOGS: weakref.WeakKeyDictionary[sa.Engine, StoreOutageLog] = weakref.WeakKeyDictionary()
_OUTAGE_LOGS_LOCK = threading.Lock()


def watch_store(engine: sa.Engine) -> StoreOutageLog:
    """The engine's outage log, hooked to its connection events on first use; one per engine."""
    with _OUTAGE_LOGS_LOCK:
        outage = _OUTAGE_LOGS.get(engine)
        if outage is None:
            outage = StoreOutageLog(engine.url.render_as_string(hide_password=False))
            sa.event.listen(engine, "handle_error", outage._on_error)
            sa.event.listen(engine, "checkout", outage._on_checkout)
            _OUTAGE_LOGS[engine] = outage
    return outage
