"""The states of a study and of a worker, and why a trial stopped early: one enum each, used everywhere."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class StudyState(StrEnum):
    """A study's control state; STOPPING and COMPLETED are derived from RUNNING/STOPPED and its trials."""

    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    COMPLETED = "completed"
    STOPPING = "stopping"


# The states a user or the breaker may set; the others are derived from the trials.
SETTABLE_STUDY_STATES: Final = (StudyState.RUNNING, StudyState.STOPPED, StudyState.FAILED)


class WorkerState(StrEnum):
    """A worker's registry state; a silent IDLE or BUSY worker is judged LOST by the reaper."""

    IDLE = "idle"
    BUSY = "busy"
    STOPPED = "stopped"
    LOST = "lost"


WORKER_ALIVE: Final = (WorkerState.IDLE, WorkerState.BUSY)


class StopReason(StrEnum):
    """Why training stopped before its last epoch; each maps to how the trial ends."""

    PRUNED = "pruned"
    # Paused at a rung of an asha pruner: the trial waits, with its checkpoint, until a claim promotes it.
    PAUSED = "paused"
    PLATEAU = "plateau"
    STUDY_STOPPED = "study stopped"
    WORKER_STOPPING = "worker stopping"
    # Also the fail_reason of a trial whose worker died: the breaker does not count these.
    WORKER_LOST = "worker lost"
