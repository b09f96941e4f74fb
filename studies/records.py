"""The records a study's life is told in: a study, its progress, a worker, and a claimed trial."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from studies._optuna.claimed_trial import ClaimedTrial
from studies.spec import StudySpec
from studies.states import StudyState

__all__ = [
    "DATA_WARNINGS_ATTR",
    "PAUSED",
    "TRIAL_STATE_NAMES",
    "Claim",
    "ClaimedTrial",
    "FinishedFacts",
    "StudyProgress",
    "StudyRecord",
    "StudySummary",
    "WorkerIdentity",
    "record_from_row",
]

TRIAL_STATE_NAMES = {s: s.name.lower() for s in TrialState}
# Beside the trial states in a study's counts: WAITING trials paused by pruner asha, apart from the queued ones.
PAUSED = "paused"
# The trial user attribute where a worker lists what it found wrong with a study's data (readable strings).
DATA_WARNINGS_ATTR = "data_warnings"


@dataclass(frozen=True)
class StudyRecord:
    """A study as tunefleet stores it: its spec and control state."""

    name: str
    optuna_study_id: int
    spec: StudySpec
    state: StudyState
    state_reason: str | None
    n_trials: int
    n_claimed: int
    deadline_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class StudyProgress:
    """A study's state as a user sees it: counts by trial state and the best trial so far."""

    record: StudyRecord
    state: StudyState
    trial_counts: dict[str, int]
    best_trial: FrozenTrial | None

    @property
    def n_finished(self) -> int:
        """Trials that ended, in any way."""
        return sum(n for s, n in self.trial_counts.items() if s in ("complete", "pruned", "fail"))


@dataclass(frozen=True)
class StudySummary:
    """What a list of studies shows of each: its progress, data warnings and (several objectives) front size."""

    progress: StudyProgress
    warnings: list[str]
    pareto_front_size: int | None
    # The study user attributes asked for (summaries' study_attrs), by key, where the study has them.
    study_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FinishedFacts:
    """What the metrics read of a study's finished trials: wall seconds, claim seconds, and the failed trials'
    recorded reasons (a failed trial without one is not among them)."""

    durations_s: list[float]
    claims_s: list[float]
    fail_reasons: Counter[str]


@dataclass(frozen=True)
class WorkerIdentity:
    """Who runs a trial: recorded on every trial so results can be traced to a host and device."""

    host: str
    pid: int
    device: str
    worker_id: str = ""

    @property
    def label(self) -> str:
        """host:pid, unique among live workers."""
        return f"{self.host}:{self.pid}"


@dataclass
class Claim:
    """A trial a worker has claimed: the Optuna trial to report to, and the spec to run it by."""

    study_name: str
    spec: StudySpec
    study: optuna.Study
    trial: optuna.Trial
    claim_index: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    claim_s: float = 0.0
    # The registry row holding the trial, released when it ends; "" for a claim outside the fleet.
    worker_id: str = ""


def record_from_row(row: Any, spec: StudySpec | None = None) -> StudyRecord:
    """A study's record from its row in tunefleet_studies; `spec` when already parsed."""
    return StudyRecord(
        name=row.study_name,
        optuna_study_id=row.optuna_study_id,
        spec=StudySpec.model_validate(row.spec) if spec is None else spec,
        state=StudyState(row.state),
        state_reason=row.state_reason,
        n_trials=row.n_trials,
        n_claimed=row.n_claimed,
        deadline_at=row.deadline_at,
        created_at=row.created_at,
    )
