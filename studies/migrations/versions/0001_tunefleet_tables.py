"""tunefleet's tables as the first migrated revision: studies, the worker registry (without grace_s), leases."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # if_not_exists: a store made before tunefleet migrated its tables may lack some of them (every
    # start created what was missing), and studies.schema fills those in before stamping it here.
    op.create_table(
        "tunefleet_studies",
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
        if_not_exists=True,
    )
    op.create_table(
        "tunefleet_workers",
        sa.Column("worker_id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("device", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("study_name", sa.String(128), nullable=True),
        sa.Column("trial_id", sa.Integer, nullable=True),
        sa.Column("trial_number", sa.Integer, nullable=True),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
        if_not_exists=True,
    )
    op.create_index(
        "ix_tunefleet_workers_heartbeat_at", "tunefleet_workers", ["heartbeat_at"], if_not_exists=True
    )
    op.create_table(
        "tunefleet_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("tunefleet_leases")
    op.drop_index("ix_tunefleet_workers_heartbeat_at", table_name="tunefleet_workers")
    op.drop_table("tunefleet_workers")
    op.drop_table("tunefleet_studies")
