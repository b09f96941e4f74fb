"""Benchmark 4: simulated fleets of 32-256 workers (threads) on one PostgreSQL: claims, errors, connections, budget."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from bench.common import ZERO_COST_EPOCHS, deleted_afterwards, url_from, with_query, zero_cost_spec
from bench.pgbouncer import INSTALL_HINT, available, pgbouncer
from bench.processes import Processes, clean_up_on_sigterm, python_module
from bench.reporting import (
    StoreRun,
    benchmark_parser,
    fmt,
    markdown_table,
    percentile,
    publish,
    spread,
)
from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from studies._optuna import models
from studies.fleet import new_worker_id
from studies.records import Claim
from studies.resilience import GaveUp, is_transient, with_retry
from studies.schema import VERSION_TABLE
from studies.storage import check_schema, engine_kwargs
from studies.tables import metadata as tunefleet_metadata

NAME = "store_scale"
BOUNCER_POOL = 20
VARIANTS = {
    "shipped": "open_storage(url, pool_size=1): a QueuePool of 1 (+1 overflow) per worker, pre-ping",
    "nullpool": "the same engine options with poolclass=NullPool: a connection per transaction, none kept",
    "pgbouncer": "`shipped` pools, connecting through PgBouncer 1.18 in transaction mode with "
    f"default_pool_size={BOUNCER_POOL}: the fleet shares {BOUNCER_POOL} PostgreSQL sessions, as the README's "
    "large-fleet deployment does",
}


LOADS = {
    "zero-cost": "every worker claims again the moment a trial ends (0 s epochs): the fleet saturates the CPUs",
    "paced": "trials last workers/fleet_rate seconds and first claims are spread over one trial length, "
    "so the fleet offers fleet_rate claims per second, as long trials on many GPUs do",
}


@dataclass(frozen=True)
class Plan:
    """What one invocation measures."""

    fleets: tuple[int, ...]
    paced_fleets: tuple[int, ...]
    variants: tuple[str, ...]
    loads: tuple[str, ...]
    trials_per_worker: float
    min_trials: int
    repeats: int
    timeout_s: float
    fleet_rate: float
    window_s: float
    connection_cap: int
    threads_per_process: int = 32

    def runs(self) -> list[tuple[str, int, str]]:
        """(load, workers, variant) of every run in one repeat."""
        return [
            (load, workers, variant)
            for load in self.loads
            for workers in (self.paced_fleets if load == "paced" else self.fleets)
            for variant in self.variants
        ]

    def trials(self, workers: int) -> int:
        return max(self.min_trials, math.ceil(self.trials_per_worker * workers))


@dataclass
class Run:
    """One simulated fleet on one pool variant."""

    variant: str
    load: str
    workers: int
    repeat: int
    n_trials: int
    trial_s: float = 0.0
    created: int = 0
    retries: int = 0
    n_claimed: int = 0
    overshoot: int = 0
    states: dict[str, int] = field(default_factory=dict)
    finished: int = 0
    timed_out: bool = False
    window_s: float = math.nan
    trials_per_s: float = math.nan
    process_cpu_ms_per_trial: float = math.nan
    claim_p50_ms: float = math.nan
    claim_p99_ms: float = math.nan
    claim_with_retries_p50_ms: float = math.nan
    claim_with_retries_p99_ms: float = math.nan
    claim_max_ms: float = math.nan
    claims_over_250_ms: int = 0
    slow_claims: list[dict[str, float]] = field(default_factory=list)
    claims: int = 0
    stuck_in: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    retried_operations: int = 0
    start_failures: int = 0
    never_connected: int = 0
    crashed_workers: int = 0
    declared_lost: int = 0
    unfinished: int = 0
    connections_ours_max: int = 0
    connections_ours_median: float = math.nan
    connections_db_max: int = 0
    connections_db_median: float = math.nan
    processes: int = 1
    gc_full_collections: int = 0
    gc_full_max_ms: float = 0.0


def plan_for(args: argparse.Namespace) -> Plan:
    """The sizes for --smoke, --quick or the full run, with any sizes given on the command line."""
    if args.smoke:
        plan = Plan((2,), (2,), ("shipped",), tuple(LOADS), 5, 10, 1, 60, 2.0, 2.0, 60, threads_per_process=1)
    elif args.quick:
        # Sized for `make bench-quick` (about 5 minutes in all): the shipped pool and the large-fleet
        # deployment (PgBouncer); the full run adds NullPool and the other fleet sizes.
        plan = Plan((32,), (256,), ("shipped", "pgbouncer"), tuple(LOADS), 0.25, 16, 1, 25, 4.0, 10.0, 60)
    else:
        plan = Plan(
            (32, 128, 256), (32, 128, 256), tuple(VARIANTS), tuple(LOADS), 0.5, 64, 3, 120, 4.0, 20.0, 60
        )
    overrides: dict[str, Any] = {}
    if args.fleets:
        overrides["fleets"] = overrides["paced_fleets"] = tuple(args.fleets)
    for key in ("variants", "loads"):
        if getattr(args, key):
            overrides[key] = tuple(getattr(args, key))
    for key in (
        "repeats",
        "timeout_s",
        "fleet_rate",
        "window_s",
        "connection_cap",
        "trials_per_worker",
        "threads_per_process",
    ):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return replace(plan, **overrides)


# -- the fleet's connections: a role whose CONNECTION LIMIT stands in for the server's max_connections --


ROLE_PREFIX = "tfbench_"


def drop_role(admin: sa.Engine, role: str) -> None:
    """End the role's sessions, revoke its grants, drop it."""
    with admin.begin() as connection:
        connection.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :role"),
            {"role": role},
        )
    for _ in range(50):
        try:
            with admin.begin() as connection:
                connection.execute(sa.text(f"DROP OWNED BY {role}"))
                connection.execute(sa.text(f"DROP ROLE {role}"))
            return
        except sa.exc.DBAPIError:
            time.sleep(0.1)  # a terminated backend may still be exiting


def drop_stale_roles(admin: sa.Engine) -> None:
    """Drop fleet roles left by benchmark runs on this host that were killed before their clean-up."""
    with admin.connect() as connection:
        roles = connection.execute(
            sa.text("SELECT rolname FROM pg_roles WHERE rolname LIKE :prefix"), {"prefix": ROLE_PREFIX + "%"}
        ).scalars()
        for role in list(roles):
            pid = role.removeprefix(ROLE_PREFIX).split("_", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                drop_role(admin, role)


@contextlib.contextmanager
def fleet_login(admin: sa.Engine, url: str, cap: int) -> Iterator[str]:
    """The URL the simulated fleet connects with.

    With a cap, a temporary login role limited to `cap` connections: the fleet meets the same refusal
    ("too many connections", SQLSTATE 53300) as at max_connections, while other users of this shared
    server keep their slots. Without a cap, the URL as given.
    """
    if cap <= 0:
        yield url
        return
    drop_stale_roles(admin)
    role = f"{ROLE_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:6]}"
    # Both version tables: Optuna's and tunefleet's own, read by every process that opens the store.
    tables = [*models.BaseModel.metadata.tables, *tunefleet_metadata.tables, "alembic_version", VERSION_TABLE]
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT {int(cap)}"))
        present = set(sa.inspect(connection).get_table_names())
        listed = ", ".join(f'"{t}"' for t in tables if t in present)
        connection.execute(sa.text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {listed} TO {role}"))
        connection.execute(
            sa.text(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}")
        )
    try:
        yield sa.engine.make_url(url).set(username=role, password=None).render_as_string(hide_password=False)
    finally:
        drop_role(admin, role)


def open_fleet_storage(url: str, variant: str) -> RDBStorage:
    """One simulated worker's store, as the variant builds it (`pgbouncer`: url leads to PgBouncer)."""
    if variant in ("shipped", "pgbouncer"):
        return open_storage(url, pool_size=1)
    # What open_storage would build with a `pool_size=0` meaning "no pool": same options, NullPool.
    options = engine_kwargs(url, pool_size=1)
    for key in ("pool_size", "max_overflow", "pool_recycle", "pool_pre_ping"):
        options.pop(key, None)
    storage = RDBStorage(
        url, engine_kwargs={**options, "poolclass": sa.pool.NullPool}, skip_compatibility_check=True
    )
    check_schema(storage)
    return storage


# -- measuring ------------------------------------------------------------------------------------------


class Tally:
    """Thread-safe counts of everything that went wrong, and each claim's wall time including retries."""

    def __init__(self, application_name: str) -> None:
        self.application_name = application_name
        self.lock = threading.Lock()
        self.errors: Counter[str] = Counter()
        self.claim_s: list[float] = []
        self.claim_wall_s: list[float] = []
        self.claim_started: list[float] = []
        self.slow_claims: list[dict[str, float]] = []
        self.retried_operations = 0
        self.crashes: list[str] = []
        self.never_connected = 0
        self.declared_lost = 0

    def on_error(self, context: sa.engine.ExceptionContext) -> None:
        engine = context.engine
        if engine is None or engine.url.query.get("application_name") != self.application_name:
            return
        error = context.original_exception
        code = getattr(error, "sqlstate", None) or type(error).__name__
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        # Keep the kinds few: the message without the role name or numbers that vary.
        kind = f"{code}: {first_line.split(' for role')[0][:80]}"
        with self.lock:
            self.errors[kind] += 1


class TimedRepository(StudyRepository):
    """The real repository; claim() also records its wall time including failed attempts and their backoff.

    With a first-claim delay the worker stands in for one already busy with a trial when the run starts:
    registered and heartbeating, it claims only after the delay (which no latency includes).
    """

    def __init__(self, storage: RDBStorage, tally: Tally, stop: threading.Event) -> None:
        super().__init__(storage)
        self.tally = tally
        self.stop = stop
        self.first_claim_delay_s = 0.0
        self._failing_since: float | None = None
        self._phases: dict[str, float] = {}

    # Each step of a claim timed on its own, so a slow claim says where it waited.
    def _timed(self, phase: str, call: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        try:
            return call()
        finally:
            self._phases[phase] = time.perf_counter() - began

    def _take_trial(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("take", partial(super()._take_trial, *args, **kwargs))

    def _sample(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("sample", partial(super()._sample, *args, **kwargs))

    def _write_params(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("params", partial(super()._write_params, *args, **kwargs))

    def claim(
        self,
        worker: WorkerIdentity,
        *,
        study_names: Sequence[str] | None = None,
        can_run: Callable[[StudySpec], bool] | None = None,
    ) -> Claim | None:
        if self.first_claim_delay_s:
            delay, self.first_claim_delay_s = self.first_claim_delay_s, 0.0
            if self.stop.wait(delay):
                return None
        started = time.perf_counter()
        self._phases = {}
        cpu_began = time.thread_time()
        try:
            claim = super().claim(worker, study_names=study_names, can_run=can_run)
        except Exception:
            if self._failing_since is None:
                self._failing_since = started
            raise
        first = self._failing_since if self._failing_since is not None else started
        self._failing_since = None
        if claim is not None:
            with self.tally.lock:
                self.tally.claim_started.append(first)
                self.tally.claim_s.append(claim.claim_s)
                self.tally.claim_wall_s.append(time.perf_counter() - first)
                if claim.claim_s > 0.25:
                    self.tally.slow_claims.append(
                        {
                            "claim_ms": round(1000 * claim.claim_s),
                            "thread_cpu_ms": round(1000 * (time.thread_time() - cpu_began), 1),
                            **{f"{k}_ms": round(1000 * v, 1) for k, v in self._phases.items()},
                        }
                    )
        return claim


class RetryCounter(logging.Handler):
    """Counts store operations that needed a retry (studies.resilience logs the first failure of each)."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(logging.WARNING)
        self.tally = tally

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        with self.tally.lock:
            if message.startswith("store unavailable during"):
                self.tally.retried_operations += 1
            elif message.startswith("this worker was declared lost"):
                self.tally.declared_lost += 1


class ConnectionSampler(threading.Thread):
    """Samples how many sessions the database and our fleet hold, every interval."""

    def __init__(self, admin: sa.Engine, database: str, application_name: str, interval_s: float = 0.2):
        super().__init__(name="bench-connection-sampler", daemon=True)
        self.admin = admin
        self.database = database
        self.application_name = application_name
        self.interval_s = interval_s
        self.samples: list[tuple[int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        query = sa.text(
            "SELECT count(*) FILTER (WHERE datname = :db), count(*) FILTER (WHERE application_name = :app) "
            "FROM pg_stat_activity"
        )
        with self.admin.connect() as connection:
            # A first sample at once: a small zero-cost fleet can finish inside one interval.
            while True:
                row = connection.execute(query, {"db": self.database, "app": self.application_name}).one()
                self.samples.append((int(row[0]), int(row[1])))
                connection.rollback()
                if self.done.wait(self.interval_s):
                    break


def where_threads_are(threads: list[threading.Thread]) -> dict[str, int]:
    """For workers still running at a timeout: the innermost tunefleet function each is in, counted."""
    frames = sys._current_frames()
    places: Counter[str] = Counter()
    for thread in threads:
        frame = frames.get(thread.ident or -1)
        chain: list[str] = []
        while frame is not None and len(chain) < 2:
            path = frame.f_code.co_filename
            if any(part in path for part in ("/studies/", "/worker/", "/bench/")):
                chain.append(f"{Path(path).name}:{frame.f_code.co_name}")
            frame = frame.f_back
        places[" < ".join(chain) or "?"] += 1
    return dict(places.most_common())


class GcPauses:
    """Records how long each garbage collection stopped this process, by generation."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses.append((int(info["generation"]), time.perf_counter() - self._began))

    def summary(self) -> dict[str, float]:
        full = [s for generation, s in self.pauses if generation == 2]
        return {
            "collections": len(self.pauses),
            "full_collections": len(full),
            "full_max_ms": round(1000 * max(full, default=0.0), 1),
            "total_s": round(sum(s for _, s in self.pauses), 3),
        }


def shard_sizes(workers: int, per_process: int) -> list[int]:
    """How many worker threads each simulating process runs: `per_process` each (0: all in one)."""
    if per_process <= 0 or per_process >= workers:
        return [workers]
    full, rest = divmod(workers, per_process)
    return [per_process] * full + ([rest] if rest else [])


def run_shard(config: dict[str, Any]) -> dict[str, Any]:
    """One simulating process: its share of the fleet's workers as threads, started like a worker process.

    Says "ready" on stdout once its stores are open and its start-up heap is frozen (as `tunefleet worker`
    does), starts its workers on "go" from stdin, and ends with one JSON line: what it measured.
    """
    import torch

    from worker.loop import LoopOptions, freeze_startup_heap, run_loop
    from worker.runner import TrialRunner
    from worker.settings import WorkerSettings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, variant, study_name = config["url"], config["variant"], config["study_name"]
    workdir = Path(config["workdir"])
    tally = Tally(config["application_name"])
    stop_all = threading.Event()
    sa.event.listen(sa.engine.Engine, "handle_error", tally.on_error)
    logging.getLogger("tunefleet").addHandler(RetryCounter(tally))
    settings = WorkerSettings(
        database_url=url, device="cpu", cache_dir=workdir / "cache", artifact_dir=str(workdir / "artifacts")
    )
    host, pid = socket.gethostname(), os.getpid()
    first_delays: list[float] = config["first_delays"]

    def make_repository() -> TimedRepository:
        return TimedRepository(open_fleet_storage(url, variant), tally, stop_all)

    def try_once(_: int) -> TimedRepository | None:
        try:
            return make_repository()
        except Exception as error:
            if not is_transient(error):
                raise
            return None

    # Start-up (opening each worker's store) is not measured; a worker refused a connection here
    # retries inside its thread once the run starts, as a real worker's build_runner does.
    with ThreadPoolExecutor(max_workers=8) as pool:
        ready = list(pool.map(try_once, range(len(first_delays))))

    def worker(index: int) -> None:
        repository = ready[index]
        try:
            if repository is None:
                repository = with_retry(make_repository, what="open the store", stop=stop_all)
            repository.first_claim_delay_s = first_delays[index]
            runner = TrialRunner(repository=repository, device=torch.device("cpu"), cache_dir=workdir)
            runner.stopping = stop_all
            identity = WorkerIdentity(host=host, pid=pid, device="cpu")
            identity = replace(identity, worker_id=new_worker_id(identity))
            run_loop(runner, identity, LoopOptions(study_names=(study_name,), exit_when_idle=True), settings)
        except GaveUp:
            # Stopped while still waiting for a connection: the worker never joined the fleet.
            with tally.lock:
                tally.never_connected += 1
        except Exception as error:
            frames = [f for f in traceback.extract_tb(error.__traceback__) if "/studies/" in f.filename]
            where = f" (in {Path(frames[-1].filename).name}:{frames[-1].name})" if frames else ""
            with tally.lock:
                tally.crashes.append(f"{type(error).__name__}{where}: {str(error)[:200]}")
        finally:
            if repository is not None:
                repository.engine.dispose()

    threads = [threading.Thread(target=worker, args=(i,), name=f"sim-worker-{i}") for i in range(len(ready))]
    freeze_startup_heap()
    pauses = GcPauses()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("store_scale shard: no go from the parent")
    gc.callbacks.append(pauses)
    go = time.perf_counter()
    cpu_before = time.process_time()
    for thread in threads:
        thread.start()
    window_end = go + config["span_s"]
    for thread in threads:
        thread.join(timeout=max(0.0, window_end - time.perf_counter()))
    window_cpu_s = time.process_time() - cpu_before
    gc.callbacks.remove(pauses)
    still = [t for t in threads if t.is_alive()]
    stuck_in = where_threads_are(still) if still and not config["paced"] else {}
    # Stopping is a worker's SIGTERM: each hands its trial back and deregisters.
    stop_all.set()
    for thread in threads:
        thread.join(timeout=120)
    # run_loop does not wait for its heartbeat thread: let the last reaps end before the process does.
    for thread in threading.enumerate():
        if thread.name == "tunefleet-heartbeat":
            thread.join(timeout=30)
    return {
        "start_failures": sum(r is None for r in ready),
        "window_cpu_s": window_cpu_s,
        "timed_out": bool(still) and not config["paced"],
        "stuck_in": stuck_in,
        "claim_offsets_s": [began - go for began in tally.claim_started],
        "claim_s": tally.claim_s,
        "claim_wall_s": tally.claim_wall_s,
        "slow_claims": tally.slow_claims,
        "errors": dict(tally.errors),
        "retried_operations": tally.retried_operations,
        "crashes": tally.crashes,
        "never_connected": tally.never_connected,
        "declared_lost": tally.declared_lost,
        "gc": pauses.summary(),
    }


def shard_main() -> int:
    """`--shard`: read a shard's config as one JSON line on stdin, run it, answer one JSON line."""
    clean_up_on_sigterm()
    config = json.loads(sys.stdin.readline())
    result = run_shard(config)
    print(json.dumps(result), flush=True)
    return 0


def run_fleet(
    run: Run, plan: Plan, fleet_url: str, admin_repository: StudyRepository, workdir: Path, study_name: str
) -> list[int]:
    """Start `run.workers` workers on a new study of this name, as threads of a few processes, and measure them.

    Returns the simulating processes' pids: their workers' registry rows are theirs to clean up.
    """
    application_name = study_name[:63]
    url = with_query(fleet_url, application_name=application_name)
    paced = run.load == "paced"
    run.trial_s = run.workers / plan.fleet_rate if paced else 0.0
    # Paced: a budget the window never exhausts; zero-cost: the budget is the run.
    run.n_trials = 3 * run.workers if paced else plan.trials(run.workers)
    spec = zero_cost_spec(
        study_name, "random", run.n_trials, seed=5, epoch_sleep_s=run.trial_s / ZERO_COST_EPOCHS
    )
    record = admin_repository.create(spec)
    delays = random.Random(run.repeat * 7919 + run.workers)
    first_delays = [delays.uniform(0, run.trial_s) for _ in range(run.workers)]
    span_s = plan.window_s if paced else plan.timeout_s
    configs, begin = [], 0
    for size in shard_sizes(run.workers, plan.threads_per_process):
        configs.append(
            {
                "url": url,
                "variant": run.variant,
                "study_name": study_name,
                "application_name": application_name,
                "workdir": str(workdir),
                "first_delays": first_delays[begin : begin + size],
                "paced": paced,
                "span_s": span_s,
            }
        )
        begin += size
    run.processes = len(configs)
    sampler = ConnectionSampler(
        admin_repository.engine, sa.engine.make_url(fleet_url).database or "", application_name
    )
    command = python_module(f"bench.{NAME}", "--shard")
    # Killed at once if anything fails: a shard left waiting for "go" would wait for ever.
    shards = Processes([command] * len(configs), workdir, "shard", grace_s=0)
    try:
        for index, config in enumerate(configs):
            shards.send(json.dumps(config), index)
        shards.wait_ready("a store_scale shard")
        sampler.start()
        shards.send("go")
        results = shards.results(timeout_s=span_s + 300)
    finally:
        shards.close()
        sampler.done.set()
        if sampler.is_alive():
            sampler.join()

    run.start_failures = sum(r["start_failures"] for r in results)
    run.timed_out = any(r["timed_out"] for r in results)
    run.stuck_in = dict(sum((Counter(r["stuck_in"]) for r in results), Counter()))
    trials = admin_repository.storage.get_all_trials(record.optuna_study_id, deepcopy=False)
    run.created = len(trials)
    run.retries = sum(1 for t in trials if "retry_of" in t.user_attrs)
    run.n_claimed = admin_repository.get(study_name).n_claimed
    run.overshoot = max(0, run.created - run.retries - run.n_trials)
    run.states = dict(Counter(t.state.name.lower() for t in trials))
    finished = [t for t in trials if t.state.is_finished()]
    run.finished = len(finished)
    # Budget slots without a result: trials still running or queued, or failed as lost and not retried.
    done = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    run.unfinished = max(0, run.n_trials - done)
    # Claims begun after a paced window closed are the fleet stopping (handing back, re-claiming): not load.
    claims = [
        (s, wall)
        for r in results
        for began, s, wall in zip(r["claim_offsets_s"], r["claim_s"], r["claim_wall_s"], strict=True)
        if began < span_s
    ]
    window_cpu_s = sum(r["window_cpu_s"] for r in results)
    if paced:
        # Claims per second over the window is the load the fleet put on the store.
        run.window_s = plan.window_s
        run.trials_per_s = len(claims) / plan.window_s
        run.process_cpu_ms_per_trial = 1000 * window_cpu_s / max(1, len(claims))
    else:
        starts = [t.datetime_start for t in trials if t.datetime_start]
        ends = [t.datetime_complete for t in finished if t.datetime_complete]
        if starts and ends:
            run.window_s = (max(ends) - min(starts)).total_seconds()
            run.trials_per_s = len(ends) / run.window_s if run.window_s > 0 else math.nan
        run.process_cpu_ms_per_trial = 1000 * window_cpu_s / max(1, run.finished)
    claim_s = [s for s, _ in claims]
    claim_wall_s = [wall for _, wall in claims]
    run.claim_p50_ms = 1000 * percentile(claim_s, 50)
    run.claim_p99_ms = 1000 * percentile(claim_s, 99)
    run.claim_with_retries_p50_ms = 1000 * percentile(claim_wall_s, 50)
    run.claim_with_retries_p99_ms = 1000 * percentile(claim_wall_s, 99)
    run.claim_max_ms = 1000 * max(claim_wall_s, default=math.nan)
    run.claims_over_250_ms = sum(1 for s in claim_wall_s if s > 0.25)
    run.slow_claims = [c for r in results for c in r["slow_claims"]][:50]
    run.claims = len(claim_s)
    run.never_connected = sum(r["never_connected"] for r in results)
    errors = sum((Counter(r["errors"]) for r in results), Counter())
    run.error_kinds = dict(errors.most_common())
    run.errors = sum(errors.values())
    run.retried_operations = sum(r["retried_operations"] for r in results)
    crashes = [c for r in results for c in r["crashes"]]
    run.crashed_workers = len(crashes)
    if sampler.samples:
        run.connections_db_max = max(s[0] for s in sampler.samples)
        run.connections_db_median = statistics.median(s[0] for s in sampler.samples)
        run.connections_ours_max = max(s[1] for s in sampler.samples)
        run.connections_ours_median = statistics.median(s[1] for s in sampler.samples)
    run.declared_lost = sum(r["declared_lost"] for r in results)
    run.gc_full_collections = sum(int(r["gc"]["full_collections"]) for r in results)
    run.gc_full_max_ms = max(float(r["gc"]["full_max_ms"]) for r in results)
    if crashes:
        print(f"  crashed workers: {Counter(crashes).most_common(3)}", file=sys.stderr)
    return shards.pids


# -- the whole benchmark -----------------------------------------------------------------------------


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    keys = dict.fromkeys((r.load, r.variant, r.workers) for r in runs)
    for load, variant, workers in keys:
        mine = [r for r in runs if (r.load, r.variant, r.workers) == (load, variant, workers)]
        row: dict[str, Any] = {
            "load": load,
            "variant": variant,
            "workers": workers,
            "repeats": len(mine),
            "trial_s": mine[0].trial_s,
        }
        for figure in (
            "trials_per_s",
            "process_cpu_ms_per_trial",
            "claim_p50_ms",
            "claim_p99_ms",
            "claim_with_retries_p50_ms",
            "claim_with_retries_p99_ms",
            "connections_ours_max",
            "connections_db_max",
            "claims",
        ):
            row[figure] = spread(float(getattr(r, figure)) for r in mine)
        row["claims_over_250_ms"] = sum(r.claims_over_250_ms for r in mine)
        row["claims_total"] = sum(r.claims for r in mine)
        row["errors"] = sum(r.errors for r in mine)
        row["error_kinds"] = dict(sum((Counter(r.error_kinds) for r in mine), Counter()))
        row["retried_operations"] = sum(r.retried_operations for r in mine)
        row["start_failures"] = sum(r.start_failures for r in mine)
        row["never_connected"] = sum(r.never_connected for r in mine)
        row["crashed_workers"] = sum(r.crashed_workers for r in mine)
        row["declared_lost"] = sum(r.declared_lost for r in mine)
        row["retried_trials"] = sum(r.retries for r in mine)
        row["processes"] = mine[0].processes
        row["gc_full_collections"] = sum(r.gc_full_collections for r in mine)
        row["gc_full_max_ms"] = max(r.gc_full_max_ms for r in mine)
        row["overshoot"] = max(r.overshoot for r in mine)
        row["timed_out"] = sum(r.timed_out for r in mine)
        # Paced runs end mid-trial by design (their trials are handed back); zero-cost ones must finish.
        row["unfinished"] = 0 if load == "paced" else sum(r.unfinished for r in mine)
        row["n_trials"] = mine[0].n_trials
        rows.append(row)
    return rows


def processes_sentence(plan: Plan) -> str:
    """How the fleet's threads were spread over processes, and what that means for the figures."""
    if plan.threads_per_process <= 0:
        return (
            "**All workers are threads of one Python process: they share its GIL and its heap (a full garbage "
            "collection of 256 workers' objects stops them all for up to a second), so latencies are pessimistic.**"
        )
    return (
        f"Workers run {plan.threads_per_process} threads to a process (a real fleet runs one per process), each "
        "process started as `tunefleet worker` starts: stores opened, start-up heap frozen "
        "(worker.loop.freeze_startup_heap). The processes share this machine's cores with PostgreSQL and PgBouncer."
    )


def markdown(rows: list[dict[str, Any]], plan: Plan, env: dict[str, Any], environment: str) -> str:
    table = markdown_table(
        [
            "load",
            "pool",
            "workers",
            "claims",
            "claim p50 ms",
            "claim p99 ms",
            "p99 incl. retries ms",
            "claims > 250 ms",
            "errors",
            "ops retried",
            "refused at start",
            "never connected",
            "crashed",
            "overshoot",
            "fleet conns max",
            "db conns max",
            "trials/s",
            "CPU ms/trial",
            "processes",
            "full GCs (longest ms)",
        ],
        [
            [
                row["load"] + (f" ({row['trial_s']:.0f} s trials)" if row["load"] == "paced" else ""),
                row["variant"],
                row["workers"],
                fmt(row["claims"], 0),
                fmt(row["claim_p50_ms"]),
                fmt(row["claim_p99_ms"]),
                fmt(row["claim_with_retries_p99_ms"]),
                f"{row['claims_over_250_ms']} of {row['claims_total']}",
                row["errors"],
                row["retried_operations"],
                row["start_failures"],
                row["never_connected"],
                row["crashed_workers"],
                row["overshoot"]
                if row["load"] == "zero-cost"
                else f"{row['overshoot']} (budget not reached)",
                fmt(row["connections_ours_max"], 0),
                fmt(row["connections_db_max"], 0),
                fmt(row["trials_per_s"]),
                fmt(row["process_cpu_ms_per_trial"], 0),
                row["processes"],
                f"{row['gc_full_collections']} ({row['gc_full_max_ms']:.0f})",
            ]
            for row in rows
        ],
    )
    kinds: Counter[str] = Counter()
    for row in rows:
        kinds.update(row["error_kinds"])
    cap = (
        f"The fleet logs in as a temporary role with CONNECTION LIMIT {plan.connection_cap}, standing in for "
        f"the server's max_connections={env['max_connections']} (the refusal is the same, SQLSTATE 53300), so "
        "that other users of this shared server keep theirs."
        if plan.connection_cap > 0
        else f"The fleet shares the server's max_connections={env['max_connections']} with its other users."
    )
    parts = [
        "Each simulated worker is a thread running tunefleet's real loop (worker.loop.run_loop: register, "
        "heartbeat and reaper thread, claim, 3 reports with study-state and should_prune checks, complete) on "
        f"its own store object; synthetic task, random sampler, pruner none; median [min-max] over {plan.repeats} "
        f"run(s). {processes_sentence(plan)} CPU per trial is all the simulating processes' together. " + cap,
        "",
        "Loads: "
        + "; ".join(f"`{k}`: {v}" for k, v in LOADS.items() if k in plan.loads)
        + f" (fleet_rate {plan.fleet_rate:g}/s, measured over {plan.window_s:g} s). Pools: "
        + "; ".join(f"`{k}` = {v}" for k, v in VARIANTS.items() if k in plan.variants)
        + ".",
        "",
        "Claim p50/p99 are tunefleet's own claim timing (`claim_s`); 'incl. retries' adds the failed attempts "
        "and back-off of a claim that met a store error. Errors are every database error the fleet's engines "
        "raised (refused connections included); 'ops retried' counts store operations that went through "
        "with_retry's back-off; 'refused at start' counts workers that could not open the store at first, 'never connected' "
        "those still retrying when the run ended; "
        "overshoot is trials created (retries of lost workers excepted) beyond n_trials.",
        "",
        table,
    ]
    if kinds:
        parts += ["", "Errors: " + "; ".join(f"{n} x `{k}`" for k, n in kinds.most_common(6)) + "."]
    lost = sum(row["declared_lost"] for row in rows)
    if lost:
        parts += [
            "",
            f"{lost} workers were declared lost by a reaper during these runs and "
            f"{sum(row['retried_trials'] for row in rows)} trials were retried: any worker's reaper on this "
            "store, with its own grace period (a concurrent test's may be 2 s), judges every worker's heartbeat.",
        ]
    parts += ["", environment]
    return "\n".join(parts)


def targets(rows: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    out = []
    for variant in plan.variants:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        errors = sum(r["errors"] + r["crashed_workers"] for r in mine)
        overshoot = max(r["overshoot"] for r in mine)
        unfinished = sum(r["unfinished"] for r in mine)
        out.append(
            {
                "target": f"`{variant}` pool: no errors, no overshoot",
                "figure": f"{errors} errors, overshoot {overshoot}, {unfinished} trials unfinished",
                "met": errors == 0 and overshoot == 0 and unfinished == 0,
            }
        )
        for load in plan.loads:
            largest = max(plan.paced_fleets if load == "paced" else plan.fleets)
            top = next((r for r in mine if r["workers"] == largest and r["load"] == load), None)
            if top is None:
                continue
            p99 = top["claim_with_retries_p99_ms"]["median"]
            out.append(
                {
                    "target": f"`{variant}` pool, {load}: p99 claim latency under 250 ms at 256 workers",
                    "figure": f"p99 {p99:.0f} ms (incl. retries) at {largest} workers",
                    "met": (p99 < 250) if largest >= 256 and not math.isnan(p99) else None,
                }
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(
        NAME,
        __doc__,
        quick="a zero-cost fleet of 32 and a paced fleet of 256, shipped pool and PgBouncer, one run each",
        smoke="2 workers, 10 trials: checks the script",
        store=True,
    )
    parser.add_argument("--fleets", type=int, nargs="+", help="fleet sizes, e.g. 32 128 256")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS))
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--loads", nargs="+", choices=tuple(LOADS))
    parser.add_argument("--trials-per-worker", type=float, help="zero-cost load: the budget per worker")
    parser.add_argument("--timeout-s", type=float, help="zero-cost load: stop a fleet not finished by then")
    parser.add_argument("--fleet-rate", type=float, help="paced load: trials per second the fleet starts")
    parser.add_argument("--window-s", type=float, help="paced load: seconds measured")
    parser.add_argument(
        "--connection-cap",
        type=int,
        help="connections the fleet may hold (a temporary role's CONNECTION LIMIT); 0: the server's own limit",
    )
    parser.add_argument(
        "--threads-per-process",
        type=int,
        help="simulated workers per process (default 32; 0: the whole fleet in one process)",
    )
    parser.add_argument("--shard", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.shard:
        return shard_main()
    clean_up_on_sigterm()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = url_from(args)
    plan = plan_for(args)
    not_run: dict[str, str] = {}
    if "pgbouncer" in plan.variants and available() is None:
        # Said, not faked: the variant is left out of the tables and the report says why.
        not_run["pgbouncer"] = f"pgbouncer is not installed: {INSTALL_HINT}"
        plan = replace(plan, variants=tuple(v for v in plan.variants if v != "pgbouncer"))
        print(f"  not run: {not_run['pgbouncer']}", file=sys.stderr)
    invocation = StoreRun.begin(f"bench.{NAME}", argv, url)
    admin_repository = StudyRepository(open_storage(url, pool_size=2))
    runs: list[Run] = []
    try:
        with (
            deleted_afterwards(url) as made,
            fleet_login(admin_repository.engine, url, plan.connection_cap) as fleet_url,
            tempfile.TemporaryDirectory(prefix="bench-scale-") as workdir,
            contextlib.ExitStack() as stack,
        ):
            # Lost workers keep their registry rows: the simulating processes' and this one's pids.
            made.worker_pids.append(os.getpid())
            urls = {variant: fleet_url for variant in plan.variants}
            if "pgbouncer" in plan.variants:
                urls["pgbouncer"] = stack.enter_context(pgbouncer(fleet_url, server_pool_size=BOUNCER_POOL))
            for repeat in range(plan.repeats):
                for load, workers, variant in plan.runs():
                    run = Run(variant, load, workers, repeat, plan.trials(workers))
                    name = f"bench-scale-{uuid.uuid4().hex[:8]}-{variant}-{load}-n{workers}"
                    made.studies.append(name)
                    made.worker_pids += run_fleet(
                        run, plan, urls[variant], admin_repository, Path(workdir), name
                    )
                    runs.append(run)
                    print(
                        f"  {load:9} {variant:8} workers={workers:<4} rep={repeat}: claim p50/p99 "
                        f"{run.claim_p50_ms:.0f}/{run.claim_with_retries_p99_ms:.0f} ms, "
                        f"{run.errors} errors, overshoot {run.overshoot}, {run.claims} claims, "
                        f"{run.finished}/{run.n_trials} finished, {run.trials_per_s:.1f} trials/s, "
                        f"fleet conns max {run.connections_ours_max}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        admin_repository.engine.dispose()
    rows = summarize(runs)
    result: dict[str, Any] = {
        "config": invocation.config(
            plan=asdict(plan),
            variants={k: v for k, v in VARIANTS.items() if k in plan.variants},
            loads={k: v for k, v in LOADS.items() if k in plan.loads},
            threads_per_process=plan.threads_per_process,
            not_run=not_run,
        ),
        "summary": rows,
        "studies_created_and_deleted": made.studies,
        "runs": [asdict(r) for r in runs],
    }
    result["targets"] = targets(rows, plan)
    result["markdown"] = markdown(rows, plan, invocation.env, invocation.markdown()) + "".join(
        f"\n\nNot run: `{variant}`: {why}." for variant, why in not_run.items()
    )
    publish(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
