"""Engine options for the store (pooled with pre-ping, or no pool for very large fleets) and its schema check."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_pool_size_zero_keeps_no_idle_connections() -> None:
    from sqlalchemy.pool import NullPool

    from studies.storage import engine_kwargs

    options = engine_kwargs("postgresql+psycopg://u@h/db", pool_size=0)
    assert options["poolclass"] is NullPool
    assert "pool_size" not in options
    assert engine_kwargs("postgresql+psycopg://u@h/db", pool_size=2)["pool_pre_ping"] is True


def test_a_store_from_another_optuna_schema_is_refused_with_the_upgrade_command(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from studies.storage import open_storage

    url = f"sqlite:///{tmp_path / 'store.db'}"
    storage = open_storage(url)
    older = storage.get_all_versions()[1]
    storage.engine.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": older})
    engine.dispose()
    with pytest.raises(RuntimeError, match="optuna storage upgrade"):
        open_storage(url)
