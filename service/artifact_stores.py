"""The service's artifact stores: one per location for the life of the process, shared by its routes and reaper."""

from __future__ import annotations

import functools
import logging

from studies.artifacts import ArtifactStore, open_artifact_store
from studies.checkpoints import discard_checkpoint

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def artifact_store(location: str) -> ArtifactStore:
    """The store at a folder or s3:// location, opened on first use (an S3 client is worth reusing)."""
    return open_artifact_store(location)


def discard(location: str, artifact_id: str) -> None:
    """Delete a checkpoint no trial resumes from any more, from the store at the location."""
    try:
        discard_checkpoint(artifact_store(location), artifact_id)
    except Exception as error:
        # A store the service cannot open leaves the checkpoint behind, never the caller's work undone.
        log.warning("checkpoint %s not deleted: %s", artifact_id, error)
