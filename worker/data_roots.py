"""The folders a worker reads study data and local models from: every path a study names must resolve inside one."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from studies.spec import LocalData, Task
from worker.failures import TrialFailure

ROOTS_SETTING = "TUNEFLEET_DATA_ROOTS"
ROOTS_FLAG = "--data-root"
_LISTED_ROOTS = 5


class OutsideDataRoots(TrialFailure):
    """A path a study names that resolves outside the worker's data roots (or cannot be resolved at all)."""


def absolute(given: str) -> Path:
    """The path as given made absolute against this process's folder, without resolving links."""
    path = Path(given).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


@dataclass(frozen=True)
class DataRoots:
    """The resolved folders a worker may read study files from; confine() is the one check every path goes through."""

    folders: tuple[Path, ...]

    @classmethod
    def of(cls, folders: Iterable[Path | str]) -> DataRoots:
        """The roots as a worker's settings give them: relative ones against this process's folder, links resolved."""
        return cls(tuple(absolute(str(folder)).resolve() for folder in folders))

    def confine(self, given: str, *, what: str) -> Path:
        """The path resolved (symlinks, .. and ~ included) when it lies inside a root; OutsideDataRoots otherwise.

        Nothing is opened, and the reason is the same whether or not the path exists: it quotes the path as given,
        never what it resolves to, so a study cannot probe the worker's files through it.
        """
        try:
            resolved: Path | None = absolute(given).resolve()
        # A symlink loop or an unreadable folder on the way: treated as outside, with the same reason.
        except (OSError, RuntimeError):
            resolved = None
        if resolved is not None and any(resolved.is_relative_to(root) for root in self.folders):
            return resolved
        shown = ", ".join(str(root) for root in self.folders[:_LISTED_ROOTS])
        more = len(self.folders) - _LISTED_ROOTS
        if more > 0:
            shown += f" (and {more} more)"
        raise OutsideDataRoots(
            f"{what} {given!r} is not inside this worker's data roots ({shown}); a worker reads study data and"
            f" local models only under the folders its operator lists in {ROOTS_SETTING} (or tunefleet worker"
            f" {ROOTS_FLAG} FOLDER)"
        )


def is_local_model(task: Task) -> bool:
    """Whether the task's model is a path on the worker (not a builtin: name)."""
    return not task.model.startswith("builtin:")


def confine_task(task: Task, roots: DataRoots) -> None:
    """Check every path the task names (data files, a local model) against the roots, before any is touched."""
    if isinstance(task.data, LocalData):
        roots.confine(task.data.train, what="training file")
        if task.data.validation is not None:
            roots.confine(task.data.validation, what="validation file")
    if task.kind in ("text-classification", "torch-module") and is_local_model(task):
        roots.confine(task.model, what="model folder" if task.kind == "text-classification" else "model file")


def worker_data_roots() -> DataRoots:
    """The roots TUNEFLEET_DATA_ROOTS gives (the worker command's --data-root sets it for its children), for a
    runner or task host built without roots of its own; a worker passes the roots its settings read at start-up."""
    # Imported here: the settings module pulls in pydantic-settings, which a user loading a model never needs.
    from worker.settings import WorkerSettings

    return DataRoots.of(WorkerSettings().data_roots)
