"""Benchmark 2d: what one Hyperband pruner decision costs a worker after each epoch, tunefleet's against Optuna's."""

from __future__ import annotations

import contextlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from bench.common import admin_engine, url_from, with_query
from bench.reporting import StoreRun, benchmark_parser, markdown_table, publish, size_of
from studies import open_storage
from studies._optuna.claimed_trial import ClaimedTrial
from studies._optuna.hyperband import HyperbandPruner
from studies._optuna.internals import frozen_trial_of

NAME = "pruner_decision"
EPOCHS = 9
HYPERBAND = {"min_resource": 1, "max_resource": EPOCHS, "reduction_factor": 3}
PATHS = ("optuna", "tunefleet")


class Decisions:
    """Each pruner decision's seconds and SQL statements, for one path."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.statements: list[int] = []

    @contextlib.contextmanager
    def timed(self, engine: sa.Engine) -> Iterator[None]:
        count = [0]

        def seen(*args: object) -> None:
            count[0] += 1

        sa.event.listen(engine, "before_cursor_execute", seen)
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds.append(time.perf_counter() - began)
            sa.event.remove(engine, "before_cursor_execute", seen)
            self.statements.append(count[0])


def run(urls: dict[str, str], n_trials: int) -> dict[str, Decisions]:
    """The same study in two stores, one per path, fed the same per-epoch values trial by trial in turn, each
    asked to prune after every epoch: Optuna's Trial.should_prune with its HyperbandPruner on its RDBStorage, as a
    script would, and a claimed trial's on tunefleet's storage, with tunefleet's Hyperband pruner.
    The same name puts each trial in the same bracket in both, so both make the same decisions (checked)."""
    # Optuna's own storage for Optuna's path: what a script on plain Optuna reads and writes through.
    storages: dict[str, optuna.storages.RDBStorage] = {
        "optuna": optuna.storages.RDBStorage(urls["optuna"]),
        "tunefleet": open_storage(urls["tunefleet"]),
    }
    decisions = {path: Decisions() for path in PATHS}
    made: dict[str, list[bool]] = {path: [] for path in PATHS}
    try:
        studies = {
            path: optuna.create_study(
                study_name="bench-pruner-decision",
                storage=storages[path],
                pruner=optuna.pruners.HyperbandPruner(**HYPERBAND),
            )
            for path in PATHS
        }
        rng = random.Random(0)
        for number in range(n_trials):
            level = rng.random()
            values = [level + rng.random() / epoch for epoch in range(1, EPOCHS + 1)]
            # Each path goes first every other trial: what the store or the machine warms up, both get.
            for path in PATHS if number % 2 == 0 else PATHS[::-1]:
                study, storage = studies[path], storages[path]
                trial = study.ask()
                ask: Callable[[], bool] = trial.should_prune
                if path == "tunefleet":
                    study.pruner = HyperbandPruner(**HYPERBAND)  # as a claim builds it
                    ask = ClaimedTrial(study, frozen_trial_of(trial), storage).should_prune
                state = TrialState.COMPLETE
                for epoch, value in enumerate(values, start=1):
                    trial.report(value, epoch)
                    with decisions[path].timed(storage.engine):
                        pruned = ask()
                    made[path].append(pruned)
                    if pruned:
                        state = TrialState.PRUNED
                        break
                study.tell(trial, level if state == TrialState.COMPLETE else None, state=state)
    finally:
        for storage in storages.values():
            storage.engine.dispose()
    if made["optuna"] != made["tunefleet"]:
        raise RuntimeError("tunefleet's pruner decided otherwise than Optuna's on the same trials")
    return decisions


@contextlib.contextmanager
def schemas(url: str) -> Iterator[dict[str, str]]:
    """A PostgreSQL schema of its own for each path, the URL that stores into it, and the schemas dropped after."""
    names = {path: f"bench_pruner_{path}_{uuid.uuid4().hex[:8]}" for path in PATHS}
    with admin_engine(url) as engine:
        with engine.begin() as connection:
            for name in names.values():
                connection.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        try:
            yield {path: with_query(url, options=f"-csearch_path={name}") for path, name in names.items()}
        finally:
            with engine.begin() as connection:
                for name in names.values():
                    connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


def row(backend: str, decisions: dict[str, Decisions]) -> dict[str, Any]:
    ms = {path: statistics.median(d.seconds) * 1000 for path, d in decisions.items()}
    return {
        "backend": backend,
        "decisions": {path: len(d.seconds) for path, d in decisions.items()},
        "median_ms": ms,
        "statements": {path: statistics.mean(d.statements) for path, d in decisions.items()},
        "ratio": ms["optuna"] / ms["tunefleet"],
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        [
            "store",
            "decisions (Optuna / tunefleet)",
            "SQL statements a decision, Optuna / tunefleet",
            "median ms a decision, Optuna / tunefleet",
            "tunefleet faster by",
        ],
        [
            [
                r["backend"],
                f"{r['decisions']['optuna']} / {r['decisions']['tunefleet']}",
                f"{r['statements']['optuna']:.1f} / {r['statements']['tunefleet']:.1f}",
                f"{r['median_ms']['optuna']:.2f} / {r['median_ms']['tunefleet']:.2f}",
                f"{r['ratio']:.2f} times",
            ]
            for r in rows
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(NAME, __doc__, quick="40 trials a path", smoke="8 trials a path", store=True)
    args = parser.parse_args(argv)
    size = size_of(args)
    n_trials = 8 if size == "smoke" else 40 if size == "quick" else 150
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = url_from(args)
    invocation = StoreRun.begin(f"bench.{NAME}", argv, url)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pd-") as folder:
        rows.append(row("SQLite", run({p: f"sqlite:///{Path(folder) / p}.db" for p in PATHS}, n_trials)))
    with schemas(url) as urls:
        rows.append(row("PostgreSQL", run(urls, n_trials)))
    setting = (
        f"{n_trials} trials a path, {EPOCHS} epochs, Hyperband (min_resource 1, reduction_factor 3); the two paths'"
        " studies are fed the same values, trial by trial in turn, each in a store of its own (two SQLite files; two"
        " schemas of one PostgreSQL database), and make the same decisions. A decision is one should_prune after an"
        " epoch's report, as the worker asks it."
    )
    publish(
        {
            "benchmark": NAME,
            "config": invocation.config(
                size=size, trials_per_path=n_trials, epochs=EPOCHS, hyperband=HYPERBAND
            ),
            "rows": rows,
            "markdown": f"{markdown(rows)}\n\n{setting}\n\n{invocation.markdown()}",
            "tables": markdown(rows),
            "targets": [],
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
