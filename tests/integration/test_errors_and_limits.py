"""One error model, size limits, DELETE, and hostile input: on a real app, on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import ServiceSettings, create_app
from studies import StudyNotFound, StudyRepository, WorkerIdentity, open_storage
from studies.storage import normalize_url
from studies.tables import studies_table
from tests.conftest import tiny_spec
from tests.faults import OutageProxy
from tests.live import serving

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")
MIB = 1024 * 1024


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert "detail" in body
    return body


# -- the error model ------------------------------------------------------------------------------


def test_a_bad_spec_keeps_fastapis_422_shape_and_adds_a_code(client: TestClient, study_name: str) -> None:
    body = assert_error(
        client.post("/v1/studies", json=tiny_spec(study_name, budget={"n_trials": 100_001})),
        422,
        "validation_error",
    )
    assert body["detail"][0]["loc"] == ["body", "budget", "n_trials"]
    choices = list(range(1, 66))
    body = assert_error(
        client.post(
            "/v1/studies",
            json=tiny_spec(study_name, space={"batch_size": {"type": "categorical", "choices": choices}}),
        ),
        422,
        "validation_error",
    )
    assert "at most 64 choices" in body["detail"][0]["msg"]


def test_malformed_json_is_a_422_with_its_own_code(client: TestClient) -> None:
    for raw in (b"{", b'{"name": "x",}', b"[1, 2"):
        response = client.post("/v1/studies", content=raw, headers={"content-type": "application/json"})
        body = assert_error(response, 422, "invalid_json")
        assert body["detail"][0]["type"] == "json_invalid"
    # Bytes that are not even text: FastAPI's 400, with the same code.
    response = client.post(
        "/v1/studies", content=b"\xff\xfe not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")


def test_unknown_paths_and_wrong_methods_answer_json_not_the_dashboards_html(client: TestClient) -> None:
    assert_error(client.get("/v1/nope"), 404, "not_found")
    assert_error(client.get("/v1"), 404, "not_found")
    response = client.put("/v1/studies")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"  # every method of the path, not just the first route's
    assert client.patch("/v1/studies/some-study").headers["allow"] == "DELETE, GET"
    assert_error(client.post("/healthz"), 405, "method_not_allowed")
    # The dashboard still owns everything else.
    assert client.get("/api/studies").status_code == 200


def test_path_parameters_are_checked_like_the_spec_checks_names(client: TestClient) -> None:
    for name in ("-dash", ".dot", "a" * 129, "a b", "semi;colon", "quote'", "名前"):
        body = assert_error(client.get(f"/v1/studies/{quote(name)}"), 422, "validation_error")
        assert body["detail"][0]["loc"] == ["path", "study_name"]
    body = assert_error(client.get(f"/v1/studies/x/trials/{2**31}"), 422, "validation_error")
    assert body["detail"][0]["loc"] == ["path", "number"]
    assert_error(client.get("/v1/studies/x/trials/-1"), 422, "validation_error")
    assert_error(client.get(f"/v1/studies/x/trials/{2**31 - 1}"), 404, "study_not_found")


def test_an_unexpected_error_is_a_generic_500_and_its_traceback_is_logged(
    client: TestClient, repository: StudyRepository, study_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    # A real fault, not a mock: the stored spec is corrupted behind the service's back (and put
    # back after, as the PostgreSQL store is shared with other tests).
    update = sa.update(studies_table).where(studies_table.c.study_name == study_name)
    with repository.engine.begin() as connection:
        connection.execute(update.values(spec={"name": study_name, "secret_internal_field": 1}))
    try:
        with caplog.at_level(logging.ERROR, logger="tunefleet.service"):
            response = client.get(f"/v1/studies/{study_name}")
    finally:
        with repository.engine.begin() as connection:
            connection.execute(update.values(spec=tiny_spec(study_name)))
    assert response.json() == {"detail": "internal server error", "code": "internal_error"}
    assert response.status_code == 500
    assert "Traceback" in caplog.text and "secret_internal_field" in caplog.text


def test_an_error_inside_the_dashboard_is_our_500_and_is_logged_once_however_often_it_is_asked(
    client: TestClient, repository: StudyRepository, study_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    claim.trial.set_user_attr("note", "fine")
    study_id = client.get(f"/v1/studies/{study_name}").json()["dashboard_url"].rsplit("/", 1)[1]
    # A real fault: a trial's attribute no longer JSON, so Optuna cannot read the trial back. The
    # dashboard's API catches it and logs a stack itself; its CSV page lets it fly.
    attributes = sa.table("trial_user_attributes", sa.column("trial_id"), sa.column("value_json"))
    corrupt = sa.update(attributes).where(attributes.c.trial_id == claim.trial._trial_id)
    with repository.engine.begin() as connection:
        connection.execute(corrupt.values(value_json="{not json"))
    try:
        with caplog.at_level(logging.DEBUG):
            responses = [client.get(f"/api/studies/{study_id}") for _ in range(3)]
            responses += [client.get(f"/csv/{study_id}") for _ in range(2)]
    finally:
        with repository.engine.begin() as connection:
            connection.execute(corrupt.values(value_json='"fine"'))
    for response in responses:
        assert_error(response, 500, "internal_error")
        assert response.json()["detail"] == "internal server error"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"dashboard failed during GET /api/studies/{study_id}: JSONDecodeError: {errors[0].exc_info[1]}",
        f"dashboard failed during GET /csv/{study_id}: JSONDecodeError: {errors[1].exc_info[1]}",
    ]
    assert all(r.exc_info is not None for r in errors)  # with the traceback


def test_the_dashboards_files_are_served_to_a_client_that_sends_no_accept_encoding(
    client: TestClient,
) -> None:
    # curl, a load balancer's probe: optuna-dashboard read the header without a default and failed.
    for path in ("/static/bundle.js", "/favicon.ico"):
        request = client.build_request("GET", path)
        del request.headers["accept-encoding"]
        response = client.send(request)
        assert response.status_code == 200, response.text
        assert "content-encoding" not in response.headers  # not gzip, which the client never offered
    assert response.content.startswith(b"\x00\x00\x01\x00")  # the icon, as an icon


def test_a_dashboard_study_with_nested_directions_is_a_400_naming_the_field(
    client: TestClient, study_name: str
) -> None:
    response = client.post("/api/studies", json={"study_name": study_name, "directions": [["minimize"]]})
    body = assert_error(response, 400, "invalid_request")
    assert body["detail"] == """directions[0]: must be 'minimize' or 'maximize', got ["minimize"]"""
    for bad, field in (
        ({"study_name": study_name, "directions": "minimize"}, "directions"),
        ({"study_name": study_name, "directions": []}, "directions"),
        ({"study_name": [study_name], "directions": ["minimize"]}, "study_name"),
        ([study_name], "body"),
    ):
        assert assert_error(client.post("/api/studies", json=bad), 400, "invalid_request")[
            "detail"
        ].startswith(f"{field}:")
    assert_error(
        client.post("/api/studies", content=b"{", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    names = [s["study_name"] for s in client.get("/api/studies").json()["study_summaries"]]
    assert study_name not in names
    # A good body still creates the study, as the dashboard's own form does.
    created = client.post("/api/studies", json={"study_name": study_name, "directions": ["Minimize"]})
    assert created.status_code == 201, created.text
    assert created.json()["study_summary"]["directions"] == ["minimize"]


# -- DELETE ---------------------------------------------------------------------------------------


def test_delete_refuses_a_running_study_with_409(client: TestClient, study_name: str) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    body = assert_error(client.delete(f"/v1/studies/{study_name}"), 409, "invalid_study_state")
    assert "stop it" in body["detail"]
    assert client.get(f"/v1/studies/{study_name}").status_code == 200


def test_delete_refuses_a_stopped_study_while_a_trial_of_it_runs(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    client.post(f"/v1/studies/{study_name}/stop")
    assert_error(client.delete(f"/v1/studies/{study_name}"), 409, "invalid_study_state")
    repository.prune(claim, {"fail_reason": "study stopped"})
    assert client.delete(f"/v1/studies/{study_name}").status_code == 204


def test_delete_removes_a_stopped_study_its_trials_and_its_optuna_study(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    repository.complete(claim, 0.5, {"val_accuracy": 0.5})
    client.post(f"/v1/studies/{study_name}/stop")

    response = client.delete(f"/v1/studies/{study_name}")
    assert response.status_code == 204
    assert response.content == b""
    assert_error(client.get(f"/v1/studies/{study_name}"), 404, "study_not_found")
    assert_error(client.delete(f"/v1/studies/{study_name}"), 404, "study_not_found")
    with pytest.raises(StudyNotFound):
        repository.get(study_name)
    assert study_name not in optuna.get_all_study_names(storage=repository.storage)
    # The name is free again, and the new study starts from nothing.
    assert client.post("/v1/studies", json=tiny_spec(study_name)).status_code == 201
    assert repository.claim(WORKER, study_names=[study_name]) is not None
    assert client.get(f"/v1/studies/{study_name}").json()["n_claimed"] == 1


def test_delete_removes_completed_and_failed_studies(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    completed, failed = f"{study_name}-done", f"{study_name}-broken"
    client.post("/v1/studies", json=tiny_spec(completed, budget={"n_trials": 1}))
    claim = repository.claim(WORKER, study_names=[completed])
    assert claim is not None
    repository.complete(claim, 0.1, {})
    assert client.get(f"/v1/studies/{completed}").json()["state"] == "completed"
    client.post("/v1/studies", json=tiny_spec(failed, budget={"n_trials": 5, "max_consecutive_failures": 1}))
    claim = repository.claim(WORKER, study_names=[failed])
    assert claim is not None
    repository.fail(claim, "data error")
    assert client.get(f"/v1/studies/{failed}").json()["state"] == "failed"
    for name in (completed, failed):
        assert client.delete(f"/v1/studies/{name}").status_code == 204


# -- size limits ----------------------------------------------------------------------------------


def test_a_body_over_one_mib_is_refused_with_413(client: TestClient, study_name: str) -> None:
    big = json.dumps(tiny_spec(study_name, description="x" * MIB)).encode()
    body = assert_error(
        client.post("/v1/studies", content=big, headers={"content-type": "application/json"}),
        413,
        "payload_too_large",
    )
    assert "1048576 bytes" in body["detail"]
    assert client.get(f"/v1/studies/{study_name}").status_code == 404
    # The dashboard's routes sit behind the same limit.
    assert_error(client.post("/api/studies", content=big), 413, "payload_too_large")
    # Just under the limit is read, and judged on its merits (the description is over 4096 characters).
    fits = json.dumps(tiny_spec(study_name, description="x" * (MIB - 1000))).encode()
    assert_error(
        client.post("/v1/studies", content=fits, headers={"content-type": "application/json"}),
        422,
        "validation_error",
    )


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The app under uvicorn on a real socket, for what a test client cannot send (a chunked upload)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = ServiceSettings(database_url=url, api_token=None, api_tokens_file=None, protect_reads=False)
    repository = StudyRepository(open_storage(url))
    with serving(create_app(settings, repository=repository)) as address:
        yield address
    repository.engine.dispose()


def _raw_request(address: tuple[str, int], head: bytes, chunks: Iterator[bytes] | None = None) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)
        for chunk in chunks or ():
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered before reading it all: stop sending, read the answer
            try:
                sock.sendall(chunk)
            except OSError:
                break
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):  # the server closes the connection after a 413
                received += data
        return received


def test_a_chunked_upload_without_length_is_cut_off_with_413_once_it_passes_one_mib(
    live_server: tuple[str, int],
) -> None:
    head = (
        b"POST /v1/studies HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 65536
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(64))  # 4 MiB if it were all read
    response = _raw_request(live_server, head, chunks)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"payload_too_large" in response


def test_a_declared_length_over_one_mib_is_refused_before_the_body_is_sent(
    live_server: tuple[str, int],
) -> None:
    head = (
        b"POST /v1/studies HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (MIB + 1)
    )
    started = time.monotonic()
    response = _raw_request(live_server, head)  # no body at all: an answer must not wait for it
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert time.monotonic() - started < 5


# -- hostile input --------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "x'; DROP TABLE tunefleet_studies; --",
    'x" OR 1=1 --',
    "../../etc/passwd",
    "..",
    "a/b",
    "a\x00b",
    "a" * 129,
    "a" * 100_000,
    "",
    " leading-space",
    "名前",
    "emoji-\U0001f600",
    "tab\tname",
    "new\nline",
    "%2e%2e",
    "-starts-with-dash",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_a_hostile_study_name_is_rejected_in_the_body_and_in_the_path(client: TestClient, name: str) -> None:
    body = assert_error(client.post("/v1/studies", json={"name": name}), 422, "validation_error")
    assert body["detail"][0]["loc"] == ["body", "name"]
    path_name = name[:5000] or "%20"  # an empty segment is the list itself; 100 kB is too long for a URL
    response = client.get(f"/v1/studies/{quote(path_name, safe='')}")
    assert response.status_code in (404, 422), response.text
    assert response.json()["code"] in ("validation_error", "not_found")
    assert client.get("/readyz").status_code == 200  # the store is unharmed


def test_non_utf8_and_lone_surrogates_are_rejected_not_500(client: TestClient, study_name: str) -> None:
    raw_bodies = [
        b'{"name": "\xff\xfe"}',
        b'{"name": "a\\ud800b"}',  # valid JSON, but no valid text
        b'{"name": "%s", "description": "\\udfff"}' % study_name.encode(),
        b'{"name": "%s", "task": {"model": "x\\ud800"}}' % study_name.encode(),
    ]
    for raw in raw_bodies:
        response = client.post("/v1/studies", content=raw, headers={"content-type": "application/json"})
        assert response.status_code in (400, 422), response.text
        assert response.json()["code"] in ("validation_error", "invalid_json")
    for path in (
        "/v1/studies/%ff%fe",
        "/v1/studies/a%00b",
        "/v1/studies/%ed%a0%80",
        "/v1/studies/a%00b/trials/0",
    ):
        response = client.get(path)
        assert response.status_code in (404, 422), (path, response.text)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "x", "budget": {"n_trials": NaN}}',
        b'{"name": "x", "budget": {"timeout_s": Infinity}}',
        b'{"name": "x", "budget": {"n_trials": 1e999999}}',
        b'{"name": "x", "budget": {"n_trials": ' + b"9" * 5000 + b"}}",
        b"[" * 50_000 + b"]" * 50_000,
        b'{"name": "x", "space": {"batch_size": {"type": "categorical", "choices": ['
        + b"1," * 10_000
        + b"1]}}}",
        b'"just a string"',
        b"null",
    ],
    ids=[
        "nan",
        "infinity",
        "overflowing-float",
        "5000-digit-int",
        "deep-nesting",
        "10k-choices",
        "string",
        "null",
    ],
)
def test_pathological_json_is_a_4xx_with_a_code(client: TestClient, raw: bytes) -> None:
    response = client.post("/v1/studies", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text[:300]
    assert response.json()["code"] in ("validation_error", "invalid_json")


def test_hostile_text_in_free_fields_is_stored_verbatim_and_never_evaluated(
    client: TestClient, study_name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    description = (
        f"'; DROP TABLE trials; -- $(touch {marker}) `touch {marker}` {{{{7*7}}}} \x00 \u202e \U0001f600"
    )
    model = (
        f"../../../../etc/passwd; touch {marker}"  # a model path is data for the workers, never opened here
    )
    response = client.post(
        "/v1/studies", json=tiny_spec(study_name, description=description, task={"model": model})
    )
    assert response.status_code == 201, response.text
    for body in (response.json(), client.get(f"/v1/studies/{study_name}").json()):
        assert body["spec"]["description"] == description
        assert body["spec"]["task"]["model"] == model
    assert not marker.exists()
    listed = {s["name"] for s in client.get("/v1/studies").json()["items"]}
    assert study_name in listed
    assert client.get("/readyz").status_code == 200


def test_pagination_and_budget_limits_hold(client: TestClient, study_name: str) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    assert_error(
        client.get(f"/v1/studies/{study_name}/trials", params={"limit": 1001}), 422, "validation_error"
    )
    assert client.get(f"/v1/studies/{study_name}/trials", params={"limit": 1000}).status_code == 200
    assert_error(
        client.get(f"/v1/studies/{study_name}/trials", params={"offset": 10**30}), 422, "validation_error"
    )
    ok = client.post("/v1/studies", json=tiny_spec(f"{study_name}-max", budget={"n_trials": 100_000}))
    assert ok.status_code == 201, ok.text


@pytest.mark.skipif(os.name != "posix", reason="POSIX paths")
def test_the_service_never_opens_a_task_path(client: TestClient, study_name: str, tmp_path: Path) -> None:
    secret = tmp_path / "unreadable"
    secret.write_text("secret")
    secret.chmod(0)
    response = client.post("/v1/studies", json=tiny_spec(study_name, task={"model": str(secret)}))
    assert response.status_code == 201, response.text
    assert "secret" not in json.dumps(response.json()["spec"]).replace(str(secret), "")


def test_a_nul_byte_in_the_best_model_path_is_a_4xx_not_a_500(client: TestClient) -> None:
    response = client.get("/v1/studies/bad%00name/best-model")
    assert 400 <= response.status_code < 500
    assert "code" in response.json()


# -- store outages --------------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_store_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    postgres_url: str, study_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = sa.engine.make_url(normalize_url(postgres_url))
    proxy = OutageProxy(target.host or "127.0.0.1", target.port or 5432)
    url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    repository = StudyRepository(open_storage(url))
    # The reaper thread sleeps through the test: the lines counted are the requests' own.
    settings = ServiceSettings(database_url=url, heartbeat_interval_s=3600)
    try:
        with TestClient(create_app(settings, repository=repository), raise_server_exceptions=False) as client:
            assert client.post("/v1/studies", json=tiny_spec(study_name)).status_code == 201
            with caplog.at_level(logging.DEBUG):
                proxy.cut()
                # A readiness probe, a user, a scraper and the dashboard, all during the outage.
                during = [client.get("/readyz") for _ in range(5)]
                during += [client.get(f"/v1/studies/{study_name}"), client.get("/v1/workers")]
                during += [client.get("/metrics"), client.get("/api/studies")]
                logged_during = [r for r in caplog.records if r.levelno >= logging.WARNING]
                proxy.restore()
                deadline = time.monotonic() + 30
                while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                    time.sleep(0.1)
                after = [client.get(f"/v1/studies/{study_name}") for _ in range(3)]
    finally:
        proxy.close()
        repository.engine.dispose()
    for response in during:
        assert_error(response, 503, "store_unavailable")
    assert [r.status_code for r in after] == [200, 200, 200]
    assert len(logged_during) == 1, [r.getMessage() for r in logged_during]
    assert logged_during[0].getMessage().startswith("store unavailable (OperationalError: ")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == logged_during  # recovery is no warning, and nothing after it warned
    ends = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(ends) == 1, ends
    assert re.fullmatch(
        r"store reachable again after \d+\.\d s unavailable \(\d+ failed connection attempts\)", ends[0]
    )
