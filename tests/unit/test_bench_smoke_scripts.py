"""Benchmarks 1 (on the MiniLM and torch-module presets) and 3 and the early-stopping study still run: each at a tiny size, writing the JSON that BENCHMARKS.md is made from."""

from __future__ import annotations

import datetime
import json
import math
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import coordination_overhead, early_stopping, finetune_throughput, time_to_good_model, write_report
from bench.module_task import module_trainer
from bench.text_task import feature_cache_dir, load_preset
from bench.trial_api_overhead import NullTrial
from studies import StudySpec
from worker.tasks.interface import TaskHost
from worker.tasks.torch_module import TorchModule

pytestmark = pytest.mark.slow

# How this run handles SIGTERM, read at collection, before any test has run.
RUN_SIGTERM = signal.getsignal(signal.SIGTERM)


def test_time_to_good_model_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "ttg.json"
    assert time_to_good_model.main(["--smoke", "--seeds", "2", "--jobs", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["summary"]) == {"tunefleet", "optuna-tpe", "random"}
    assert result["summary"]["random"]["reached_target"] == "2/2"
    assert sorted((r["seed"], r["method"]) for r in result["runs"]) == sorted(
        (seed, method) for seed in (0, 1) for method in ("tunefleet", "optuna-tpe", "random")
    )
    assert len(result["targets"]) == 2
    # Recomputing the figures from the raw runs gives the same figures.
    assert time_to_good_model.main(["--rescore", str(out)]) == 0
    assert json.loads(out.read_text())["summary"] == result["summary"]


@pytest.mark.usefixtures("one_torch_thread")
def test_time_to_good_model_runs_the_torch_module_preset_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "ttg.json"
    assert (
        time_to_good_model.main(["--smoke", "--preset", "mlp-bbc-news", "--seeds", "1", "--out", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert result["config"]["task"]["kind"] == "torch-module"
    assert sorted(r["method"] for r in result["runs"]) == ["optuna-tpe", "random", "tunefleet"]
    assert all(r["points"] for r in result["runs"])
    assert result["summary"]["random"]["reached_target"] == "1/1"
    assert "kind torch-module" in result["markdown"] and "Machine:" in result["markdown"]


@pytest.mark.usefixtures("one_torch_thread")
def test_the_plain_baselines_train_the_torch_module_preset_as_its_kind_does() -> None:
    task = StudySpec.model_validate({**load_preset("mlp-bbc-news", smoke=True), "name": "probe"}).task
    params = {"learning_rate": 3e-3, "batch_size": 16, "epochs": 2, "depth": 1, "width": 32}
    params |= {"activation": "elu", "optimizer": "adam"}
    train = module_trainer(task, feature_cache_dir())
    plain = [e.val_loss for e in train(params, 7, lambda result: None)]
    kind = TorchModule(TaskHost(device=torch.device("cpu"), cache_dir=feature_cache_dir()))
    worker = [e.val_loss for e in kind.run(task, NullTrial(params, seed=7, number=0)).epochs]
    assert len(plain) == 2 and plain == worker


def test_a_seed_that_never_reaches_the_target_counts_against_the_median() -> None:
    def run(method: str, seed: int, bests: list[float]) -> time_to_good_model.Run:
        points = [time_to_good_model.Point(cpu_s=i + 1.0, epochs=i + 1, best=b) for i, b in enumerate(bests)]
        return time_to_good_model.Run(method=method, seed=seed, points=points)

    runs = []
    for seed in range(3):
        runs.append(run("random", seed, [0.5, 0.4, 0.3, 0.2]))  # reaches its best, 0.2, at 4 CPU-seconds
        runs.append(run("optuna-tpe", seed, [0.5, 0.5, 0.5, 0.5]))
    runs += [run("tunefleet", 0, [0.2]), run("tunefleet", 1, [0.3, 0.2]), run("tunefleet", 2, [0.9])]
    summary = time_to_good_model.summarize(runs)["summary"]
    assert summary["tunefleet"]["reached_target"] == "2/3"
    assert summary["tunefleet"]["cpu_ratio_median"] == pytest.approx((0.25 + 0.5) / 2)
    assert summary["tunefleet"]["cpu_ratio_median_all_seeds"] == pytest.approx(0.5)
    assert summary["optuna-tpe"]["cpu_ratio_median_all_seeds"] is None
    targets = time_to_good_model.report(runs, {"preset": "p", "task": {}, "seeds": 3, "epoch_budget": 4})[
        "targets"
    ]
    assert [t["met"] for t in targets] == [False, True]


def test_the_headline_median_comes_with_a_bootstrap_interval_over_seeds() -> None:
    assert time_to_good_model.median_interval([0.7] * 5) == (0.7, 0.7)
    low, high = time_to_good_model.median_interval([0.2, 0.5, 0.8, 1.1, 1.4, 2.0, 0.3, 0.9, 1.2, 0.6])
    assert 0.2 < low < 0.85 < high < 2.0
    # Seeds that never reached the target (inf) widen it to "not reached", as they count in the median.
    assert time_to_good_model.median_interval([0.5, math.inf, math.inf])[1] == math.inf


def test_checkpoints_give_each_methods_best_within_a_share_of_randoms_compute() -> None:
    def run(method: str, points: list[tuple[float, float]]) -> time_to_good_model.Run:
        return time_to_good_model.Run(
            method=method,
            seed=0,
            points=[
                time_to_good_model.Point(cpu_s=c, epochs=i + 1, best=b) for i, (c, b) in enumerate(points)
            ],
        )

    runs = [
        run("random", [(2.0, 0.5), (5.0, 0.3), (10.0, 0.3)]),  # its whole compute: 10 s; its best: 0.3
        run("tunefleet", [(1.0, 0.4), (2.0, 0.3)]),
        run("optuna-tpe", [(3.0, 0.6)]),
    ]
    table = time_to_good_model.checkpoints(runs)
    at = {m: [(r["best_median"], r["reached"]) for r in rows] for m, rows in table.items()}
    # Shares 10%, 25%, 50%, 100% of 10 s: within 1, 2.5, 5 and 10 s.
    assert at["tunefleet"] == [(0.4, "0/1"), (0.3, "1/1"), (0.3, "1/1"), (0.3, "1/1")]
    assert at["random"] == [(math.inf, "0/1"), (0.5, "0/1"), (0.3, "1/1"), (0.3, "1/1")]
    assert at["optuna-tpe"][0][0] == math.inf and at["optuna-tpe"][2] == (0.6, "0/1")
    assert "no trial yet" in time_to_good_model.checkpoint_markdown(table)


def test_early_stopping_replays_the_workers_rule_on_real_trials(tmp_path: Path) -> None:
    out = tmp_path / "early.json"
    assert early_stopping.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["patience"] for r in result["rows"]] == [1, 2, 3, 4, 5]
    for row in result["rows"]:
        assert 0 < row["cpu_ratio"] <= 1 and 0 < row["epoch_ratio"] <= 1
    # More patience never stops a trial sooner.
    ratios = [r["epoch_ratio"] for r in result["rows"]]
    assert ratios == sorted(ratios)
    assert len(result["trials"]) == 4 and len(result["targets"]) == 1


def test_a_trial_stops_where_the_worker_would_stop_it() -> None:
    trial = early_stopping.Trial(params={}, val_loss=[1.0, 0.5, 0.6, 0.7, 0.4, 0.9], cpu_s=[1, 2, 3, 4, 5, 6])
    assert [trial.stop_epoch(p) for p in (1, 2, 3, 4)] == [3, 4, 6, 6]
    rows = early_stopping.summarize([trial], best_share=1.0)
    assert rows[0]["cpu_ratio"] == pytest.approx(3 / 6)
    assert rows[0]["trials_worse"] == 1 and rows[0]["median_loss_given_up"] == pytest.approx(0.1)
    assert rows[2]["trials_worse"] == 0


def test_finetune_throughput_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    assert finetune_throughput.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [m["mode"] for m in result["modes"]] == ["head", "last-k"]
    for mode in result["modes"]:
        assert 0 < mode["tunefleet"]["time_in_training"] <= 1
        assert mode["plain_pytorch"]["trial_wall_s"] > 0
        # Both loops train every epoch: early stopping would make tunefleet's trial shorter, not faster.
        assert mode["tunefleet"]["epochs"] == mode["plain_pytorch"]["epochs"] == mode["params"]["epochs"]
    assert "| last-k |" in result["markdown"]
    assert len(result["targets"]) == 2


def test_finetune_throughput_measures_full_fine_tuning_with_mfu(tmp_path: Path) -> None:
    # On a GPU `make bench-gpu` adds full mode; here it runs on the CPU at a tiny size, with a made-up peak.
    out = tmp_path / "full.json"
    argv = ["--smoke", "--modes", "full", "--peak-tflops", "10", "--out", str(out)]
    assert finetune_throughput.main(argv) == 0
    result = json.loads(out.read_text())
    [mode] = result["modes"]
    assert mode["mode"] == "full" and result["peak_bf16_tflops"] == 10
    for loop in ("tunefleet", "plain_pytorch"):
        figures = mode[loop]
        assert figures["epochs"] == mode["params"]["epochs"]
        assert 0 < figures["mfu"] < 1
        assert figures["model_tflops_per_s"] == pytest.approx(10 * figures["mfu"])
    assert "model TFLOP/s" in result["markdown"] and "of 10 TFLOP/s" in result["markdown"]


def test_finetune_throughput_trains_every_epoch_of_its_trials() -> None:
    # With early stopping the quick head trial would stop after 4 of 45 epochs, and its "speed-up" over
    # the plain loop (which trains all 45) would read 8.7x instead of about 2x.
    for mode in finetune_throughput.SIZES:
        for size in ("quick", "full"):
            spec = finetune_throughput.study_spec(mode, size, repeats=3)
            assert spec.objective.patience == 0


def test_the_report_gathers_results_into_benchmarks_md(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "finetune_throughput.json").write_text(
        json.dumps({"markdown": "| a |", "config": {"command": "python -m x"}, "targets": []})
    )
    # A store benchmark's results made before now say their command under the table too: said once, atop.
    (results / "claim_phases.json").write_text(
        json.dumps(
            {"markdown": "| b |\n\nMachine: m.\nCommand: `python -m y`", "config": {"command": "python -m y"}}
        )
    )
    monkeypatch.chdir(tmp_path)
    assert write_report.main() == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "3. Fine-tuning throughput" in text and "`python -m x`" in text
    assert "1. Time to a good model" in text  # listed as not measured
    assert text.count("`python -m y`") == 1 and "Command: `python -m y`\n\n| b |\n\nMachine: m.\n" in text


def test_the_report_keeps_a_section_written_by_hand_and_skips_one_another_covers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    for name in ("replay-x", "replay-x-more"):
        (results / f"{name}.json").write_text(
            json.dumps({"markdown": f"| generated {name} |", "tables": "| rerun's table |", "targets": []})
        )
    sections = tmp_path / "bench" / "sections"
    sections.mkdir()
    # A {tables} line takes the results file's tables, so that a rerun reaches the report without copying by hand.
    (sections / "replay-x.md").write_text("## 1z. Written by hand\n\nProse.\n\n{tables}\n\n| kept |\n")
    (sections / "replay-x-more.md").write_text("")
    monkeypatch.chdir(tmp_path)
    assert write_report.main() == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## 1z. Written by hand\n\nProse.\n\n| rerun's table |\n\n| kept |\n" in text
    assert "generated" not in text and "{tables}" not in text
    # A results file made before results kept their tables: one line saying so, not a KeyError.
    (results / "replay-x.json").write_text(json.dumps({"markdown": "| old |", "targets": []}))
    assert write_report.main() == 2
    assert "bench/results/replay-x.json, which has none" in capsys.readouterr().err


def test_every_section_of_benchmarks_md_survives_its_regeneration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = Path(__file__).resolve().parents[2]
    shutil.copytree(repository / "bench", tmp_path / "bench")
    monkeypatch.chdir(tmp_path)
    assert write_report.main() == 0
    # The same lines, in the generator's order: nothing written by hand is lost when the file is regenerated.
    # The header says when, on what machine and with which versions the file was written: the writer's, not the runs'.
    dated = ("- Written", "- Machine", "- Versions")
    kept = sorted(
        line for line in (repository / "BENCHMARKS.md").read_text().splitlines() if not line.startswith(dated)
    )
    made = sorted(
        line for line in (tmp_path / "BENCHMARKS.md").read_text().splitlines() if not line.startswith(dated)
    )
    assert made == kept


def test_throughput_and_latency_are_measured_after_every_workers_first_trial() -> None:
    # Two workers. Each one's first claim loads the study into its cache (2 s and 4 s), and worker
    # b's first trial ends last, at 5 s: from then on is steady state. Worker a's claims at 3 s and
    # 4 s, slowed while b was loading, are in neither figure; the four trials ending after 5 s are.
    claims = [
        coordination_overhead.Claimed("a", start_s=0.0, claim_s=2.0, end_s=2.5),
        coordination_overhead.Claimed("b", start_s=0.0, claim_s=4.0, end_s=5.0),
        coordination_overhead.Claimed("a", start_s=2.5, claim_s=0.5, end_s=3.5),
        coordination_overhead.Claimed("a", start_s=3.5, claim_s=0.5, end_s=4.5),
        coordination_overhead.Claimed("a", start_s=5.0, claim_s=0.1, end_s=5.5),
        coordination_overhead.Claimed("b", start_s=5.0, claim_s=0.1, end_s=6.0),
        coordination_overhead.Claimed("a", start_s=5.5, claim_s=0.3, end_s=6.5),
        coordination_overhead.Claimed("b", start_s=6.0, claim_s=0.1, end_s=7.0),
    ]
    rows = [SimpleNamespace(state="COMPLETE")] * 8
    run = coordination_overhead.Run(
        system="tunefleet", sampler="tpe", seeded=0, workers=2, repeat=0, trials=8
    )
    coordination_overhead.fill_run(run, rows, claims, cpu_s=1.6, server_s=0.8)
    assert run.window_s == pytest.approx(2.0)
    assert run.trials_per_s == pytest.approx(4 / 2.0)
    assert run.steady_claims == 4
    assert run.claim_p50_ms == pytest.approx(100.0)
    assert run.first_claim_p50_ms == pytest.approx(3000.0)
    assert run.worker_cpu_ms_per_trial == pytest.approx(200.0)
    assert run.states == {"complete": 8}


def test_tunefleet_claims_are_read_from_each_trials_worker_and_timestamps() -> None:
    t0 = datetime.datetime(2026, 1, 1)
    row = SimpleNamespace(
        state="COMPLETE",
        datetime_start=t0,
        datetime_complete=t0 + datetime.timedelta(seconds=1.5),
        claim_s="0.25",
        worker_id='"w-1"',
    )
    unclaimed = SimpleNamespace(
        state="WAITING", datetime_start=None, datetime_complete=None, claim_s=None, worker_id=None
    )
    (claimed,) = coordination_overhead.tunefleet_claims([row, unclaimed])
    assert claimed.worker == "w-1" and claimed.claim_s == 0.25
    assert claimed.end_s - claimed.start_s == pytest.approx(1.5)


def test_a_benchmark_turns_sigterm_into_an_exit_for_its_clean_up() -> None:
    from bench.processes import clean_up_on_sigterm

    clean_up_on_sigterm()
    assert signal.getsignal(signal.SIGTERM) != RUN_SIGTERM


def test_the_next_test_finds_sigterm_as_the_run_had_it() -> None:
    # Runs after the one above (file order): the handler a benchmark set in this process does not outlive its test.
    assert signal.getsignal(signal.SIGTERM) == RUN_SIGTERM
