"""Trial checkpoints: bytes in the artifact store and one system attribute saying which, and after which epoch."""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from studies._optuna.trial_rows import system_attrs, trials
from studies.artifacts import ArtifactStore

# The system attribute of a trial that names its latest checkpoint; a retried copy of the trial inherits it.
CHECKPOINT_ATTR = "tunefleet:checkpoint"


@dataclass(frozen=True)
class CheckpointRef:
    """Where a trial's latest checkpoint is, and the epoch it was taken after."""

    artifact_id: str
    epoch: int

    def to_json(self) -> dict[str, Any]:
        return {"artifact_id": self.artifact_id, "epoch": self.epoch}

    @classmethod
    def of(cls, value: Any) -> CheckpointRef | None:
        """The reference a system attribute holds, or None when it holds none (or something else)."""
        if (
            isinstance(value, dict)
            and isinstance(value.get("artifact_id"), str)
            and isinstance(value.get("epoch"), int)
        ):
            return cls(value["artifact_id"], value["epoch"])
        return None


def write_checkpoint(store: ArtifactStore, data: bytes) -> str:
    """Store a checkpoint's bytes under a new artifact id; the id."""
    artifact_id = f"checkpoint-{uuid.uuid4().hex}"
    store.write(artifact_id, io.BytesIO(data))
    return artifact_id


def read_checkpoint(store: ArtifactStore, artifact_id: str) -> bytes:
    """A checkpoint's bytes; the store's ArtifactNotFound when it is gone."""
    with store.open_reader(artifact_id) as reader:
        return reader.read()


def discard_checkpoint(store: ArtifactStore, artifact_id: str) -> None:
    """Delete a checkpoint no trial resumes from any more; one already gone is fine."""
    try:
        store.remove(artifact_id)
    # An artifact already removed, or a store that cannot remove it, must not cost the trial its result.
    except Exception:
        return


def held_checkpoints(connection: sa.Connection, study_id: int) -> list[CheckpointRef]:
    """The checkpoints the study's trials hold (each trial's latest), by trial number."""
    rows = connection.execute(
        sa.select(system_attrs.c.value_json)
        .join(trials, trials.c.trial_id == system_attrs.c.trial_id)
        .where(trials.c.study_id == study_id, system_attrs.c.key == CHECKPOINT_ATTR)
        .order_by(trials.c.number)
    ).all()
    refs = (CheckpointRef.of(json.loads(row.value_json)) for row in rows)
    return [ref for ref in refs if ref is not None]
