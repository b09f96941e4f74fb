"""Benchmark 3d (how far to trust latency_ms) still runs: at a tiny size, writing the JSON its BENCHMARKS.md section is made from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import latency_spread

pytestmark = pytest.mark.slow


def test_latency_spread_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    argv = ["--smoke", "--batch-sizes", "1", "--runs", "2", "--fresh", "1", "--out", str(out)]
    assert latency_spread.main(argv) == 0
    result = json.loads(out.read_text())
    rows = {(m["row"], m["batch_size"]): m for m in result["rows"]}
    assert set(rows) == {("head", 1), ("last-k", 1), ("lora", 1), ("lora-unmerged", 1)}
    for key, m in rows.items():
        assert len(m["run_medians_ms"]) == 2 and all(v > 0 for v in m["run_medians_ms"])
        # Each fresh process measures every mode as a trial times it; the unmerged model only beside it here.
        assert len(m["fresh_medians_ms"]) == (0 if key[0] == "lora-unmerged" else 1)
    assert result["config"]["load_average_at_start"] and result["config"]["load_average_at_end"]
    assert "within the measurement's noise on this machine" in result["verdict"]
    assert "| finetune lora, rank 8, attention (merged, as timed) | 1 |" in result["markdown"]
