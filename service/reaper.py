"""A background thread in the service that declares silent workers lost and re-queues their trials."""

from __future__ import annotations

import logging
import threading
from functools import partial

from service.artifact_stores import artifact_store
from studies import StudyRepository
from studies.checkpoints import discard_checkpoint
from studies.fleet import Fleet, Reaper

log = logging.getLogger("tunefleet.service")


class ReaperThread(threading.Thread):
    """Runs the fleet reaper every interval, so a dead worker's trial is retried even if no worker is idle."""

    def __init__(
        self,
        repository: StudyRepository,
        *,
        grace_s: float,
        interval_s: float,
        artifact_dir: str | None = None,
    ) -> None:
        super().__init__(name="tunefleet-reaper", daemon=True)
        # The checkpoints of paused trials the reaper ends go from the workers' artifact store, opened when needed.
        discard = None if artifact_dir is None else partial(_discard, artifact_dir)
        self.reaper = Reaper(Fleet(repository, discard), grace_s=grace_s, interval_s=interval_s)
        self.interval_s = interval_s
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            try:
                self.reaper.tick()
            except Exception:
                log.exception("reaper failed; trying again next interval")


def _discard(location: str, artifact_id: str) -> None:
    try:
        discard_checkpoint(artifact_store(location), artifact_id)
    except Exception as error:
        # A store the service cannot open leaves the checkpoint behind, never the sweep undone.
        log.warning("checkpoint %s not deleted: %s", artifact_id, error)
