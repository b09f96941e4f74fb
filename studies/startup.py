"""What the tunefleet and worker commands share at start-up: argparse types, and bad settings or stores as one line."""

from __future__ import annotations

import argparse
import re
import socket
from typing import TYPE_CHECKING, Any, TypeVar

from studies.storage import describe_store, engine_kwargs, normalize_url, redact_password, sqlite_file

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_settings import BaseSettings
    from sqlalchemy.engine import URL

_Settings = TypeVar("_Settings", bound="BaseSettings")
# A token or a database URL (its password) is never echoed back.
SECRET_FIELDS = frozenset({"api_token", "database_url"})
CREATE_STORE_FLAG = "--create-store"
# How long the start-up check waits for the database to answer before leaving it to the outage retries.
CONNECT_TIMEOUT_S = 10
# A login the database turned away, as libpq words it (its own messages are English; a server's may be
# translated, and such a refusal is then retried as an outage is).
_REFUSED_LOGIN = re.compile(
    r"authentication failed|role \"[^\"]*\" does not exist|no pg_hba\.conf entry|pg_hba\.conf rejects"
    r"|no password supplied|is not permitted to log in|access denied for user",
    re.IGNORECASE,
)
# The resolver's answer that the name does not exist; any other failure (EAI_AGAIN: the resolver itself
# was not reached) may pass, and is retried as an outage is.
_NO_SUCH_HOST = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)


class StartupError(Exception):
    """A command that cannot start as asked: printed as one line, exit code 2."""


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def settings_problem(error: ValidationError, flags: dict[str, str]) -> str:
    """A settings error as one line naming what the user set: the flag if one was given, else the variable."""
    parts = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        name = flags.get(field, f"TUNEFLEET_{field.upper()}")
        shown = "" if field in SECRET_FIELDS else f" (got {item['input']!r})"
        parts.append(f"{name}: {item['msg']}{shown}")
    return "; ".join(parts)


def build_settings(cls: type[_Settings], flags: dict[str, tuple[str, Any]]) -> _Settings:
    """Settings from TUNEFLEET_* variables and the flags given ({field: (flag, value or None)})."""
    from pydantic import ValidationError

    overrides = {field: value for field, (_, value) in flags.items() if value is not None}
    try:
        return cls(**overrides)
    except ValidationError as error:
        named = {field: flag for field, (flag, value) in flags.items() if value is not None}
        raise StartupError(settings_problem(error, named)) from None


def _driver_said(error: BaseException) -> str:
    """What the database driver said (not SQLAlchemy's wrapping of it), or the error itself."""
    import sqlalchemy.exc

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.orig is not None:
            return f"{type(seen.orig).__name__}: {seen.orig}"
        seen = seen.__cause__ or seen.__context__
    return f"{type(error).__name__}: {error}"


def store_problem(error: BaseException, database_url: str, why: str = "") -> StartupError:
    """A store that cannot be opened, as one line without the URL's password (`why` before the driver's words)."""
    # A driver's message may quote its connection string, password and all.
    message = redact_password(_driver_said(error), database_url)
    said = f"{why} ({message})" if why else message
    return StartupError(" ".join(f"cannot open the store {describe_store(database_url)}: {said}".split()))


def check_store(database_url: str, *, create: bool) -> None:
    """Refuse, as a StartupError, a store that cannot be the one meant; an unreachable database passes.

    Refused: a URL that does not parse or names no driver installed here; a SQLite file that does not exist
    (unless create: a worker joins a store, the service makes it); a host that does not resolve; a login
    the database turns away. A database that does not answer may be starting: opening it retries that.
    """
    from sqlalchemy.engine import make_url

    try:
        url = make_url(normalize_url(database_url))
    except Exception as error:
        problem = store_problem(error, database_url, "not a database URL")
        example = "sqlite:////srv/tunefleet.db or postgresql://USER@HOST:5432/DB"
        raise StartupError(f"{problem}; a store URL reads like {example}") from None
    try:
        url.get_dialect()
    except Exception as error:
        raise store_problem(error, database_url) from None
    if url.get_backend_name() == "sqlite":
        path = sqlite_file(database_url)
        if path is not None and not create and not path.exists():
            raise StartupError(
                f"cannot open the store {describe_store(database_url)}: there is no file {path}, and a worker "
                f"joins a store rather than making one: start `tunefleet serve` on this URL first (the service "
                f"creates it), correct TUNEFLEET_DATABASE_URL, or pass {CREATE_STORE_FLAG} "
                "(TUNEFLEET_CREATE_STORE=1) to create it"
            )
        return
    _check_server(url, database_url)


def _check_server(url: URL, database_url: str) -> None:
    from sqlalchemy import create_engine

    from studies.resilience import is_transient

    rendered = url.render_as_string(hide_password=False)
    options = engine_kwargs(rendered, pool_size=0)
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        options["connect_args"]["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        engine = create_engine(rendered, **options)
    except Exception as error:
        raise store_problem(error, database_url) from None
    try:
        with engine.connect():
            pass
    except Exception as error:
        if not is_transient(error):
            raise store_problem(error, database_url) from None
        if _REFUSED_LOGIN.search(_driver_said(error)):
            raise store_problem(error, database_url, "the database refused the login") from None
        unresolved = _unresolvable(url)
        if unresolved is not None:
            raise StartupError(
                f"cannot open the store {describe_store(database_url)}: its host {url.host!r} does not "
                f"resolve ({unresolved})"
            ) from None
    finally:
        engine.dispose()


def _unresolvable(url: URL) -> str | None:
    """Why the URL's host has no address, or None if it has one (or may have: the resolver did not answer)."""
    host = url.host
    # Several hosts, or a Unix socket's folder: the driver's own affair.
    if not host or "," in host or host.startswith("/"):
        return None
    try:
        socket.getaddrinfo(host, url.port)
    except socket.gaierror as error:
        if error.errno in _NO_SUCH_HOST:
            return error.strerror or str(error)
    except (OSError, UnicodeError):
        return None
    return None
