"""The one door to studies in the shared store: the catalog, the claim transaction, the trial lifecycle and queue."""

from __future__ import annotations

from studies.catalog import StudyCatalog
from studies.claim import ClaimTransaction
from studies.enqueue import TrialQueue
from studies.lifecycle import TrialLifecycle

# Records that callers used to import from here.
from studies.records import (
    TRIAL_STATE_NAMES,
    Claim,
    ClaimedTrial,
    StudyProgress,
    StudyRecord,
    WorkerIdentity,
)
from studies.warm_start import WarmStartQueue

__all__ = [
    "TRIAL_STATE_NAMES",
    "Claim",
    "ClaimedTrial",
    "StudyProgress",
    "StudyRecord",
    "StudyRepository",
    "WorkerIdentity",
]


class StudyRepository(ClaimTransaction, TrialLifecycle, WarmStartQueue, TrialQueue, StudyCatalog):
    """All reads and writes of studies go through here, on one storage and its one pool."""
