"""A background thread in the service that declares silent workers lost and re-queues their trials."""

from __future__ import annotations

import logging
import threading
from functools import partial

from service import artifact_stores
from studies import StudyRepository
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
        discard = None if artifact_dir is None else partial(artifact_stores.discard, artifact_dir)
        self.reaper = Reaper(Fleet(repository, discard), grace_s=grace_s, interval_s=interval_s)
        self.interval_s = interval_s
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            try:
                self.reaper.tick()
            except Exception:
                log.exception("reaper failed; trying again next interval")
