"""Opens the shared SQL store: Optuna's RDBStorage on SQLite (WAL) or PostgreSQL, with a small bounded pool."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from studies._optuna.trial_reads import BulkReadRDBStorage

DEFAULT_DATABASE_URL = "sqlite:///tunefleet.db"
SQLITE_BUSY_TIMEOUT_S = 30.0


def normalize_url(url: str) -> str:
    """Use psycopg 3 for a bare postgresql:// URL, as our dependencies install it and not psycopg2."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to log or show."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _prepare_sqlite(url: str) -> None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    # WAL lets the service read while workers write; the mode is stored in the file, so set it once here.
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def engine_kwargs(url: str, *, pool_size: int, application_name: str = "tunefleet") -> dict[str, Any]:
    """SQLAlchemy engine options for the store: pre-ping and a small pool on servers, a busy timeout on SQLite."""
    if make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    # Named, so an operator (and our outage test) can find tunefleet's sessions in pg_stat_activity;
    # an application_name in the URL wins.
    named = "application_name" in make_url(url).query
    connect_args: dict[str, Any] = {} if named else {"application_name": application_name}
    # No server-side prepared statements: behind PgBouncer in transaction mode (how fleets larger than
    # max_connections reach PostgreSQL) a statement prepared on one server connection is missing on
    # the next. psycopg would prepare a query after its fifth run; our queries are cheap to plan.
    if make_url(url).get_driver_name() == "psycopg":
        connect_args["prepare_threshold"] = None
    if pool_size == 0:
        # Fleets larger than max_connections: hold no idle connection between transactions (put
        # PgBouncer in front for the connect cost); a fresh connection needs no pre-ping.
        return {"connect_args": connect_args, "poolclass": NullPool}
    return {
        "connect_args": connect_args,
        "pool_pre_ping": True,
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_recycle": 1800,
    }


def open_storage(url: str, *, pool_size: int = 2) -> optuna.storages.RDBStorage:
    """Open (and create if needed) the shared store at `url`."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        _prepare_sqlite(url)
    # Optuna's schema check reads the alembic revision on a second connection while its session
    # holds a transaction open: behind PgBouncer in transaction mode, N workers starting at once can
    # hold all N server sessions, each waiting for another. The same check, one connection at a time.
    storage = BulkReadRDBStorage(
        url, engine_kwargs=engine_kwargs(url, pool_size=pool_size), skip_compatibility_check=True
    )
    check_schema(storage)
    return storage


def check_schema(storage: optuna.storages.RDBStorage) -> None:
    """Raise RuntimeError, as Optuna would, if the store's tables are from another Optuna schema."""
    current, head = storage.get_current_version(), storage.get_head_version()
    if current == head:
        return
    found = f"the store's Optuna schema is at revision {current}; optuna {optuna.__version__} needs {head}"
    if current in storage.get_all_versions():
        raise RuntimeError(f"{found}: run `optuna storage upgrade --storage URL` to upgrade the store")
    raise RuntimeError(f"{found}, from a newer optuna: upgrade optuna (`pip install -U optuna`)")


def redact_password(text: str, url: str) -> str:
    """`text` with the URL's password, should it appear (a driver may quote its connection string), as ***."""
    try:
        password = make_url(url).password
    except Exception:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return text.replace(url, mask_url(url))
