"""Each worker's own grace period (grace_s), so it is judged by its own, not by whichever process reaps."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tunefleet_workers", sa.Column("grace_s", sa.Float, nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite rebuilds the table where its ALTER TABLE cannot drop the column.
    with op.batch_alter_table("tunefleet_workers") as batch:
        batch.drop_column("grace_s")
