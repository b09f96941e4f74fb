"""GET /v1/studies reads a page of studies in a fixed number of SQL statements, and shows each study as its own
GET does: counts, best trial, data warnings and Pareto front size."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from studies import StudyRepository, StudySpec, WorkerIdentity
from studies.records import DATA_WARNINGS_ATTR
from studies.storage import normalize_url
from tests.conftest import SHARED_POSTGRES_URL, tiny_spec
from tests.sql_statements import statements as sql_statements

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")
SEVERAL = {
    "metrics": [
        {"name": "val_loss", "direction": "minimize"},
        {"name": "train_seconds", "direction": "minimize"},
    ],
    "constraints": ["val_loss <= 1.0"],
}
# (val_loss, train_seconds): 0.5 and 0.8 are on the front, 0.9 is dominated, 1.5 breaks the constraint.
SEVERAL_VALUES = [(0.8, 1.0), (0.5, 3.0), (0.9, 3.5), (1.5, 0.1)]


def make_study(repository: StudyRepository, name: str, index: int) -> None:
    """Studies of three shapes in turn: val_loss minimised, val_accuracy maximised, several objectives."""
    shape = index % 3
    objective: dict[str, Any] = [{}, {"metric": "val_accuracy"}, SEVERAL][shape]
    spec = tiny_spec(name, sampler={"name": "random", "seed": index}, budget={"n_trials": 5})
    if shape == 0 and index > 3:
        # Warm-started from study 3 (its three completed trials): what warm start did shows in the list too.
        spec["warm_start"] = {"studies": [f"{name.rsplit('-', 1)[0]}-03"], "portfolio": 1}
    repository.create(StudySpec.model_validate({**spec, "objective": objective}))
    if shape == 2:
        for loss, seconds in SEVERAL_VALUES:
            claim = repository.claim(WORKER, study_names=[name])
            assert claim is not None
            repository.complete(
                claim,
                [loss, seconds],
                {"val_loss": loss, "train_seconds": seconds},
                {"val_loss <= 1": loss - 1},
            )
        return
    for number in range(index % 4):
        claim = repository.claim(WORKER, study_names=[name])
        assert claim is not None
        value = 0.1 * ((number * 7 + index) % 5) + 0.01 * number
        warnings = [f"{index} duplicate rows dropped"] + (["labels never validated"] if number else [])
        repository.complete(claim, value, {DATA_WARNINGS_ATTR: warnings})
    # A failed trial and a running one: counted, never best.
    failed = repository.claim(WORKER, study_names=[name])
    assert failed is not None
    repository.fail(failed, "NaN loss at epoch 1")
    assert repository.claim(WORKER, study_names=[name]) is not None


@pytest.fixture
def twenty_studies(repository: StudyRepository, study_name: str) -> list[str]:
    names = [f"{study_name}-{index:02d}" for index in range(20)]
    for index, name in enumerate(names):
        make_study(repository, name, index)
    return names[::-1]  # newest first, as the list shows them


@pytest.fixture
def statements(repository: StudyRepository) -> Iterator[list[str]]:
    """The SQL statements the service runs on the repository's engine, save the reaper's on its own thread."""
    with sql_statements(
        repository.engine, lambda: threading.current_thread().name != "tunefleet-reaper"
    ) as seen:
        yield seen


def listed(client: TestClient, statements: list[str], limit: int) -> tuple[list[dict[str, Any]], int]:
    statements.clear()
    response = client.get("/v1/studies", params={"limit": limit})
    assert response.status_code == 200, response.text
    return response.json()["items"], len(statements)


def test_listing_twenty_studies_takes_as_many_statements_as_listing_five(
    client: TestClient, twenty_studies: list[str], statements: list[str]
) -> None:
    five, for_five = listed(client, statements, 5)
    twenty, for_twenty = listed(client, statements, 20)
    assert [s["name"] for s in twenty] == twenty_studies
    assert [s["name"] for s in five] == twenty_studies[:5]
    # Both pages hold every shape (minimised, maximised, several objectives), with trials and warnings.
    assert {s["spec"]["objective"]["metric"] for s in five if s["pareto_front_size"] is None} == {
        "val_loss",
        "val_accuracy",
    }
    assert any(s["pareto_front_size"] for s in five) and any(s["warnings"] for s in five)
    assert any(s["warm_start"] for s in five)
    assert for_twenty == for_five, statements


def test_each_listed_study_reads_as_its_own_get(
    client: TestClient, twenty_studies: list[str], statements: list[str]
) -> None:
    items, _ = listed(client, statements, 20)
    for item in items:
        assert item == client.get(f"/v1/studies/{item['name']}").json()
    several = [s for s in items if s["pareto_front_size"] is not None]
    assert several and all(s["pareto_front_size"] == 2 and s["best_trial"] is None for s in several)
    best = {s["name"]: s["best_value"] for s in items if s["pareto_front_size"] is None}
    assert None in best.values() and len({v for v in best.values() if v is not None}) > 1
    by_name = {s["name"]: s for s in items}
    first = by_name[twenty_studies[-1]]
    assert first["trial_counts"] == {
        "running": 1,
        "complete": 0,
        "pruned": 0,
        "fail": 1,
        "waiting": 0,
        "paused": 0,
    }
    # Index 3: three complete trials, each with its warnings, the second's first seen on the second trial.
    assert by_name[twenty_studies[-4]]["warnings"] == ["3 duplicate rows dropped", "labels never validated"]


@pytest.mark.postgres
def test_each_test_process_lists_the_studies_of_its_own_postgresql_database(postgres_url: str) -> None:
    """The lists above read every study of the store: under `make test`, two test processes, each process's
    PostgreSQL tests use a database of their own, so one process's studies never show in the other's lists."""
    process = os.environ.get("PYTEST_XDIST_WORKER")
    database = sa.engine.make_url(postgres_url).database
    if process is None:
        assert postgres_url == SHARED_POSTGRES_URL
    else:
        assert database == f"{sa.engine.make_url(SHARED_POSTGRES_URL).database}_{process}"
        engine = sa.create_engine(normalize_url(postgres_url), poolclass=sa.pool.NullPool)
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT current_database()")).scalar() == database
        # Made with the store in it, as the shared database is, whichever test of the process came first.
        assert {"studies", "tunefleet_studies"} <= set(sa.inspect(engine).get_table_names())
        engine.dispose()
