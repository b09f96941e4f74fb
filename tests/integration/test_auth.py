"""Bearer tokens guard every mutating request, ours and the dashboard's; reads stay open unless protected."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from service import ServiceSettings, create_app
from service.auth import AuthConfigError, load_tokens
from studies import StudyRepository, open_storage
from tests.conftest import tiny_spec
from tests.live import serving
from tunefleet.cli import main

TOKEN = "rw-token-0123456789abcdef"
READ_ONLY = "ro-token-0123456789abcdef"
OTHER = "rw-token-fedcba9876543210"

MakeClient = Callable[..., TestClient]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(password: str, user: str = "me") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def settings(tmp_path: Path, **overrides: Any) -> ServiceSettings:
    # Everything explicit: a developer's own TUNEFLEET_* variables must not change what is tested.
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'store.db'}",
        "api_token": None,
        "api_tokens_file": None,
        "protect_reads": False,
        "mount_dashboard": True,
    }
    return ServiceSettings(**{**values, **overrides})


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    """Real apps on one temporary SQLite store, with the auth settings a test asks for."""
    stack: list[tuple[TestClient, StudyRepository]] = []

    def make(**overrides: Any) -> TestClient:
        config = settings(tmp_path, **overrides)
        repository = StudyRepository(open_storage(config.database_url))
        client = TestClient(create_app(config, repository=repository), raise_server_exceptions=False)
        client.__enter__()
        stack.append((client, repository))
        return client

    yield make
    for client, repository in stack:
        client.__exit__(None, None, None)
        repository.engine.dispose()


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# operators\n{TOKEN}\n\n  ro:{READ_ONLY}  \nrw:{OTHER}\n", encoding="utf-8")
    return path


def assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_mutating_routes_answer_401_without_a_token_or_with_a_wrong_one(
    make_client: MakeClient, study_name: str
) -> None:
    client = make_client(api_token=TOKEN)
    assert_unauthorized(client.post("/v1/studies", json=tiny_spec(study_name)))
    assert_unauthorized(client.post("/v1/studies", json=tiny_spec(study_name), headers=bearer(OTHER)))
    assert_unauthorized(client.post("/v1/studies", json=tiny_spec(study_name), headers=bearer(TOKEN[:-1])))
    assert_unauthorized(
        client.post("/v1/studies", json=tiny_spec(study_name), headers={"Authorization": TOKEN})
    )
    # Basic is for a browser's reads only: it never authorizes a change.
    assert_unauthorized(client.post("/v1/studies", json=tiny_spec(study_name), headers=basic(TOKEN)))
    assert client.get(f"/v1/studies/{study_name}").status_code == 404

    created = client.post("/v1/studies", json=tiny_spec(study_name), headers=bearer(TOKEN))
    assert created.status_code == 201, created.text
    for path in (f"/v1/studies/{study_name}/stop", f"/v1/studies/{study_name}/resume"):
        assert_unauthorized(client.post(path))
        assert client.post(path, headers=bearer(TOKEN)).status_code == 200
    assert_unauthorized(client.delete(f"/v1/studies/{study_name}"))


def test_the_bearer_scheme_is_matched_case_insensitively(make_client: MakeClient, study_name: str) -> None:
    client = make_client(api_token=TOKEN)
    response = client.post(
        "/v1/studies", json=tiny_spec(study_name), headers={"Authorization": f"bearer {TOKEN}"}
    )
    assert response.status_code == 201


def test_reads_stay_open_when_reads_are_not_protected(make_client: MakeClient, study_name: str) -> None:
    client = make_client(api_token=TOKEN)
    client.post("/v1/studies", json=tiny_spec(study_name), headers=bearer(TOKEN))
    assert client.get(f"/v1/studies/{study_name}").status_code == 200
    assert client.get("/v1/studies").status_code == 200
    # The dashboard's own front end reads through GET /api/...: it keeps working without a token.
    listed = client.get("/api/studies")
    assert listed.status_code == 200
    assert study_name in {s["study_name"] for s in listed.json()["study_summaries"]}
    assert client.get("/", follow_redirects=False).status_code in (200, 302)
    assert client.get("/openapi.json").status_code == 200


def test_a_read_only_token_reads_but_gets_403_on_mutating_routes(
    make_client: MakeClient, tokens_file: Path, study_name: str
) -> None:
    client = make_client(api_tokens_file=tokens_file, protect_reads=True)
    refused = client.post("/v1/studies", json=tiny_spec(study_name), headers=bearer(READ_ONLY))
    assert refused.status_code == 403
    assert refused.json() == {"detail": "this token is read-only", "code": "forbidden"}
    assert client.post("/v1/studies", json=tiny_spec(study_name), headers=bearer(OTHER)).status_code == 201
    assert client.get(f"/v1/studies/{study_name}", headers=bearer(READ_ONLY)).status_code == 200
    assert client.post(f"/v1/studies/{study_name}/stop", headers=bearer(READ_ONLY)).status_code == 403
    assert client.delete(f"/v1/studies/{study_name}", headers=bearer(READ_ONLY)).status_code == 403
    assert client.post(f"/v1/studies/{study_name}/stop", headers=bearer(TOKEN)).status_code == 200


def test_the_dashboards_mutating_routes_are_guarded_like_ours(
    make_client: MakeClient, study_name: str
) -> None:
    client = make_client(api_token=TOKEN)
    client.post("/v1/studies", json=tiny_spec(study_name), headers=bearer(TOKEN))
    summaries = client.get("/api/studies").json()["study_summaries"]
    study_id = next(s["study_id"] for s in summaries if s["study_name"] == study_name)
    attempts = [
        ("POST", "/api/studies", {"study_name": "made-by-dashboard", "directions": ["minimize"]}),
        ("DELETE", f"/api/studies/{study_id}", None),
        ("POST", f"/api/studies/{study_id}/rename", {"study_name": "renamed"}),
        ("PUT", f"/api/studies/{study_id}/note", {"version": 0, "body": "defaced"}),
        ("POST", "/api/trials/1/tell", {"state": "Complete", "values": [0.0]}),
        ("POST", "/api/trials/1/user-attrs", {"user_attrs": {"x": 1}}),
        ("PATCH", "/api/studies", None),
    ]
    for method, path, body in attempts:
        assert_unauthorized(client.request(method, path, json=body))
        assert_unauthorized(client.request(method, path, json=body, headers=bearer(OTHER)))
    names = {s["study_name"] for s in client.get("/api/studies").json()["study_summaries"]}
    assert study_name in names
    assert "made-by-dashboard" not in names
    # With the token the dashboard's own write goes through: the guard does not break it.
    made = client.post(
        "/api/studies",
        json={"study_name": "made-by-dashboard", "directions": ["minimize"]},
        headers=bearer(TOKEN),
    )
    assert made.status_code == 201, made.text


def test_protected_reads_need_a_token_everywhere_but_the_probes(
    make_client: MakeClient, tokens_file: Path, study_name: str
) -> None:
    client = make_client(api_tokens_file=tokens_file, protect_reads=True)
    for path in (
        "/v1/studies",
        f"/v1/studies/{study_name}",
        "/v1/workers",
        "/api/studies",
        "/openapi.json",
        "/docs",
        "/",
    ):
        assert_unauthorized(client.get(path, follow_redirects=False))
        assert client.get(path, headers=bearer(READ_ONLY), follow_redirects=False).status_code in (
            200,
            302,
            404,
        )
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_a_browser_can_open_the_protected_dashboard_with_the_token_as_basic_password(
    make_client: MakeClient,
) -> None:
    client = make_client(api_token=TOKEN, protect_reads=True)
    challenge = client.get("/api/studies").headers["www-authenticate"]
    assert "Basic" in challenge  # so a browser asks for it
    assert "Basic" not in client.get("/v1/studies").headers["www-authenticate"]  # API clients use Bearer
    assert client.get("/api/studies", headers=basic(TOKEN)).status_code == 200
    assert_unauthorized(client.get("/api/studies", headers=basic("wrong")))
    assert_unauthorized(client.get("/api/studies", headers={"Authorization": "Basic !!not-base64"}))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "holds no token"),
        ("# only a comment\n\n", "holds no token"),
        ("two words\n", "line 1: a token must be printable ASCII without spaces"),
        ("ro:\n", "line 1: the token is empty"),
        (f"{TOKEN}\nro:{TOKEN}\n", "read-only and as read-write"),
        ("t\u00f6ken-with-umlaut-0123456789\n", "printable ASCII"),
    ],
)
def test_a_bad_tokens_file_is_a_clear_start_up_error(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AuthConfigError, match=words) as raised:
        create_app(settings(tmp_path, api_tokens_file=path))
    assert TOKEN not in str(raised.value)


def test_an_unreadable_tokens_file_is_a_clear_start_up_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(
        AuthConfigError, match=f"cannot read TUNEFLEET_API_TOKENS_FILE {missing}: No such file"
    ):
        load_tokens(settings(tmp_path, api_tokens_file=missing))
    undecodable = tmp_path / "latin1"
    undecodable.write_bytes(b"\xff\xfe token\n")
    with pytest.raises(AuthConfigError, match="UnicodeDecodeError"):
        load_tokens(settings(tmp_path, api_tokens_file=undecodable))
    with pytest.raises(AuthConfigError, match="cannot read"):
        load_tokens(settings(tmp_path, api_tokens_file=tmp_path))  # a folder


def test_protecting_reads_without_any_token_is_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="TUNEFLEET_PROTECT_READS needs a token"):
        load_tokens(settings(tmp_path, protect_reads=True))
    with pytest.raises(AuthConfigError, match="TUNEFLEET_API_TOKEN: the token is empty"):
        load_tokens(settings(tmp_path, api_token="   "))


def test_tokens_are_never_logged_nor_echoed(
    make_client: MakeClient, tokens_file: Path, study_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(api_tokens_file=tokens_file, protect_reads=True)
    wrong = "wrong-token-that-must-not-leak-42"
    bodies = [
        client.post("/v1/studies", json=tiny_spec(study_name), headers=bearer(wrong)).text,
        client.post("/v1/studies", json=tiny_spec(study_name), headers=bearer(READ_ONLY)).text,
        client.post("/v1/studies", json=tiny_spec(study_name), headers=bearer(TOKEN)).text,
        client.get("/v1/studies", headers=bearer(wrong)).text,
        client.get("/api/studies", headers=basic(wrong)).text,
        client.post(
            "/v1/studies", content=b"{", headers={**bearer(TOKEN), "content-type": "application/json"}
        ).text,
    ]
    for secret in (TOKEN, READ_ONLY, OTHER, wrong):
        assert secret not in caplog.text
        assert all(secret not in body for body in bodies)
    assert "refused" in caplog.text  # refusals are logged, without the token


def test_serve_refuses_an_open_api_on_a_public_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("TUNEFLEET_API_TOKEN", "TUNEFLEET_API_TOKENS_FILE", "TUNEFLEET_PROTECT_READS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNEFLEET_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    assert main(["serve", "--host", "0.0.0.0", "--port", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "tunefleet: error: refusing to serve an open API on 0.0.0.0: set TUNEFLEET_API_TOKEN "
        "(or TUNEFLEET_API_TOKENS_FILE), or pass --insecure"
    )
    assert not (tmp_path / "store.db").exists()  # refused before touching the store


def test_serve_stops_with_one_line_on_a_bad_tokens_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TUNEFLEET_API_TOKEN", raising=False)
    monkeypatch.setenv("TUNEFLEET_API_TOKENS_FILE", str(tmp_path / "missing-tokens"))
    assert main(["serve", "--port", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunefleet: error: cannot read TUNEFLEET_API_TOKENS_FILE")
    assert len(err.splitlines()) == 1


def test_the_cli_sends_the_token_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], study_name: str
) -> None:
    config = settings(tmp_path, api_token=TOKEN)
    repository = StudyRepository(open_storage(config.database_url))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec(study_name)), encoding="utf-8")
    with serving(create_app(config, repository=repository)) as (host, port):
        command = ["study", "create", str(spec_file), "--url", f"http://{host}:{port}"]
        monkeypatch.delenv("TUNEFLEET_API_TOKEN", raising=False)
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("tunefleet: error:") and "token" in err
        monkeypatch.setenv("TUNEFLEET_API_TOKEN", TOKEN)
        assert main(command) == 0
        assert repository.get(study_name).name == study_name
    repository.engine.dispose()
