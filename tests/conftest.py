"""Shared fixtures: the store on both backends, unique study names, an app client, a tiny task."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import optuna
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import ServiceSettings, create_app
from studies import StudyRepository, open_storage
from studies.storage import normalize_url

SHARED_POSTGRES_URL = os.environ.get(
    "TUNEFLEET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# As messages show it: a password, if the URL holds one, masked.
_SHOWN_POSTGRES_URL = sa.engine.make_url(SHARED_POSTGRES_URL).render_as_string(hide_password=True)
# `make test` runs the suite in two processes (pytest-xdist). Each has a database of its own on that server,
# named for the process ("test_gw0", ...), made afresh when the process first needs it and dropped when it ends:
# a test that lists every study of its store then sees only its own process's.
_TEST_PROCESS = os.environ.get("PYTEST_XDIST_WORKER")
POSTGRES_URL = (
    SHARED_POSTGRES_URL
    if _TEST_PROCESS is None
    else (
        (url := sa.engine.make_url(SHARED_POSTGRES_URL))
        .set(database=f"{url.database}_{_TEST_PROCESS}")
        .render_as_string(hide_password=False)
    )
)


def required_in_ci(message: str) -> NoReturn:
    """A test without something it needs (a server, a program): it fails in CI (`CI` set), which must have
    everything, and skips elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _postgres_reachable(url: str) -> str | None:
    try:
        engine = sa.create_engine(normalize_url(url))
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


@pytest.fixture(scope="session", autouse=True)
def _no_auth_from_the_environment() -> Iterator[None]:
    """A developer's own TUNEFLEET_API_TOKEN (say, exported for docker compose) must not turn auth on in
    tests that did not ask for it; the auth tests set their tokens explicitly."""
    names = ("TUNEFLEET_API_TOKEN", "TUNEFLEET_API_TOKENS_FILE", "TUNEFLEET_PROTECT_READS")
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session", autouse=True)
def _workers_may_create_their_test_stores() -> Iterator[None]:
    """Tests start workers on a fresh tmp_path store of their own, with no service to make it first; the
    tests of a worker that refuses a missing store (tests/integration/test_store_url.py) unset this."""
    saved = os.environ.get("TUNEFLEET_CREATE_STORE")
    os.environ["TUNEFLEET_CREATE_STORE"] = "1"
    yield
    if saved is None:
        os.environ.pop("TUNEFLEET_CREATE_STORE", None)
    else:
        os.environ["TUNEFLEET_CREATE_STORE"] = saved


@pytest.fixture(scope="session", autouse=True)
def _data_roots_for_the_tests_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Workers read study data and local models only inside TUNEFLEET_DATA_ROOTS: the tests' files lie in the
    checkout and in temporary folders, so those are the roots of every runner and worker process a test starts
    (the data-roots tests set their own)."""
    saved = os.environ.get("TUNEFLEET_DATA_ROOTS")
    roots = (Path(__file__).resolve().parents[1], Path(tempfile.gettempdir()), tmp_path_factory.getbasetemp())
    os.environ["TUNEFLEET_DATA_ROOTS"] = ",".join(dict.fromkeys(str(root) for root in roots))
    yield
    if saved is None:
        os.environ.pop("TUNEFLEET_DATA_ROOTS", None)
    else:
        os.environ["TUNEFLEET_DATA_ROOTS"] = saved


def _in_the_test_processes_database(statement: str) -> None:
    """Run CREATE or DROP DATABASE for this test process's own database, on the shared one's server."""
    admin = sa.create_engine(normalize_url(SHARED_POSTGRES_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(statement.format(sa.engine.make_url(POSTGRES_URL).database)))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL; CI must have it, a laptop without it skips these tests."""
    problem = _postgres_reachable(SHARED_POSTGRES_URL)
    if problem is not None:
        required_in_ci(f"PostgreSQL at {_SHOWN_POSTGRES_URL} unreachable: {problem}")
    if _TEST_PROCESS is not None:
        try:
            # A run stopped with Ctrl-C leaves its databases behind: start from an empty one.
            _in_the_test_processes_database('DROP DATABASE IF EXISTS "{}" WITH (FORCE)')
            _in_the_test_processes_database('CREATE DATABASE "{}"')
            # With the store's tables, as the shared database has them after its first run: a test that opens the
            # store (through a one-session PgBouncer, say) must not be the first to create it.
            StudyRepository(open_storage(POSTGRES_URL)).engine.dispose()
        except sa.exc.DBAPIError as error:
            pytest.fail(
                f"cannot make this test process's database on {_SHOWN_POSTGRES_URL}: {error.orig}; let its role"
                " create databases, or run the tests in one process (make test TEST_PROCESSES=0)"
            )
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same contract on both backends: a fresh SQLite file, or the shared test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def repository(store_url: str) -> Iterator[StudyRepository]:
    """A repository on a fresh (SQLite) or shared (PostgreSQL) store."""
    repo = StudyRepository(open_storage(store_url))
    yield repo
    repo.engine.dispose()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the test: a tiny model trains faster on one thread than on two busy ones."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


_NAMES_TO_DELETE: list[str] = []


@pytest.fixture
def study_name() -> str:
    """A name no other test uses, so tests can share the PostgreSQL database; its studies (this name and
    any that start with it) are deleted from that database when the run ends."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    _NAMES_TO_DELETE.append(name)
    return name


@pytest.fixture(autouse=True)
def _sigterm_as_the_test_found_it() -> Iterator[None]:
    """A benchmark's main, called in process by a smoke test, turns SIGTERM into SystemExit for its clean-up; left
    in place, a SIGTERM meant to stop the whole run failed one test and let the run go on."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture(scope="session", autouse=True)
def _delete_the_studies_tests_made() -> Iterator[None]:
    """The shared PostgreSQL database outlives every run: leave it as the run found it (a test process's own
    database goes whole). At the end of the run, not after each test, so no worker process a test started still
    runs against a study deleted under it."""
    yield
    if _TEST_PROCESS is not None:
        # The process's own database, there when a test of this process used PostgreSQL.
        if _postgres_reachable(POSTGRES_URL) is None:
            _in_the_test_processes_database('DROP DATABASE "{}" WITH (FORCE)')
        return
    if not _NAMES_TO_DELETE or _postgres_reachable(POSTGRES_URL) is not None:
        return
    storage = optuna.storages.RDBStorage(
        normalize_url(POSTGRES_URL), engine_kwargs={"poolclass": sa.pool.NullPool}
    )
    try:
        if not sa.inspect(storage.engine).has_table("tunefleet_studies"):
            # Only SQLite tests ran: no test made a tunefleet study on PostgreSQL.
            return
        tables = sa.MetaData()
        tunefleet_studies = sa.Table("tunefleet_studies", tables, autoload_with=storage.engine)
        optuna_studies = sa.Table("studies", tables, autoload_with=storage.engine)
        with storage.engine.begin() as connection:
            names: set[str] = set()
            for start in range(0, len(_NAMES_TO_DELETE), 500):
                prefixes = _NAMES_TO_DELETE[start : start + 500]
                for table in (tunefleet_studies, optuna_studies):
                    matches = sa.or_(*(table.c.study_name.startswith(prefix) for prefix in prefixes))
                    names.update(connection.execute(sa.select(table.c.study_name).where(matches)).scalars())
            connection.execute(tunefleet_studies.delete().where(tunefleet_studies.c.study_name.in_(names)))
        for name in sorted(names):
            with contextlib.suppress(KeyError):
                optuna.delete_study(study_name=name, storage=storage)
    finally:
        storage.engine.dispose()


@pytest.fixture
def client(repository: StudyRepository) -> Iterator[TestClient]:
    """A real app instance on the repository's store."""
    app = create_app(ServiceSettings(database_url="unused://"), repository=repository)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def tiny_spec(name: str, **overrides: Any) -> dict[str, Any]:
    """A study spec on a small seeded subset of BBC News: trials take well under a second on a CPU."""
    spec: dict[str, Any] = {
        "name": name,
        "task": {"max_examples": 100, "max_length": 32},
        "space": {
            "epochs": {"type": "int", "low": 1, "high": 3},
            "width": {"type": "int", "low": 8, "high": 64},
        },
        "sampler": {"name": "tpe", "seed": 7},
        "budget": {"n_trials": 3},
    }
    spec.update(overrides)
    return spec
