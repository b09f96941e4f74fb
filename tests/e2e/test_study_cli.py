"""`tunefleet study …` against a real service process: every subcommand, --json, TUNEFLEET_URL, exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = free_port()
    env = {
        **os.environ,
        "TUNEFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "TUNEFLEET_URL": f"http://127.0.0.1:{port}",
        "TUNEFLEET_POLL_INTERVAL_S": "0.2",
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    yield env
    service.terminate()
    service.wait(timeout=10)


def tunefleet(env: dict[str, str], *args: str, answer: str = "") -> subprocess.CompletedProcess[str]:
    """Run the CLI; `answer` is what it reads on stdin (nothing: end of input at once)."""
    return subprocess.run(
        [sys.executable, "-m", "tunefleet", *args],
        env=env,
        input=answer,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_study_subcommand_works_end_to_end(env: dict[str, str], tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "cli-study",
                "task": {"kind": "synthetic"},
                "space": {"epochs": 2},
                "pruner": {"name": "none"},
                "budget": {"n_trials": 10},
            }
        )
    )
    created = tunefleet(env, "study", "create", str(spec_file), "--set", "budget.n_trials=3", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["n_trials"] == 3

    listed = tunefleet(env, "study", "list")
    assert "cli-study" in listed.stdout and "running" in listed.stdout

    assert "stopped" in tunefleet(env, "study", "stop", "cli-study").stdout
    assert "running" in tunefleet(env, "study", "resume", "cli-study").stdout

    worker = subprocess.run(
        [sys.executable, "-m", "tunefleet", "worker", "--study", "cli-study", "--exit-when-idle"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert worker.returncode == 0

    watched = tunefleet(env, "study", "watch", "cli-study", "--interval", "0.2")
    assert watched.returncode == 0 and "completed" in watched.stdout

    shown = json.loads(tunefleet(env, "study", "show", "cli-study", "--json").stdout)
    assert shown["state"] == "completed" and shown["trial_counts"]["complete"] == 3

    trials = json.loads(
        tunefleet(env, "study", "trials", "cli-study", "--state", "complete", "--json").stdout
    )
    assert trials["total"] == 3

    best = tunefleet(env, "study", "best", "cli-study")
    assert best.returncode == 0 and best.stdout.startswith(f"#{shown['best_trial']['number']}")

    report = tmp_path / "report.html"
    assert tunefleet(env, "study", "report", "cli-study", "--out", str(report)).returncode == 0
    assert "cli-study" in report.read_text()

    nowhere = tmp_path / "no-such-folder" / "report.html"
    unwritable = tunefleet(env, "study", "report", "cli-study", "--out", str(nowhere))
    assert unwritable.returncode == 2
    assert unwritable.stderr.strip() == f"tunefleet: error: cannot write {nowhere}: No such file or directory"


def test_cli_errors_are_one_line_and_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    missing = tunefleet(env, "study", "show", "no-such-study")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "tunefleet: error: study 'no-such-study' not found"

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "space": {"epochs": {"type": "int", "low": 5, "high": 1}}}))
    invalid = tunefleet(env, "study", "create", str(bad))
    assert invalid.returncode == 2
    assert len(invalid.stderr.strip().splitlines()) == 1
    assert "space.epochs" in invalid.stderr

    bad_set = tunefleet(env, "study", "create", str(bad), "--set", "nonsense")
    assert bad_set.returncode == 2 and "KEY.PATH=VALUE" in bad_set.stderr


def test_study_delete_asks_first_and_says_what_it_did_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump({"name": "doomed", "task": {"kind": "synthetic"}, "space": {"epochs": 1}})
    )
    assert tunefleet(env, "study", "create", str(spec_file)).returncode == 0

    for args in (["--yes"], []):  # a running study is refused before any question
        running = tunefleet(env, "study", "delete", "doomed", *args, answer="y\n")
        assert running.returncode == 2
        assert running.stderr == "tunefleet: error: study 'doomed' is running; stop it before deleting it\n"

    assert tunefleet(env, "study", "stop", "doomed").returncode == 0
    declined = tunefleet(env, "study", "delete", "doomed", answer="n\n")
    assert declined.returncode == 1
    assert declined.stderr == "delete study doomed (stopped) and its 0 trials? [y/N] doomed: not deleted\n"
    assert tunefleet(env, "study", "delete", "doomed").returncode == 1  # no answer at all is no
    assert tunefleet(env, "study", "show", "doomed").returncode == 0

    confirmed = tunefleet(env, "study", "delete", "doomed", answer="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert confirmed.stdout == "deleted doomed\n"
    gone = tunefleet(env, "study", "show", "doomed")
    assert gone.returncode == 2 and "not found" in gone.stderr

    # The name is free again; --yes asks nothing, for scripts.
    assert tunefleet(env, "study", "create", str(spec_file)).returncode == 0
    assert tunefleet(env, "study", "stop", "doomed").returncode == 0
    scripted = tunefleet(env, "study", "delete", "doomed", "--yes", "--json")
    assert scripted.returncode == 0 and scripted.stderr == ""
    assert json.loads(scripted.stdout) == {"deleted": "doomed"}

    for args in (["--yes"], []):
        unknown = tunefleet(env, "study", "delete", "no-such-study", *args, answer="y\n")
        assert unknown.returncode == 2
        assert unknown.stderr == "tunefleet: error: study 'no-such-study' not found\n"
