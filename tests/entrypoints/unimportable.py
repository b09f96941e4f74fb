"""A training module that does not import on this machine: it needs a package that is not installed."""

from __future__ import annotations

import tunefleet_missing_dependency  # noqa: F401

from tunefleet import Trial


def train(trial: Trial) -> None:
    """Never reached: the module's import fails first."""
