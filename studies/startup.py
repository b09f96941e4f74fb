"""What the tunefleet and worker commands share at start-up: argparse types, and bad settings or stores as one line."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, TypeVar

from studies.storage import mask_url, redact_password

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_settings import BaseSettings

_Settings = TypeVar("_Settings", bound="BaseSettings")
# A token or a database URL (its password) is never echoed back.
SECRET_FIELDS = frozenset({"api_token", "database_url"})


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


def store_problem(error: Exception, database_url: str) -> StartupError:
    """A store that cannot be opened, as one line without the URL's password."""
    # A driver's message may quote its connection string, password and all.
    message = redact_password(f"{type(error).__name__}: {error}", database_url)
    return StartupError(f"cannot open the store {mask_url(database_url)}: {message}".replace("\n", " "))
