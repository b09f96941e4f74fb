"""`tunefleet worker --gpus/--processes`: which GPU each child gets, and a child that refuses to start stays down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.launcher import parse_gpus


def test_indexes_without_a_scheduler_are_the_hosts_own() -> None:
    assert parse_gpus("all", visible=None, count=4) == ["0", "1", "2", "3"]
    assert parse_gpus("0,2", visible=None, count=4) == ["0", "2"]


def test_indexes_are_taken_through_the_schedulers_list() -> None:
    # Slurm (without device cgroups) gives a job GPUs 4 and 5 as CUDA_VISIBLE_DEVICES=4,5, which torch calls
    # 0 and 1. Children pinned to "0" and "1" trained on GPUs the job did not hold.
    assert parse_gpus("all", visible="4,5", count=2) == ["4", "5"]
    assert parse_gpus("1", visible="4,5", count=2) == ["5"]
    assert parse_gpus("all", visible="GPU-8f6e,MIG-2a1b", count=2) == ["GPU-8f6e", "MIG-2a1b"]


@pytest.mark.parametrize(
    ("value", "visible", "count", "reason"),
    [
        ("all", None, 0, "--gpus all: no CUDA device is visible on this host (use --processes N on CPUs)"),
        ("7", None, 0, "--gpus 7: no CUDA device is visible on this host (use --processes N on CPUs)"),
        ("0,2", "4,5", 2, "--gpus 0,2: GPU 2 is not visible here; this host shows 2 (indexes 0 to 1)"),
        ("one", None, 2, "--gpus takes 'all' or a list of device indexes like 0,1; got 'one'"),
        (",", None, 2, "--gpus takes 'all' or a list of device indexes like 0,1; got ','"),
    ],
)
def test_gpus_that_are_not_here_are_refused_before_any_child_starts(
    value: str, visible: str | None, count: int, reason: str
) -> None:
    with pytest.raises(ValueError) as refused:
        parse_gpus(value, visible=visible, count=count)
    assert str(refused.value) == reason


def test_a_child_that_refuses_to_start_is_not_restarted(tmp_path: Path) -> None:
    # A child's exit 2 at start-up (a one-line error) stops that slot rather than being restarted with backoff
    # forever, and the launcher exits 2 when all have ended.
    env = {
        **os.environ,
        "TUNEFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"),
        "TUNEFLEET_ARTIFACT_DIR": str(tmp_path / "artifacts"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tunefleet", "worker", "--processes", "2", "--device", "no-such-device"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("started worker") == 2
    assert result.stderr.count("tunefleet: error: device 'no-such-device' is not supported") == 2
    assert result.stderr.count("refused to start") == 2
    assert "Traceback" not in result.stderr
