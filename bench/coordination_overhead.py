"""Benchmark 2: what tunefleet's pull-and-report path costs per trial on PostgreSQL, against plain Optuna."""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import json
import math
import os
import pstats
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from bench.common import (
    ZERO_COST_EPOCHS,
    admin_engine,
    deleted_afterwards,
    seed_trials,
    study_trials,
    suggest,
    url_from,
    with_query,
    zero_cost_spec,
)
from bench.processes import BackendCpu, Processes, clean_up_on_sigterm, python_module
from bench.reporting import (
    StoreRun,
    benchmark_parser,
    fmt,
    markdown_table,
    percentile,
    publish,
    ratio,
    spread,
)
from studies import StudyRepository, StudySpec, open_storage
from studies.space import distributions
from studies.tables import workers_table
from worker.synthetic_loss import synthetic_loss

NAME = "coordination_overhead"
# The study both systems run: the zero-cost study with this sampler seed.
SPEC_SEED = 17
TPE_STARTUP_TRIALS = 10
# Workers idle between runs are frozen (SIGSTOP); a poll interval this short lets them start within
# 0.1 s of being resumed. It only matters while a worker is idle, never while it runs trials.
POLL_INTERVAL_S = 0.1


@dataclass(frozen=True)
class Plan:
    """What one invocation measures."""

    workers: tuple[int, ...]
    samplers: tuple[str, ...]
    seeded: tuple[int, ...]
    repeats: int
    trials: dict[str, int]
    profile_trials: int
    cprofile: bool


@dataclass
class Run:
    """One measured run of one system at one configuration."""

    system: str
    sampler: str
    seeded: int
    workers: int
    repeat: int
    trials: int
    states: dict[str, int] = field(default_factory=dict)
    window_s: float = math.nan
    wall_s: float = math.nan
    trials_per_s: float = math.nan
    worker_cpu_ms_per_trial: float = math.nan
    server_cpu_ms_per_trial: float = math.nan
    claim_p50_ms: float = math.nan
    claim_p99_ms: float = math.nan
    steady_claims: int = 0
    first_claim_p50_ms: float = math.nan


@dataclass(frozen=True)
class Claimed:
    """One trial as a worker saw it: the worker, when its claim began and took, when the trial ended."""

    worker: str
    start_s: float
    claim_s: float
    end_s: float | None


def plan_for(args: argparse.Namespace) -> Plan:
    """The sizes for --smoke, --quick or the full run, with any sizes given on the command line."""
    if args.smoke:
        plan = Plan((1,), ("random",), (0,), 1, {"random": 10, "tpe": 10}, 3, False)
    elif args.quick:
        plan = Plan((1, 4), ("random",), (0, 500), 2, {"random": 40, "tpe": 32}, 20, False)
    else:
        plan = Plan((1, 4, 8), ("random", "tpe"), (0, 5000), 3, {"random": 200, "tpe": 96}, 100, True)
    overrides: dict[str, Any] = {}
    if args.workers:
        overrides["workers"] = tuple(args.workers)
    if args.samplers:
        overrides["samplers"] = tuple(args.samplers)
    if args.seeded is not None:
        overrides["seeded"] = tuple(args.seeded)
    if args.repeats:
        overrides["repeats"] = args.repeats
    if args.trials:
        overrides["trials"] = dict.fromkeys(("random", "tpe"), args.trials)
    if args.cprofile:
        overrides["cprofile"] = True
    return Plan(**{**asdict(plan), **overrides})


# -- plain Optuna on the same study ------------------------------------------------------------------


def baseline_space() -> dict[str, BaseDistribution]:
    """The searched parameters of the same space: a user would write the fixed epoch count as a constant."""
    spec = zero_cost_spec("space", "random", 1, seed=SPEC_SEED)
    fixed = {name for name, param in spec.space.params().items() if param.type == "fixed"}
    return {name: d for name, d in distributions(spec.space).items() if name not in fixed}


def baseline_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler tunefleet builds for the spec, as a user would configure it for parallel workers."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=TPE_STARTUP_TRIALS)
    return optuna.samplers.RandomSampler(seed=seed)


def optuna_optimize(
    storage: optuna.storages.RDBStorage, study_name: str, sampler: str, seed: int, n_trials: int
) -> list[tuple[float, float, float]]:
    """Plain Optuna: load the study, optimize an objective that reports 3 epochs and asks should_prune.

    Returns, for each trial, when its ask began (epoch seconds), the time to get the trial with all its
    parameters (study.ask() plus the suggest calls: tunefleet's claim in Optuna's terms) and when the
    trial ended (after study.tell()).
    """
    space = baseline_space()
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=baseline_sampler(sampler, seed),
        pruner=optuna.pruners.NopPruner(),
    )
    trials: list[tuple[float, float, float]] = []
    asked = [0.0, 0.0]  # when the current ask began, and how long it took
    claim_s = [0.0]
    real_ask = study.ask

    # A timing shim only: optimize() calls study.ask() for each trial, and the objective sees the rest.
    def timed_ask(fixed_distributions: dict[str, BaseDistribution] | None = None) -> optuna.Trial:
        asked[0] = time.time()
        started = time.perf_counter()
        trial = real_ask(fixed_distributions)
        asked[1] = time.perf_counter() - started
        return trial

    study.ask = timed_ask  # type: ignore[method-assign]

    def objective(trial: optuna.Trial) -> float:
        started = time.perf_counter()
        params = suggest(trial, space)
        claim_s[0] = asked[1] + time.perf_counter() - started
        best = math.inf
        for epoch in range(1, ZERO_COST_EPOCHS + 1):
            value = synthetic_loss(params, seed=trial.number, epoch=epoch)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
            best = min(best, value)
        return best

    def ended(study: optuna.Study, trial: FrozenTrial) -> None:
        trials.append((asked[0], claim_s[0], time.time()))

    study.optimize(objective, n_trials=n_trials, callbacks=[ended])
    return trials


def optuna_worker(url: str) -> int:
    """A long-lived plain-Optuna worker process: one JSON command per stdin line, one JSON result per line."""
    storage = optuna.storages.RDBStorage(url)
    print("ready", flush=True)
    # Until its input ends: the benchmark closes it when done.
    for line in sys.stdin:
        command = json.loads(line)
        trials = optuna_optimize(
            storage, command["study"], command["sampler"], command["seed"], command["n_trials"]
        )
        print(json.dumps({"trials": trials}), flush=True)
    storage.engine.dispose()
    return 0


# -- worker processes --------------------------------------------------------------------------------


def start_tunefleet_pool(
    n: int,
    url: str,
    study_names: Sequence[str],
    logdir: Path,
    admin: sa.Engine,
    extra_env: Mapping[str, str] | None = None,
) -> Processes:
    """`tunefleet worker` processes for these studies; frozen (SIGSTOP) once registered and idle.

    Started once and reused across runs, so start-up is never measured. extra_env adds settings
    (an allow list of entry points, say) to the environment they start with.
    """
    env = {
        **os.environ,
        **(extra_env or {}),
        "TUNEFLEET_DATABASE_URL": url,
        "TUNEFLEET_POLL_INTERVAL_S": str(POLL_INTERVAL_S),
        # Frozen between runs, workers miss heartbeats: they must not be declared lost meanwhile.
        "TUNEFLEET_GRACE_PERIOD_S": "86400",
        "TUNEFLEET_CACHE_DIR": str(logdir / "cache"),
        "TUNEFLEET_ARTIFACT_DIR": str(logdir / "artifacts"),
        "TUNEFLEET_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    args = [arg for name in study_names for arg in ("--study", name)]
    command = python_module("tunefleet", "worker", *args)
    pool = Processes([command] * n, logdir, f"tunefleet-{n}", pipes=False, env=env)
    deadline = time.monotonic() + 180
    c = workers_table.c
    while True:
        with admin.connect() as connection:
            registered = connection.execute(
                sa.select(sa.func.count()).where(
                    c.host == socket.gethostname(), c.pid.in_(pool.pids), c.state == "idle"
                )
            ).scalar_one()
        if registered == n:
            break
        if pool.any_exited() or time.monotonic() > deadline:
            pool.close()
            raise pool.failure("tunefleet workers did not start")
        time.sleep(0.2)
    time.sleep(0.5)  # past their first (empty) claim, into the idle wait
    pool.signal(signal.SIGSTOP)
    return pool


def start_optuna_pool(n: int, url: str, logdir: Path) -> Processes:
    """Plain-Optuna worker processes (this module's optuna_worker), waiting for commands."""
    command = python_module("bench.coordination_overhead", "--optuna-worker", url)
    pool = Processes([command] * n, logdir, f"optuna-{n}")
    try:
        pool.wait_ready("optuna worker")
    except BaseException:
        pool.close()
        raise
    return pool


# -- measuring one run ------------------------------------------------------------------------------


def finished_count(admin: sa.Engine, study_name: str, skip: int) -> int:
    query = sa.text(
        "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "WHERE s.study_name = :name AND t.number >= :skip AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL')"
    )
    with admin.connect() as connection:
        return int(connection.execute(query, {"name": study_name, "skip": skip}).scalar_one())


def _epoch_s(moment: datetime.datetime) -> float:
    # tunefleet's workers stamp trials with naive UTC.
    return moment.replace(tzinfo=datetime.UTC).timestamp()


def tunefleet_claims(rows: list[Any]) -> list[Claimed]:
    """The run's trials as tunefleet's workers saw them, from the store (each trial carries its worker)."""
    return [
        Claimed(
            worker=str(json.loads(r.worker_id)),
            start_s=_epoch_s(r.datetime_start),
            claim_s=float(json.loads(r.claim_s)),
            end_s=_epoch_s(r.datetime_complete) if r.datetime_complete is not None else None,
        )
        for r in rows
        if r.claim_s is not None and r.worker_id is not None
    ]


def fill_run(run: Run, rows: list[Any], claims: list[Claimed], cpu_s: float, server_s: float) -> None:
    """The run's figures from its trials, in steady state: after every worker's first trial had ended.

    Each worker's first claim also loads the study's trials into its cache (seconds at 5,000 trials),
    and while some workers load, the others' claims wait for CPU. So throughput counts the trials
    ended from the moment every worker's first trial had ended, claim latency the claims begun from
    then on, and each worker's first claim is reported apart; the same for both systems. The CPU
    figures still count the loading, for both.
    """
    run.states = dict(Counter(str(r.state).lower() for r in rows))
    first: dict[str, Claimed] = {}
    for claimed in sorted(claims, key=lambda c: c.start_s):
        first.setdefault(claimed.worker, claimed)
    first_ends = [c.end_s for c in first.values() if c.end_s is not None]
    steady_from = max(first_ends, default=math.inf)
    ends = sorted(c.end_s for c in claims if c.end_s is not None and c.end_s > steady_from)
    if ends:
        run.window_s = ends[-1] - steady_from
        run.trials_per_s = len(ends) / run.window_s if run.window_s > 0 else math.nan
    steady = [c.claim_s for c in claims if c.start_s >= steady_from]
    run.steady_claims = len(steady)
    run.worker_cpu_ms_per_trial = 1000 * cpu_s / run.trials
    run.server_cpu_ms_per_trial = 1000 * server_s / run.trials
    run.claim_p50_ms = 1000 * percentile(steady, 50)
    run.claim_p99_ms = 1000 * percentile(steady, 99)
    run.first_claim_p50_ms = 1000 * percentile([c.claim_s for c in first.values()], 50)


def run_tunefleet(
    run: Run,
    name: str,
    pool: Processes,
    repository: StudyRepository,
    admin: sa.Engine,
    app: str,
    spec: StudySpec | None = None,
) -> None:
    """Create (and seed) the study while the workers are frozen, resume them, stop them when it is done.

    The study is the zero-cost one with the run's sampler, unless another spec (named `name`) is given.
    """
    spec = spec or zero_cost_spec(name, run.sampler, run.trials, seed=SPEC_SEED)
    record = repository.create(spec)
    if run.seeded:
        seed_trials(admin, record.optuna_study_id, distributions(spec.space), run.seeded, seed=run.repeat)
    time.sleep(2 * POLL_INTERVAL_S)  # every frozen worker's idle wait has run out: all start at once
    server = BackendCpu(admin, app)
    server.begin()
    cpu_before = pool.cpu_s()
    started = time.perf_counter()
    pool.signal(signal.SIGCONT)
    deadline = time.monotonic() + 600
    while finished_count(admin, name, run.seeded) < run.trials:
        if time.monotonic() > deadline:
            raise pool.failure(f"tunefleet run {name} did not finish")
        time.sleep(0.05)
    pool.signal(signal.SIGSTOP)
    run.wall_s = time.perf_counter() - started
    cpu_s = pool.cpu_s() - cpu_before
    server_s = server.end_s()
    rows = study_trials(admin, name, run.seeded)
    fill_run(run, rows, tunefleet_claims(rows), cpu_s, server_s)


def run_optuna(run: Run, name: str, pool: Processes, admin_url: str, admin: sa.Engine, app: str) -> None:
    """Each plain-Optuna process runs optimize(n_trials=K/N) on a fresh study, all started together."""
    storage = optuna.storages.RDBStorage(admin_url, engine_kwargs={"poolclass": sa.pool.NullPool})
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    storage.engine.dispose()
    if run.seeded:
        seed_trials(admin, study._study_id, baseline_space(), run.seeded, seed=run.repeat)
    server = BackendCpu(admin, app)
    server.begin()
    cpu_before = pool.cpu_s()
    started = time.perf_counter()
    per_worker = run.trials // run.workers
    for index in range(run.workers):
        seed = 1000 * run.repeat + index
        command = {"study": name, "sampler": run.sampler, "seed": seed, "n_trials": per_worker}
        pool.send(json.dumps(command), index)
    claims: list[Claimed] = []
    for index, pid in enumerate(pool.pids):
        claims += [Claimed(str(pid), *trial) for trial in json.loads(pool.read_line(index))["trials"]]
    run.wall_s = time.perf_counter() - started
    cpu_s = pool.cpu_s() - cpu_before
    server_s = server.end_s()
    fill_run(run, study_trials(admin, name, run.seeded), claims, cpu_s, server_s)


# -- where the time goes: statements per trial, and a profile of one in-process worker ----------------


_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", re.IGNORECASE)


def statement_kind(statement: str) -> str:
    """'SELECT trials', 'UPDATE tunefleet_studies', ...: the verb and the first table named."""
    verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
    table = _TABLE.search(statement)
    return f"{verb} {table.group(1) if table else ''}".strip()


@contextlib.contextmanager
def counting(engine: sa.Engine) -> Iterator[Counter[str]]:
    """Count statements by kind, commits, and pool checkouts (each one a pre-ping where that is on)."""
    counts: Counter[str] = Counter()

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts["statements"] += 1
        counts["stmt: " + statement_kind(statement)] += 1

    def on_commit(conn: Any) -> None:
        counts["commits"] += 1

    def on_checkout(*args: Any) -> None:
        counts["checkouts"] += 1

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    sa.event.listen(engine, "commit", on_commit)
    sa.event.listen(engine.pool, "checkout", on_checkout)
    try:
        yield counts
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)
        sa.event.remove(engine, "commit", on_commit)
        sa.event.remove(engine.pool, "checkout", on_checkout)


def per_trial(counts: Counter[str], trials: int, *, pre_ping: bool) -> dict[str, Any]:
    statements = counts["statements"] / trials
    commits = counts["commits"] / trials
    checkouts = counts["checkouts"] / trials
    kinds = {
        key.removeprefix("stmt: "): round(value / trials, 2)
        for key, value in counts.most_common()
        if key.startswith("stmt: ")
    }
    return {
        "statements": round(statements, 1),
        "commits": round(commits, 1),
        "pool_checkouts": round(checkouts, 1),
        # psycopg sends BEGIN before a transaction's first statement and COMMIT after: a round trip each.
        "round_trips_estimate": round(statements + 2 * commits + (checkouts if pre_ping else 0), 1),
        "by_statement": kinds,
    }


PHASES = {
    "claim": ("repository.py", "claim"),
    "fleet.set_trial (busy, idle)": ("fleet.py", "set_trial"),
    "trial.report": ("_trial.py", "report"),
    "stored_state (per epoch)": ("repository.py", "stored_state"),
    "trial.should_prune": ("_trial.py", "should_prune"),
    "complete (attrs + tell)": ("repository.py", "complete"),
}


def profile_tunefleet(url: str, trials: int, *, cprofile: bool) -> dict[str, Any]:
    """One worker's real loop in this process on a fresh random study: statements, and a cProfile."""
    from worker.loop import LoopOptions, build_runner, run_loop
    from worker.settings import WorkerSettings

    name = f"bench-co-profile-{uuid.uuid4().hex[:10]}-tf"
    scratch = Path(tempfile.mkdtemp(prefix="bench-co-profile-"))
    # Synthetic trials keep no model; the scratch folders only keep the worker from touching the user's.
    settings = WorkerSettings(
        database_url=url,
        device="cpu",
        poll_interval_s=POLL_INTERVAL_S,
        cache_dir=scratch / "cache",
        artifact_dir=str(scratch / "artifacts"),
    )
    runner, identity = build_runner(settings)
    repository = runner.repository
    profiler = cProfile.Profile() if cprofile else None
    try:
        with deleted_afterwards(url) as made:
            made.studies.append(name)
            made.worker_pids.append(os.getpid())
            repository.create(zero_cost_spec(name, "random", trials, seed=SPEC_SEED))
            started = time.perf_counter()
            with counting(repository.engine) as counts:
                if profiler:
                    profiler.enable()
                run_loop(runner, identity, LoopOptions(study_names=(name,), exit_when_idle=True), settings)
                if profiler:
                    profiler.disable()
            wall_s = time.perf_counter() - started
    finally:
        repository.engine.dispose()
        shutil.rmtree(scratch, ignore_errors=True)
    result: dict[str, Any] = {
        "trials": trials,
        "wall_ms_per_trial": round(1000 * wall_s / trials, 1),
        **per_trial(counts, trials, pre_ping=True),
    }
    if profiler:
        result["cprofile"] = profile_summary(profiler, trials)
    return result


def profile_summary(profiler: cProfile.Profile, trials: int) -> dict[str, Any]:
    """Cumulative time per trial of the loop's phases, and the functions with the most own time."""
    stats = pstats.Stats(profiler)
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in table.values())
    phases = {}
    for label, (filename, function) in PHASES.items():
        cumulative = sum(
            ct
            for (path, _, func), (_, _, _, ct, _) in table.items()
            if func == function and path.endswith(filename)
        )
        phases[label] = round(1000 * cumulative / trials, 2)
    top = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:12]
    return {
        "note": "times under cProfile (inflated); compare them with each other, not with the runs above",
        "profiled_ms_per_trial": round(1000 * total / trials, 1),
        "phase_ms_per_trial": phases,
        "top_own_time": [
            {
                "function": f"{Path(path).name}:{line}({func})",
                "calls_per_trial": round(nc / trials, 1),
                "ms_per_trial": round(1000 * tt / trials, 2),
            }
            for (path, line, func), (_, nc, tt, _, _) in top
        ],
    }


def profile_optuna(url: str, trials: int) -> dict[str, Any]:
    """Plain Optuna's optimize in this process on a fresh random study: statements per trial."""
    name = f"bench-co-profile-{uuid.uuid4().hex[:10]}-op"
    storage = optuna.storages.RDBStorage(url)
    with deleted_afterwards(url) as made:
        made.studies.append(name)
        try:
            optuna.create_study(study_name=name, storage=storage, direction="minimize")
            started = time.perf_counter()
            with counting(storage.engine) as counts:
                optuna_optimize(storage, name, "random", 0, trials)
            wall_s = time.perf_counter() - started
        finally:
            storage.engine.dispose()
    return {
        "trials": trials,
        "wall_ms_per_trial": round(1000 * wall_s / trials, 1),
        **per_trial(counts, trials, pre_ping=False),
    }


# -- the whole benchmark -------------------------------------------------------------------------------


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (sampler, seeded, workers): each figure's median [min-max] over repeats, and ratios."""
    rows = []
    keys = sorted(
        {(r.sampler, r.seeded, r.workers) for r in runs}, key=lambda k: (k[0] != "random", k[1], k[2])
    )
    for sampler, seeded, workers in keys:
        row: dict[str, Any] = {"sampler": sampler, "seeded": seeded, "workers": workers}
        for system in ("tunefleet", "optuna"):
            mine = [
                r
                for r in runs
                if (r.system, r.sampler, r.seeded, r.workers) == (system, sampler, seeded, workers)
            ]
            row[system] = {
                figure: spread(getattr(r, figure) for r in mine)
                for figure in (
                    "trials_per_s",
                    "worker_cpu_ms_per_trial",
                    "server_cpu_ms_per_trial",
                    "claim_p50_ms",
                    "claim_p99_ms",
                    "steady_claims",
                    "first_claim_p50_ms",
                )
            }
        t, o = row["tunefleet"], row["optuna"]
        row["ratio"] = {
            figure: ratio(t[figure]["median"], o[figure]["median"])
            for figure in (
                "trials_per_s",
                "worker_cpu_ms_per_trial",
                "server_cpu_ms_per_trial",
                "claim_p50_ms",
            )
        }
        rows.append(row)
    return rows


def markdown(
    rows: list[dict[str, Any]],
    profile: dict[str, Any],
    plan: Plan,
    runs: list[Run],
    environment: str,
) -> str:
    def r(x: float) -> str:
        return "-" if x is None or math.isnan(x) else f"{x:.2f}x"

    main = markdown_table(
        [
            "sampler",
            "trials in study",
            "workers",
            "trials/s tunefleet",
            "trials/s Optuna",
            "ratio",
            "worker CPU ms/trial tunefleet",
            "Optuna",
            "ratio",
            "DB CPU ms/trial tunefleet",
            "Optuna",
        ],
        [
            [
                row["sampler"],
                f"{row['seeded']:,}",
                row["workers"],
                fmt(row["tunefleet"]["trials_per_s"]),
                fmt(row["optuna"]["trials_per_s"]),
                r(row["ratio"]["trials_per_s"]),
                fmt(row["tunefleet"]["worker_cpu_ms_per_trial"]),
                fmt(row["optuna"]["worker_cpu_ms_per_trial"]),
                r(row["ratio"]["worker_cpu_ms_per_trial"]),
                fmt(row["tunefleet"]["server_cpu_ms_per_trial"]),
                fmt(row["optuna"]["server_cpu_ms_per_trial"]),
            ]
            for row in rows
        ],
    )
    latency = markdown_table(
        [
            "sampler",
            "trials in study",
            "workers",
            "claim p50 ms tunefleet",
            "p99",
            "ask+suggest p50 ms Optuna",
            "p99",
            "ratio p50",
            "claims counted tunefleet",
            "Optuna",
            "first claim ms tunefleet",
            "Optuna",
        ],
        [
            [
                row["sampler"],
                f"{row['seeded']:,}",
                row["workers"],
                fmt(row["tunefleet"]["claim_p50_ms"]),
                fmt(row["tunefleet"]["claim_p99_ms"]),
                fmt(row["optuna"]["claim_p50_ms"]),
                fmt(row["optuna"]["claim_p99_ms"]),
                r(row["ratio"]["claim_p50_ms"]),
                fmt(row["tunefleet"]["steady_claims"]),
                fmt(row["optuna"]["steady_claims"]),
                fmt(row["tunefleet"]["first_claim_p50_ms"]),
                fmt(row["optuna"]["first_claim_p50_ms"]),
            ]
            for row in rows
        ],
    )
    tf, op = profile["tunefleet"], profile["optuna"]
    statements = markdown_table(
        ["per trial (1 worker, fresh random study)", "tunefleet", "plain Optuna"],
        [
            ["SQL statements", tf["statements"], op["statements"]],
            ["transactions (commits)", tf["commits"], op["commits"]],
            ["pool checkouts (tunefleet pre-pings each)", tf["pool_checkouts"], op["pool_checkouts"]],
            [
                "round trips (estimate: statements + BEGIN/COMMIT + pings)",
                tf["round_trips_estimate"],
                op["round_trips_estimate"],
            ],
            ["wall ms (in-process, 1 worker)", tf["wall_ms_per_trial"], op["wall_ms_per_trial"]],
        ],
    )
    kinds = sorted(
        set(tf["by_statement"]) | set(op["by_statement"]), key=lambda k: -tf["by_statement"].get(k, 0)
    )
    by_kind = markdown_table(
        ["statement", "tunefleet per trial", "Optuna per trial"],
        [[f"`{k}`", tf["by_statement"].get(k, 0), op["by_statement"].get(k, 0)] for k in kinds],
    )
    parts = [
        f"Zero-cost task ({ZERO_COST_EPOCHS} reports per trial, pruner none), real worker processes on PostgreSQL; "
        f"median [min-max] of {plan.repeats} run(s) per row. Trials per run: "
        + ", ".join(f"{s} {plan.trials[s]}" for s in plan.samplers)
        + ". Throughput and claim latency are measured in steady state, the same way for both systems: "
        "from the moment every worker's first trial had ended (each worker's first claim loads the "
        "study's trials into its cache, seconds at 5,000 trials, and while some load the others wait for "
        "CPU), throughput as the trials ended per second to the last one's end and latency over the claims "
        "begun from then on (their number is in the table); each worker's first claim is reported apart "
        "(median over workers). Studies of 5,000 trials are seeded by bulk INSERTs, after which the trial "
        "tables are ANALYZEd, as autovacuum would do within a minute (this machine's PostgreSQL runs without "
        "it). CPU is each worker process's user+system time over the whole run (/proc), "
        "the loading included, and the PostgreSQL backends' for the same sessions; process start-up is in "
        "neither. tunefleet's claim latency is its `claim_s` attribute (runnable study, budget slot, trial, "
        "parameters, tags); Optuna's equivalent is study.ask() plus the suggest calls. Ratios are "
        "tunefleet / Optuna (trials/s: higher is better; CPU and latency: lower is better).",
        "",
        main,
        "",
        latency,
        "",
        statements,
        "",
        by_kind,
    ]
    cp = tf.get("cprofile")
    if cp:
        parts += [
            "",
            f"cProfile of one tunefleet worker ({cp['profiled_ms_per_trial']} ms/trial under the profiler): "
            + ", ".join(f"{k} {v} ms" for k, v in cp["phase_ms_per_trial"].items())
            + ".",
        ]
    odd = [r for r in runs if r.states != {"complete": r.trials}]
    if odd:
        parts += [
            "",
            f"**{len(odd)} run(s) ended with trials not all COMPLETE** (e.g. {odd[0].system}: {odd[0].states}): "
            "a reaper elsewhere on this store (a concurrent test's grace period may be 2 s) can declare a "
            "benchmark worker lost and fail its trial; rerun when the store is quiet.",
        ]
    parts += ["", environment]
    return "\n".join(parts)


def targets(rows: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    cpu = [row["ratio"]["worker_cpu_ms_per_trial"] for row in rows]
    cpu_ok = [c for c in cpu if not math.isnan(c)]
    largest = max(plan.seeded)
    at_largest = [row for row in rows if row["seeded"] == largest]
    p50s = [row["tunefleet"]["claim_p50_ms"]["median"] for row in at_largest]
    return [
        {
            "target": "tunefleet at most as costly per trial as plain Optuna (worker CPU per trial)",
            "figure": f"tunefleet/Optuna worker CPU per trial {min(cpu_ok):.2f}x-{max(cpu_ok):.2f}x over "
            f"{len(cpu_ok)} configurations"
            if cpu_ok
            else "-",
            "met": all(c <= 1.0 for c in cpu_ok) if cpu_ok else None,
        },
        {
            "target": "p50 claim latency under 100 ms at 5,000 trials (steady state)",
            "figure": f"p50 up to {max(p50s):.1f} ms at {largest:,} trials" if p50s else "-",
            "met": (max(p50s) < 100) if p50s and largest >= 5000 else None,
        },
    ]


def run_benchmark(plan: Plan, url: str, workdir: Path) -> tuple[list[Run], list[str]]:
    """Every run of the plan; the studies it made are deleted afterwards, and their names returned."""
    token = uuid.uuid4().hex[:8]
    runs: list[Run] = []
    tf_app, op_app = f"bench-co-{token}-tf", f"bench-co-{token}-op"
    tf_url, op_url = with_query(url, application_name=tf_app), with_query(url, application_name=op_app)
    repository = StudyRepository(open_storage(url, pool_size=1))
    try:
        with deleted_afterwards(url) as made, admin_engine(url) as admin:
            for workers in plan.workers:
                names = {
                    (sampler, seeded, repeat): f"bench-co-{token}-n{workers}-{sampler}-s{seeded}-r{repeat}"
                    for sampler in plan.samplers
                    for seeded in plan.seeded
                    for repeat in range(plan.repeats)
                }
                tf_names = [n + "-tf" for n in names.values()]
                with (
                    start_tunefleet_pool(workers, tf_url, tf_names, workdir, admin) as tf_pool,
                    start_optuna_pool(workers, op_url, workdir) as op_pool,
                ):
                    made.worker_pids += tf_pool.pids
                    for (sampler, seeded, repeat), name in names.items():
                        k = plan.trials[sampler] // workers * workers
                        # Alternate which system goes first, so drift in the machine's load hits both alike.
                        order = ("tunefleet", "optuna") if repeat % 2 == 0 else ("optuna", "tunefleet")
                        for system in order:
                            run = Run(system, sampler, seeded, workers, repeat, k)
                            study_name = f"{name}-{'tf' if system == 'tunefleet' else 'op'}"
                            made.studies.append(study_name)
                            if system == "tunefleet":
                                run_tunefleet(run, study_name, tf_pool, repository, admin, tf_app)
                            else:
                                run_optuna(run, study_name, op_pool, url, admin, op_app)
                            runs.append(run)
                            print(
                                f"  {system:9} {sampler:6} seeded={seeded:<5} workers={workers} rep={repeat}: "
                                f"{run.trials_per_s:6.1f} trials/s, {run.worker_cpu_ms_per_trial:6.1f} ms "
                                f"CPU/trial, claim p50 {run.claim_p50_ms:6.1f} ms",
                                file=sys.stderr,
                                flush=True,
                            )
    finally:
        repository.engine.dispose()
    return runs, made.studies


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(
        NAME,
        __doc__,
        quick="1 and 4 workers, random sampler, 500 seeded trials",
        smoke="1 worker, 10 trials: checks the script, measures nothing",
        store=True,
    )
    parser.add_argument("--workers", type=int, nargs="+")
    parser.add_argument("--samplers", nargs="+", choices=("random", "tpe"))
    parser.add_argument("--seeded", type=int, nargs="+", help="trials already in the study, e.g. 0 5000")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--trials", type=int, help="trials per run")
    parser.add_argument(
        "--cprofile", action="store_true", help="also profile one in-process tunefleet worker"
    )
    parser.add_argument("--optuna-worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.optuna_worker:
        return optuna_worker(args.optuna_worker)
    clean_up_on_sigterm()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = url_from(args)
    plan = plan_for(args)
    invocation = StoreRun.begin(f"bench.{NAME}", argv, url)
    with tempfile.TemporaryDirectory(prefix="bench-co-") as workdir:
        runs, created = run_benchmark(plan, url, Path(workdir))
    profile = {
        "tunefleet": profile_tunefleet(url, plan.profile_trials, cprofile=plan.cprofile),
        "optuna": profile_optuna(url, plan.profile_trials),
    }
    rows = summarize(runs)
    result: dict[str, Any] = {
        "config": invocation.config(
            plan=asdict(plan),
            epochs=ZERO_COST_EPOCHS,
            worker_settings={
                "poll_interval_s": POLL_INTERVAL_S,
                "heartbeat_interval_s": "default",
                "pool_size": "default",
            },
        ),
        "summary": rows,
        "profile": profile,
        "studies_created_and_deleted": created,
        "runs": [asdict(r) for r in runs],
    }
    result["targets"] = targets(rows, plan)
    result["markdown"] = markdown(rows, profile, plan, runs, invocation.markdown())
    publish(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
