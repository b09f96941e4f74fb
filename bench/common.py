"""Shared pieces of the store benchmarks: machine and versions, statistics, seeding and cleaning studies, tables."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages._rdb import models

from studies import load_spec_file, preset_path
from studies.storage import normalize_url
from studies.tables import studies_table, workers_table

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def postgres_url() -> str:
    """The PostgreSQL the benchmarks run on: TUNEFLEET_BENCH_POSTGRES_URL, else the test suite's, else the local one."""
    return normalize_url(
        os.environ.get("TUNEFLEET_BENCH_POSTGRES_URL")
        or os.environ.get("TUNEFLEET_TEST_POSTGRES_URL")
        or DEFAULT_POSTGRES_URL
    )


def with_query(url: str, **query: str) -> str:
    """The URL with these query parameters set (e.g. an application_name that marks our sessions)."""
    return sa.engine.make_url(url).update_query_dict(query).render_as_string(hide_password=False)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what platform knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(url: str) -> dict[str, Any]:
    """The machine and every version a store benchmark's figures depend on."""
    found: dict[str, str] = {"python": platform.python_version()}
    for name in ("optuna", "sqlalchemy", "psycopg"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            server = str(connection.execute(sa.text("SHOW server_version")).scalar())
            max_connections = int(str(connection.execute(sa.text("SHOW max_connections")).scalar()))
    finally:
        engine.dispose()
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "host": socket.gethostname(),
        "versions": {**found, "postgresql": server},
        "max_connections": max_connections,
        "load_average_at_start": load_average(),
    }


def load_average() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages: how busy the shared machine was around a run."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def load_preset(preset: str, *, smoke: bool = False) -> dict[str, Any]:
    """A built-in preset's spec as a mapping; at smoke size, on a tiny subset of short texts."""
    raw = load_spec_file(preset_path(preset))
    if smoke:
        raw["task"] = {**raw.get("task", {}), "max_examples": 60, "max_length": 32}
    return raw


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The exact command that reproduces this run."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", "-m", module, *args])


def environment_markdown(env: Mapping[str, Any], command: str) -> str:
    """The machine, versions and command, as Markdown lines under a table."""
    v = env["versions"]
    busy = env.get("load_average_at_start"), env.get("load_average_at_end")
    return "\n".join(
        [
            f"Machine: {env['cores']} cores, {env['cpu']}; load average (1 min) {busy[0][0] if busy[0] else '?'} "
            f"at start, {busy[1][0] if busy[1] else '?'} at end (other work shares this machine). "
            f"Python {v.get('python')}, optuna {v.get('optuna')}, SQLAlchemy {v.get('sqlalchemy')}, "
            f"psycopg {v.get('psycopg')}, PostgreSQL {v.get('postgresql')} "
            f"(max_connections={env['max_connections']}).",
            f"Command: `{command}`",
        ]
    )


# -- statistics -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements (NaN-free), for a figure reported as median [min-max]."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean), "n": len(clean)}


def fmt(figure: Mapping[str, float], digits: int = 1, scale: float = 1.0) -> str:
    """'median [min-max]' of a spread, scaled (e.g. 1000 for seconds shown as ms)."""
    if not figure or figure.get("n", 0) == 0 or math.isnan(figure["median"]):
        return "-"
    median = f"{figure['median'] * scale:.{digits}f}"
    if figure["n"] == 1:
        return median
    return f"{median} [{figure['min'] * scale:.{digits}f}-{figure['max'] * scale:.{digits}f}]"


def ratio(ours: float, baseline: float) -> float:
    """ours / baseline, NaN when the baseline is missing or zero."""
    if baseline is None or ours is None or baseline == 0 or math.isnan(baseline) or math.isnan(ours):
        return math.nan
    return ours / baseline


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(result: Mapping[str, Any], out: str | Path) -> Path:
    """Write the result JSON (NaN as null, so any JSON reader takes it)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            return None
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(result), indent=2) + "\n")
    return path


# -- processes ----------------------------------------------------------------------------------------


def clean_up_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a benchmark stopped from outside still runs its clean-up."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all its threads), from /proc; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields we want follow the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def backend_pids(engine: sa.Engine, application_name: str) -> list[int]:
    """The PostgreSQL server processes serving sessions with this application_name."""
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": application_name},
            ).scalars()
        )


# -- the zero-cost task ------------------------------------------------------------------------------


def zero_cost_loss(params: Mapping[str, Any], *, seed: int, epoch: int) -> float:
    """The synthetic task's loss (worker/synthetic.py), restated so plain-Optuna baselines need no tunefleet."""
    learning_rate = float(params.get("learning_rate", 1e-3))
    width = float(params.get("width", 64))
    depth = float(params.get("depth", 1))
    distance = (math.log10(learning_rate) + 2.5) ** 2 + 0.1 * (math.log2(width) - 7) ** 2 / 9 + 0.05 * depth
    noise = random.Random(seed * 1_000_003 + epoch).gauss(0.0, 0.01)
    return 0.1 + distance + 1.0 / epoch + noise


def seed_trials(
    engine: sa.Engine,
    study_id: int,
    space: Mapping[str, BaseDistribution],
    n: int,
    *,
    seed: int,
    epochs: int = 3,
    loss: Callable[[Mapping[str, Any], int, int], float] | None = None,
) -> None:
    """Add n finished (COMPLETE) trials with parameters, per-epoch values and a value, in a few bulk INSERTs.

    study.add_trials would take minutes for 5,000 trials (a transaction and a dozen statements each); a study
    that "already holds 5,000 trials" only has to look like one to the samplers and the claim.
    """
    rng = random.Random(seed)
    loss = loss or (lambda params, trial_seed, epoch: zero_cost_loss(params, seed=trial_seed, epoch=epoch))
    started = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    sampler = optuna.samplers.RandomSampler(seed=seed)
    drawn: list[dict[str, Any]] = []
    for _ in range(n):
        params = {}
        for name, distribution in space.items():
            params[name] = sampler.sample_independent(None, None, name, distribution)  # type: ignore[arg-type]
        drawn.append(params)
    trials = models.TrialModel.__table__
    finite = models.TrialValueModel.TrialValueType.FINITE
    finite_step = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    json_of = {name: distribution_to_json(d) for name, d in space.items()}
    with engine.begin() as connection:
        base = connection.execute(
            sa.select(sa.func.count()).select_from(trials).where(trials.c.study_id == study_id)
        ).scalar_one()
        ids = list(
            connection.execute(
                trials.insert().returning(trials.c.trial_id, sort_by_parameter_order=True),
                [
                    {
                        "number": base + i,
                        "study_id": study_id,
                        "state": optuna.trial.TrialState.COMPLETE,
                        "datetime_start": started + timedelta(milliseconds=i),
                        "datetime_complete": started + timedelta(milliseconds=i + 1),
                    }
                    for i in range(n)
                ],
            ).scalars()
        )
        params_rows, values_rows, steps_rows = [], [], []
        for trial_id, params in zip(ids, drawn, strict=True):
            for name, value in params.items():
                params_rows.append(
                    {
                        "trial_id": trial_id,
                        "param_name": name,
                        "param_value": space[name].to_internal_repr(value),
                        "distribution_json": json_of[name],
                    }
                )
            trial_seed = rng.randrange(2**31)
            per_epoch = [loss(params, trial_seed, epoch) for epoch in range(1, epochs + 1)]
            for epoch, value in enumerate(per_epoch, start=1):
                steps_rows.append(
                    {
                        "trial_id": trial_id,
                        "step": epoch,
                        "intermediate_value": value,
                        "intermediate_value_type": finite_step,
                    }
                )
            values_rows.append(
                {"trial_id": trial_id, "objective": 0, "value": min(per_epoch), "value_type": finite}
            )
        if params_rows:
            connection.execute(models.TrialParamModel.__table__.insert(), params_rows)
        connection.execute(models.TrialValueModel.__table__.insert(), values_rows)
        connection.execute(models.TrialIntermediateValueModel.__table__.insert(), steps_rows)
    analyze_trial_tables(engine)


# Optuna's tables of per-trial rows, each keyed by trial_id.
TRIAL_CHILD_TABLES = (
    models.TrialParamModel.__table__,
    models.TrialValueModel.__table__,
    models.TrialIntermediateValueModel.__table__,
    models.TrialUserAttributeModel.__table__,
    models.TrialSystemAttributeModel.__table__,
    models.TrialHeartbeatModel.__table__,
)


def analyze_trial_tables(engine: sa.Engine) -> None:
    """Refresh PostgreSQL's statistics of the trial tables after a bulk insert, as autovacuum would.

    A real study grows over hours, and autovacuum's analyze (within a minute of 10% of a table
    changing) keeps the planner's row estimates close; a benchmark seeds 5,000 trials and measures
    seconds later. This machine's PostgreSQL also runs without autovacuum, and with estimates
    thousands of times too high the planner read a few trials' rows by scanning whole tables, for
    both systems alike. Nothing to do on SQLite.
    """
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as connection:
        tables = [models.TrialModel.__table__, *TRIAL_CHILD_TABLES]
        connection.execute(sa.text("ANALYZE " + ", ".join(table.name for table in tables)))


def delete_studies(url: str, names: Iterable[str]) -> None:
    """Delete these studies (Optuna's rows and tunefleet's), their trials first in bulk: the ORM's
    cascade would load and delete a 5,000-trial study row by row."""
    names = list(names)
    if not names:
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    studies = models.StudyModel.__table__
    trials = models.TrialModel.__table__
    try:
        with engine.begin() as connection:
            connection.execute(studies_table.delete().where(studies_table.c.study_name.in_(names)))
            ids = list(
                connection.execute(
                    sa.select(studies.c.study_id).where(studies.c.study_name.in_(names))
                ).scalars()
            )
            if ids:
                trial_ids = sa.select(trials.c.trial_id).where(trials.c.study_id.in_(ids)).scalar_subquery()
                for table in TRIAL_CHILD_TABLES:
                    connection.execute(table.delete().where(table.c.trial_id.in_(trial_ids)))
                connection.execute(trials.delete().where(trials.c.study_id.in_(ids)))
    finally:
        engine.dispose()
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sa.pool.NullPool})
    for name in names:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
    storage.engine.dispose()


def delete_worker_rows(url: str, *, host: str, pids: Iterable[int]) -> None:
    """Remove the registry rows our benchmark workers left behind (they deregistered as 'stopped')."""
    pids = list(pids)
    if not pids:
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(
                workers_table.delete().where(workers_table.c.host == host, workers_table.c.pid.in_(pids))
            )
    finally:
        engine.dispose()


def publish(result: Mapping[str, Any], out: str | Path) -> None:
    """Write the result JSON, then print its table, its targets and where it went."""
    path = write_result(result, out)
    print(result["markdown"])
    print()
    for target in result["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not applicable at this size"}[target["met"]]
        print(f"- {target['target']}: {target['figure']} ({verdict})")
    print(f"written to {path}; wall time {result['config']['wall_s']} s")
