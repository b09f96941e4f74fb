"""The SQL statements tunefleet sends to a store, recorded for the tests that count or read them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa


@contextmanager
def statements(
    target: sa.Engine | sa.Connection, only: Callable[[], bool] | None = None
) -> Iterator[list[str]]:
    """The statements sent through target (an engine, or one connection) meanwhile; with only, those sent while
    it holds (a thread's own, say)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if only is None or only():
            seen.append(statement)

    sa.event.listen(target, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(target, "before_cursor_execute", record)
