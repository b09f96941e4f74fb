"""tunefleet's tables come from its own alembic migrations, on a fresh store and on one made before them."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from studies import StudyRepository, open_storage
from studies.schema import VERSION_TABLE, current_revision, head_revision, upgrade_store
from studies.storage import normalize_url
from studies.tables import metadata, studies_table, workers_table
from tests.sql_statements import statements

NOW = datetime(2026, 11, 1, 12, 0, 0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store with no table at all: a new SQLite file, or a new database on the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server = sa.engine.make_url(normalize_url(request.getfixturevalue("postgres_url")))
    name = f"tunefleet_schema_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def differences(engine: sa.Engine) -> list[Any]:
    """How tunefleet's tables in the store differ from the tables the code declares."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "version_table": VERSION_TABLE,
                "include_name": lambda name, kind, _: kind != "table" or name.startswith("tunefleet_"),
            },
        )
        return list(compare_metadata(context, metadata))


def make_store_before_migrations(url: str, *, grace_s: bool, leases: bool) -> sa.Engine:
    """Optuna's tables and tunefleet's as create_all made them, with a study and a worker in them."""
    storage = open_storage(url)
    engine = storage.engine
    metadata.create_all(engine)
    with engine.begin() as connection:
        if not grace_s:
            connection.execute(sa.text("ALTER TABLE tunefleet_workers DROP COLUMN grace_s"))
        if not leases:
            connection.execute(sa.text("DROP TABLE tunefleet_leases"))
        connection.execute(
            sa.text(
                "INSERT INTO tunefleet_studies (study_name, optuna_study_id, spec, state, priority, n_trials,"
                " n_claimed, created_at, updated_at) VALUES ('kept', 7, '{\"name\": \"kept\"}', 'stopped',"
                " 0, 10, 4, :now, :now)"
            ),
            {"now": NOW},
        )
        connection.execute(
            sa.text(
                "INSERT INTO tunefleet_workers (worker_id, host, pid, device, state, started_at, heartbeat_at)"
                " VALUES ('node:1:abc', 'node', 1, 'cuda:0', 'idle', :now, :now)"
            ),
            {"now": NOW},
        )
    return engine


def test_a_fresh_store_gets_tunefleets_tables_at_the_newest_revision_in_its_own_version_table(
    empty_store_url: str,
) -> None:
    repository = StudyRepository(open_storage(empty_store_url))
    try:
        with repository.engine.connect() as connection:
            assert current_revision(connection) == head_revision()
            tables = set(sa.inspect(connection).get_table_names())
            optunas = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        assert {VERSION_TABLE, "alembic_version", "tunefleet_studies", "tunefleet_workers"} <= tables
        assert "tunefleet_leases" in tables
        assert optunas == repository.storage.get_head_version()  # Optuna's own, untouched
        assert differences(repository.engine) == []
    finally:
        repository.engine.dispose()


@pytest.mark.parametrize(
    ("grace_s", "leases"),
    [(False, False), (False, True), (True, False), (True, True)],
    ids=["before-grace-and-leases", "before-grace", "with-grace-before-leases", "with-grace"],
)
def test_a_store_made_before_migrations_is_stamped_upgraded_and_keeps_its_rows(
    empty_store_url: str, grace_s: bool, leases: bool
) -> None:
    engine = make_store_before_migrations(empty_store_url, grace_s=grace_s, leases=leases)
    try:
        with engine.connect() as connection:
            assert current_revision(connection) is None
        upgrade_store(engine)
        with engine.connect() as connection:
            assert current_revision(connection) == head_revision()
            study = connection.execute(sa.select(studies_table)).one()
            worker = connection.execute(sa.select(workers_table)).one()
        assert (study.study_name, study.n_claimed, study.spec, study.created_at) == (
            "kept",
            4,
            {"name": "kept"},
            NOW,
        )
        assert (worker.worker_id, worker.device, worker.grace_s) == ("node:1:abc", "cuda:0", None)
        assert differences(engine) == []
    finally:
        engine.dispose()


def test_upgrading_an_upgraded_store_sends_no_ddl_and_leaves_it_at_the_newest_revision(
    empty_store_url: str,
) -> None:
    engine = open_storage(empty_store_url).engine
    try:
        upgrade_store(engine)
        with statements(engine) as sent:
            upgrade_store(engine)
        assert not [s for s in sent if s.lstrip().upper().startswith(("CREATE", "ALTER", "DROP", "INSERT"))]
        with engine.connect() as connection:
            assert current_revision(connection) == head_revision()
            assert connection.execute(sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 1
    finally:
        engine.dispose()


def test_processes_starting_together_on_a_fresh_store_upgrade_it_once(empty_store_url: str) -> None:
    # Each thread has its own engine, as each worker process has: only the lock keeps them apart.
    open_storage(empty_store_url).engine.dispose()  # Optuna's tables, made once beforehand
    engines = [open_storage(empty_store_url).engine for _ in range(4)]
    start = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def upgrade(engine: sa.Engine) -> None:
        start.wait()
        try:
            upgrade_store(engine)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=upgrade, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert errors == []
        with engines[0].connect() as connection:
            assert current_revision(connection) == head_revision()
        assert differences(engines[0]) == []
    finally:
        for engine in engines:
            engine.dispose()
