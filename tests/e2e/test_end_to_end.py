"""End to end with real processes: the service, two pulling workers, and the demo `make run` runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import tiny_spec

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tunefleet(*args: str, env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "tunefleet", *args], env=env, stdout=out, stderr=subprocess.STDOUT
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TUNEFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'tunefleet.db'}",
        "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"),
        "TUNEFLEET_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "TUNEFLEET_POLL_INTERVAL_S": "0.5",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def service(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = tunefleet("serve", "--port", str(port), env=env, log=tmp_path / "service.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("service did not start: " + (tmp_path / "service.log").read_text())
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_service_and_two_workers_run_a_study_to_the_end(
    service: str, env: dict[str, str], tmp_path: Path
) -> None:
    spec = tiny_spec("e2e-bbc", budget={"n_trials": 6}, pruner={"name": "none"})
    spec["task"] = {"max_examples": 120, "max_length": 48}
    created = httpx.post(f"{service}/v1/studies", json=spec)
    assert created.status_code == 201, created.text

    workers = [
        tunefleet(
            "worker", "--study", "e2e-bbc", "--exit-when-idle", env=env, log=tmp_path / f"worker-{i}.log"
        )
        for i in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=180) == 0, (tmp_path / "worker-0.log").read_text()

    study = httpx.get(f"{service}/v1/studies/e2e-bbc").json()
    assert study["state"] == "completed"
    assert study["trial_counts"]["complete"] == 6
    trials = httpx.get(f"{service}/v1/studies/e2e-bbc/trials").json()["items"]
    assert sorted(t["number"] for t in trials) == list(range(6))
    for trial in trials:
        assert trial["value"] is not None and trial["value"] > 0
        assert len(trial["intermediate_values"]) == trial["params"]["epochs"]
        assert trial["user_attrs"]["val_accuracy"] >= 0
    # Both processes took part: each trial records the worker that ran it.
    assert len({t["user_attrs"]["worker"] for t in trials}) == 2

    dashboard = httpx.get(f"{service}/api/studies").json()
    assert "e2e-bbc" in {s["study_name"] for s in dashboard["study_summaries"]}


def run_demo_to_the_end(
    spec: dict[str, Any], env: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """`tunefleet demo --exit` on the spec, as a user runs it; it must exit 0."""
    spec_file = tmp_path / "demo.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    command = [*DEMO, "--exit", "--preset", str(spec_file), "--port", str(free_port())]
    result = subprocess.run(
        [*command, "--log-dir", str(tmp_path / "logs")], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_demo_runs_a_study_through_the_api_and_prints_the_best_trial(
    env: dict[str, str], tmp_path: Path
) -> None:
    spec = tiny_spec("demo-bbc", budget={"n_trials": 4})
    result = run_demo_to_the_end(spec, env, tmp_path)
    assert "created study demo-bbc through POST /v1/studies" in result.stdout
    assert "best trial #" in result.stdout
    assert "dashboard: http://127.0.0.1:" in result.stdout


def test_demo_prints_the_pareto_front_of_a_study_of_several_objectives(
    env: dict[str, str], tmp_path: Path
) -> None:
    # A study of several objectives has no best trial: the demo said "no trial completed" after they all had.
    objectives = [
        {"name": "val_loss", "direction": "minimize"},
        {"name": "params_trainable", "direction": "minimize"},
    ]
    spec = tiny_spec("demo-front", budget={"n_trials": 3}, objective={"metrics": objectives})
    result = run_demo_to_the_end(spec, env, tmp_path)
    assert "Pareto front of demo-front:" in result.stdout
    assert "val_loss (minimize), params_trainable (minimize)" in result.stdout
    assert "dashboard: http://127.0.0.1:" in result.stdout


def test_demo_on_a_port_another_program_holds_says_why_the_service_did_not_start(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Not an HTTP server, so the demo's "already serving" check passes and `tunefleet serve` meets the taken
    # port itself. The demo said only "the service exited at start-up; see …/service.log".
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        logs = tmp_path / "logs"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tunefleet",
                "demo",
                "--exit",
                "--port",
                str(port),
                "--log-dir",
                str(logs),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"the service exited at start-up: cannot listen on 127.0.0.1:{port}: Address already in use; see "
        in result.stderr
    )


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is pid (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The fields after the command name, which may hold spaces, start with state and ppid.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


DEMO = [sys.executable, "-m", "tunefleet", "demo"]


def serving_demo(
    env: dict[str, str], tmp_path: Path, ignored: list[signal.Signals]
) -> tuple[subprocess.Popen[bytes], Path, int]:
    """`tunefleet demo` on a tiny study, started with these signals ignored, once it serves on after the study."""
    spec = tiny_spec("demo-serve", budget={"n_trials": 2})
    spec_file = tmp_path / "demo.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    port = free_port()
    out = tmp_path / "demo.out"

    def ignore() -> None:
        # As from a terminal: SIGHUP at its default even when the test run itself was started under nohup
        # (which the demo, by design, would keep ignoring).
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)

    with out.open("wb") as stream:
        demo = subprocess.Popen(
            [*DEMO, "--preset", str(spec_file), "--port", str(port), "--log-dir", str(tmp_path / "logs")],
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            preexec_fn=ignore,
        )
    deadline = time.monotonic() + 240
    while "press Ctrl-C" not in out.read_text() and time.monotonic() < deadline:
        assert demo.poll() is None, out.read_text()
        time.sleep(0.5)
    # Still serving a few seconds later: the service stays up for the dashboard.
    time.sleep(3)
    assert demo.poll() is None, out.read_text()
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    return demo, out, port


def stop_and_check(demo: subprocess.Popen[bytes], out: Path, stop: signal.Signals) -> None:
    """Send the signal; the demo must exit 0 with its service and both workers gone."""
    children = children_of(demo.pid)
    assert len(children) == 3, out.read_text()  # the service and two workers
    demo.send_signal(stop)
    try:
        code = demo.wait(timeout=30)
    finally:
        # Counted before they are cleaned up, so a demo that left them behind fails here.
        left = [child for child in children if not gone(child)]
        for child in left:
            os.kill(child, signal.SIGKILL)
    assert code == 0, out.read_text()
    assert "stopping..." in out.read_text()
    assert left == []


# Ctrl-C; `kill`; a closed terminal. The demo starts with SIGINT ignored, as a shell leaves it for a
# background job: it still stops on Ctrl-C, since it says it does. SIGTERM and SIGHUP must not end the
# demo alone and leave its service and workers (in their own sessions) running.
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_demo_keeps_serving_until_stopped_and_then_stops_everything(
    env: dict[str, str], tmp_path: Path, stop: signal.Signals
) -> None:
    demo, out, port = serving_demo(env, tmp_path, ignored=[signal.SIGINT])
    stop_and_check(demo, out, stop)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_demo_under_nohup_outlives_its_terminal(env: dict[str, str], tmp_path: Path) -> None:
    demo, out, port = serving_demo(env, tmp_path, ignored=[signal.SIGHUP])
    children = children_of(demo.pid)
    demo.send_signal(signal.SIGHUP)
    time.sleep(2)
    try:
        assert demo.poll() is None, out.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    except AssertionError:
        for child in children:
            if not gone(child):
                os.kill(child, signal.SIGKILL)
        raise
    stop_and_check(demo, out, signal.SIGTERM)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
