"""Benchmarks 1 and 3 still run: each at a tiny size, writing the JSON that BENCHMARKS.md is made from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import finetune_throughput, time_to_good_model, write_report

pytestmark = pytest.mark.slow


def test_time_to_good_model_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "ttg.json"
    assert time_to_good_model.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["summary"]) == {"tunefleet", "optuna-tpe", "random"}
    assert result["summary"]["random"]["reached_target"] == "1/1"
    assert len(result["targets"]) == 2


def test_finetune_throughput_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    assert finetune_throughput.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [m["mode"] for m in result["modes"]] == ["head", "last-k"]
    for mode in result["modes"]:
        assert 0 < mode["tunefleet"]["time_in_training"] <= 1
        assert mode["plain_pytorch"]["trial_wall_s"] > 0
    assert "| last-k |" in result["markdown"]
    assert len(result["targets"]) == 2


def test_the_report_gathers_results_into_benchmarks_md(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "finetune_throughput.json").write_text(
        json.dumps({"markdown": "| a |", "config": {"command": "python -m x"}, "targets": []})
    )
    monkeypatch.chdir(tmp_path)
    assert write_report.main() == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "3. Fine-tuning throughput" in text and "`python -m x`" in text
    assert "1. Time to a good model" in text  # listed as not measured
