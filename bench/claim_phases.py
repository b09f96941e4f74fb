"""Benchmark 2b: where a TPE claim's time goes at 5,000 trials, per phase, with 1 and with 8 worker processes."""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from bench.common import (
    ZERO_COST_EPOCHS,
    admin_engine,
    deleted_afterwards,
    seed_trials,
    study_trials,
    url_from,
    zero_cost_spec,
)
from bench.coordination_overhead import POLL_INTERVAL_S, SPEC_SEED
from bench.processes import Processes, clean_up_on_sigterm, python_module
from bench.reporting import StoreRun, benchmark_parser, markdown_table, publish, size_of
from studies import StudyRepository, open_storage
from studies.space import distributions

NAME = "claim_phases"

# (label, depth in the table, owner, method): each call's wall time and its thread's CPU time are
# recorded. A worker's loop runs on its main thread; its heartbeat thread's CPU is not in any phase.
PHASES: list[tuple[str, int, str, str]] = [
    ("claim", 0, "studies.repository:StudyRepository", "claim"),
    (
        "claim transaction (budget slot, trial, tags, registry)",
        1,
        "studies.repository:StudyRepository",
        "_take_trial",
    ),
    ("sampling", 1, "studies.repository:StudyRepository", "_sample"),
    ("refresh of the trial cache", 2, "studies._optuna.trial_reads:BulkReadRDBStorage", "_get_trials"),
    (
        "TPE: split, Parzen estimators, candidates",
        2,
        "studies._optuna.cost_aware:CostAwareTPESampler",
        "_sample",
    ),
    (
        "log density of the candidates",
        3,
        "studies._optuna.cost_aware:CostAwareTPESampler",
        "_compute_acquisition_func",
    ),
    ("parameters written", 1, "studies.repository:StudyRepository", "_write_params"),
    ("report (each of 3 per trial)", 0, "studies.repository:StudyRepository", "report"),
    ("complete", 0, "studies.repository:StudyRepository", "complete"),
]


def install_timers(samples: dict[str, list[tuple[float, float]]]) -> None:
    """Wrap each phase's method so that its calls append (wall s, thread CPU s) to samples[label]."""
    for label, _, where, method in PHASES:
        module, owner_name = where.split(":")
        owner = getattr(importlib.import_module(module), owner_name)
        original: Callable[..., Any] = getattr(owner, method)

        def timed(*args: Any, _f: Callable[..., Any] = original, _label: str = label, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return _f(*args, **kwargs)
            finally:
                samples.setdefault(_label, []).append((time.perf_counter() - wall, time.thread_time() - cpu))

        setattr(owner, method, functools.wraps(original)(timed))


def child(url: str, study_name: str) -> int:
    """One `tunefleet worker`-like process: the real loop on the study, its phases timed, printed as JSON."""
    from worker.loop import LoopOptions, build_runner, run_loop
    from worker.settings import WorkerSettings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    samples: dict[str, list[tuple[float, float]]] = {}
    install_timers(samples)
    with tempfile.TemporaryDirectory(prefix="bench-cp-") as scratch:
        settings = WorkerSettings(
            database_url=url,
            device="cpu",
            poll_interval_s=POLL_INTERVAL_S,
            cache_dir=Path(scratch) / "cache",
            artifact_dir=str(Path(scratch) / "artifacts"),
        )
        runner, identity = build_runner(settings)
        print("ready", flush=True)
        sys.stdin.readline()
        try:
            run_loop(runner, identity, LoopOptions(study_names=(study_name,), exit_when_idle=True), settings)
        finally:
            runner.repository.engine.dispose()
    # A worker's first claim loads the whole study into its cache: reported by benchmark 2, left out here.
    print(json.dumps({label: calls[1:] for label, calls in samples.items()}), flush=True)
    return 0


def runnable_sampler(stop: threading.Event, out: list[int]) -> None:
    """Every 20 ms, how many threads on this machine are running or ready to run (/proc/stat procs_running)."""
    while not stop.wait(0.02):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("procs_running"):
                out.append(int(line.split()[1]))


def run_fleet(
    url: str, workers: int, seeded: int, trials: int, repository: StudyRepository
) -> dict[str, Any]:
    """A seeded TPE study, `workers` processes started together on it; the phases, the claim p50, the load."""
    name = f"bench-cp-{uuid.uuid4().hex[:10]}"
    spec = zero_cost_spec(name, "tpe", trials, seed=SPEC_SEED)
    command = python_module("bench.claim_phases", "--child", name, "--url", url)
    with (
        deleted_afterwards(url) as made,
        admin_engine(url) as admin,
        tempfile.TemporaryDirectory(prefix="bench-cp-logs-") as logdir,
    ):
        made.studies.append(name)
        record = repository.create(spec)
        seed_trials(admin, record.optuna_study_id, distributions(spec.space), seeded, seed=0)
        # Killed at once if anything fails: a worker left waiting for "go" would wait for ever.
        with Processes([command] * workers, Path(logdir), "worker", grace_s=0) as processes:
            made.worker_pids += processes.pids
            processes.wait_ready("a worker")
            running: list[int] = []
            stop = threading.Event()
            sampler = threading.Thread(target=runnable_sampler, args=(stop, running), daemon=True)
            sampler.start()
            started = time.perf_counter()
            processes.send("go")
            # All go first, then each one's output is read to its end.
            outputs = processes.results(timeout_s=900)
            wall_s = time.perf_counter() - started
            stop.set()
            sampler.join()
        claim_s = [float(json.loads(r.claim_s)) for r in study_trials(admin, name) if r.claim_s is not None]
    phases: dict[str, list[tuple[float, float]]] = {}
    for output in outputs:
        for label, calls in output.items():
            phases.setdefault(label, []).extend(tuple(call) for call in calls)
    return {
        "study_name": name,
        "workers": workers,
        "seeded": seeded,
        "trials": trials,
        "wall_s": round(wall_s, 2),
        "claim_s_p50_ms": round(1000 * statistics.median(claim_s), 1) if claim_s else None,
        "runnable_mean": round(statistics.fmean(running), 2) if running else None,
        "phases": {
            label: {
                "calls": len(calls),
                "wall_ms_p50": round(1000 * statistics.median(c[0] for c in calls), 2),
                "cpu_ms_p50": round(1000 * statistics.median(c[1] for c in calls), 2),
            }
            for label, calls in phases.items()
            if calls
        },
    }


def markdown(fleets: list[dict[str, Any]], environment: str) -> str:
    """One row per phase, wall and CPU medians for each fleet size, and each fleet's CPU sharing."""
    headers = ["phase"]
    for fleet in fleets:
        w = fleet["workers"]
        headers += [f"{w} worker{'s' if w > 1 else ''}: wall ms", "CPU ms", "wall / CPU"]
    rows = []
    for label, depth, _, _ in PHASES:
        row = ["&nbsp;&nbsp;" * depth + label]
        for fleet in fleets:
            figure = fleet["phases"].get(label)
            if figure is None:
                row += ["-", "-", "-"]
                continue
            share = figure["wall_ms_p50"] / figure["cpu_ms_p50"] if figure["cpu_ms_p50"] else float("nan")
            row += [f"{figure['wall_ms_p50']:.1f}", f"{figure['cpu_ms_p50']:.1f}", f"{share:.1f}x"]
        rows.append(row)
    cores = os.cpu_count() or 1
    sharing = "; ".join(
        f"{f['workers']} worker(s): claim p50 {f['claim_s_p50_ms']} ms over all claims (`claim_s`), "
        f"{f['runnable_mean']} threads "
        f"running or ready on average against {cores} cores, {f['trials']} trials in {f['wall_s']} s"
        for f in fleets
    )
    intro = (
        f"TPE on a study seeded with {fleets[0]['seeded']:,} finished trials, the zero-cost task of benchmark 2 "
        f"({ZERO_COST_EPOCHS} reports per trial), real worker loops in separate processes started together on PostgreSQL. "
        "Medians over every call after each worker's first claim (its cache load, in benchmark 2's tables). "
        "Wall time is the call's; CPU is the calling thread's own (the worker's, not its database backend's). "
        "Indented phases are parts of the phase above them. Where wall / CPU matches the machine's share of "
        "a core per ready thread, the phase is waiting for a CPU, not for a lock or the database."
    )
    return "\n\n".join([intro, markdown_table(headers, rows), sharing, environment])


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(
        NAME,
        __doc__,
        quick="500 seeded trials, 1 and 2 workers",
        smoke="50 seeded trials, 1 worker, 4 trials",
        store=True,
    )
    parser.add_argument("--workers", type=int, nargs="+")
    parser.add_argument("--seeded", type=int)
    parser.add_argument("--trials", type=int, help="trials per fleet (default 96)")
    parser.add_argument("--child", metavar="STUDY", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    url = url_from(args)
    if args.child:
        return child(url, args.child)
    clean_up_on_sigterm()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    size = size_of(args)
    workers = args.workers or {"smoke": [1], "quick": [1, 2], "full": [1, 8]}[size]
    seeded = args.seeded if args.seeded is not None else {"smoke": 50, "quick": 500, "full": 5000}[size]
    trials = args.trials or {"smoke": 4, "quick": 24, "full": 96}[size]
    invocation = StoreRun.begin(f"bench.{NAME}", argv, url)
    repository = StudyRepository(open_storage(url, pool_size=1))
    try:
        fleets = []
        for n in workers:
            fleets.append(run_fleet(url, n, seeded, trials, repository))
            print(
                f"  {n} worker(s): claim p50 {fleets[-1]['claim_s_p50_ms']} ms", file=sys.stderr, flush=True
            )
    finally:
        repository.engine.dispose()
    result = {
        "config": invocation.config(),
        "fleets": fleets,
        "targets": [],
        "markdown": markdown(fleets, invocation.markdown()),
    }
    publish(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
