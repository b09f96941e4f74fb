"""Engine options for the store (pooled with pre-ping, or no pool for very large fleets) and its schema check."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_pool_size_zero_keeps_no_idle_connections() -> None:
    from sqlalchemy.pool import NullPool

    from studies.storage import engine_kwargs

    options = engine_kwargs("postgresql+psycopg://u@h/db", pool_size=0)
    assert options["poolclass"] is NullPool
    assert "pool_size" not in options
    assert engine_kwargs("postgresql+psycopg://u@h/db", pool_size=2)["pool_pre_ping"] is True


def test_a_store_from_another_optuna_schema_is_refused_with_the_upgrade_command(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from studies.storage import open_storage

    url = f"sqlite:///{tmp_path / 'store.db'}"
    storage = open_storage(url)
    older = storage.get_all_versions()[1]
    storage.engine.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": older})
    engine.dispose()
    with pytest.raises(RuntimeError, match="optuna storage upgrade"):
        open_storage(url)


SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://tunefleet:{SECRET}@db:5432/tunefleet",
            "postgresql://tunefleet:***@db:5432/tunefleet",
        ),
        (f"postgresql://u:{SECRET}@x@db/tunefleet", "postgresql://u:***@db/tunefleet"),
        (
            f"postgresql://db/tunefleet?user=u&password={SECRET}",
            "postgresql://db/tunefleet?password=***&user=u",
        ),
        (
            f"postgresql://db/tunefleet?sslpassword={SECRET}&sslmode=require",
            "postgresql://db/tunefleet?sslmode=require&sslpassword=***",
        ),
        (f"postgresql://u:{SECRET}@db:notaport/tunefleet", "postgresql://u:***@db:notaport/tunefleet"),
        (f"host=db password={SECRET} dbname=tunefleet", "host=db password=*** dbname=tunefleet"),
        (f"host=db password='se cret {SECRET}' dbname=x", "host=db password=*** dbname=x"),
        (f"host=db password = 'it\\'s {SECRET}' dbname=x", "host=db password = *** dbname=x"),
        (f'host=db PASSWORD="{SECRET} two" user=u', "host=db PASSWORD=*** user=u"),
        ("sqlite:///tunefleet.db", "sqlite:///tunefleet.db"),
        ("nonsense", "nonsense"),
    ],
)
def test_mask_url_hides_every_form_of_password(url: str, shown: str) -> None:
    from studies.storage import mask_url

    assert mask_url(url) == shown


@pytest.mark.parametrize(
    ("url", "password"),
    [
        (f"postgresql://u:{SECRET}@db/x", SECRET),
        ("postgresql://u:p%40ss-w0rd@db/x", "p@ss-w0rd"),
        (f"postgresql://db/x?user=u&password={SECRET}", SECRET),
        (f"postgresql://db/x?sslpassword={SECRET}", SECRET),
        (f"host=db password={SECRET} dbname=x", SECRET),
        (f"host=db password='se cret {SECRET}' dbname=x", f"se cret {SECRET}"),
    ],
)
def test_redact_password_hides_the_urls_password_wherever_a_message_quotes_it(
    url: str, password: str
) -> None:
    from studies.storage import redact_password

    said = (
        f"Could not parse SQLAlchemy URL from string '{url}'; connection failed: password={password} "
        f"host=db; the password was {password}."
    )
    redacted = redact_password(said, url)
    assert password not in redacted
    assert SECRET not in redacted and "p%40ss" not in redacted
    assert "host=db" in redacted  # what is not a secret stays readable


def test_redact_password_leaves_a_message_without_secrets_alone() -> None:
    from studies.storage import redact_password

    said = 'FATAL: password authentication failed for user "tunefleet"'
    assert redact_password(said, "postgresql://tunefleet:pw@db/x") == said
    assert redact_password("nothing secret", "sqlite:///tunefleet.db") == "nothing secret"


def test_a_sqlite_store_is_described_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from studies.storage import describe_store, sqlite_file

    monkeypatch.chdir(tmp_path)
    assert sqlite_file("sqlite:///tunefleet.db") == tmp_path / "tunefleet.db"
    assert describe_store("sqlite:///tunefleet.db") == f"sqlite:///{tmp_path / 'tunefleet.db'}"
    assert describe_store("sqlite:///sub/../x.db?timeout=5") == f"sqlite:///{tmp_path / 'x.db'}?timeout=5"
    assert sqlite_file("sqlite://") is None and sqlite_file("sqlite:///:memory:") is None
    assert describe_store(f"postgresql://u:{SECRET}@db/x") == "postgresql://u:***@db/x"


def test_a_worker_may_not_start_a_sqlite_store_it_was_not_told_to_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from studies.startup import StartupError, check_store

    monkeypatch.chdir(tmp_path)
    with pytest.raises(StartupError) as refused:
        check_store("sqlite:///tunefleet.db", create=False)
    assert f"there is no file {tmp_path / 'tunefleet.db'}" in str(refused.value)
    assert "--create-store" in str(refused.value)
    check_store("sqlite:///tunefleet.db", create=True)
    check_store("sqlite://", create=False)  # in memory: nothing to find
    assert list(tmp_path.iterdir()) == []  # checking creates nothing


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (f"postgresql://user:{SECRET}@host:notaport/db", "not a database URL (ValueError"),
        ("nonsense", "not a database URL (ArgumentError"),
        ("sqlite//x", "not a database URL (ArgumentError"),
        (f"host=db password='{SECRET}' dbname=x", "not a database URL (ArgumentError"),
        (f"nosuchdb://user:{SECRET}@db/x", "NoSuchModuleError"),
    ],
)
def test_a_store_url_that_cannot_be_read_is_refused_in_one_line_without_its_password(
    url: str, said: str
) -> None:
    from studies.startup import StartupError, check_store

    with pytest.raises(StartupError) as refused:
        check_store(url, create=True)
    line = str(refused.value)
    assert line.startswith("cannot open the store ") and said in line
    assert SECRET not in line and "\n" not in line
