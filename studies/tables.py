"""tunefleet's own tables beside Optuna's in the shared store: studies' control state and the worker registry."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

# The tables as the code reads them; the store gets them from the migrations in studies/migrations/
# (studies/schema.py), so a change here needs a new revision there.
metadata = sa.MetaData()

# The spec every worker rebuilds the study from, the study's control state, and the claim
# counter that makes the budget exact however many workers race.
studies_table = sa.Table(
    "tunefleet_studies",
    metadata,
    sa.Column("study_name", sa.String(128), primary_key=True),
    sa.Column("optuna_study_id", sa.Integer, nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("state_reason", sa.Text, nullable=True),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("n_trials", sa.Integer, nullable=False),
    sa.Column("n_claimed", sa.Integer, nullable=False),
    sa.Column("deadline_at", sa.DateTime, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

# One row per worker process: what it runs now and when it last proved alive. A worker whose
# heartbeat is older than the grace period is declared lost and its trial is retried elsewhere.
workers_table = sa.Table(
    "tunefleet_workers",
    metadata,
    sa.Column("worker_id", sa.String(64), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("device", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("study_name", sa.String(128), nullable=True),
    sa.Column("trial_id", sa.Integer, nullable=True),
    sa.Column("trial_number", sa.Integer, nullable=True),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("heartbeat_at", sa.DateTime, nullable=False, index=True),
    # Each worker is judged by its own grace period, not by whichever process happens to reap.
    sa.Column("grace_s", sa.Float, nullable=True),
)


# Named leases: the reaper's says which one process reaps for the whole fleet, so a fleet of N
# workers costs the store one sweep per interval instead of N.
leases_table = sa.Table(
    "tunefleet_leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False),
)


def utcnow() -> datetime:
    """Naive UTC: SQLite keeps no time zone, and both backends must compare the same way."""
    return datetime.now(UTC).replace(tzinfo=None)
