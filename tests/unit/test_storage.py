"""Engine options for the store: pooled with pre-ping, or no pool at all for very large fleets."""

from __future__ import annotations


def test_pool_size_zero_keeps_no_idle_connections() -> None:
    from sqlalchemy.pool import NullPool

    from studies.storage import engine_kwargs

    options = engine_kwargs("postgresql+psycopg://u@h/db", pool_size=0)
    assert options["poolclass"] is NullPool
    assert "pool_size" not in options
    assert engine_kwargs("postgresql+psycopg://u@h/db", pool_size=2)["pool_pre_ping"] is True
