"""Optimizers side by side on a recorded task: compute to reach random search's best, and anytime regret."""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.replay.curves import DATA_DIR, Recording, data_file, load, repeat_file
from bench.replay.forest import BEST_SO_FAR, SURROGATES
from bench.replay.numpy_cpu import numpy_cpu, rerun_without_avx512
from bench.replay.plot import anytime_svg
from bench.replay.record import TASKS, spec_of, task_preset
from bench.replay.run import DEFAULT_METHODS, METHODS, Run, run_seed
from bench.replay.surrogate import Surrogate, fidelity
from bench.reporting import (
    benchmark_parser,
    command_line,
    load_average,
    markdown_table,
    median_interval,
    publish,
    size_of,
)
from bench.text_task import versions

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
# The anytime curve's compute points: from 2% to all of the budget, evenly on a log scale.
GRID = [0.02 * (50 ** (i / 39)) for i in range(40)]

_SURROGATE: Surrogate | None = None


def _start(task: str, folder: str, model: str) -> None:
    global _SURROGATE
    recording = load(data_file(task, Path(folder)))
    _SURROGATE = Surrogate(spec_of(task), recording.fitted(), model=model)


def _seed(task: str, methods: list[str], seed: int, budget_s: float, epoch_budget: int | None) -> list[Run]:
    assert _SURROGATE is not None
    runs = run_seed(task_preset(task), methods, seed, budget_s, _SURROGATE, epoch_budget=epoch_budget)
    print(
        f"seed {seed}: " + ", ".join(f"{r.method} {r.best[-1]:.4f} ({r.trials} trials)" for r in runs),
        flush=True,
    )
    return runs


def budget_cpu_s(recording: Recording, trials: float) -> float:
    """The budget of a run: the mean CPU seconds of the recording's trials (each its own epochs), times trials."""
    costs = [sum(c.cpu_s[: c.epochs]) for c in recording.curves if c.failed is None]
    return trials * statistics.mean(costs)


def runs_json(runs: list[Run]) -> list[dict[str, Any]]:
    """Every run's trace as plain JSON: the points where its best improved and its last, which is all that
    best_at and to_reach read (a best of inf, before the first finished trial, is written as null)."""
    rows = []
    for r in runs:
        kept = [
            i for i, b in enumerate(r.best) if i == len(r.best) - 1 or b < (r.best[i - 1] if i else math.inf)
        ]
        rows.append(
            {
                "method": r.method,
                "seed": r.seed,
                "trials": r.trials,
                "compute": [r.compute[i] for i in kept],
                "best": [r.best[i] for i in kept],
            }
        )
    return rows


def runs_command(earlier: dict[str, Any]) -> str | None:
    """The command that ran a results file's runs: a merged file's own command only merged them."""
    return earlier["config"].get("runs_from", {}).get("command") or earlier.get("command")


def runs_of(rows: list[dict[str, Any]]) -> list[Run]:
    """Runs back from runs_json's rows (a results file of this benchmark or of bench/peers)."""
    return [
        Run(
            method=str(r["method"]),
            seed=int(r["seed"]),
            compute=[float(c) for c in r["compute"]],
            best=[math.inf if b is None else float(b) for b in r["best"]],
            trials=int(r["trials"]),
        )
        for r in rows
    ]


def merge_peers(runs: list[Run], budget_s: float, peers: dict[str, Any]) -> list[Run]:
    """The peers' runs beside these, on the seeds both cover; ValueError if they ran on another budget."""
    if not math.isclose(float(peers["config"]["budget_cpu_s"]), budget_s, rel_tol=1e-9):
        raise ValueError(
            f"the peers ran on a budget of {peers['config']['budget_cpu_s']} s, not {budget_s} s"
        )
    theirs = runs_of(peers["runs"])
    seeds = {r.seed for r in runs} & {r.seed for r in theirs}
    return [r for r in [*runs, *theirs] if r.seed in seeds]


def summarize(runs: list[Run], budget_s: float | None, reference: float) -> dict[str, Any]:
    """Per seed, random search's final best is the target; how much compute each method took to reach it, its
    best at shares of random's compute, and its regret over compute normalized by the recording's median value.
    Random's compute is the budget, or without one (a budget in trial-epochs) the seed's random run's own."""
    methods = list(dict.fromkeys(r.method for r in runs))
    seeds = sorted({r.seed for r in runs})
    by = {(r.method, r.seed): r for r in runs}
    floor = min(r.best[-1] for r in runs if r.best)
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    reached: dict[str, int] = dict.fromkeys(methods, 0)
    at: dict[str, dict[float, list[float]]] = {m: {f: [] for f in FRACTIONS} for m in methods}
    regret: dict[str, list[list[float]]] = {m: [] for m in methods}
    for seed in seeds:
        random_run = by[("random", seed)]
        whole = random_run.compute[-1] if budget_s is None else budget_s
        target = random_run.best[-1]
        base = random_run.to_reach(target)
        assert base is not None
        # A method run on fewer seeds than random (a peer cut short) is summarized over its own seeds.
        for m in (m for m in methods if (m, seed) in by):
            run = by[(m, seed)]
            spent = run.to_reach(target)
            ratios[m].append(math.inf if spent is None else spent / base)
            reached[m] += spent is not None
            for f in FRACTIONS:
                at[m][f].append(run.best_at(f * whole))
            regret[m].append([(run.best_at(g * whole) - floor) / (reference - floor) for g in GRID])
    rows = []
    for m in methods:
        low, high = median_interval(ratios[m])
        rows.append(
            {
                "method": m,
                "reached": reached[m],
                "ratio_median": statistics.median(ratios[m]),
                "ratio_interval": [low, high],
                "best_at": {str(f): statistics.median(at[m][f]) for f in FRACTIONS},
                # Trials (a peer's evaluations) per run: how many the budget paid for.
                "trials_median": statistics.median(by[(m, seed)].trials for seed in seeds if (m, seed) in by),
                "seeds": len(ratios[m]),
            }
        )
    curves = {}
    for m in methods:
        columns = list(zip(*regret[m], strict=True))
        bands = [median_interval(list(c)) for c in columns]
        curves[m] = ([statistics.median(c) for c in columns], [b[0] for b in bands], [b[1] for b in bands])
    return {"rows": rows, "curves": curves, "floor": floor, "seeds": len(seeds)}


def tables(summary: dict[str, Any]) -> str:
    """The two tables: compute to reach random search's best, and the best at shares of its compute."""

    def ratio(value: float) -> str:
        return "never" if math.isinf(value) else f"{value:.2f}"

    n = summary["seeds"]
    first = markdown_table(
        ["method", "reached random's best", "compute to reach it vs random, median (90% interval)"],
        [
            [
                r["method"],
                f"{r['reached']}/{r.get('seeds', n)}",
                f"{ratio(r['ratio_median'])} ({ratio(r['ratio_interval'][0])} to {ratio(r['ratio_interval'][1])})",
            ]
            for r in summary["rows"]
        ],
    )
    second = markdown_table(
        ["method", *(f"best at {int(f * 100)}% of random's compute" for f in FRACTIONS)],
        [[r["method"], *(f"{r['best_at'][str(f)]:.4f}" for f in FRACTIONS)] for r in summary["rows"]],
    )
    return f"{first}\n\n{second}"


def markdown(summary: dict[str, Any], fid: dict[str, Any]) -> str:
    surrogate = (
        f"Surrogate `{fid['model']}` (fit `{fid['fingerprint']}`), its fidelity on {fid['held_out']} held-out configurations (fitted on"
        f" {fid['fitted']}): Spearman {fid['value_spearman']:.3f} for the trial value (best loss within the"
        f" configuration's own epochs), {fid['last_epoch_spearman']:.3f} for the last epoch's loss,"
        f" {fid['epoch_spearman']:.3f} for each epoch's loss (mean over epochs), {fid['cost_spearman']:.3f} for CPU"
        " seconds per epoch."
    )
    if "seed_value_spearman" in fid:
        surrogate += (
            f" Two trainings of the same {fid['repeated']} configurations with different seeds rank at Spearman"
            f" {fid['seed_value_spearman']:.3f}: what the surrogate could reach at most."
        )
    return f"{tables(summary)}\n\n{surrogate}"


def targets(rows: list[dict[str, Any]], fid: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets this run can judge: the default's where it ran (a run of other methods alone, a
    candidate measured beside stored runs, has none), and the surrogate's fidelity."""
    judged = [
        {
            "target": "tunefleet reaches random search's best in at most 1/4 of its compute (median)",
            "figure": round(r["ratio_median"], 3),
            "met": r["ratio_median"] <= 0.25,
        }
        for r in rows
        if r["method"] == "tunefleet"
    ]
    return [
        *judged,
        {
            "target": "the surrogate ranks held-out configurations as training does (Spearman >= 0.9)",
            "figure": round(fid["value_spearman"], 3),
            "met": fid["value_spearman"] >= 0.9,
        },
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = benchmark_parser(
        "replay", __doc__, quick="10 seeds", smoke="2 seeds, a budget of 10 random trials"
    )
    parser.add_argument("--task", choices=TASKS, default="bbc-news-minilm")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument(
        "--budget-trials", type=float, default=50, help="the budget: this many random trials' compute"
    )
    parser.add_argument(
        "--epoch-budget",
        type=int,
        help="the budget in trial-epochs, as bench.time_to_good_model's, instead of --budget-trials",
    )
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(DEFAULT_METHODS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--svg", type=Path, help="write the anytime plot here")
    parser.add_argument(
        "--surrogate",
        choices=SURROGATES,
        default=BEST_SO_FAR,
        help="the model that replays the recorded task",
    )
    parser.add_argument(
        "--runs-from",
        type=Path,
        help="take the methods' runs from this results file instead of running them again",
    )
    parser.add_argument(
        "--peers", type=Path, help="a results file of python -m bench.peers.run: its methods join the report"
    )
    args = parser.parse_args(argv)
    size = size_of(args)
    seeds = 2 if size == "smoke" else 10 if size == "quick" else args.seeds
    budget_trials = 10 if size == "smoke" else args.budget_trials
    methods = ["random", *(m for m in args.methods if m != "random")]
    recording = load(data_file(args.task, args.data_dir))
    spec = spec_of(args.task)
    repeat = repeat_file(data_file(args.task, args.data_dir))
    fid = fidelity(spec, recording, load(repeat) if repeat.exists() else None, model=args.surrogate)
    epoch_budget: int | None = args.epoch_budget
    if epoch_budget is not None and (epoch_budget < 1 or args.peers or size == "smoke"):
        parser.error("--epoch-budget: a positive number of trial-epochs, without --peers or --smoke")
    budget_s: float | None = None if epoch_budget else budget_cpu_s(recording, budget_trials)
    reference = statistics.median(c.value() for c in recording.curves if c.failed is None)
    started = time.perf_counter()
    load_before = load_average()
    if args.runs_from:
        earlier = json.loads(args.runs_from.read_text())
        runs = runs_of(earlier["runs"])
        methods = list(dict.fromkeys(r.method for r in runs))
        seeds = len({r.seed for r in runs})
        epoch_budget = earlier["config"].get("epoch_budget")
        budget_s = None if epoch_budget else float(earlier["config"]["budget_cpu_s"])
        budget_trials = None if epoch_budget else earlier["config"]["budget_trials"]
        # The runs' own wall time and load, not this merge's.
        wall = float(earlier["config"]["wall_s"])
        load_before = earlier["config"]["load_average"]["before"]
        load_after = earlier["config"]["load_average"]["after"]
    else:
        with ProcessPoolExecutor(
            args.jobs, initializer=_start, initargs=(args.task, str(args.data_dir), args.surrogate)
        ) as pool:
            futures = [
                pool.submit(
                    _seed, args.task, methods, seed, math.inf if budget_s is None else budget_s, epoch_budget
                )
                for seed in range(seeds)
            ]
            runs = [run for f in futures for run in f.result()]
        wall = time.perf_counter() - started
        load_after = load_average()
    own = runs
    peers: dict[str, Any] = {}
    if args.peers:
        peers = json.loads(args.peers.read_text())
        if budget_s is None:
            raise SystemExit(f"{args.runs_from} ran on a budget of trial-epochs: the peers' is compute")
        runs = merge_peers(runs, budget_s, peers)
        seeds = len({r.seed for r in runs})
    summary = summarize(runs, budget_s, reference)
    if args.svg:
        # A method run on fewer seeds than the rest says so in the legend; the peers' lines are dashed.
        labels = {
            r["method"]: r["method"] if r["seeds"] == seeds else f"{r['method']} ({r['seeds']} seeds)"
            for r in summary["rows"]
        }
        mine = {r.method for r in own}
        args.svg.parent.mkdir(parents=True, exist_ok=True)
        args.svg.write_text(
            anytime_svg(
                f"{args.task}: median normalized regret over {seeds} seeds (90% bootstrap band)",
                GRID,
                {labels[m]: curve for m, curve in summary["curves"].items()},
                x_label="compute (share of the budget: random search's compute for its trials)",
                y_label="normalized regret",
                dashed={label for m, label in labels.items() if m not in mine},
            )
        )
    publish(
        {
            "benchmark": "replay",
            "command": command_line("bench.replay.benchmark", argv),
            "config": {
                "task": args.task,
                "surrogate": args.surrogate,
                "size": size,
                "seeds": seeds,
                "budget_trials": None if epoch_budget else budget_trials,
                "budget_cpu_s": budget_s,
                **({"epoch_budget": epoch_budget} if epoch_budget else {}),
                "methods": [r["method"] for r in summary["rows"]],
                "recorded_configurations": len(recording.curves),
                "reference_value": reference,
                "wall_s": round(wall, 1),
                "load_average": {"before": load_before, "after": load_after},
                **versions(),
                # The runs' numpy, not a merge's: a merge (--runs-from) runs nothing numpy's CPU code could move.
                "numpy_cpu": earlier["config"].get("numpy_cpu") if args.runs_from else numpy_cpu(),
                **(
                    {"runs_from": {"file": str(args.runs_from), "command": runs_command(earlier)}}
                    if args.runs_from
                    else {}
                ),
                **(
                    {"peers": {"file": str(args.peers), "command": peers.get("command"), **peers["config"]}}
                    if peers
                    else {}
                ),
            },
            "fidelity": fid,
            "summary": {"rows": summary["rows"], "floor": summary["floor"]},
            "markdown": markdown(summary, fid),
            # What a section written by hand (bench/sections/) takes in place of its `{tables}` line.
            "tables": tables(summary),
            # This benchmark's own runs (the peers' stay in their file): another report can merge without rerunning.
            "runs": runs_json(own),
            "targets": targets(summary["rows"], fid),
        },
        args.out if args.out != "bench/results/replay.json" else f"bench/results/replay-{args.task}.json",
    )


if __name__ == "__main__":
    rerun_without_avx512("bench.replay.benchmark")
    main(sys.argv[1:])
