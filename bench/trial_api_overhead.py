"""Benchmark 2c: what a kind python trial (the Trial API) costs per trial, against the built-in synthetic task."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
import torch

from bench.common import (
    ZERO_COST_EPOCHS,
    admin_engine,
    deleted_afterwards,
    url_from,
    with_query,
    zero_cost_spec,
)
from bench.coordination_overhead import (
    POLL_INTERVAL_S,
    SPEC_SEED,
    Run,
    counting,
    per_trial,
    run_tunefleet,
    start_tunefleet_pool,
)
from bench.processes import ROOT, clean_up_on_sigterm
from bench.reporting import StoreRun, benchmark_parser, fmt, markdown_table, publish, spread
from studies import StudyRepository, StudySpec, open_storage
from worker.epochs import EpochResult, KeepRule, by_val_loss
from worker.loop import LoopOptions, build_runner, run_loop
from worker.settings import WorkerSettings
from worker.tasks import TASK_KINDS
from worker.tasks.interface import TaskHost

NAME = "trial_api_overhead"
ENTRYPOINT = "bench.zero_cost_entrypoint:run"
KINDS = ("synthetic", "python")
# Random search: the cheapest claim, so the trial API's share of a trial is the largest it can be.
SAMPLER = "random"


@dataclass(frozen=True)
class Plan:
    """What one invocation measures."""

    workers: int
    repeats: int
    trials: int
    warmup_trials: int
    in_process_trials: int
    counted_trials: int


def plan_for(args: argparse.Namespace) -> Plan:
    """The sizes for --smoke, --quick or the full run, with any sizes given on the command line."""
    if args.smoke:
        plan = Plan(1, 1, 6, 2, 50, 20)
    elif args.quick:
        plan = Plan(1, 3, 100, 10, 2000, 50)
    else:
        plan = Plan(1, 7, 300, 10, 20_000, 100)
    overrides = {
        "workers": args.workers,
        "repeats": args.repeats,
        "trials": args.trials,
    }
    return Plan(**{**asdict(plan), **{k: v for k, v in overrides.items() if v}})


def study_spec(kind: str, name: str, n_trials: int) -> StudySpec:
    """The zero-cost study of benchmark 2; as kind python, the same study with the entry point doing the work.

    Same space (in the same order), sampler and seed, pruner, objective and budget: with one worker both
    kinds draw the same parameters and seeds for each trial number, and report the same losses.
    """
    synthetic = zero_cost_spec(name, SAMPLER, n_trials, seed=SPEC_SEED)
    if kind == "synthetic":
        return synthetic
    return StudySpec.model_validate(
        {**synthetic.model_dump(mode="json"), "task": {"kind": "python", "entrypoint": ENTRYPOINT}}
    )


# -- the trial API's own work, in this process, without the store -------------------------------------


@dataclass
class NullTrial:
    """A running trial whose reports go nowhere and that is never told to stop: the task kind's work alone."""

    params: dict[str, Any]
    seed: int
    number: int
    study_name: str = "in-process"
    metric: str = "val_loss"
    keep: KeepRule = by_val_loss
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoints: None = None

    def report(self, result: EpochResult) -> None:
        """Nothing: no store, no pruner."""

    def stop_reason(self) -> str | None:
        return None

    def pause(self, seconds: float) -> None:
        """Nothing: the zero-cost study's epochs take no time."""

    def note(self, name: str, value: Any) -> None:
        """Nothing: no store to record it in."""


def in_process_us(kind: str, trials: int, scratch: Path) -> tuple[float, float]:
    """(wall, CPU) microseconds per trial of the kind's run() with the zero-cost study's parameters, no store."""
    spec = study_spec(kind, "in-process", trials)
    host = TaskHost(device=torch.device("cpu"), cache_dir=scratch, allowed_entrypoints=("bench",))
    task = TASK_KINDS[kind](host)
    task.prepare(spec.task)
    params: dict[str, Any] = {"learning_rate": 1e-3, "batch_size": 32, "epochs": ZERO_COST_EPOCHS}
    params |= {"depth": 1, "width": 64, "activation": "relu", "optimizer": "adam"}
    task.run(spec.task, NullTrial(params, seed=0, number=0))  # the entry point's import, once per process
    wall, cpu = time.perf_counter(), time.process_time()
    for number in range(trials):
        task.run(spec.task, NullTrial(params, seed=number, number=number))
    return 1e6 * (time.perf_counter() - wall) / trials, 1e6 * (time.process_time() - cpu) / trials


def statements(kind: str, url: str, trials: int, scratch: Path) -> dict[str, Any]:
    """One worker's real loop in this process on a fresh study of the kind: SQL statements per trial."""
    name = f"bench-ta-count-{uuid.uuid4().hex[:8]}-{kind}"
    settings = WorkerSettings(
        database_url=url,
        device="cpu",
        poll_interval_s=POLL_INTERVAL_S,
        cache_dir=scratch / "cache",
        artifact_dir=str(scratch / "artifacts"),
        allowed_entrypoints=("bench",),
    )
    runner, identity = build_runner(settings)
    repository = runner.repository
    try:
        with deleted_afterwards(url) as made:
            made.studies.append(name)
            made.worker_pids.append(os.getpid())
            repository.create(study_spec(kind, name, trials))
            with counting(repository.engine) as counts:
                run_loop(runner, identity, LoopOptions(study_names=(name,), exit_when_idle=True), settings)
    finally:
        repository.engine.dispose()
    return per_trial(counts, trials, pre_ping=True)


# -- the fleet: real worker processes on PostgreSQL ---------------------------------------------------


def worker_env() -> dict[str, str]:
    """What the workers need to run the entry point: the allow list, and this checkout on their path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"TUNEFLEET_ALLOWED_ENTRYPOINTS": "bench", "PYTHONPATH": path}


def trial_outcomes(admin: sa.Engine, study_name: str) -> dict[int, tuple[str, float | None, int]]:
    """Each trial's state, value and number of reports, by trial number."""
    query = sa.text(
        """
        SELECT t.number, t.state, v.value,
               (SELECT count(*) FROM trial_intermediate_values i WHERE i.trial_id = t.trial_id) AS reports
        FROM trials t JOIN studies s ON s.study_id = t.study_id
        LEFT JOIN trial_values v ON v.trial_id = t.trial_id
        WHERE s.study_name = :name
        """
    )
    with admin.connect() as connection:
        rows = connection.execute(query, {"name": study_name}).all()
    return {int(r.number): (str(r.state), r.value, int(r.reports)) for r in rows}


def run_fleet(plan: Plan, url: str, workdir: Path) -> tuple[list[Run], list[bool], list[str]]:
    """Both kinds on the same workers, `repeats` times, alternating which goes first; after a warm-up of each.

    Returns the runs, whether each repeat's two studies ended with the same trials (one worker only),
    and the studies made (deleted afterwards).
    """
    token = uuid.uuid4().hex[:8]
    app = f"bench-ta-{token}"
    worker_url = with_query(url, application_name=app)
    names = {
        (kind, repeat): f"bench-ta-{token}-{kind}-r{repeat}"
        for repeat in range(-1, plan.repeats)
        for kind in KINDS
    }
    runs: list[Run] = []
    same: list[bool] = []
    repository = StudyRepository(open_storage(url, pool_size=1))
    try:
        with (
            deleted_afterwards(url) as made,
            admin_engine(url) as admin,
            start_tunefleet_pool(
                plan.workers, worker_url, list(names.values()), workdir, admin, worker_env()
            ) as pool,
        ):
            made.worker_pids += pool.pids
            for repeat in range(-1, plan.repeats):  # repeat -1: the warm-up, not measured
                trials = plan.warmup_trials if repeat < 0 else plan.trials
                order = KINDS if repeat % 2 == 0 else KINDS[::-1]
                outcomes = {}
                for kind in order:
                    name = names[(kind, repeat)]
                    made.studies.append(name)
                    run = Run(kind, SAMPLER, 0, plan.workers, repeat, trials)
                    run_tunefleet(
                        run, name, pool, repository, admin, app, spec=study_spec(kind, name, trials)
                    )
                    outcomes[kind] = trial_outcomes(admin, name)
                    if repeat >= 0:
                        runs.append(run)
                        print(
                            f"  {kind:9} rep={repeat}: {1000 / run.trials_per_s:6.2f} ms/trial, "
                            f"{run.worker_cpu_ms_per_trial:6.2f} ms CPU/trial",
                            file=sys.stderr,
                            flush=True,
                        )
                if repeat >= 0 and plan.workers == 1:
                    same.append(outcomes["synthetic"] == outcomes["python"])
    finally:
        repository.engine.dispose()
    return runs, same, made.studies


# -- figures -----------------------------------------------------------------------------------------

FIGURES = {
    "wall_ms_per_trial": "wall ms/trial",
    "worker_cpu_ms_per_trial": "worker CPU ms/trial",
    "server_cpu_ms_per_trial": "DB CPU ms/trial",
    "claim_p50_ms": "claim p50 ms",
}


def figures_of(run: Run) -> dict[str, float]:
    """A run's figures per trial; wall time from the steady throughput (the trials' own timestamps)."""
    return {
        "wall_ms_per_trial": 1000 / run.trials_per_s,
        "worker_cpu_ms_per_trial": run.worker_cpu_ms_per_trial,
        "server_cpu_ms_per_trial": run.server_cpu_ms_per_trial,
        "claim_p50_ms": run.claim_p50_ms,
    }


def summarize(runs: list[Run], in_process: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    """Each kind's figures (median [min-max] over repeats), and python / synthetic paired by repeat."""
    by = {(r.system, r.repeat): figures_of(r) for r in runs}
    repeats = sorted({r.repeat for r in runs})
    kinds = {
        kind: {figure: spread(by[(kind, rep)][figure] for rep in repeats) for figure in FIGURES}
        for kind in KINDS
    }
    for kind in KINDS:
        kinds[kind]["in_process_wall_us"] = spread(w for w, _ in in_process[kind])
        kinds[kind]["in_process_cpu_us"] = spread(c for _, c in in_process[kind])
    ratio = {
        figure: spread(by[("python", rep)][figure] / by[("synthetic", rep)][figure] for rep in repeats)
        for figure in FIGURES
    }
    difference_ms = {
        figure: spread(by[("python", rep)][figure] - by[("synthetic", rep)][figure] for rep in repeats)
        for figure in FIGURES
    }
    extra_cpu_us = statistics.median(c for _, c in in_process["python"]) - statistics.median(
        c for _, c in in_process["synthetic"]
    )
    return {
        "kinds": kinds,
        "ratio": ratio,
        "difference_ms": difference_ms,
        "in_process_extra_cpu_us": extra_cpu_us,
    }


def signed(figure: dict[str, float]) -> str:
    """'median [min to max]' of differences, which may be negative."""
    if figure["n"] == 1:
        return f"{figure['median']:+.2f}"
    return f"{figure['median']:+.2f} [{figure['min']:+.2f} to {figure['max']:+.2f}]"


def label(kind: str) -> str:
    return "kind python" if kind == "python" else "synthetic (built-in)"


def markdown(
    summary: dict[str, Any], counted: dict[str, Any], plan: Plan, same: list[bool], environment: str
) -> str:
    kinds, ratio, difference = summary["kinds"], summary["ratio"], summary["difference_ms"]
    fleet = markdown_table(
        ["", *FIGURES.values()],
        [
            *([label(kind), *(fmt(kinds[kind][f], 2) for f in FIGURES)] for kind in KINDS),
            ["ratio python / synthetic (paired)", *(fmt(ratio[f], 3) for f in FIGURES)],
            ["difference, ms (paired)", *(signed(difference[f]) for f in FIGURES)],
        ],
    )
    in_process = markdown_table(
        ["per trial, in this process", "SQL statements", "transactions", "run() wall µs", "run() CPU µs"],
        [
            [
                label(kind),
                counted[kind]["statements"],
                counted[kind]["commits"],
                fmt(kinds[kind]["in_process_wall_us"], 0),
                fmt(kinds[kind]["in_process_cpu_us"], 0),
            ]
            for kind in KINDS
        ],
    )
    identical = (
        f"In {sum(same)} of {len(same)} repeats both kinds' studies ended with the same trials: the same "
        "state, value and number of reports for every trial number."
        if same
        else "With several workers a trial's parameters depend on which worker claims it: trials not compared."
    )
    intro = (
        f"The zero-cost study of benchmark 2 ({SAMPLER} sampler, {ZERO_COST_EPOCHS} reports per trial, pruner "
        f"none) run by {plan.workers} real `tunefleet worker` process(es) on PostgreSQL, once as the built-in "
        f"synthetic task and once as kind python with `{ENTRYPOINT}` (the synthetic task's loop written as a "
        "user's function: a stop check and a report per epoch, the same seeded loss), on the same workers "
        f"(started with TUNEFLEET_ALLOWED_ENTRYPOINTS=bench); {plan.trials} trials per run, {plan.repeats} "
        "repeats alternating which kind goes first, after one unmeasured warm-up run of each (the entry "
        "point's import is once per process). Median [min-max] over repeats; ratios and differences are "
        "paired, each repeat's python run against its synthetic run. Wall ms/trial is the inverse of the "
        "steady throughput (as benchmark 2 measures it: from the end of the first trial, by the trials' own "
        "timestamps); CPU is the worker process's and its PostgreSQL backend's per trial; the claim is the "
        "`claim_s` attribute."
    )
    second = (
        "In this process, without the fleet's processes: the SQL statements and transactions (commits) per "
        f"trial of one worker's real loop on a fresh study of each kind ({plan.counted_trials} trials), and "
        "the task kind's run() alone with reports that go nowhere (median [min-max] over repeats of "
        f"{plan.in_process_trials:,} trials): what the Trial API itself adds."
    )
    return "\n\n".join([intro, fleet, identical, second, in_process, environment])


def targets(summary: dict[str, Any], counted: dict[str, Any]) -> list[dict[str, Any]]:
    ratio = summary["ratio"]
    synthetic_cpu_us = 1000 * summary["kinds"]["synthetic"]["worker_cpu_ms_per_trial"]["median"]
    share = summary["in_process_extra_cpu_us"] / synthetic_cpu_us
    # Whole statements per trial: heartbeats and the study-state check, by the clock, add fractions.
    whole = {kind: {k: round(v) for k, v in counted[kind]["by_statement"].items()} for kind in KINDS}
    same_sql = whole["python"] == whole["synthetic"]
    within = all(
        ratio[f]["min"] <= 1.0 <= ratio[f]["max"] for f in ("wall_ms_per_trial", "worker_cpu_ms_per_trial")
    )
    return [
        {
            "target": "a kind python trial makes the same SQL statements as a synthetic one (each kind's "
            "count per trial, to the whole statement)",
            "figure": ", ".join(
                f"{k} {counted['python'][k]} vs {counted['synthetic'][k]}" for k in ("statements", "commits")
            ),
            "met": same_sql,
        },
        {
            "target": "the Trial API's own work (in process) under 1% of a zero-cost trial's worker CPU",
            "figure": f"{summary['in_process_extra_cpu_us']:.0f} µs of {synthetic_cpu_us / 1000:.2f} ms ({share:.2%})",
            "met": share < 0.01,
        },
        {
            "target": "kind python's wall and worker CPU per trial within the spread of repeats (the paired "
            "ratio's min-max holds 1.00)",
            "figure": f"wall {fmt(ratio['wall_ms_per_trial'], 3)}, CPU {fmt(ratio['worker_cpu_ms_per_trial'], 3)}",
            "met": within if ratio["wall_ms_per_trial"]["n"] > 1 else None,
        },
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(
        NAME,
        __doc__,
        quick="3 repeats of 100 trials",
        smoke="1 repeat of 6 trials: checks the script, measures nothing",
        store=True,
    )
    parser.add_argument("--workers", type=int, help="worker processes (default 1)")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--trials", type=int, help="trials per run")
    args = parser.parse_args(argv)
    clean_up_on_sigterm()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = url_from(args)
    plan = plan_for(args)
    invocation = StoreRun.begin(f"bench.{NAME}", argv, url)
    with tempfile.TemporaryDirectory(prefix="bench-ta-") as workdir:
        runs, same, created = run_fleet(plan, url, Path(workdir))
        counted = {kind: statements(kind, url, plan.counted_trials, Path(workdir)) for kind in KINDS}
        in_process: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
        for repeat in range(plan.repeats):
            for kind in KINDS if repeat % 2 == 0 else KINDS[::-1]:
                in_process[kind].append(in_process_us(kind, plan.in_process_trials, Path(workdir)))
    summary = summarize(runs, in_process)
    result: dict[str, Any] = {
        "config": invocation.config(
            plan=asdict(plan), sampler=SAMPLER, epochs=ZERO_COST_EPOCHS, entrypoint=ENTRYPOINT
        ),
        "summary": summary,
        "statements": counted,
        "same_trials": same,
        "studies_created_and_deleted": created,
        "runs": [asdict(r) for r in runs],
        "in_process": in_process,
    }
    result["targets"] = targets(summary, counted)
    result["markdown"] = markdown(summary, counted, plan, same, invocation.markdown())
    publish(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
