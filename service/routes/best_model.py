"""GET /v1/studies/{study_name}/best-model: the best trial's fine-tuned model (or a trial of the Pareto front's),
as one zip archive."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from service.artifact_stores import artifact_store
from service.dependencies import Repository
from service.schemas import ErrorRead, StudyName
from studies import StudyRecord, StudyRepository
from studies.artifacts import ARCHIVE_MIMETYPE, MODEL_ARTIFACT_ATTR
from studies.errors import BestModelNotFound, NotOnParetoFront
from studies.names import OBJECTIVE_METRICS
from studies.pareto import Bound, Direction, available_metrics, metric_direction, preferred

router = APIRouter(prefix="/v1/studies", tags=["models"])

_CHUNK_BYTES = 1 << 20
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {ARCHIVE_MIMETYPE: {}},
        "description": "a zip of weights.safetensors, params.json, labels.json and config.json",
    },
    404: {
        "model": ErrorRead,
        "description": "no such study or trial (trial_not_found), no model yet, none within the rule's bounds"
        " (best_model_not_found), or the trial asked for is not on the Pareto front (not_on_pareto_front)",
    },
}


class MetricName(StrEnum):
    """A metric a rule can prefer: the schema lists them, so an unknown one is a 422 naming `prefer`."""

    val_loss = "val_loss"
    val_accuracy = "val_accuracy"
    val_macro_f1 = "val_macro_f1"
    params_trainable = "params_trainable"
    model_size_mb = "model_size_mb"
    latency_ms = "latency_ms"
    train_seconds = "train_seconds"


assert tuple(MetricName) == OBJECTIVE_METRICS


def _chunks(reader: BinaryIO) -> Iterator[bytes]:
    with reader:
        while chunk := reader.read(_CHUNK_BYTES):
            yield chunk


def _best_trial(repository: Any, optuna_study_id: int) -> FrozenTrial | None:
    try:
        trial: FrozenTrial = repository.storage.get_best_trial(optuna_study_id)
    except ValueError:
        return None
    return trial


def _invalid(parameter: str, value: str, message: str) -> RequestValidationError:
    # FastAPI's own 422 shape, its loc naming the query parameter, as for any declared parameter.
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", parameter), "msg": message, "input": value}]
    )


def _rule(record: StudyRecord, query: Mapping[str, str]) -> tuple[str, Direction, list[Bound]] | None:
    """The ?prefer=METRIC&max_METRIC=X&min_METRIC=Y rule the query gives, or None when it gives none."""
    objective = record.spec.objective
    measured = available_metrics(objective)

    def known(parameter: str, metric: str) -> str:
        if metric not in OBJECTIVE_METRICS:
            raise _invalid(
                parameter,
                query[parameter],
                f"unknown metric {metric!r}; known: {', '.join(OBJECTIVE_METRICS)}",
            )
        if metric not in measured:
            # A metric, but none of this study's trials has it: no model can be picked by it.
            raise BestModelNotFound(
                record.name, f"{parameter}: it does not measure {metric}; it measures {', '.join(measured)}"
            )
        return metric

    bounds: list[Bound] = []
    for parameter, text in query.items():
        limit, _, metric = parameter.partition("_")
        if limit not in ("max", "min") or not metric:
            continue
        try:
            value = float(text)
        except ValueError:
            raise _invalid(parameter, text, f"{parameter} must be a number, got {text[:100]!r}") from None
        if not math.isfinite(value):
            raise _invalid(parameter, text, f"{parameter} must be a finite number")
        bounds.append(
            Bound(metric=known(parameter, metric), limit="max" if limit == "max" else "min", value=value)
        )
    prefer = query.get("prefer")
    if prefer is None and not bounds:
        return None
    metric = known("prefer", prefer) if prefer is not None else objective.names[0]
    return metric, metric_direction(objective, metric), bounds


def _chosen_trial(
    repository: StudyRepository, record: StudyRecord, trial: int | None, query: Mapping[str, str]
) -> FrozenTrial:
    """The trial whose model a download carries: the one asked for (within the rule's bounds, if any), the one
    the rule picks, or the best."""
    rule = _rule(record, query)
    if trial is None and rule is None and not record.spec.objective.several:
        best = _best_trial(repository, record.optuna_study_id)
        if best is None:
            raise BestModelNotFound(record.name, "it has no completed trial yet")
        return best
    front = repository.pareto_front(record)
    if trial is not None:
        repository.trial(record, trial)  # TrialNotFound (404) when the study has no such trial
        chosen = next((t for t in front if t.number == trial), None)
        if chosen is None:
            where = (
                f"on its Pareto front (GET /v1/studies/{record.name}/pareto)"
                if record.spec.objective.several
                else "its best trial"
            )
            raise NotOnParetoFront(record.name, f"trial {trial} is not {where}")
        # A rule given beside it applies to it alone: its bounds must hold.
        front = [chosen]
    if not front:
        raise BestModelNotFound(record.name, "no completed trial is on its Pareto front yet")
    # Without a rule, the front's trial best in the first objective.
    first = record.spec.objective.names[0]
    prefer, direction, bounds = rule or (first, metric_direction(record.spec.objective, first), [])
    chosen = preferred(front, prefer=prefer, direction=direction, bounds=bounds)
    if chosen is None:
        shown = ", ".join(f"{b.limit}_{b.metric}={b.value:g}" for b in bounds)
        why = f"is within {shown}" if bounds else f"records {prefer}"
        raise BestModelNotFound(record.name, f"no trial on its Pareto front {why}")
    return chosen


@router.get(
    "/{study_name}/best-model",
    response_class=StreamingResponse,
    responses=RESPONSES,
)
def download_best_model(
    study_name: StudyName,
    repository: Repository,
    request: Request,
    trial: Annotated[
        int | None,
        Query(ge=0, le=2**31 - 1, description="a trial on the Pareto front (or the best trial) by number"),
    ] = None,
    prefer: Annotated[
        MetricName | None,
        Query(
            description="pick from the Pareto front the trial best in this metric, among those within every"
            " max_METRIC and min_METRIC bound given (e.g. ?prefer=latency_ms&max_val_loss=0.15)",
        ),
    ] = None,
) -> StreamingResponse:
    """A trial's fine-tuned model: weights (safetensors), parameters, label names and config.

    By default the best trial's. A study of several objectives has a front instead: name one of its trials
    (?trial=N), or give a rule that picks one (?prefer=METRIC, max_METRIC=X and min_METRIC=X bounds).
    """
    record = repository.get(study_name)
    best = _chosen_trial(repository, record, trial, request.query_params)
    artifact_id = best.user_attrs.get(MODEL_ARTIFACT_ATTR)
    if not artifact_id:
        why = best.user_attrs.get("model_artifact_error")
        raise BestModelNotFound(
            study_name, f"its trial {best.number} saved no model" + (f" ({why})" if why else "")
        )
    try:
        # Optuna names artifacts by UUID: anything else was not written by a worker, and as a path it could
        # point outside the store.
        artifact_id = str(uuid.UUID(str(artifact_id)))
    except ValueError:
        raise BestModelNotFound(
            study_name, f"its trial {best.number} records a malformed {MODEL_ARTIFACT_ATTR}"
        ) from None
    store = artifact_store(request.app.state.settings.artifact_dir)
    try:
        reader = store.open_reader(artifact_id)
    except ArtifactNotFound as error:
        raise BestModelNotFound(
            study_name,
            f"the model of its trial {best.number} is not in the service's artifact store"
            " (TUNEFLEET_ARTIFACT_DIR must name the store the workers write to)",
        ) from error
    filename = f"{study_name}-trial-{best.number}-model.zip"
    return StreamingResponse(
        _chunks(reader),
        media_type=ARCHIVE_MIMETYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Tunefleet-Trial": str(best.number),
        },
    )
