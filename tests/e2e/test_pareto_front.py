"""A study of several objectives end to end: the service, a real worker fine-tuning heads on the built-in data, the
front checked against the trials in the store, a front trial's model downloaded, a rule's pick, the CLI's listing."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
import yaml

pytestmark = pytest.mark.slow

NAME = "front-bbc"
PARAMS_LIMIT = 10_000
OBJECTIVES = ["val_loss", "latency_ms", "params_trainable"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = free_port()
    env = {
        **os.environ,
        "TUNEFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'front.db'}",
        "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"),
        "TUNEFLEET_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "TUNEFLEET_URL": f"http://127.0.0.1:{port}",
        "TUNEFLEET_POLL_INTERVAL_S": "0.3",
    }
    log = (tmp_path / "service.log").open("wb")
    service = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        service.kill()
        pytest.fail("service did not start: " + (tmp_path / "service.log").read_text())
    yield env
    service.terminate()
    service.wait(timeout=10)
    log.close()


def tunefleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunefleet", *args], env=env, capture_output=True, text=True, timeout=300
    )


def non_dominated(trials: list[dict[str, Any]]) -> list[int]:
    """The front recomputed from the trials as listed: within both constraints, and beaten by no such trial in
    every objective (all minimised)."""
    feasible = [
        t
        for t in trials
        if t["state"] == "complete"
        and t["user_attrs"]["params_trainable"] <= PARAMS_LIMIT
        and t["user_attrs"]["model_size_mb"] <= 1
    ]

    def beats(a: dict[str, Any], b: dict[str, Any]) -> bool:
        pairs = list(zip(a["values"], b["values"], strict=True))
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)

    return sorted(t["number"] for t in feasible if not any(beats(o, t) for o in feasible))


def test_a_study_of_several_objectives_finds_its_front_and_serves_its_models(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = env["TUNEFLEET_URL"]
    spec = {
        "name": NAME,
        "task": {"max_examples": 100, "max_length": 32},
        # A grid of three heads: linear, and one hidden layer 8 or 64 wide (too many parameters for the limit).
        "space": {
            "learning_rate": 0.01,
            "batch_size": 16,
            "epochs": 2,
            "depth": [0, 1],
            "width": [8, 64],
            "activation": "relu",
            "optimizer": "adam",
        },
        "objective": {
            "metrics": [{"name": name, "direction": "minimize"} for name in OBJECTIVES],
            "constraints": [f"params_trainable <= {PARAMS_LIMIT}", "model_size_mb <= 1"],
        },
        "sampler": {"name": "grid", "seed": 1},
        "budget": {"n_trials": 3},
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    created = tunefleet(env, "study", "create", str(spec_file))
    assert created.returncode == 0, created.stderr

    worker = tunefleet(env, "worker", "--study", NAME, "--exit-when-idle")
    assert worker.returncode == 0, worker.stdout + worker.stderr

    trials = httpx.get(f"{url}/v1/studies/{NAME}/trials").json()["items"]
    assert [t["state"] for t in trials] == ["complete"] * 3, [t.get("fail_reason") for t in trials]
    for trial in trials:
        assert trial["values"] == [trial["user_attrs"][name] for name in OBJECTIVES]
        assert trial["user_attrs"]["latency_ms"] > 0
    # The constraint values Optuna's samplers read, as the store holds them.
    stored = optuna.load_study(study_name=NAME, storage=env["TUNEFLEET_DATABASE_URL"]).trials
    for trial in stored:
        params = trial.user_attrs["params_trainable"]
        assert trial.constraints["params_trainable <= 10000"] == params - PARAMS_LIMIT
    wide = next(t["number"] for t in trials if t["params"].get("width") == 64)
    assert stored[wide].constraints["params_trainable <= 10000"] > 0

    expected = non_dominated(trials)
    assert expected and wide not in expected
    study = httpx.get(f"{url}/v1/studies/{NAME}").json()
    assert study["pareto_front_size"] == len(expected) and study["best_value"] is None
    front = httpx.get(f"{url}/v1/studies/{NAME}/pareto").json()
    assert [t["number"] for t in front["trials"]] == expected
    by_number = {t["number"]: t for t in trials}
    for entry in front["trials"]:
        assert entry["values"] == dict(zip(OBJECTIVES, by_number[entry["number"]]["values"], strict=True))
        assert entry["model"] is True and all(v <= 0 for v in entry["constraints"].values())

    # Every trial of the front can be downloaded, and its model_size_mb is the size of what is downloaded.
    for number in expected:
        answer = httpx.get(f"{url}/v1/studies/{NAME}/best-model", params={"trial": number})
        assert answer.status_code == 200, answer.text
        assert len(answer.content) / 1_000_000 == by_number[number]["user_attrs"]["model_size_mb"]
        with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
            assert json.loads(archive.read("params.json"))["number"] == number
    outside = httpx.get(f"{url}/v1/studies/{NAME}/best-model", params={"trial": wide})
    assert (outside.status_code, outside.json()["code"]) == (404, "not_on_pareto_front")

    # The rule: among front trials within max_val_loss, the one with the lowest latency.
    limit = max(by_number[n]["user_attrs"]["val_loss"] for n in expected)
    pick = min(expected, key=lambda n: (by_number[n]["user_attrs"]["latency_ms"], n))
    ruled = httpx.get(
        f"{url}/v1/studies/{NAME}/best-model", params={"prefer": "latency_ms", "max_val_loss": limit}
    )
    assert ruled.status_code == 200 and ruled.headers["x-tunefleet-trial"] == str(pick)
    none_within = httpx.get(f"{url}/v1/studies/{NAME}/best-model", params={"max_val_loss": 0.0})
    assert (none_within.status_code, none_within.json()["code"]) == (404, "best_model_not_found")

    watched = tunefleet(env, "study", "watch", NAME, "--interval", "0.2")
    assert watched.returncode == 0, watched.stderr
    assert f"Pareto front {len(expected)} trials" in watched.stderr

    listed = tunefleet(env, "study", "best", NAME)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(f"Pareto front of {NAME}: {len(expected)} trials")
    assert [int(line.split()[0].lstrip("#")) for line in lines[1:]] == expected
    saved = tunefleet(
        env, "study", "best", NAME, "--download", str(tmp_path / "models"), "--prefer", "params_trainable"
    )
    assert saved.returncode == 0, saved.stderr
    fewest = min(expected, key=lambda n: (by_number[n]["user_attrs"]["params_trainable"], n))
    assert (tmp_path / "models" / f"{NAME}-trial-{fewest}-model" / "weights.safetensors").is_file()
