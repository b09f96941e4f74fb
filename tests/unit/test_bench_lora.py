"""Benchmark 3c (lora against last-k) still runs: at a tiny size, writing the JSON its BENCHMARKS.md section is made from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import lora_vs_last_k

pytestmark = pytest.mark.slow


def test_lora_against_last_k_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "lora.json"
    assert lora_vs_last_k.main(["--smoke", "--modes", "last-k", "lora", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    last_k, lora = result["modes"]
    assert (last_k["mode"], lora["mode"]) == ("last-k", "lora")
    # Rank 8 on MiniLM's 6 blocks, 4 layers of 384 each: 6 * 4 * 8 * (384 + 384) adapter weights.
    assert lora["parameters"]["encoder_trained"] == 6 * 4 * 8 * 768
    assert last_k["parameters"]["head"] == lora["parameters"]["head"]
    for mode in (last_k, lora):
        assert mode["s_per_epoch"] > 0 and mode["best"]["epochs"] == result["config"]["epochs"]
    assert "| lora, rank 8, attention" in result["markdown"]
    assert result["targets"][0]["met"] is True
