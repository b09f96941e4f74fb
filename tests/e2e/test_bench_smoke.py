"""Benchmarks 2, 2b, 2c, 2d and 4 still run: each at a tiny size on the test PostgreSQL, writing the JSON they report from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bench import (
    claim_phases,
    coordination_overhead,
    pgbouncer,
    pruner_decision,
    store_scale,
    trial_api_overhead,
)
from studies.storage import normalize_url
from studies.tables import studies_table
from tests.conftest import required_in_ci

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def leftover_studies(url: str, names: list[str]) -> list[str]:
    engine = sa.create_engine(normalize_url(url), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        ours = connection.execute(
            sa.select(studies_table.c.study_name).where(studies_table.c.study_name.in_(names))
        ).scalars()
        optuna = connection.execute(
            sa.text("SELECT study_name FROM studies WHERE study_name = ANY(:names)"), {"names": names}
        ).scalars()
        left = sorted({*ours, *optuna})
    engine.dispose()
    return left


def assert_describes_its_run(result: dict[str, Any]) -> None:
    config = result["config"]
    assert config["cores"] >= 1 and config["cpu"]
    assert {"python", "optuna", "sqlalchemy", "psycopg", "postgresql"} <= set(config["versions"])
    assert config["command"].startswith("python -m bench.")
    assert config["wall_s"] > 0
    # The machine under the table; the command once, atop the report's section (write_report), not here again.
    assert "| --- |" in result["markdown"] and "Machine: " in result["markdown"]
    assert "Command:" not in result["markdown"]
    assert all({"target", "figure", "met"} <= set(t) for t in result["targets"])


def test_coordination_overhead_runs_at_a_tiny_size_and_cleans_up(tmp_path: Path, postgres_url: str) -> None:
    out = tmp_path / "coordination.json"
    assert coordination_overhead.main(["--smoke", "--url", postgres_url, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert_describes_its_run(result)
    [row] = result["summary"]
    assert (row["sampler"], row["seeded"], row["workers"]) == ("random", 0, 1)
    for system in ("tunefleet", "optuna"):
        figures = row[system]
        assert figures["trials_per_s"]["median"] > 0
        assert figures["worker_cpu_ms_per_trial"]["median"] > 0
        assert 0 < figures["claim_p50_ms"]["median"] <= figures["claim_p99_ms"]["median"]
    assert row["ratio"]["worker_cpu_ms_per_trial"] > 0
    assert all(run["states"] == {"complete": run["trials"]} for run in result["runs"])
    profile = result["profile"]
    assert profile["tunefleet"]["statements"] > 0 and profile["optuna"]["statements"] > 0
    assert profile["tunefleet"]["by_statement"]["UPDATE tunefleet_studies"] == 1.0
    assert len(result["targets"]) == 2
    assert leftover_studies(postgres_url, result["studies_created_and_deleted"]) == []


def test_store_scale_runs_at_a_tiny_size_without_errors_or_overshoot(
    tmp_path: Path, postgres_url: str
) -> None:
    out = tmp_path / "scale.json"
    assert store_scale.main(["--smoke", "--url", postgres_url, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert_describes_its_run(result)
    # The smoke plan runs one worker thread per process: the shards' path, not only one process's.
    assert result["config"]["threads_per_process"] == 1
    assert "to a process" in result["markdown"]
    assert all(run["processes"] == 2 for run in result["runs"])
    assert {row["load"] for row in result["summary"]} == {"zero-cost", "paced"}
    for row in result["summary"]:
        assert row["errors"] == 0 and row["crashed_workers"] == 0
        assert row["overshoot"] == 0
        assert row["claims"]["median"] > 0
        assert 0 < row["claim_p50_ms"]["median"] <= row["claim_p99_ms"]["median"]
    # A paced fleet holds its connections for the whole window (a zero-cost one of 10 trials may end
    # between two samples of pg_stat_activity).
    paced = next(row for row in result["summary"] if row["load"] == "paced")
    assert paced["connections_ours_max"]["median"] >= 1
    zero_cost = next(run for run in result["runs"] if run["load"] == "zero-cost")
    assert zero_cost["finished"] == zero_cost["n_trials"] == zero_cost["created"]
    assert leftover_studies(postgres_url, result["studies_created_and_deleted"]) == []


def test_a_fleet_runs_through_pgbouncer_in_transaction_mode(tmp_path: Path, postgres_url: str) -> None:
    # Transaction pooling hands each transaction any server session: a statement prepared on one would be
    # missing on the next. More than five runs of each query per connection would fail if psycopg prepared.
    if pgbouncer.available() is None:
        required_in_ci(f"pgbouncer is needed for this test: {pgbouncer.INSTALL_HINT}")
    out = tmp_path / "scale.json"
    assert (
        store_scale.main(["--smoke", "--variants", "pgbouncer", "--url", postgres_url, "--out", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert result["config"]["not_run"] == {}
    assert {row["variant"] for row in result["summary"]} == {"pgbouncer"}
    for row in result["summary"]:
        assert row["errors"] == 0 and row["crashed_workers"] == 0 and row["overshoot"] == 0
        assert row["claims"]["median"] > 0
    zero_cost = next(run for run in result["runs"] if run["load"] == "zero-cost")
    assert zero_cost["finished"] == zero_cost["n_trials"]
    assert leftover_studies(postgres_url, result["studies_created_and_deleted"]) == []


def test_claim_phases_times_every_phase_of_real_workers_and_cleans_up(
    tmp_path: Path, postgres_url: str
) -> None:
    out = tmp_path / "phases.json"
    assert claim_phases.main(["--smoke", "--url", postgres_url, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "| --- |" in result["markdown"] and result["config"]["command"].startswith(
        "python -m bench.claim_phases"
    )
    [fleet] = result["fleets"]
    phases = fleet["phases"]
    # Every wrapped method was called: a renamed one would leave its phase out of the table.
    assert set(phases) == {label for label, *_ in claim_phases.PHASES}
    # 4 trials of 3 reports each; each worker's first call of every phase is left out.
    assert phases["complete"]["calls"] == 4 - 1
    assert phases["report (each of 3 per trial)"]["calls"] == 3 * 4 - 1
    assert all(p["wall_ms_p50"] > 0 and p["cpu_ms_p50"] > 0 for p in phases.values())
    assert phases["claim"]["wall_ms_p50"] >= phases["sampling"]["wall_ms_p50"]
    assert fleet["claim_s_p50_ms"] > 0 and fleet["runnable_mean"] >= 1
    assert leftover_studies(postgres_url, [fleet["study_name"]]) == []


def test_trial_api_overhead_runs_both_kinds_on_the_same_workers_and_cleans_up(
    tmp_path: Path, postgres_url: str
) -> None:
    out = tmp_path / "trial_api.json"
    assert trial_api_overhead.main(["--smoke", "--url", postgres_url, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert_describes_its_run(result)
    assert sorted(run["system"] for run in result["runs"]) == ["python", "synthetic"]
    assert all(run["states"] == {"complete": run["trials"]} for run in result["runs"])
    # The entry point does what the synthetic task does: the same trials, values and reports.
    assert result["same_trials"] == [True]
    for kind in ("synthetic", "python"):
        figures = result["summary"]["kinds"][kind]
        assert figures["wall_ms_per_trial"]["median"] > 0 and figures["in_process_cpu_us"]["median"] > 0
        assert result["statements"][kind]["statements"] > 0
    assert result["summary"]["ratio"]["wall_ms_per_trial"]["median"] > 0
    same_sql = result["targets"][0]
    # Reported, not asserted: at a smoke size the clock's heartbeats and state checks fall unevenly on a few trials.
    assert same_sql["target"].startswith("a kind python trial makes the same SQL") and same_sql["met"] in (
        True,
        False,
    )
    assert "| kind python |" in result["markdown"]
    assert leftover_studies(postgres_url, result["studies_created_and_deleted"]) == []


def test_pruner_decision_runs_at_a_tiny_size_and_drops_its_schemas(tmp_path: Path, postgres_url: str) -> None:
    out = tmp_path / "pruner.json"
    assert pruner_decision.main(["--smoke", "--url", postgres_url, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert_describes_its_run(result)
    for row in result["rows"]:
        # Both paths made the same decisions on the same trials (the benchmark checks it), each fewer queries.
        assert row["decisions"]["optuna"] == row["decisions"]["tunefleet"] > 0
        assert row["statements"]["tunefleet"] < row["statements"]["optuna"]
    engine = sa.create_engine(normalize_url(postgres_url), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        left = connection.execute(
            sa.text(
                "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'bench_pruner_%'"
            )
        ).all()
    engine.dispose()
    assert left == []
