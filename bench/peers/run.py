"""Peer optimizers on a replayed task, in their own environment: python -m bench.peers.run (in .venv-peers)."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.peers.methods import METHODS, Trace, run
from bench.peers.replay import Replay
from bench.replay.numpy_cpu import numpy_cpu, rerun_without_avx512

PACKAGES = ("smac", "dehb", "syne-tune", "ConfigSpace", "numpy")

_REPLAY: Replay | None = None


def _start(model: str) -> None:
    global _REPLAY
    _REPLAY = Replay(Path(model))


def _run(method: str, seed: int, budget_s: float) -> tuple[dict[str, Any], float]:
    assert _REPLAY is not None
    started = time.perf_counter()
    trace: Trace = run(method, _REPLAY, seed, budget_s)
    wall = time.perf_counter() - started
    print(f"seed {seed}: {method} {trace.found:.4f} ({trace.trials} evaluations, {wall:.1f} s)", flush=True)
    return trace.to_json(), wall


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _improvements(run: dict[str, Any]) -> dict[str, Any]:
    """A run's trace at the points where its best improved and its last: all the report reads of it."""
    best = [math.inf if b is None else b for b in run["best"]]
    kept = [i for i, b in enumerate(best) if i == len(best) - 1 or b < (best[i - 1] if i else math.inf)]
    return {**run, "compute": [run["compute"][i] for i in kept], "best": [run["best"][i] for i in kept]}


def combine(paths: Sequence[Path], out: Path) -> None:
    """Several results files of this script (methods or seeds run apart) as one: every run, each file's config."""
    parts = [json.loads(p.read_text()) for p in paths]
    budgets = {p["config"]["budget_cpu_s"] for p in parts}
    if len(budgets) != 1:
        raise ValueError(f"the files ran on different budgets: {sorted(budgets)}")
    runs = [_improvements(r) for p in parts for r in p["runs"]]
    seeds: dict[str, list[int]] = {}
    for r in runs:
        seeds.setdefault(r["method"], []).append(r["seed"])
    first = parts[0]["config"]
    result = {
        "benchmark": "replay-peers",
        "command": " && ".join(p["command"] for p in parts),
        "config": {
            **{
                k: v for k, v in first.items() if k not in ("seeds", "first_seed", "methods", "method_wall_s")
            },
            "methods": list(seeds),
            "seeds": {m: len(s) for m, s in seeds.items()},
            "wall_s": round(sum(p["config"]["wall_s"] for p in parts), 1),
            "method_wall_s": {
                m: round(sum(p["config"]["method_wall_s"].get(m, 0.0) for p in parts), 1) for m in seeds
            },
            "parts": [p["config"] for p in parts],
        },
        "runs": runs,
    }
    out.write_text(json.dumps(_clean(result), indent=2) + "\n")
    print(f"written to {out}: {len(runs)} runs")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path(".peers/bbc-news-minilm.npz"))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--combine", nargs="+", type=Path, help="combine these results files into --out instead"
    )
    args = parser.parse_args(argv)
    if args.combine:
        combine(args.combine, args.out)
        return
    replay = Replay(args.model)
    task = replay.meta["task"]
    budget_s = float(replay.meta["budget_cpu_s"])
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    # A fresh interpreter per run, its hash seed fixed: SMAC's trace otherwise depends on what ran before it in
    # the same process, and a run must give the same trace alone or among others.
    os.environ["PYTHONHASHSEED"] = "0"
    with ProcessPoolExecutor(
        args.jobs, initializer=_start, initargs=(str(args.model),), max_tasks_per_child=1
    ) as pool:
        futures = [pool.submit(_run, m, seed, budget_s) for seed in seeds for m in args.methods]
        done = [f.result() for f in futures]
    wall = time.perf_counter() - started
    runs = [_improvements(r) for r, _ in done]
    walls: dict[str, float] = {}
    for r, w in done:
        walls[r["method"]] = walls.get(r["method"], 0.0) + w
    result = {
        "benchmark": "replay-peers",
        "command": shlex.join(["python", "-m", "bench.peers.run", *(sys.argv[1:] if argv is None else argv)]),
        "config": {
            "task": task,
            "seeds": len(seeds),
            "first_seed": args.first_seed,
            "budget_trials": replay.meta["budget_trials"],
            "budget_cpu_s": budget_s,
            "methods": args.methods,
            "wall_s": round(wall, 1),
            "method_wall_s": {m: round(w, 1) for m, w in walls.items()},
            "jobs": args.jobs,
            "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numpy_cpu": numpy_cpu(),
            **{name: metadata.version(name) for name in PACKAGES},
        },
        "runs": runs,
    }
    out = args.out or Path(f"bench/results/replay-peers-{task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(result), indent=2) + "\n")
    print(f"written to {out}; wall time {wall:.1f} s")


if __name__ == "__main__":
    rerun_without_avx512("bench.peers.run")
    main(sys.argv[1:])
