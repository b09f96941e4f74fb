"""The service's artifact stores: one per location for the life of the process, shared by its routes and reaper."""

from __future__ import annotations

import functools

from studies.artifacts import ArtifactStore, open_artifact_store


@functools.lru_cache(maxsize=4)
def artifact_store(location: str) -> ArtifactStore:
    """The store at a folder or s3:// location, opened on first use (an S3 client is worth reusing)."""
    return open_artifact_store(location)
