"""Brings tunefleet's own tables in the shared store to the newest revision with alembic, under its own version table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.pool import NullPool

from studies.storage import SQLITE_BUSY_TIMEOUT_S

# Optuna versions its own tables in alembic_version in the same database: ours must not share it.
VERSION_TABLE = "tunefleet_alembic_version"
MIGRATIONS = Path(__file__).with_name("migrations")
TABLES = ("tunefleet_studies", "tunefleet_workers", "tunefleet_leases")
# The revisions a store made before migrations can be at: without and with tunefleet_workers.grace_s.
FIRST_REVISION = "0001"
GRACE_REVISION = "0002"
# The PostgreSQL advisory lock an upgrade holds: any fixed 64-bit key, the same in every process.
_LOCK_KEY = int.from_bytes(b"tfschema", "big")


def _config(connection: sa.Connection | None = None) -> Config:
    # Configured here, not by an alembic.ini: the migrations ship inside the package.
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@cache
def head_revision() -> str:
    """The newest revision the installed tunefleet knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, f"no migrations under {MIGRATIONS}"
    return head


def current_revision(connection: sa.Connection) -> str | None:
    """The store's revision of tunefleet's tables; None before any migration ran (fresh, or made before them)."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade_store(engine: sa.Engine) -> None:
    """Create or upgrade tunefleet's tables to the newest revision; safe when many processes start at once.

    A store made before tunefleet migrated its tables (they exist, its version table does not) is
    recognised by its columns, stamped at the revision it is at, then upgraded; its rows stay.
    """
    head = head_revision()
    with engine.connect() as connection:
        if current_revision(connection) == head:
            return  # every start of every worker: one read, no lock
    with _exclusive(engine) as connection:
        # Another process may have upgraded while this one waited for the lock.
        if current_revision(connection) == head:
            return
        config = _config(connection)
        if current_revision(connection) is None and _made_before_migrations(connection):
            # The first revision creates only the tables such a store lacks; grace_s tells the rest.
            command.upgrade(config, FIRST_REVISION)
            if "grace_s" in _columns(connection, "tunefleet_workers"):
                command.stamp(config, GRACE_REVISION)
        command.upgrade(config, "head")


def _made_before_migrations(connection: sa.Connection) -> bool:
    present = set(sa.inspect(connection).get_table_names())
    return any(table in present for table in TABLES)


def _columns(connection: sa.Connection, table: str) -> set[str]:
    return {column["name"] for column in sa.inspect(connection).get_columns(table)}


@contextmanager
def _exclusive(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that no other process's upgrade runs beside, committed at the end."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        # Transactional DDL: the lock, the tables and the version row commit (or roll back) together.
        with engine.begin() as connection:
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_KEY)))
            yield connection
        return
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # BEGIN IMMEDIATE takes SQLite's write lock up front, so a second process waits (busy
        # timeout) instead of both reading "no tables" and racing to create them.
        locked = sa.create_engine(url, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        sa.event.listen(locked, "connect", _no_implicit_transactions)
        sa.event.listen(locked, "begin", _begin_immediate)
        try:
            with locked.begin() as connection:
                yield connection
        finally:
            locked.dispose()
        return
    # A private in-memory database has no other process to race.
    with engine.begin() as connection:
        yield connection


def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite would begin (and end) transactions on its own, around DDL too; the "begin" hook does.
    dbapi_connection.isolation_level = None


def _begin_immediate(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")
