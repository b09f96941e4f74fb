"""Runs tunefleet's migrations on the connection studies.schema hands over, under tunefleet's own version table."""

from __future__ import annotations

from typing import Any

from alembic import context

from studies.schema import VERSION_TABLE
from studies.tables import metadata


def _ours(name: str | None, type_: str, parent_names: Any) -> bool:
    # The store also holds Optuna's tables, versioned by Optuna's own alembic_version: never touch them.
    return type_ != "table" or (name or "").startswith("tunefleet_")


if context.is_offline_mode():
    raise RuntimeError("tunefleet's migrations run against a store, not as SQL scripts")
context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    include_name=_ours,
)
with context.begin_transaction():
    context.run_migrations()
