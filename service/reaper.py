"""A background thread in the service that declares silent workers lost and re-queues their trials."""

from __future__ import annotations

import logging
import threading

from studies import StudyRepository
from studies.fleet import Fleet, Reaper

log = logging.getLogger("tunefleet.service")


class ReaperThread(threading.Thread):
    """Runs the fleet reaper every interval, so a dead worker's trial is retried even if no worker is idle."""

    def __init__(self, repository: StudyRepository, *, grace_s: float, interval_s: float) -> None:
        super().__init__(name="tunefleet-reaper", daemon=True)
        self.reaper = Reaper(Fleet(repository), grace_s=grace_s, interval_s=interval_s)
        self.interval_s = interval_s
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            try:
                self.reaper.tick()
            except Exception:
                log.exception("reaper failed; trying again next interval")
