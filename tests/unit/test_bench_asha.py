"""Benchmark 1 runs tunefleet with pause and promote beside its defaults, counting a promoted trial's epochs once."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from bench import time_to_good_model
from bench.text_task import feature_cache_dir, load_preset

pytestmark = pytest.mark.slow


def test_a_promoted_trials_epochs_are_counted_once_in_the_runs_budget(tmp_path: Path) -> None:
    raw = load_preset("bbc-news-minilm", smoke=True)
    spec = time_to_good_model.seed_spec({**raw, "pruner": time_to_good_model.ASHA_PRUNER}, 0)
    run = time_to_good_model.run_tunefleet(
        spec, 0, 60, feature_cache_dir(), tmp_path, time_to_good_model.ASHA
    )
    trials = optuna.load_study(
        study_name=spec.name, storage=f"sqlite:///{tmp_path / 'tunefleet-asha-0.db'}"
    ).trials
    assert any(t.user_attrs.get("resumed_from_epoch") for t in trials), "no trial was promoted"
    assert any(t.state == optuna.trial.TrialState.WAITING for t in trials), "no trial paused"
    # Every epoch trained once: a promoted trial's epochs before its pause are not counted again.
    assert run.points[-1].epochs == sum(len(t.intermediate_values) for t in trials)
    assert [p.epochs for p in run.points] == sorted({p.epochs for p in run.points})


def test_time_to_good_model_runs_pause_and_promote_beside_the_default_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "ttg.json"
    assert time_to_good_model.main(["--smoke", "--seeds", "1", "--asha", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["summary"]) == ["tunefleet", "tunefleet-asha", "optuna-tpe", "random"]
    assert all(run["points"] for run in result["runs"])
    assert result["config"]["asha"] is True
    assert "tunefleet-asha: tunefleet's defaults with pruner" in result["markdown"]
