"""Schemathesis fuzzes the whole REST API from its own OpenAPI schema, with every check, open and with tokens;
Hypothesis fuzzes the mounted dashboard's JSON bodies."""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
import schemathesis.engine
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from schemathesis.checks import CHECKS
from schemathesis.engine import events

from service import ServiceSettings, create_app
from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from tests.conftest import tiny_spec

TOKEN = "fuzz-token-0123456789abcdef"
EXAMPLES_PER_OPERATION = 50
# Random by default, so every run explores anew; a failure names its seed to replay it with.
SEED = int(os.environ.get("TUNEFLEET_FUZZ_SEED") or random.randrange(2**32))


@dataclass
class Target:
    """One configuration of the service under fuzzing."""

    app: FastAPI
    headers: dict[str, str]


def _seed(repository: StudyRepository) -> None:
    # The schema's example name ("quick") exists, with finished and failed trials, so the fuzzer's
    # requests reach real studies and trials, not only 404s.
    repository.create(StudySpec.model_validate(tiny_spec("quick", budget={"n_trials": 5})))
    worker = WorkerIdentity(host="fuzz", pid=1, device="cpu")
    for value in (0.7, float("nan")):
        claim = repository.claim(worker, study_names=["quick"])
        assert claim is not None
        claim.trial.report(value, 1)
        if math.isfinite(value):
            repository.complete(claim, value, {"val_accuracy": 0.5})
        else:
            repository.fail(claim, "NaN loss at epoch 1")
    repository.create(StudySpec.model_validate(tiny_spec("stopped-one")))
    repository.set_state("stopped-one", "stopped", "stopped by user")


@pytest.fixture(params=["open", "token", "protected-reads"], scope="module")
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A real app on a fresh SQLite store: with no token, with a token, and with reads protected too."""
    url = f"sqlite:///{tmp_path_factory.mktemp(request.param) / 'store.db'}"
    auth: dict[str, Any] = {
        "open": {},
        "token": {"api_token": TOKEN},
        "protected-reads": {"api_token": TOKEN, "protect_reads": True},
    }[request.param]
    explicit = {"api_token": None, "api_tokens_file": None, "protect_reads": False, **auth}
    settings = ServiceSettings(database_url=url, **explicit)
    repository = StudyRepository(open_storage(url))
    _seed(repository)
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
    yield Target(create_app(settings, repository=repository), headers)
    repository.engine.dispose()


def config(target: Target) -> schemathesis.Config:
    """What `schemathesis run --checks all --mode all --max-examples 50` means, as a config."""
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},  # no state carried between runs, nothing written to the tree
            "headers": target.headers,  # the token (for the auth checks: known to be valid)
            "checks": {"enabled": True},
            "generation": {
                "mode": "all",  # valid and invalid requests
                "max-examples": EXAMPLES_PER_OPERATION,
                "database": "none",  # no Hypothesis example database either
            },
            "max-failures": 50,
            "operations": [
                {
                    # The one check left out, for one operation: a study spec has rules across fields
                    # (low <= high, a grid of at most 100,000 points, a direction that matches the metric,
                    # min_resource <= epochs) that JSON Schema cannot say, so a schema-valid body can be a
                    # correct 422. Invalid bodies are still checked (negative_data_rejection).
                    "include-path": "/v1/studies",
                    "include-method": "POST",
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                },
                {
                    # A new study has no best model until a trial completes: that 404 (documented, code
                    # best_model_not_found) is the answer, not a created resource gone missing.
                    "include-path": "/v1/studies/{study_name}/best-model",
                    "include-method": "GET",
                    "checks": {"ensure_resource_availability": {"enabled": False}},
                },
            ],
        }
    )


def run_schemathesis(target: Target) -> tuple[list[str], Counter[str], set[str]]:
    """Every phase (examples, coverage, fuzzing, stateful) as the CLI runs it: failures as readable
    lines, how many requests each operation got, and the names of the checks that ran."""
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", target.app, config=config(target), headers=target.headers
    )
    problems: list[str] = []
    requests: Counter[str] = Counter()
    checks_run: set[str] = set()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            requests[event.label or "stateful"] += len(event.recorder.interactions)
            for checks in event.recorder.checks.values():
                for check in checks:
                    checks_run.add(check.name)
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        problems.append(
                            f"{event.label} [{check.name}] {failure.title}: {failure.message}\n"
                            f"    {check.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.label}: error {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
    return problems, requests, checks_run


@pytest.mark.slow
def test_the_api_answers_every_generated_request_as_its_schema_says(target: Target) -> None:
    problems, requests, checks_run = run_schemathesis(target)
    assert not problems, f"TUNEFLEET_FUZZ_SEED={SEED}\n" + "\n".join(sorted(set(problems)))
    # `--checks all`: every check schemathesis has ran (max_response_time is one only given a limit).
    assert set(CHECKS.get_all_names()) <= checks_run, sorted(set(CHECKS.get_all_names()) - checks_run)
    # Every operation with inputs got at least the examples asked for; one without (/healthz) fewer, and
    # so does DELETE: schemathesis stops drawing deletions once the studies it knows of are gone.
    schema = target.app.openapi()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if operation.get("parameters") or operation.get("requestBody"):
                label = f"{method.upper()} {path}"
                wanted = 10 if method == "delete" else EXAMPLES_PER_OPERATION
                assert requests[label] >= wanted, (label, requests)


# Any JSON at all, and bodies shaped like the dashboard's form for a new study with any JSON in its fields.
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
DIRECTION = st.sampled_from(["minimize", "maximize", "MAXIMIZE"]) | JSON
NEW_STUDY = st.fixed_dictionaries(
    {
        "study_name": st.text(min_size=1, max_size=20) | JSON,
        "directions": st.lists(DIRECTION, max_size=3) | JSON,
    }
)


def test_the_dashboards_json_api_answers_any_body_without_a_server_error(tmp_path: Path) -> None:
    # The dashboard is no part of the OpenAPI schema, so schemathesis never reaches it: its form for a new
    # study, and bodies that are no JSON object for the views that read one, are fuzzed here.
    url = f"sqlite:///{tmp_path / 'store.db'}"
    repository = StudyRepository(open_storage(url))
    _seed(repository)
    settings = ServiceSettings(database_url=url, api_token=None, api_tokens_file=None, protect_reads=False)
    study_id = repository.get("quick").optuna_study_id
    trial_id = repository.trial(repository.get("quick"), 0)._trial_id
    paths = [
        ("POST", "/api/studies"),
        ("POST", f"/api/studies/{study_id}/rename"),
        ("PUT", f"/api/studies/{study_id}/note"),
        ("POST", f"/api/trials/{trial_id}/tell"),
        ("POST", f"/api/trials/{trial_id}/user-attrs"),
    ]
    with TestClient(create_app(settings, repository=repository), raise_server_exceptions=False) as client:

        @hypothesis.seed(SEED)
        @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION * 2, deadline=None, database=None)
        @hypothesis.given(body=NEW_STUDY | JSON)
        def create(body: Any) -> None:
            response = client.post("/api/studies", json=body)
            assert response.status_code < 500, (f"TUNEFLEET_FUZZ_SEED={SEED}", body, response.text)

        @hypothesis.seed(SEED)
        @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None)
        @hypothesis.given(
            body=JSON.filter(lambda value: not isinstance(value, dict)), where=st.sampled_from(paths)
        )
        def not_an_object(body: Any, where: tuple[str, str]) -> None:
            response = client.request(where[0], where[1], json=body)
            if body is None:  # no body at all: the view's own answer, whatever it is, but no 500
                assert response.status_code < 500, (f"TUNEFLEET_FUZZ_SEED={SEED}", where, response.text)
            else:
                assert response.status_code == 400, (
                    f"TUNEFLEET_FUZZ_SEED={SEED}",
                    where,
                    body,
                    response.text,
                )
                assert response.json()["code"] == "invalid_request"

        create()
        not_an_object()
    repository.engine.dispose()
