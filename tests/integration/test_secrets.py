"""The database password never shows: not in a log line, an error, a status response or the start-up line."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from service import ServiceSettings, create_app
from studies.storage import mask_url, redact_password
from tests.conftest import tiny_spec
from tests.faults import OutageProxy
from tunefleet.cli import main

PASSWORD = "Pa55-w0rd-that-must-never-show"
ROOT = Path(__file__).resolve().parents[2]


def url_with_password(postgres_url: str, port: int | None = None) -> str:
    # The test server trusts every local connection, so any password works and none is checked.
    url = make_url(postgres_url).set(password=PASSWORD)
    if port is not None:
        url = url.set(host="127.0.0.1", port=port)
    return url.render_as_string(hide_password=False)


def test_mask_url_and_redact_password_hide_the_password() -> None:
    url = "postgresql://tunefleet:p%40ss%3Aw%2Frd@db:5432/tunefleet"
    assert mask_url(url) == "postgresql://tunefleet:***@db:5432/tunefleet"
    message = f"could not connect with password=p@ss:w/rd to {url}"
    redacted = redact_password(message, url)
    assert "p@ss:w/rd" not in redacted and "p%40ss" not in redacted
    assert "postgresql://tunefleet:***@db:5432/tunefleet" in redacted
    assert redact_password("nothing secret", "sqlite:///tunefleet.db") == "nothing secret"


@pytest.mark.postgres
def test_the_password_is_in_no_log_line_nor_response_even_when_the_store_goes_away(
    postgres_url: str, caplog: pytest.LogCaptureFixture, study_name: str
) -> None:
    caplog.set_level(logging.DEBUG)
    target = make_url(postgres_url)
    proxy = OutageProxy(target.host or "127.0.0.1", target.port or 5432)
    settings = ServiceSettings(
        database_url=url_with_password(postgres_url, proxy.port),
        api_token=None,
        api_tokens_file=None,
        protect_reads=False,
        heartbeat_interval_s=0.2,  # the reaper runs (and fails, and logs) during the outage too
    )
    responses: list[Any] = []
    try:
        app = create_app(settings)
        with TestClient(app, raise_server_exceptions=False) as client:
            responses += [
                client.post("/v1/studies", json=tiny_spec(study_name)),
                client.get(f"/v1/studies/{study_name}"),
                client.get("/readyz"),
                client.get("/openapi.json"),
            ]
            assert [r.status_code for r in responses] == [201, 200, 200, 200]
            proxy.cut()
            outage = [
                client.get("/readyz"),
                client.get("/v1/studies"),
                client.get(f"/v1/studies/{study_name}"),
                client.post("/v1/studies", json=tiny_spec(f"{study_name}-2")),
                client.get("/v1/workers"),
                client.get("/api/studies"),
            ]
            time.sleep(0.5)
            assert outage[0].status_code == 503
            assert outage[0].json()["code"] == "store_unavailable"
            assert all(r.status_code >= 500 for r in outage), [r.status_code for r in outage]
            responses += outage
            proxy.restore()
            responses.append(client.get("/readyz"))
        app.state.repository.engine.dispose()
    finally:
        proxy.close()
    assert "store unavailable" in caplog.text  # the outage was logged...
    assert PASSWORD not in caplog.text  # ...without the password
    for response in responses:
        assert PASSWORD not in response.text
        assert all(PASSWORD not in value for value in response.headers.values())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.postgres
@pytest.mark.parametrize(("form", "masked"), [("userinfo", ":***@"), ("query", "?password=***")])
def test_serve_logs_its_store_with_the_password_masked_and_warns_that_the_api_is_open(
    form: str, masked: str, postgres_url: str
) -> None:
    # A password in the query string was printed in clear.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}
    env["TUNEFLEET_DATABASE_URL"] = (
        url_with_password(postgres_url) if form == "userinfo" else f"{postgres_url}?password={PASSWORD}"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", "serve", "--port", str(_free_port())],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    stopped: int | None = None
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "serving on" in line:
                break
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, _ = process.communicate(timeout=20)
            stopped = process.returncode
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        lines.append(out or "")
    output = "".join(lines)
    assert stopped in (0, 130), f"Ctrl-C did not stop the service ({stopped}): {output}"
    serving = next((line for line in lines if "serving on" in line), None)
    assert serving is not None, output
    assert masked in serving
    assert "the API is open" in output
    assert PASSWORD not in output


def test_serve_reports_a_store_it_cannot_open_in_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TUNEFLEET_API_TOKEN", "TUNEFLEET_API_TOKENS_FILE", "TUNEFLEET_PROTECT_READS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "TUNEFLEET_DATABASE_URL", f"postgresql+nosuchdriver://tunefleet:{PASSWORD}@127.0.0.1/db"
    )
    assert main(["serve", "--port", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "tunefleet: error: cannot open the store postgresql+nosuchdriver://tunefleet:***@127.0.0.1/db"
    )
    assert len(err.splitlines()) == 1
    assert PASSWORD not in err


@pytest.mark.parametrize(
    "url",
    [
        f"host=127.0.0.1 port=5432 password='se cret {PASSWORD}' dbname=test",
        f"postgresql+nosuchdriver://127.0.0.1/test?user=u&password={PASSWORD}",
        f"postgresql://u@127.0.0.1:notaport/test?sslpassword={PASSWORD}",
    ],
)
@pytest.mark.parametrize("command", ["worker", "serve"])
def test_serve_and_worker_never_print_a_password_of_a_store_they_cannot_open(
    command: str, url: str, tmp_path: Path
) -> None:
    # A keyword connection string was echoed whole, password and all, in the `cannot open the store` line.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}
    env["TUNEFLEET_DATABASE_URL"] = url
    env["TUNEFLEET_CACHE_DIR"] = str(tmp_path / "cache")
    args = ["worker", "--exit-when-idle"] if command == "worker" else ["serve", "--port", "0"]
    result = subprocess.run(
        [sys.executable, "-m", "tunefleet", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "tunefleet: error: cannot open the store " in result.stderr
    output = result.stdout + result.stderr
    assert PASSWORD not in output and "se cret" not in output
    assert "Traceback" not in output


def test_a_store_error_reason_keeps_what_the_driver_said_and_drops_any_password() -> None:
    import sqlalchemy.exc

    from studies.resilience import store_error_reason

    said = Exception(f'connection failed: password={PASSWORD} host=db\nFATAL:  role "x" does not exist')
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, said)
    reason = store_error_reason(RuntimeError("storage failed"))
    assert reason == "RuntimeError: storage failed"
    try:
        raise RuntimeError("storage failed") from wrapped
    except RuntimeError as error:
        reason = store_error_reason(error)
    assert (
        reason == 'OperationalError: connection failed: password=*** host=db FATAL: role "x" does not exist'
    )
    url_said = sqlalchemy.exc.OperationalError("", {}, Exception(f"at postgresql://u:{PASSWORD}@db/x"))
    assert store_error_reason(url_said) == "OperationalError: at postgresql://u:***@db/x"


@pytest.mark.postgres
def test_a_store_that_will_not_open_says_why_in_its_retry_line(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # It said only "(OperationalError)": a mistyped database name looked like an outage, retried for ever.
    from studies import open_storage
    from studies.resilience import GaveUp, with_retry

    url = make_url(url_with_password(postgres_url)).set(database="tunefleet_no_such_database")
    caplog.set_level(logging.WARNING, logger="tunefleet.store")
    with pytest.raises(GaveUp):
        with_retry(
            lambda: open_storage(url.render_as_string(hide_password=False)),
            what="open the store",
            max_wait_s=0.3,
        )
    assert 'database "tunefleet_no_such_database" does not exist' in caplog.text
    assert PASSWORD not in caplog.text
