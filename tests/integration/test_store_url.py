"""A worker or service pointed at the wrong store says so: which store, one line, exit 2, never a new empty one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import tiny_spec

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Pa55-w0rd-that-must-never-show"


def tunefleet_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any TUNEFLEET_ setting (TUNEFLEET_CREATE_STORE included), plus these."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TUNEFLEET_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["TUNEFLEET_CACHE_DIR"] = str(tmp_path / "cache")
    env["TUNEFLEET_ARTIFACT_DIR"] = str(tmp_path / "artifacts")
    env.update(settings)
    return env


def tunefleet(
    *args: str, cwd: Path, env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunefleet", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def the_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `tunefleet: error:` line a refused start prints; no traceback beside it."""
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tunefleet: error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return errors[0].removeprefix("tunefleet: error: ")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An empty folder to start commands in, apart from the caches the environment points elsewhere."""
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_a_worker_started_in_another_folder_names_its_store_and_refuses_to_create_it(
    tmp_path: Path, folder: Path
) -> None:
    # It created a new empty tunefleet.db there, found nothing to do, and exited 0.
    result = tunefleet("worker", "--exit-when-idle", cwd=folder, env=tunefleet_env(tmp_path))
    store = folder / "tunefleet.db"
    line = the_error_line(result)
    assert line.startswith(f"cannot open the store sqlite:///{store}: there is no file {store}")
    assert "--create-store" in line and "TUNEFLEET_CREATE_STORE=1" in line
    first = result.stderr.splitlines()[0]
    assert first.endswith(f"INFO tunefleet.worker: store sqlite:///{store}"), result.stderr
    assert list(folder.iterdir()) == []


def test_a_worker_refuses_a_mistyped_sqlite_file_beside_the_real_one(tmp_path: Path, folder: Path) -> None:
    real = folder / "tunefleet.db"
    served = tunefleet(
        "worker", "--create-store", "--exit-when-idle", cwd=folder, env=tunefleet_env(tmp_path)
    )
    assert served.returncode == 0, served.stderr
    typo = f"sqlite:///{folder / 'tunefleet.bd'}"
    line = the_error_line(
        tunefleet(
            "worker",
            "--exit-when-idle",
            cwd=tmp_path,
            env=tunefleet_env(tmp_path, TUNEFLEET_DATABASE_URL=typo),
        )
    )
    assert f"there is no file {folder / 'tunefleet.bd'}" in line
    assert not (folder / "tunefleet.bd").exists() and real.exists()


@pytest.mark.parametrize("told_by", ["flag", "environment"])
def test_a_worker_told_to_create_the_store_creates_it(told_by: str, tmp_path: Path, folder: Path) -> None:
    if told_by == "flag":
        result = tunefleet(
            "worker", "--create-store", "--exit-when-idle", cwd=folder, env=tunefleet_env(tmp_path)
        )
    else:
        env = tunefleet_env(tmp_path, TUNEFLEET_CREATE_STORE="1")
        result = tunefleet("worker", "--exit-when-idle", cwd=folder, env=env)
    assert result.returncode == 0, result.stderr
    assert (folder / "tunefleet.db").is_file()


def test_a_worker_launcher_refuses_a_missing_store_once_before_starting_children(
    tmp_path: Path, folder: Path
) -> None:
    result = tunefleet(
        "worker", "--processes", "2", "--exit-when-idle", cwd=folder, env=tunefleet_env(tmp_path)
    )
    assert "there is no file" in the_error_line(result)
    assert "started worker" not in result.stderr
    assert list(folder.iterdir()) == []


NOT_A_PORT = f"postgresql://user:{PASSWORD}@host:notaport/db"


@pytest.mark.parametrize(
    ("command", "url"),
    [("worker", NOT_A_PORT), ("worker", "nonsense"), ("worker", "sqlite//x"), ("serve", NOT_A_PORT)],
)
def test_a_malformed_store_url_is_one_line_and_exit_2(
    command: str, url: str, tmp_path: Path, folder: Path
) -> None:
    # The worker printed a 29-line traceback for the port that is not one, and exited 1.
    args = ["worker", "--exit-when-idle"] if command == "worker" else ["serve", "--port", "0"]
    result = tunefleet(*args, cwd=folder, env=tunefleet_env(tmp_path, TUNEFLEET_DATABASE_URL=url))
    line = the_error_line(result)
    assert "not a database URL" in line
    assert PASSWORD not in result.stdout + result.stderr
    assert list(folder.iterdir()) == []


def _resolver_says_no_such_host() -> bool:
    try:
        socket.getaddrinfo("no-such-host.invalid", 5432)
    except socket.gaierror as error:
        return error.errno == socket.EAI_NONAME
    return False


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_store_host_that_does_not_resolve_is_one_line_and_exit_2_not_an_outage(
    command: str, tmp_path: Path, folder: Path
) -> None:
    # It was retried as an outage, a warning and then silence, for ten minutes.
    if not _resolver_says_no_such_host():
        pytest.skip("this host's resolver does not answer for .invalid names (no DNS server reachable)")
    url = f"postgresql://tunefleet:{PASSWORD}@no-such-host.invalid/tunefleet"
    args = ["worker", "--exit-when-idle"] if command == "worker" else ["serve", "--port", "0"]
    result = tunefleet(
        *args, cwd=folder, env=tunefleet_env(tmp_path, TUNEFLEET_DATABASE_URL=url), timeout_s=60
    )
    line = the_error_line(result)
    assert line.startswith(
        "cannot open the store postgresql://tunefleet:***@no-such-host.invalid/tunefleet: "
    )
    assert "its host 'no-such-host.invalid' does not resolve" in line
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_login_the_database_refuses_is_one_line_and_exit_2_not_an_outage(
    command: str, postgres_url: str, tmp_path: Path, folder: Path
) -> None:
    url = make_url(postgres_url).set(username="tunefleet_no_such_role", password=PASSWORD)
    env = tunefleet_env(tmp_path, TUNEFLEET_DATABASE_URL=url.render_as_string(hide_password=False))
    args = ["worker", "--exit-when-idle"] if command == "worker" else ["serve", "--port", "0"]
    line = the_error_line(tunefleet(*args, cwd=folder, env=env, timeout_s=60))
    assert ":***@" in line
    assert "the database refused the login (OperationalError: connection failed:" in line
    assert 'role "tunefleet_no_such_role" does not exist' in line
    assert PASSWORD not in line


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _read_lines(stream: object, into: list[str]) -> threading.Thread:
    def read() -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def _wait_for(lines: list[str], text: str, process: subprocess.Popen[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = next((line for line in list(lines) if text in line), None)
        if found is not None:
            return found
        if process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"no line with {text!r} (exit code {process.poll()}):\n{''.join(lines)}")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_a_store_that_does_not_answer_at_start_up_is_still_waited_for(tmp_path: Path, folder: Path) -> None:
    # A database that is starting (connection refused) is an outage, not a mistake: the worker waits for it.
    url = f"postgresql://tunefleet:{PASSWORD}@127.0.0.1:{_closed_port()}/tunefleet"
    process = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", "worker", "--exit-when-idle"],
        cwd=folder,
        env=tunefleet_env(tmp_path, TUNEFLEET_DATABASE_URL=url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        _read_lines(process.stderr, lines)
        _wait_for(lines, "store unavailable during open the store", process, timeout_s=120)
        assert process.poll() is None
    finally:
        _stop(process)
    assert PASSWORD not in "".join(lines)


@pytest.mark.slow
def test_watch_says_when_no_worker_has_been_seen_for_the_study(tmp_path: Path, folder: Path) -> None:
    # A worker on another store leaves the study untouched, and the bar stood at 0 without a word.
    port = _closed_port()
    env = tunefleet_env(tmp_path, TUNEFLEET_URL=f"http://127.0.0.1:{port}")
    service = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", "serve", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    service_lines: list[str] = []
    watch: subprocess.Popen[str] | None = None
    try:
        _read_lines(service.stderr, service_lines)
        serving = _wait_for(service_lines, "serving on", service, timeout_s=90)
        # The service's start-up line names the store's file by its absolute path.
        assert f"(store sqlite:///{folder / 'tunefleet.db'})" in serving
        created = httpx.post(f"http://127.0.0.1:{port}/v1/studies", json=tiny_spec("unwatched"), timeout=30)
        assert created.status_code == 201, created.text
        watch = subprocess.Popen(
            [sys.executable, "-m", "tunefleet", "study", "watch", "unwatched", "--interval", "0.5"],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        watch_lines: list[str] = []
        _read_lines(watch.stderr, watch_lines)
        hint = _wait_for(watch_lines, "no worker has been seen for this study yet", watch, timeout_s=90)
        assert "none is alive on this service's store" in hint
        assert "start one with: tunefleet worker --study unwatched" in hint
    finally:
        if watch is not None:
            _stop(watch)
        _stop(service)
