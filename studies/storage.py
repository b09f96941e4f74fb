"""Opens the shared SQL store: Optuna's RDBStorage on SQLite (WAL) or PostgreSQL, a small bounded pool, a locked delete."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote, unquote_plus

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from studies._optuna import trial_rows
from studies._optuna.trial_reads import BulkReadRDBStorage

DEFAULT_DATABASE_URL = "sqlite:///tunefleet.db"
SQLITE_BUSY_TIMEOUT_S = 30.0
MIN_LITERAL_SECRET = 4


def normalize_url(url: str) -> str:
    """Use psycopg 3 for a bare postgresql:// URL, as our dependencies install it and not psycopg2."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


# A key whose value is a secret, in a URL's query (`?password=...`, `&sslpassword=...`) or a libpq keyword
# connection string (`host=db password=...`): any key that names a password, a passphrase, a secret or a token.
_SECRET_KEY = r"[\w.-]*?(?:password|passwd|passphrase|pwd|secret|token)[\w.-]*"
# `//user:password@`: greedy up to the last @ before the host, so a password with an unescaped @ hides whole.
_USERINFO = re.compile(r"(?P<head>//[^:/@\s]*:)(?P<value>[^\s/]*)@")
_QUERY_SECRET = re.compile(rf"(?P<head>[?&;]{_SECRET_KEY}=)(?P<value>[^&;#\s]*)", re.IGNORECASE)
# Keyword form: after a space, a quote or the start (never ?, & or ;, which the query form covers);
# the value single- or double-quoted (with backslash escapes, as libpq reads them) or up to a space.
_KEYWORD_SECRET = re.compile(
    rf"(?P<head>(?<![\w.?&;-]){_SECRET_KEY}\s*=\s*)"
    r"(?P<value>'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"|[^\s'\"]+)",
    re.IGNORECASE,
)


def _hide(match: re.Match[str]) -> str:
    tail = "@" if match.re is _USERINFO else ""
    return f"{match.group('head')}***{tail}"


def mask_secrets(text: str) -> str:
    """`text` with each password of a URL or connection string in it as ***: `//u:***@`, `?password=***`, `password=***`."""
    for pattern in (_USERINFO, _QUERY_SECRET, _KEYWORD_SECRET):
        text = pattern.sub(_hide, text)
    return text


def mask_url(url: str) -> str:
    """The URL (or libpq connection string) with every password in it replaced by ***, safe to log or show."""
    try:
        masked = make_url(url).render_as_string(hide_password=True)
    except Exception:
        # Not a URL SQLAlchemy reads (a keyword connection string, a typo): mask what looks like a secret.
        masked = url
    # SQLAlchemy hides the userinfo password only up to its first @, and nothing in the query string.
    return mask_secrets(_hide_literals(masked, url))


def _hide_literals(text: str, url: str) -> str:
    # Longest first, so a secret that holds a shorter one is hidden whole. A secret of a character or
    # three is left to the patterns: replaced wherever it occurs, it would garble every word holding it.
    for secret in sorted(_secrets_in(url), key=len, reverse=True):
        if len(secret) >= MIN_LITERAL_SECRET:
            text = text.replace(secret, "***").replace(quote_plus(secret), "***")
    return text


def _secrets_in(url: str) -> set[str]:
    """Every secret value the URL or connection string holds, as written and as decoded."""
    found: set[str] = set()
    for pattern in (_USERINFO, _QUERY_SECRET, _KEYWORD_SECRET):
        for match in pattern.finditer(url):
            value = match.group("value")
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                found.add(value)
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            found.update({value, unquote(value), unquote_plus(value)})
    try:
        parsed = make_url(url)
    except Exception:
        parsed = None
    if parsed is not None:
        found.add(str(parsed.password or ""))
        for key, value in parsed.query.items():
            if re.fullmatch(_SECRET_KEY, key, re.IGNORECASE):
                found.update([value] if isinstance(value, str) else value)
    found.discard("")
    return found


def sqlite_file(url: str) -> Path | None:
    """The absolute path of a SQLite store's file; None for another backend, an in-memory store or no URL."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # a SQLite URI (?uri=true): its own syntax, not a plain path
        return None
    return Path(os.path.abspath(database))


def describe_store(url: str) -> str:
    """The store as logs and errors name it: its URL with passwords masked, a SQLite file's path absolute."""
    path = sqlite_file(url)
    if path is not None:
        # A relative path is the process's working folder's: say which file that is.
        url = make_url(url).set(database=str(path)).render_as_string(hide_password=False)
    return mask_url(url)


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


class SharedStore(BulkReadRDBStorage):
    """The store as tunefleet opens it: BulkReadRDBStorage whose delete_study deletes under running trials."""

    def delete_study(self, study_id: int) -> None:
        """Delete the study and everything under it; KeyError if there is none.

        Optuna's delete_study reads a study's rows through the ORM, deletes them and, on an integrity error, rolls
        back and returns as if done. On PostgreSQL a worker's write that lands between that read and the trial's
        delete (an epoch's value, a heartbeat) is one, and the whole study stays: `optuna delete-study` exited 0
        and deleted nothing in 3 of 8 runs under a trial reporting every half second, and optuna-dashboard's delete
        makes the same call. Here the study's and its trials' rows are locked first, in the session Optuna's delete
        then runs in (the thread's scoped session), so such a write waits for the delete and then finds its trial
        gone.
        """
        session = self.scoped_session()
        try:
            trial_rows.lock_study(session.connection(), study_id)
        except BaseException:
            session.rollback()
            session.close()
            raise
        super().delete_study(study_id)  # commits and closes the session, releasing the locks
        try:
            self.get_study_name_from_id(study_id)
        except KeyError:
            return
        raise optuna.exceptions.StorageInternalError(
            f"study {study_id} is still in the store after its delete"
        )


def open_storage(url: str, *, pool_size: int = 2) -> optuna.storages.RDBStorage:
    """Open (and create if needed) the shared store at `url`."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        _prepare_sqlite(url)
    # Optuna's schema check reads the alembic revision on a second connection while its session
    # holds a transaction open: behind PgBouncer in transaction mode, N workers starting at once can
    # hold all N server sessions, each waiting for another. The same check, one connection at a time.
    storage = SharedStore(
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
    """`text` with the URL's passwords, should they appear (a driver may quote its connection string), as ***."""
    if url:
        text = text.replace(url, mask_url(url))
    # The secrets as written first: a pattern that hid part of one would leave the rest unmatched.
    return mask_secrets(_hide_literals(text, url))
