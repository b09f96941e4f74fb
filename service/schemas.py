"""API response schemas, and the enqueue request (a study is created from studies.StudySpec, the one definition)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path
from optuna.trial import FrozenTrial
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from studies import StudyProgress, StudyRecord
from studies.artifacts import MODEL_ARTIFACT_ATTR
from studies.enqueue import MAX_ENQUEUED_AT_ONCE
from studies.names import STUDY_NAME_PATTERN
from studies.pareto import available_metrics, metric_value
from studies.records import TRIAL_STATE_NAMES
from studies.spec import MAX_FREE_PARAMS
from studies.warm_start import WarmStartReport

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
    value: float | None = Field(description="the objective's value; null for a study of several objectives")
    values: list[float | None] | None = Field(
        None, description="one value per objective, in the spec's order (objective.metrics)"
    )
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
            # FrozenTrial.value raises for a trial of several objectives: it has values.
            value=_finite(trial.values[0]) if trial.values is not None and len(trial.values) == 1 else None,
            values=[_finite(v) for v in trial.values] if trial.values is not None else None,
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


class WarmStartTrialRead(BaseModel):
    """A trial warm start queued: its number, the earlier trial it repeats, and its parameters."""

    number: int
    from_trial: str = Field(alias="from", description="the source trial, <study>#<trial number>")
    params: dict[str, Any]

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class WarmStartRead(BaseModel):
    """What warm start queued for a study (spec.warm_start), and from which studies."""

    sources: list[str] = Field(description="the studies learnt from")
    trials: list[WarmStartTrialRead] = Field(description="the queued trials, in the order they are claimed")
    warnings: list[str]
    prior_configurations: int = Field(
        0, description="the sources' good configurations the TPE sampler's prior is made of (0: no prior)"
    )


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
    pareto_front_size: int | None = Field(
        None,
        description="several objectives: how many feasible trials are on the Pareto front (GET .../pareto);"
        " best_value and best_trial are then null",
    )
    created_at: UtcDatetime
    dashboard_url: str
    spec: dict[str, Any]
    warnings: list[str] = Field(
        default_factory=list,
        description="what workers found wrong with the study's data (duplicates dropped, labels never"
        " validated), each once; and what warm start could not do",
    )
    warm_start: WarmStartRead | None = Field(
        None, description="spec.warm_start only: the configurations queued first, and where each came from"
    )

    @classmethod
    def from_progress(
        cls,
        progress: StudyProgress,
        warnings: list[str] | None = None,
        pareto_front_size: int | None = None,
        warm_start: WarmStartReport | None = None,
    ) -> StudyRead:
        """Build from the repository's progress view, the study's data warnings, (several objectives) the size
        of its Pareto front and (warm start) what was queued first."""
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
            pareto_front_size=pareto_front_size if record.spec.objective.several else None,
            created_at=record.created_at,
            dashboard_url=f"/dashboard/studies/{record.optuna_study_id}",
            spec=record.spec.model_dump(mode="json"),
            warnings=[*(warnings or []), *(warm_start.warnings if warm_start else [])],
            warm_start=WarmStartRead.model_validate(warm_start.to_json()) if warm_start else None,
        )


class StudyPage(BaseModel):
    """A page of studies, newest first."""

    total: int
    offset: int
    limit: int
    items: list[StudyRead]


class EnqueuedTrial(BaseModel):
    """One known configuration to run: values for some or all of the space's parameters."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(
        max_length=MAX_FREE_PARAMS,
        description="parameter name to value (a number or a choice); a parameter left out is drawn by the"
        " sampler, a conditional one may be given only when its condition holds on the values given",
        examples=[{"learning_rate": 0.003, "batch_size": 32}],
    )


class EnqueueRequest(BaseModel):
    """Known configurations to run first: each becomes a queued trial, claimed before any new one."""

    model_config = ConfigDict(extra="forbid")

    trials: list[EnqueuedTrial] = Field(
        min_length=1,
        max_length=MAX_ENQUEUED_AT_ONCE,
        description="one parameter set per trial, queued in this order; each takes a slot of budget.n_trials",
    )


class EnqueuedRead(BaseModel):
    """The trials just queued."""

    study_name: str
    numbers: list[int] = Field(description="the queued trials' numbers, in the order their sets were given")
    slots_left: int = Field(description="trials of the budget neither claimed nor queued yet")


class HealthRead(BaseModel):
    """Liveness or readiness."""

    status: str


class ParetoTrialRead(BaseModel):
    """A trial on the Pareto front: its parameters, objective values by metric, and constraint values."""

    number: int
    params: dict[str, Any]
    values: dict[str, float | None] = Field(description="each objective's value, by metric name")
    measured: dict[str, float | None] = Field(
        description="every metric the worker recorded for it, the constraints' included, by name"
    )
    constraints: dict[str, float] = Field(
        description="each constraint's value (above 0: broken; a trial on the front breaks none)"
    )
    model: bool = Field(description="whether its fine-tuned model can be downloaded (best-model?trial=N)")


class ParetoRead(BaseModel):
    """A study's Pareto front: the feasible trials no other trial beats in every objective."""

    study_name: str
    metrics: list[str] = Field(description="the objectives, in the order of a trial's values")
    directions: list[str]
    constraints: list[str]
    trials: list[ParetoTrialRead] = Field(description="by trial number")

    @classmethod
    def from_front(cls, record: StudyRecord, front: list[FrozenTrial]) -> ParetoRead:
        """Build from the study's record and its front (StudyRepository.pareto_front)."""
        objective = record.spec.objective
        names = list(objective.names)
        return cls(
            study_name=record.name,
            metrics=names,
            directions=list(objective.directions),
            constraints=[c.key for c in objective.parsed_constraints()],
            trials=[
                ParetoTrialRead(
                    number=trial.number,
                    params=trial.params,
                    values=dict(zip(names, (_finite(v) for v in trial.values or []), strict=False)),
                    measured={name: metric_value(trial, name) for name in available_metrics(objective)},
                    constraints=trial.constraints,
                    model=bool(trial.user_attrs.get(MODEL_ARTIFACT_ATTR)),
                )
                for trial in front
            ],
        )
