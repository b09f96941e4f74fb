"""Benchmark 1 compares the conditional head space with the unconditional one, where a linear head draws width too."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from bench import time_to_good_model
from bench.text_task import load_preset
from studies.space import conditions


def test_the_unconditional_space_draws_width_and_activation_at_every_depth_the_default_only_for_hidden_layers() -> (
    None
):
    raw = load_preset("bbc-news-minilm", smoke=True)
    new = time_to_good_model.seed_spec(raw, 0)
    old = time_to_good_model.seed_spec(time_to_good_model.unconditional_head(raw), 0)
    assert old.space.params()["width"].discrete_values() == new.space.params()["width"].discrete_values()
    for spec, at_depth_0 in ((new, set()), (old, {"width", "activation"})):
        tests = conditions(spec.space)
        assert {name for name in ("width", "activation") if tests[name]({"depth": 0})} == at_depth_0
    # The plain baselines draw as a user's `if depth >= 1:` would.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    drawn = [time_to_good_model.suggest_conditionally(study.ask(), new) for _ in range(30)]
    assert {p["depth"] for p in drawn} == {0, 1, 2, 3}
    assert all(("width" in p and "activation" in p) == (p["depth"] >= 1) for p in drawn)


@pytest.mark.slow
def test_time_to_good_model_runs_the_unconditional_space_beside_the_default_at_a_tiny_size(
    tmp_path: Path,
) -> None:
    out = tmp_path / "ttg.json"
    assert (
        time_to_good_model.main(["--smoke", "--seeds", "1", "--unconditional-head", "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert list(result["summary"]) == ["tunefleet", "tunefleet-unconditional", "optuna-tpe", "random"]
    assert all(run["points"] for run in result["runs"])
    assert result["config"]["unconditional_head"] is True
    assert "tunefleet-unconditional: tunefleet on the same space with" in result["markdown"]
