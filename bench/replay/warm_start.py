"""Warm start measured leave-one-task-out: a task's study learns only from the other tasks' recorded studies."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.replay.benchmark import budget_cpu_s, summarize
from bench.replay.curves import DATA_DIR, data_file, load
from bench.replay.forest import BEST_SO_FAR, SURROGATES
from bench.replay.numpy_cpu import numpy_cpu, rerun_without_avx512
from bench.replay.record import TASKS, spec_of, task_preset
from bench.replay.run import WARM, WARM_PRIOR, Run, Source, run_seed, source_of
from bench.replay.surrogate import Surrogate
from bench.reporting import benchmark_parser, command_line, load_average, markdown_table, publish, size_of
from bench.text_task import versions

METHODS = ["random", "tunefleet", WARM, WARM_PRIOR]

_SURROGATE: Surrogate | None = None
_SOURCES: tuple[Source, ...] = ()


def _start(task: str, sources: list[str], folder: str, model: str) -> None:
    global _SURROGATE, _SOURCES
    _SURROGATE = Surrogate(spec_of(task), load(data_file(task, Path(folder))).fitted(), model=model)
    _SOURCES = tuple(
        source_of(other, task_preset(other), load(data_file(other, Path(folder))).curves) for other in sources
    )


def _seed(task: str, seed: int, budget_s: float) -> list[Run]:
    assert _SURROGATE is not None
    runs = run_seed(task_preset(task), METHODS, seed, budget_s, _SURROGATE, _SOURCES)
    print(f"seed {seed}: " + ", ".join(f"{r.method} {r.best[-1]:.4f}" for r in runs), flush=True)
    return runs


def markdown(summary: dict[str, Any], task: str, sources: list[str], n_source_trials: list[int]) -> str:
    def ratio(value: float) -> str:
        return "never" if value == float("inf") else f"{value:.2f}"

    n = summary["seeds"]
    table = markdown_table(
        [
            "method",
            "reached random's best",
            "compute to reach it vs random, median (90% interval)",
            "best at 10% / 25% / 100% of random's compute",
        ],
        [
            [
                r["method"],
                f"{r['reached']}/{n}",
                f"{ratio(r['ratio_median'])} ({ratio(r['ratio_interval'][0])} to {ratio(r['ratio_interval'][1])})",
                " / ".join(f"{r['best_at'][f]:.4f}" for f in ("0.1", "0.25", "1.0")),
            ]
            for r in summary["rows"]
        ],
    )
    learnt = ", ".join(
        f"{s} ({k} recorded configurations)" for s, k in zip(sources, n_source_trials, strict=True)
    )
    return (
        f"{table}\n\nHeld-out task: {task}. `{WARM}` is tunefleet's defaults with `warm_start: {{studies: [...],"
        f" portfolio: 5, prior_weight: 0}}` (the portfolio alone) naming one completed study per other task, made"
        f" of that task's recording: {learnt}. `{WARM_PRIOR}` is warm start's defaults, the portfolio and the"
        " sampler's prior (`prior_weight: 1`). Portfolio trials are charged like any other."
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = benchmark_parser(
        "replay-warm", __doc__, quick="10 seeds", smoke="2 seeds, a budget of 10 trials"
    )
    parser.add_argument("--task", choices=TASKS, default="bbc-news-minilm")
    parser.add_argument("--from", dest="sources", nargs="+", choices=TASKS, help="default: every other task")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--budget-trials", type=float, default=50)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument(
        "--surrogate",
        choices=SURROGATES,
        default=BEST_SO_FAR,
        help="the model that replays the recorded task",
    )
    args = parser.parse_args(argv)
    size = size_of(args)
    seeds = 2 if size == "smoke" else 10 if size == "quick" else args.seeds
    budget_trials = 10 if size == "smoke" else args.budget_trials
    sources = args.sources or [t for t in TASKS if t != args.task and data_file(t, args.data_dir).exists()]
    if args.task in sources:
        raise SystemExit(f"{args.task} cannot learn from itself: leave it out of --from")
    recording = load(data_file(args.task, args.data_dir))
    budget_s = budget_cpu_s(recording, budget_trials)
    reference = statistics.median(c.value() for c in recording.curves if c.failed is None)
    n_source_trials = [
        sum(c.failed is None for c in load(data_file(s, args.data_dir)).curves) for s in sources
    ]
    started = time.perf_counter()
    load_before = load_average()
    with ProcessPoolExecutor(
        args.jobs, initializer=_start, initargs=(args.task, sources, str(args.data_dir), args.surrogate)
    ) as pool:
        futures = [pool.submit(_seed, args.task, seed, budget_s) for seed in range(seeds)]
        runs = [run for f in futures for run in f.result()]
    summary = summarize(runs, budget_s, reference)
    # The target is warm start's defaults: the portfolio and the prior.
    warm = next(r for r in summary["rows"] if r["method"] == WARM_PRIOR)
    publish(
        {
            "benchmark": "replay-warm",
            "command": command_line("bench.replay.warm_start", argv),
            "config": {
                "task": args.task,
                "surrogate": args.surrogate,
                "sources": sources,
                "source_configurations": n_source_trials,
                "size": size,
                "seeds": seeds,
                "budget_trials": budget_trials,
                "budget_cpu_s": budget_s,
                "wall_s": round(time.perf_counter() - started, 1),
                "load_average": {"before": load_before, "after": load_average()},
                **versions(),
                "numpy_cpu": numpy_cpu(),
            },
            "summary": {"rows": summary["rows"], "floor": summary["floor"]},
            "markdown": markdown(summary, args.task, sources, n_source_trials),
            "targets": [
                {
                    "target": "warm-started from the other tasks, tunefleet reaches random search's best in at most"
                    " 1/10 of its compute (median)",
                    "figure": round(warm["ratio_median"], 3),
                    "met": warm["ratio_median"] <= 0.10 if size == "full" else None,
                }
            ],
        },
        args.out
        if args.out != "bench/results/replay-warm.json"
        else f"bench/results/replay-warm-{args.task}.json",
    )


if __name__ == "__main__":
    rerun_without_avx512("bench.replay.warm_start")
    main(sys.argv[1:])
