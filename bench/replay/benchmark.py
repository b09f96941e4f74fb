"""Optimizers side by side on a recorded task: compute to reach random search's best, and anytime regret."""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.replay.curves import DATA_DIR, data_file, load, repeat_file
from bench.replay.plot import anytime_svg
from bench.replay.record import TASKS, spec_of
from bench.replay.run import METHODS, Run, run_seed
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
from bench.text_task import load_preset, versions

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
# The anytime curve's compute points: from 2% to all of the budget, evenly on a log scale.
GRID = [0.02 * (50 ** (i / 39)) for i in range(40)]

_SURROGATE: Surrogate | None = None


def _start(task: str, folder: str) -> None:
    global _SURROGATE
    recording = load(data_file(task, Path(folder)))
    _SURROGATE = Surrogate(spec_of(task), recording.fitted())


def _seed(task: str, methods: list[str], seed: int, budget_s: float) -> list[Run]:
    assert _SURROGATE is not None
    runs = run_seed(load_preset(task), methods, seed, budget_s, _SURROGATE)
    print(
        f"seed {seed}: " + ", ".join(f"{r.method} {r.best[-1]:.4f} ({r.trials} trials)" for r in runs),
        flush=True,
    )
    return runs


def summarize(runs: list[Run], budget_s: float, reference: float) -> dict[str, Any]:
    """Per seed, random search's final best is the target; how much compute each method took to reach it, its
    best at shares of random's compute, and its regret over compute normalized by the recording's median value."""
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
        target = random_run.best[-1]
        base = random_run.to_reach(target)
        assert base is not None
        for m in methods:
            run = by[(m, seed)]
            spent = run.to_reach(target)
            ratios[m].append(math.inf if spent is None else spent / base)
            reached[m] += spent is not None
            for f in FRACTIONS:
                at[m][f].append(run.best_at(f * budget_s))
            regret[m].append([(run.best_at(g * budget_s) - floor) / (reference - floor) for g in GRID])
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
            }
        )
    curves = {}
    for m in methods:
        columns = list(zip(*regret[m], strict=True))
        bands = [median_interval(list(c)) for c in columns]
        curves[m] = ([statistics.median(c) for c in columns], [b[0] for b in bands], [b[1] for b in bands])
    return {"rows": rows, "curves": curves, "floor": floor, "seeds": len(seeds)}


def markdown(summary: dict[str, Any], fid: dict[str, Any]) -> str:
    def ratio(value: float) -> str:
        return "never" if math.isinf(value) else f"{value:.2f}"

    n = summary["seeds"]
    first = markdown_table(
        ["method", "reached random's best", "compute to reach it vs random, median (90% interval)"],
        [
            [
                r["method"],
                f"{r['reached']}/{n}",
                f"{ratio(r['ratio_median'])} ({ratio(r['ratio_interval'][0])} to {ratio(r['ratio_interval'][1])})",
            ]
            for r in summary["rows"]
        ],
    )
    second = markdown_table(
        ["method", *(f"best at {int(f * 100)}% of random's compute" for f in FRACTIONS)],
        [[r["method"], *(f"{r['best_at'][str(f)]:.4f}" for f in FRACTIONS)] for r in summary["rows"]],
    )
    surrogate = (
        f"Surrogate fidelity on {fid['held_out']} held-out configurations (fitted on {fid['fitted']}): Spearman"
        f" {fid['value_spearman']:.3f} for the trial value (best loss within the configuration's own epochs),"
        f" {fid['last_epoch_spearman']:.3f} for the last epoch's loss, {fid['cost_spearman']:.3f} for CPU seconds"
        " per epoch."
    )
    if "seed_value_spearman" in fid:
        surrogate += (
            f" Two trainings of the same {fid['repeated']} configurations with different seeds rank at Spearman"
            f" {fid['seed_value_spearman']:.3f}: what the surrogate could reach at most."
        )
    return f"{first}\n\n{second}\n\n{surrogate}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = benchmark_parser(
        "replay", __doc__, quick="10 seeds", smoke="2 seeds, a budget of 10 random trials"
    )
    parser.add_argument("--task", choices=TASKS, default="bbc-news-minilm")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument(
        "--budget-trials", type=float, default=50, help="the budget: this many random trials' compute"
    )
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--svg", type=Path, help="write the anytime plot here")
    args = parser.parse_args(argv)
    size = size_of(args)
    seeds = 2 if size == "smoke" else 10 if size == "quick" else args.seeds
    budget_trials = 10 if size == "smoke" else args.budget_trials
    methods = ["random", *(m for m in args.methods if m != "random")]
    recording = load(data_file(args.task, args.data_dir))
    spec = spec_of(args.task)
    repeat = repeat_file(data_file(args.task, args.data_dir))
    fid = fidelity(spec, recording, load(repeat) if repeat.exists() else None)
    costs = [sum(c.cpu_s[: c.epochs]) for c in recording.curves if c.failed is None]
    budget_s = budget_trials * statistics.mean(costs)
    reference = statistics.median(c.value() for c in recording.curves if c.failed is None)
    started = time.perf_counter()
    load_before = load_average()
    with ProcessPoolExecutor(args.jobs, initializer=_start, initargs=(args.task, str(args.data_dir))) as pool:
        futures = [pool.submit(_seed, args.task, methods, seed, budget_s) for seed in range(seeds)]
        runs = [run for f in futures for run in f.result()]
    wall = time.perf_counter() - started
    summary = summarize(runs, budget_s, reference)
    if args.svg:
        args.svg.parent.mkdir(parents=True, exist_ok=True)
        args.svg.write_text(
            anytime_svg(
                f"{args.task}: median normalized regret over {seeds} seeds (90% bootstrap band)",
                GRID,
                summary["curves"],
                x_label="compute (share of the budget: random search's compute for its trials)",
                y_label="normalized regret",
            )
        )
    tunefleet = next(r for r in summary["rows"] if r["method"] == "tunefleet")
    publish(
        {
            "benchmark": "replay",
            "command": command_line("bench.replay.benchmark", argv),
            "config": {
                "task": args.task,
                "size": size,
                "seeds": seeds,
                "budget_trials": budget_trials,
                "budget_cpu_s": budget_s,
                "methods": methods,
                "recorded_configurations": len(recording.curves),
                "wall_s": round(wall, 1),
                "load_average": {"before": load_before, "after": load_average()},
                **versions(),
            },
            "fidelity": fid,
            "summary": {"rows": summary["rows"], "floor": summary["floor"]},
            "markdown": markdown(summary, fid),
            "targets": [
                {
                    "target": "tunefleet reaches random search's best in at most 1/4 of its compute (median)",
                    "figure": round(tunefleet["ratio_median"], 3),
                    "met": tunefleet["ratio_median"] <= 0.25,
                },
                {
                    "target": "the surrogate ranks held-out configurations as training does (Spearman >= 0.9)",
                    "figure": round(fid["value_spearman"], 3),
                    "met": fid["value_spearman"] >= 0.9,
                },
            ],
        },
        args.out if args.out != "bench/results/replay.json" else f"bench/results/replay-{args.task}.json",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
