"""The tunefleet command line, its typed HTTP client, and Trial: what a kind python study's function receives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.user_trial import Trial

__all__ = ["Trial"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import tunefleet` (every CLI command) must start without torch.
    if name == "Trial":
        from worker.user_trial import Trial

        return Trial
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
