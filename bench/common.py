"""The benchmarks' PostgreSQL: where it is, the zero-cost study, seeding trials, ANALYZE, deleting what a run made."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from studies import StudySpec
from studies._optuna import models
from studies.storage import normalize_url
from studies.tables import studies_table, workers_table
from worker.synthetic_loss import synthetic_loss

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ZERO_COST_EPOCHS = 3


def postgres_url() -> str:
    """The PostgreSQL the benchmarks run on: TUNEFLEET_BENCH_POSTGRES_URL, else the test suite's, else the local one."""
    return normalize_url(
        os.environ.get("TUNEFLEET_BENCH_POSTGRES_URL")
        or os.environ.get("TUNEFLEET_TEST_POSTGRES_URL")
        or DEFAULT_POSTGRES_URL
    )


def url_from(args: argparse.Namespace) -> str:
    """The --url given, else postgres_url()."""
    return normalize_url(args.url) if args.url else postgres_url()


def with_query(url: str, **query: str) -> str:
    """The URL with these query parameters set (e.g. an application_name that marks our sessions)."""
    return sa.engine.make_url(url).update_query_dict(query).render_as_string(hide_password=False)


@contextlib.contextmanager
def admin_engine(url: str) -> Iterator[sa.Engine]:
    """An engine without a pool, for the benchmark's own reads and set-up, disposed afterwards."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


# -- the zero-cost study, and plain Optuna as a user writes it ---------------------------------------


def zero_cost_spec(
    name: str, sampler: str, n_trials: int, *, seed: int, epoch_sleep_s: float = 0.0
) -> StudySpec:
    """The zero-cost study of the store benchmarks: synthetic task, 3 epochs, no pruner."""
    return StudySpec.model_validate(
        {
            "name": name,
            "task": {"kind": "synthetic", "epoch_sleep_s": epoch_sleep_s},
            "space": {"epochs": ZERO_COST_EPOCHS},
            "sampler": {"name": sampler, "seed": seed},
            "pruner": {"name": "none"},
            "budget": {"n_trials": n_trials},
        }
    )


def suggest(trial: optuna.Trial, space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """The explicit suggest_* calls a user would write for the same space."""
    params: dict[str, Any] = {}
    for name, d in space.items():
        if isinstance(d, FloatDistribution):
            params[name] = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDistribution):
            params[name] = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
        else:
            assert isinstance(d, CategoricalDistribution)
            params[name] = trial.suggest_categorical(name, list(d.choices))
    return params


# -- seeding and reading studies ---------------------------------------------------------------------


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
    loss = loss or (lambda params, trial_seed, epoch: synthetic_loss(params, seed=trial_seed, epoch=epoch))
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


def study_trials(admin: sa.Engine, study_name: str, skip: int = 0) -> list[Any]:
    """A study's trials numbered from `skip` on (seeded ones come first): times, state, claim_s, worker."""
    query = sa.text(
        """
        SELECT t.number, t.state, t.datetime_start, t.datetime_complete,
               a.value_json AS claim_s, w.value_json AS worker_id
        FROM trials t JOIN studies s ON s.study_id = t.study_id
        LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'claim_s'
        LEFT JOIN trial_user_attributes w ON w.trial_id = t.trial_id AND w.key = 'worker_id'
        WHERE s.study_name = :name AND t.number >= :skip
        """
    )
    with admin.connect() as connection:
        return list(connection.execute(query, {"name": study_name, "skip": skip}).all())


# -- deleting what a run made ------------------------------------------------------------------------


def delete_studies(url: str, names: Iterable[str]) -> None:
    """Delete these studies (Optuna's rows and tunefleet's), their trials first in bulk: the ORM's
    cascade would load and delete a 5,000-trial study row by row."""
    names = list(names)
    if not names:
        return
    studies = models.StudyModel.__table__
    trials = models.TrialModel.__table__
    with admin_engine(url) as engine, engine.begin() as connection:
        connection.execute(studies_table.delete().where(studies_table.c.study_name.in_(names)))
        ids = list(
            connection.execute(sa.select(studies.c.study_id).where(studies.c.study_name.in_(names))).scalars()
        )
        if ids:
            trial_ids = sa.select(trials.c.trial_id).where(trials.c.study_id.in_(ids)).scalar_subquery()
            for table in TRIAL_CHILD_TABLES:
                connection.execute(table.delete().where(table.c.trial_id.in_(trial_ids)))
            connection.execute(trials.delete().where(trials.c.study_id.in_(ids)))
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sa.pool.NullPool})
    for name in names:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
    storage.engine.dispose()


def delete_worker_rows(url: str, *, pids: Iterable[int], host: str | None = None) -> None:
    """Remove the registry rows our benchmark workers (on this machine by default) left behind."""
    pids, host = list(pids), host or socket.gethostname()
    if not pids:
        return
    with admin_engine(url) as engine, engine.begin() as connection:
        connection.execute(
            workers_table.delete().where(workers_table.c.host == host, workers_table.c.pid.in_(pids))
        )


@dataclass
class Made:
    """The studies and worker processes a run made: their rows are deleted from the store when it ends."""

    studies: list[str] = field(default_factory=list)
    worker_pids: list[int] = field(default_factory=list)


@contextlib.contextmanager
def deleted_afterwards(url: str) -> Iterator[Made]:
    """Collects what a run makes, and deletes it from the store however the run ends."""
    made = Made()
    try:
        yield made
    finally:
        delete_studies(url, made.studies)
        # Workers lost or stopped keep their rows (and trial ids): gone with their studies, remove them.
        delete_worker_rows(url, pids=made.worker_pids)
