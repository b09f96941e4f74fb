"""The replay benchmark's peers: the exported surrogate replays exactly what tunefleet's runs see, the peers'
modules stay free of torch and tunefleet, and their runs merge into the replay report."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.peers.methods import Trace, evaluate
from bench.peers.replay import Replay
from bench.replay import benchmark, record
from bench.replay.curves import data_file, load
from bench.replay.forest import SURROGATES
from bench.replay.surrogate import Surrogate, export

TASK = "bbc-news-minilm"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=SURROGATES)
def surrogate(request: pytest.FixtureRequest) -> Surrogate:
    # A few curves made to fail (a NaN loss after epoch 5), so the nearest failure travels through the export too.
    curves = load(data_file(TASK)).fitted()[:200]
    failing = [
        dataclasses.replace(c, val_loss=c.val_loss[:5], val_accuracy=c.val_accuracy[:5], failed="NaN")
        for c in curves[:20]
    ]
    return Surrogate(record.spec_of(TASK), failing + curves[20:], model=request.param)


@pytest.fixture(scope="module")
def replay(surrogate: Surrogate, tmp_path_factory: pytest.TempPathFactory) -> Replay:
    path = tmp_path_factory.mktemp("peers") / "model.npz"
    spec = record.spec_of(TASK)
    assert not isinstance(spec.space, dict)
    export(surrogate, path, {"task": TASK, "space": spec.space.model_dump(mode="json", exclude_none=True)})
    return Replay(path)


def test_the_exported_replay_gives_exactly_what_the_surrogate_gives(
    surrogate: Surrogate, replay: Replay
) -> None:
    spec = record.spec_of(TASK)
    drawn = [record.configuration(spec, 7, i) for i in range(60)]
    assert any(p["depth"] == 0 for p in drawn) and any(p["depth"] > 0 for p in drawn)
    assert any(surrogate.replay(p).fails_after is not None for p in drawn)
    for params in drawn:
        ours, theirs = surrogate.replay(params), replay.replay(params)
        assert theirs.val_loss == ours.val_loss
        assert theirs.val_accuracy == ours.val_accuracy
        assert theirs.cpu_s == ours.cpu_s
        assert theirs.fails_after == ours.fails_after


def test_a_peer_evaluation_trains_from_scratch_and_counts_its_best_epoch(
    surrogate: Surrogate, replay: Replay
) -> None:
    spec = record.spec_of(TASK)
    drawn = [record.configuration(spec, 8, i) for i in range(60)]
    healthy = next(p for p in drawn if surrogate.replay(p).fails_after is None)
    ours = surrogate.replay(healthy)
    for epochs in (1, 7, 20):
        value, seconds = evaluate(replay, {k: v for k, v in healthy.items() if k != "epochs"}, epochs)
        assert value == ours.value(epochs)
        assert seconds == pytest.approx(sum(ours.cpu_s[:epochs]))
    failing = next(p for p in drawn if surrogate.replay(p).fails_after is not None)
    after = surrogate.replay(failing).fails_after
    assert after is not None
    value, seconds = evaluate(replay, failing, 20)
    assert value is None and seconds == pytest.approx(sum(surrogate.replay(failing).cpu_s[:after]))
    # A parameter drawn where its condition fails (syne-tune draws all) is left out, as tunefleet never draws it.
    shallow = next(p for p in drawn if p["depth"] == 0)
    padded = {**shallow, "width": 512, "activation": "tanh"}
    assert evaluate(replay, padded, 5) == evaluate(replay, shallow, 5)


def test_a_trace_counts_finished_evaluations_and_only_the_compute_of_stopped_ones() -> None:
    trace = Trace("asha", 0, budget_s=1.0)
    trace.finish(0.3, None)
    trace.finish(0.4, 0.5)
    trace.finish(0.2, None)
    assert trace.compute == pytest.approx([0.3, 0.7, 0.9]) and trace.best == [math.inf, 0.5, 0.5]
    assert not trace.spent
    trace.finish(0.2, 0.6)
    assert trace.spent and trace.to_json()["best"] == [None, 0.5, 0.5, 0.5]


def test_the_peers_modules_import_neither_torch_nor_tunefleet() -> None:
    code = (
        "import sys, bench.peers.run, bench.peers.methods, bench.peers.replay\n"
        "print(sorted(m for m in ('torch', 'optuna', 'sklearn', 'studies', 'worker', 'tunefleet', 'service')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _runs(method: str, seed: int, compute: list[float], best: list[float | None]) -> dict[str, object]:
    return {"method": method, "seed": seed, "trials": len(compute), "compute": compute, "best": best}


def test_peers_on_another_budget_are_refused() -> None:
    peers = {"config": {"budget_cpu_s": 2.0}, "runs": []}
    with pytest.raises(ValueError, match="budget"):
        benchmark.merge_peers([], 1.0, peers)


@pytest.mark.slow
def test_a_peers_results_file_merges_into_the_report_beside_earlier_runs(tmp_path: Path) -> None:
    earlier = {
        "command": "python -m bench.replay.benchmark --seeds 2",
        "config": {
            "budget_cpu_s": 10.0,
            "budget_trials": 10,
            "wall_s": 1.0,
            "load_average": {"before": [1.0], "after": [1.0]},
        },
        "runs": [
            _runs("random", 0, [2.0, 6.0, 10.0], [None, 0.3, 0.2]),
            _runs("tunefleet", 0, [1.0, 3.0, 11.0], [0.25, 0.2, 0.2]),
            _runs("random", 1, [4.0, 10.5], [0.4, 0.3]),
            _runs("tunefleet", 1, [5.0, 9.0], [0.35, 0.35]),
        ],
    }
    peers = {
        "config": {"budget_cpu_s": 10.0, "smac": "0"},
        "runs": [
            _runs("asha", 0, [1.5, 10.0], [0.2, 0.19]),
            _runs("asha", 1, [2.0, 12.0], [None, 0.4]),
            # A seed the earlier runs do not have: left out, since it has no target.
            _runs("asha", 2, [1.0], [0.1]),
        ],
    }
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    (tmp_path / "peers.json").write_text(json.dumps(peers))
    out, svg = tmp_path / "replay.json", tmp_path / "replay.svg"
    benchmark.main(
        [
            "--runs-from",
            str(tmp_path / "earlier.json"),
            "--peers",
            str(tmp_path / "peers.json"),
            "--out",
            str(out),
            "--svg",
            str(svg),
        ]
    )
    result = json.loads(out.read_text())
    rows = {r["method"]: r for r in result["summary"]["rows"]}
    assert list(rows) == ["random", "tunefleet", "asha"]
    assert rows["random"]["ratio_median"] == 1.0
    # Seed 0: random reaches 0.2 at 10 s, asha at 1.5 s; seed 1: random 0.3 at 10.5 s, asha never.
    assert rows["asha"]["reached"] == 1 and rows["asha"]["ratio_median"] is None
    assert result["config"]["seeds"] == 2 and result["config"]["peers"]["smac"] == "0"
    # The file keeps its own runs only: merging again gives the same report.
    assert {r["method"] for r in result["runs"]} == {"random", "tunefleet"}
    assert "asha" in svg.read_text() and "| asha | 1/2 |" in result["markdown"]
    # Merged again from the merged file, the report still names the command that ran the runs.
    benchmark.main(["--runs-from", str(out), "--peers", str(tmp_path / "peers.json"), "--out", str(out)])
    again = json.loads(out.read_text())
    assert again["config"]["runs_from"]["command"] == "python -m bench.replay.benchmark --seeds 2"
    assert again["summary"] == result["summary"]


def test_a_peer_run_on_fewer_seeds_is_summarized_over_its_own() -> None:
    runs = benchmark.runs_of(
        [
            _runs("random", 0, [5.0, 10.0], [0.3, 0.2]),
            _runs("random", 1, [5.0, 10.0], [0.4, 0.3]),
            _runs("asha", 0, [2.0, 10.0], [0.2, 0.2]),
            _runs("dehb", 0, [2.0, 10.0], [0.5, 0.3]),
            _runs("dehb", 1, [2.5, 10.0], [0.3, 0.3]),
        ]
    )
    summary = benchmark.summarize(runs, 10.0, reference=1.0)
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["asha"]["seeds"] == 1 and rows["asha"]["ratio_median"] == pytest.approx(0.2)
    assert rows["dehb"]["seeds"] == 2 and rows["dehb"]["reached"] == 1


def test_results_files_of_methods_or_seeds_run_apart_combine_into_one(tmp_path: Path) -> None:
    from bench.peers import run

    def part(method: str, seeds: list[int]) -> dict[str, object]:
        return {
            "command": f"python -m bench.peers.run --methods {method}",
            "config": {
                "budget_cpu_s": 4.0,
                "wall_s": 1.5,
                "method_wall_s": {method: 1.5},
                "seeds": len(seeds),
            },
            "runs": [_runs(method, s, [4.0], [0.2]) for s in seeds],
        }

    for i, (method, seeds) in enumerate([("asha", [0, 1]), ("bohb", [0]), ("bohb", [1])]):
        (tmp_path / f"{i}.json").write_text(json.dumps(part(method, seeds)))
    out = tmp_path / "peers.json"
    run.main(["--combine", *(str(tmp_path / f"{i}.json") for i in range(3)), "--out", str(out)])
    combined = json.loads(out.read_text())
    assert combined["config"]["seeds"] == {"asha": 2, "bohb": 2} and combined["config"]["wall_s"] == 4.5
    assert combined["config"]["method_wall_s"] == {"asha": 1.5, "bohb": 3.0}
    assert len(combined["runs"]) == 4 and combined["config"]["budget_cpu_s"] == 4.0


def test_a_run_kept_at_its_improvements_answers_as_the_whole_run() -> None:
    whole = benchmark.runs_of(
        [_runs("tpe", 0, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [None, 0.5, 0.5, 0.4, 0.4, 0.4])]
    )[0]
    kept = benchmark.runs_of(benchmark.runs_json([whole]))[0]
    assert kept.compute == [2.0, 4.0, 6.0] and kept.trials == 6
    for spent in (0.5, 1.0, 2.0, 3.5, 4.0, 7.0):
        assert kept.best_at(spent) == whole.best_at(spent)
    for target in (0.6, 0.5, 0.45, 0.4, 0.3):
        assert kept.to_reach(target) == whole.to_reach(target)
