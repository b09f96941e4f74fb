"""What a worker's operator allows: pickled models and the entry points kind python may run."""

from __future__ import annotations

import pytest

from studies.startup import build_settings
from worker.command import build_parser
from worker.settings import WorkerSettings


def test_nothing_is_allowed_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNEFLEET_ALLOWED_ENTRYPOINTS", raising=False)
    monkeypatch.delenv("TUNEFLEET_TRUST_PICKLED_MODELS", raising=False)
    settings = WorkerSettings()
    assert settings.allowed_entrypoints == ()
    assert settings.trust_pickled_models is False


def test_the_environment_names_entry_points_comma_separated_and_trusts_pickles_when_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TUNEFLEET_ALLOWED_ENTRYPOINTS", "mypkg, other.train:run,")
    monkeypatch.setenv("TUNEFLEET_TRUST_PICKLED_MODELS", "1")
    settings = WorkerSettings()
    assert settings.allowed_entrypoints == ("mypkg", "other.train:run")
    assert settings.trust_pickled_models is True


def test_allow_entrypoint_flags_replace_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFLEET_ALLOWED_ENTRYPOINTS", "fromenv")
    args = build_parser().parse_args(["--allow-entrypoint", "mypkg", "--allow-entrypoint", "b.c:d"])
    flags = {"allowed_entrypoints": ("--allow-entrypoint", tuple(args.allow_entrypoint))}
    assert build_settings(WorkerSettings, flags).allowed_entrypoints == ("mypkg", "b.c:d")


def test_a_worker_creates_no_store_unless_told_by_flag_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TUNEFLEET_CREATE_STORE", raising=False)
    assert WorkerSettings().create_store is False
    args = build_parser().parse_args(["--create-store"])
    assert build_settings(
        WorkerSettings, {"create_store": ("--create-store", args.create_store)}
    ).create_store
    monkeypatch.setenv("TUNEFLEET_CREATE_STORE", "1")
    assert WorkerSettings().create_store is True
