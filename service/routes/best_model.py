"""GET /v1/studies/{study_name}/best-model: the best trial's fine-tuned model, as one zip archive."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from service.dependencies import Repository
from service.schemas import ErrorRead, StudyName
from studies.artifacts import ARCHIVE_MIMETYPE, MODEL_ARTIFACT_ATTR, ArtifactStore, open_artifact_store
from studies.errors import BestModelNotFound

router = APIRouter(prefix="/v1/studies", tags=["models"])

_CHUNK_BYTES = 1 << 20
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {ARCHIVE_MIMETYPE: {}},
        "description": "a zip of weights.safetensors, params.json, labels.json and config.json",
    },
    404: {"model": ErrorRead, "description": "no such study, or it has no best model yet"},
}


@functools.lru_cache(maxsize=4)
def _artifact_store(location: str) -> ArtifactStore:
    # One store object per location for the life of the process (an S3 client is worth reusing).
    return open_artifact_store(location)


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


@router.get(
    "/{study_name}/best-model",
    response_class=StreamingResponse,
    responses=RESPONSES,
)
def download_best_model(study_name: StudyName, repository: Repository, request: Request) -> StreamingResponse:
    """The best trial's fine-tuned model: weights (safetensors), parameters, label names and config."""
    record = repository.get(study_name)
    best = _best_trial(repository, record.optuna_study_id)
    if best is None:
        raise BestModelNotFound(study_name, "it has no completed trial yet")
    artifact_id = best.user_attrs.get(MODEL_ARTIFACT_ATTR)
    if not artifact_id:
        why = best.user_attrs.get("model_artifact_error")
        raise BestModelNotFound(
            study_name, f"its best trial {best.number} saved no model" + (f" ({why})" if why else "")
        )
    try:
        # Optuna names artifacts by UUID: anything else was not written by a worker, and as a path it could
        # point outside the store.
        artifact_id = str(uuid.UUID(str(artifact_id)))
    except ValueError:
        raise BestModelNotFound(
            study_name, f"its best trial {best.number} records a malformed {MODEL_ARTIFACT_ATTR}"
        ) from None
    store = _artifact_store(request.app.state.settings.artifact_dir)
    try:
        reader = store.open_reader(artifact_id)
    except ArtifactNotFound as error:
        raise BestModelNotFound(
            study_name,
            f"the model of its best trial {best.number} is not in the service's artifact store"
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
