"""API response schemas (requests use studies.StudySpec directly: the spec is the one definition)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path
from optuna.trial import FrozenTrial
from pydantic import AfterValidator, BaseModel, Field

from studies import StudyProgress
from studies.names import STUDY_NAME_PATTERN
from studies.records import TRIAL_STATE_NAMES

# Path parameters are checked like the spec checks a name: anything else is a 422 naming the parameter,
# before any store is asked (a NUL byte, for one, is an error in PostgreSQL, not a miss).
StudyName = Annotated[
    str, Path(pattern=STUDY_NAME_PATTERN, max_length=128, description="the study's name", examples=["quick"])
]
# Optuna keeps trial numbers in a 32-bit column.
TrialNumber = Annotated[int, Path(ge=0, le=2**31 - 1, description="the trial's number within its study")]


def _naive_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _naive_local(moment: datetime) -> datetime:
    return moment.astimezone(UTC)  # a naive datetime is read as local time


# The API's times are RFC 3339 date-times, with their zone. tunefleet's tables keep naive UTC;
# Optuna keeps a trial's times as naive local time (the worker's: read here as the service's).
UtcDatetime = Annotated[datetime, AfterValidator(_naive_utc)]
OptunaDatetime = Annotated[datetime, AfterValidator(_naive_local)]


class ErrorRead(BaseModel):
    """Every non-validation error: a readable detail and a stable machine code."""

    detail: str
    code: str


def _finite(value: float | None) -> float | None:
    # JSON has no NaN or infinity; a diverged value is reported as null (its reason is in fail_reason).
    return value if value is not None and math.isfinite(value) else None


class TrialRead(BaseModel):
    """One trial: parameters, per-epoch validation values, outcome and who ran it."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    intermediate_values: dict[int, float | None] = Field(description="validation metric by epoch")
    fail_reason: str | None
    user_attrs: dict[str, Any]
    datetime_start: OptunaDatetime | None
    datetime_complete: OptunaDatetime | None
    duration_s: float | None

    @classmethod
    def from_frozen(cls, trial: FrozenTrial) -> TrialRead:
        """Build from Optuna's FrozenTrial."""
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        return cls(
            number=trial.number,
            state=TRIAL_STATE_NAMES[trial.state],
            value=_finite(trial.value) if trial.values is not None else None,
            params=trial.params,
            intermediate_values={k: _finite(v) for k, v in sorted(trial.intermediate_values.items())},
            fail_reason=trial.user_attrs.get("fail_reason"),
            user_attrs=trial.user_attrs,
            datetime_start=trial.datetime_start,
            datetime_complete=trial.datetime_complete,
            duration_s=duration,
        )


class TrialPage(BaseModel):
    """A page of trials in number order."""

    total: int
    offset: int
    limit: int
    items: list[TrialRead]


class StudyRead(BaseModel):
    """A study's spec, state, progress and best trial."""

    name: str
    state: str
    state_reason: str | None
    n_trials: int = Field(description="the budget")
    n_claimed: int
    n_finished: int
    trial_counts: dict[str, int]
    best_value: float | None
    best_trial: TrialRead | None
    created_at: UtcDatetime
    dashboard_url: str
    spec: dict[str, Any]
    warnings: list[str] = Field(
        default_factory=list,
        description="what workers found wrong with the study's data (duplicates dropped, labels never"
        " validated), each once",
    )

    @classmethod
    def from_progress(cls, progress: StudyProgress, warnings: list[str] | None = None) -> StudyRead:
        """Build from the repository's progress view and the study's data warnings."""
        record = progress.record
        best = TrialRead.from_frozen(progress.best_trial) if progress.best_trial is not None else None
        return cls(
            name=record.name,
            state=progress.state,
            state_reason=record.state_reason,
            n_trials=record.n_trials,
            n_claimed=record.n_claimed,
            n_finished=progress.n_finished,
            trial_counts=progress.trial_counts,
            best_value=best.value if best is not None else None,
            best_trial=best,
            created_at=record.created_at,
            dashboard_url=f"/dashboard/studies/{record.optuna_study_id}",
            spec=record.spec.model_dump(mode="json"),
            warnings=warnings or [],
        )


class StudyPage(BaseModel):
    """A page of studies, newest first."""

    total: int
    offset: int
    limit: int
    items: list[StudyRead]


class HealthRead(BaseModel):
    """Liveness or readiness."""

    status: str
