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


def test_study_enqueue_queues_sets_from_a_file_or_stdin_and_they_run_first(
    env: dict[str, str], tmp_path: Path
) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "warm",
                "task": {"kind": "synthetic"},
                "space": {"epochs": 1},
                "pruner": {"name": "none"},
                "budget": {"n_trials": 4},
            }
        )
    )
    assert tunefleet(env, "study", "create", str(spec_file)).returncode == 0

    known = tmp_path / "known.yaml"
    known.write_text("- {learning_rate: 3.0e-3, batch_size: 32, depth: 1, width: 64}\n- {optimizer: sgd}\n")
    queued = tunefleet(env, "study", "enqueue", "warm", str(known))
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.splitlines() == [
        "#0     enqueued  learning_rate=0.003 batch_size=32 depth=1 width=64",
        "#1     enqueued  optimizer=sgd",
    ]
    from_stdin = tunefleet(env, "study", "enqueue", "warm", "-", "--json", answer='{"depth": 0}')
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout) == {"study_name": "warm", "numbers": [2], "slots_left": 1}

    for content, words in (
        ("{depth: 1, widht: 64}", "trials.0.params.widht: unknown parameter"),
        (
            "- {depth: 0}\n- {batch_size: 48}",
            "trials.1.params.batch_size: must be one of 16, 32, 64, 128, got 48",
        ),
        ("[{}, {}]", "study 'warm' has 1 trial slots left, not 2"),
        ("learning_rate: [", "not YAML or JSON"),
        ("- 0.01", "item 0 is float, not a mapping of parameter names to values"),
    ):
        refused = tunefleet(env, "study", "enqueue", "warm", "-", answer=content)
        assert refused.returncode == 2, (content, refused.stdout)
        assert len(refused.stderr.strip().splitlines()) == 1 and words in refused.stderr, refused.stderr
    missing = tunefleet(env, "study", "enqueue", "warm", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr

    worker = subprocess.run(
        [sys.executable, "-m", "tunefleet", "worker", "--study", "warm", "--exit-when-idle"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert worker.returncode == 0
    trials = json.loads(tunefleet(env, "study", "trials", "warm", "--json").stdout)["items"]
    assert [t["state"] for t in trials] == ["complete"] * 4
    assert {k: trials[0]["params"][k] for k in ("learning_rate", "batch_size", "depth", "width")} == {
        "learning_rate": 0.003,
        "batch_size": 32,
        "depth": 1,
        "width": 64,
    }
    assert trials[1]["params"]["optimizer"] == "sgd" and trials[2]["params"]["depth"] == 0
    listed = tunefleet(env, "study", "trials", "warm").stdout.splitlines()
    assert [line.endswith("[enqueued]") for line in listed[:4]] == [True, True, True, False]
