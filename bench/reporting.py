"""What every benchmark reports: its options and command line, the machine, statistics, Markdown tables, the results JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shlex
import socket
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import sqlalchemy as sa

# -- options and command line ------------------------------------------------------------------------


def benchmark_parser(
    name: str, description: str | None, *, quick: str | None, smoke: str | None, store: bool = False
) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick, --smoke, --out (bench/results/NAME.json); a store's, --url."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument("--out", default=f"bench/results/{name}.json")
    if store:
        parser.add_argument(
            "--url", help="PostgreSQL URL (default: TUNEFLEET_BENCH_POSTGRES_URL or the test database)"
        )
    return parser


def size_of(args: argparse.Namespace) -> str:
    """'smoke', 'quick' or 'full': which of a benchmark's sizes the options ask for."""
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The exact command that reproduces this run."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", "-m", module, *args])


# -- the machine ------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what platform knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages: how busy the shared machine was around a run."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


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


def environment_markdown(env: Mapping[str, Any]) -> str:
    """The machine and versions, as a Markdown line under a table (the report puts the command atop it)."""
    v = env["versions"]
    busy = env.get("load_average_at_start"), env.get("load_average_at_end")
    return (
        f"Machine: {env['cores']} cores, {env['cpu']}; load average (1 min) {busy[0][0] if busy[0] else '?'} "
        f"at start, {busy[1][0] if busy[1] else '?'} at end (other work shares this machine). "
        f"Python {v.get('python')}, optuna {v.get('optuna')}, SQLAlchemy {v.get('sqlalchemy')}, "
        f"psycopg {v.get('psycopg')}, PostgreSQL {v.get('postgresql')} "
        f"(max_connections={env['max_connections']})."
    )


@dataclass
class StoreRun:
    """One invocation of a store benchmark: its command, the machine and versions, and its wall clock."""

    command: str
    env: dict[str, Any]
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def begin(cls, module: str, argv: Sequence[str] | None, url: str) -> StoreRun:
        return cls(command=command_line(module, argv), env=environment(url))

    def config(self, **settings: Any) -> dict[str, Any]:
        """The results file's config: the command, these settings, the environment (load at the end too), wall time."""
        self.env["load_average_at_end"] = load_average()
        return {
            "command": self.command,
            **settings,
            **self.env,
            "wall_s": round(time.monotonic() - self.started, 1),
        }

    def markdown(self) -> str:
        return environment_markdown(self.env)


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


def ratio(ours: float, baseline: float) -> float:
    """ours / baseline, NaN when the baseline is missing or zero."""
    if baseline is None or ours is None or baseline == 0 or math.isnan(baseline) or math.isnan(ours):
        return math.nan
    return ours / baseline


def median_interval(
    values: list[float], confidence: float = 0.9, resamples: int = 2000
) -> tuple[float, float]:
    """A bootstrap percentile interval for the median of values (seeds resampled with replacement).

    How far the headline median could move with another draw of seeds: two runs of the same
    search on the same seeds differ (the cost model reads measured seconds), and by this much.
    """
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return medians[int(tail * resamples)], medians[min(resamples - 1, int((1 - tail) * resamples))]


# -- tables and the results file ----------------------------------------------------------------------


def fmt(figure: Mapping[str, float], digits: int = 1, scale: float = 1.0) -> str:
    """'median [min-max]' of a spread, scaled (e.g. 1000 for seconds shown as ms)."""
    if not figure or figure.get("n", 0) == 0 or math.isnan(figure["median"]):
        return "-"
    median = f"{figure['median'] * scale:.{digits}f}"
    if figure["n"] == 1:
        return median
    return f"{median} [{figure['min'] * scale:.{digits}f}-{figure['max'] * scale:.{digits}f}]"


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


def publish(result: Mapping[str, Any], out: str | Path) -> None:
    """Write the result JSON, then print its table, its targets and where it went."""
    path = write_result(result, out)
    print(result["markdown"])
    print()
    for target in result["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not applicable at this size"}[target["met"]]
        print(f"- {target['target']}: {target['figure']} ({verdict})")
    print(f"written to {path}; wall time {result['config']['wall_s']} s")
