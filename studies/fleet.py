"""The worker registry: who is alive, what each runs, and the reaper that retries a lost worker's trial."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from studies.lifecycle import COPIED_WHILE_RUNNING
from studies.records import Claim, WorkerIdentity
from studies.repository import StudyRepository
from studies.resilience import is_transient
from studies.states import WORKER_ALIVE, StopReason, WorkerState
from studies.tables import (
    leases_table,
    utcnow,
    workers_table,
)

log = logging.getLogger("tunefleet.fleet")

# Rows of workers that stopped or were lost this long ago are forgotten (GET /v1/workers shows a day).
FORGET_AFTER = timedelta(days=7)


def new_worker_id(identity: WorkerIdentity) -> str:
    """A worker id unique across restarts of the same pid: host:pid:random."""
    return f"{identity.host}:{identity.pid}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class WorkerRow:
    """One worker process as the registry sees it."""

    worker_id: str
    host: str
    pid: int
    device: str
    state: WorkerState
    study_name: str | None
    trial_number: int | None
    started_at: datetime
    heartbeat_at: datetime
    grace_s: float | None = None

    def status(self, *, grace_s: float, now: datetime) -> WorkerState:
        """busy, idle, stopped, or lost (declared lost, or silent for longer than its grace period)."""
        if self.state in WORKER_ALIVE and (now - self.heartbeat_at).total_seconds() > (
            self.grace_s or grace_s
        ):
            return WorkerState.LOST
        return self.state


class Fleet:
    """Registers workers, records their heartbeats and current trials, and lists them."""

    def __init__(
        self, repository: StudyRepository, discard_checkpoint: Callable[[str], None] | None = None
    ) -> None:
        self.repository = repository
        self.engine = repository.engine
        # Deletes, by artifact id, the checkpoint of a paused trial the reaper ends; None leaves it in place.
        self.discard_checkpoint = discard_checkpoint
        self._unheld_since: dict[int, float] = {}

    def register(self, identity: WorkerIdentity, grace_s: float | None = None) -> None:
        """Add a live, idle worker, to be declared lost after grace_s of silence."""
        now = utcnow()
        with self.engine.begin() as connection:
            connection.execute(
                workers_table.insert().values(
                    worker_id=identity.worker_id,
                    host=identity.host,
                    pid=identity.pid,
                    device=identity.device,
                    state=WorkerState.IDLE,
                    started_at=now,
                    heartbeat_at=now,
                    grace_s=grace_s,
                )
            )

    def heartbeat(self, worker_id: str) -> bool:
        """Prove the worker alive; False when it was already declared lost (its trial is gone)."""
        c = workers_table.c
        with self.engine.begin() as connection:
            result = connection.execute(
                workers_table.update()
                .where(c.worker_id == worker_id, c.state.in_(WORKER_ALIVE))
                .values(heartbeat_at=utcnow())
            )
        return result.rowcount == 1

    def set_trial(self, worker_id: str, claim: Claim | None) -> bool:
        """Record the trial the worker now runs (or that it is idle); False if it was declared lost."""
        c = workers_table.c
        values = (
            {
                "state": WorkerState.BUSY,
                "study_name": claim.study_name,
                "trial_id": claim.trial._trial_id,
                "trial_number": claim.trial.number,
            }
            if claim is not None
            else {"state": WorkerState.IDLE, "study_name": None, "trial_id": None, "trial_number": None}
        )
        with self.engine.begin() as connection:
            result = connection.execute(
                workers_table.update()
                .where(c.worker_id == worker_id, c.state.in_(WORKER_ALIVE))
                .values(heartbeat_at=utcnow(), **values)
            )
        return result.rowcount == 1

    def deregister(self, worker_id: str) -> None:
        """Mark the worker stopped: it exited on purpose."""
        c = workers_table.c
        with self.engine.begin() as connection:
            connection.execute(
                workers_table.update()
                .where(c.worker_id == worker_id, c.state.in_(WORKER_ALIVE))
                .values(state=WorkerState.STOPPED, trial_id=None, trial_number=None, study_name=None)
            )

    def workers(self, *, include_stopped: bool = False, since_s: float = 24 * 3600) -> list[WorkerRow]:
        """Workers seen within since_s, newest heartbeat first."""
        c = workers_table.c
        query = sa.select(workers_table).where(c.heartbeat_at > utcnow() - timedelta(seconds=since_s))
        if not include_stopped:
            query = query.where(c.state != WorkerState.STOPPED)
        with self.engine.begin() as connection:
            rows = connection.execute(query.order_by(c.heartbeat_at.desc())).all()
        return [
            WorkerRow(
                worker_id=r.worker_id,
                host=r.host,
                pid=r.pid,
                device=r.device,
                state=WorkerState(r.state),
                study_name=r.study_name,
                trial_number=r.trial_number,
                started_at=r.started_at,
                heartbeat_at=r.heartbeat_at,
                grace_s=r.grace_s,
            )
            for r in rows
        ]

    def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Hold (or renew) the named lease for ttl_s; False while another holder's lease runs."""
        c = leases_table.c
        now = utcnow()
        expires = now + timedelta(seconds=ttl_s)
        with self.engine.begin() as connection:
            won = connection.execute(
                leases_table.update()
                .where(c.name == name, sa.or_(c.holder == holder, c.expires_at < now))
                .values(holder=holder, expires_at=expires)
            ).rowcount
            if won:
                return True
            if connection.execute(sa.select(c.name).where(c.name == name)).first() is not None:
                return False
        try:
            with self.engine.begin() as connection:
                connection.execute(leases_table.insert().values(name=name, holder=holder, expires_at=expires))
        except sa.exc.IntegrityError:
            return False  # another process made the lease first
        return True

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up now (on a clean exit), so the next taker need not wait for it to expire."""
        c = leases_table.c
        with self.engine.begin() as connection:
            connection.execute(
                leases_table.update()
                .where(c.name == name, c.holder == holder)
                .values(expires_at=datetime(1970, 1, 1))
            )

    def reap(self, *, grace_s: float) -> list[str]:
        """Declare silent workers lost and retry their trials; returns the ids of the workers reaped."""
        c = workers_table.c
        now = utcnow()
        with self.engine.begin() as connection:
            alive = connection.execute(
                sa.select(c.worker_id, c.heartbeat_at, c.grace_s).where(c.state.in_(WORKER_ALIVE))
            ).all()
        reaped: list[str] = []
        for worker_id, heartbeat_at, own_grace_s in alive:
            if (now - heartbeat_at).total_seconds() <= (own_grace_s or grace_s):
                continue
            # Conditional on the heartbeat we judged, so a heartbeat in between wins, and of several
            # reapers exactly one declares each worker lost.
            with self.engine.begin() as connection:
                won = connection.execute(
                    workers_table.update()
                    .where(
                        c.worker_id == worker_id, c.state.in_(WORKER_ALIVE), c.heartbeat_at == heartbeat_at
                    )
                    .values(state=WorkerState.LOST)
                ).rowcount
            if won:
                reaped.append(worker_id)
                log.warning("worker %s stopped heartbeating; declared lost", worker_id)
        self._retry_orphaned_trials()
        self._retry_unheld_trials(grace_s)
        self._settle_paused()
        self._forget_old_workers(now)
        return reaped

    def _settle_paused(self) -> None:
        # Paused trials that nothing can promote any more (their study stopped, or its deadline passed while no
        # trial of it ran) end here; a worker's own trials settle theirs as they end.
        for checkpoint in self.repository.settle_all_paused():
            if self.discard_checkpoint is not None:
                self.discard_checkpoint(checkpoint.artifact_id)

    def _forget_old_workers(self, now: datetime) -> None:
        # Every worker process leaves a row: a fleet restarted daily would grow the table (and each
        # sweep's scan) without end. A lost worker's row is kept while it still names a trial to retry.
        c = workers_table.c
        with self.engine.begin() as connection:
            connection.execute(
                workers_table.delete().where(
                    c.heartbeat_at < now - FORGET_AFTER,
                    sa.or_(
                        c.state == WorkerState.STOPPED,
                        sa.and_(c.state == WorkerState.LOST, c.trial_id.is_(None)),
                    ),
                )
            )

    def _retry_orphaned_trials(self) -> None:
        # Lost workers keep their trial id until the trial is retried: a reaper that dies half-way
        # leaves the work visible to the next one instead of a trial RUNNING forever.
        c = workers_table.c
        with self.engine.begin() as connection:
            orphans = connection.execute(
                sa.select(c.worker_id, c.trial_id).where(c.state == WorkerState.LOST, c.trial_id.is_not(None))
            ).all()
        for worker_id, trial_id in orphans:
            retried = self.repository.retry_lost_trial(
                int(trial_id), StopReason.WORKER_LOST, held_by=worker_id
            )
            if retried is not None:
                log.warning(
                    "trial %d failed as %r and re-queued within max_retries",
                    retried.number,
                    StopReason.WORKER_LOST,
                )
            with self.engine.begin() as connection:
                connection.execute(
                    workers_table.update()
                    .where(c.worker_id == worker_id, c.trial_id == trial_id)
                    .values(trial_id=None, study_name=None)
                )

    def _retry_unheld_trials(self, grace_s: float) -> None:
        # A claim records its trial in the worker's row in the same transaction, so a RUNNING trial no live
        # worker holds comes from elsewhere: a claim retried after its commit's answer was lost (the row
        # now holds the retry's trial), a script claiming outside the fleet, a trial another tool started,
        # or a copy of a running trial in a study renamed or copied outside tunefleet (its worker runs the
        # original, if anything). A trial seen unheld twice, a grace period apart, is orphaned: retried in a
        # tunefleet study, failed in a study tunefleet does not know (it has no spec to retry it by).
        # Our own monotonic clock decides, never timestamps from hosts whose clocks may disagree.
        c = workers_table.c
        with self.engine.begin() as connection:
            held = set(
                connection.execute(
                    sa.select(c.trial_id).where(c.state.in_(WORKER_ALIVE), c.trial_id.is_not(None))
                ).scalars()
            )
        running = self.repository.running_trials()
        unheld = set(running) - held
        now = time.monotonic()
        self._unheld_since = {t: self._unheld_since.get(t, now) for t in unheld}
        for trial_id, since in list(self._unheld_since.items()):
            if now - since < grace_s:
                continue
            if running[trial_id]:
                retried = self.repository.retry_lost_trial(trial_id, StopReason.WORKER_LOST)
                if retried is not None:
                    log.warning(
                        "trial %d had no live worker; failed as %r and re-queued",
                        retried.number,
                        StopReason.WORKER_LOST,
                    )
            else:
                failed = self.repository.fail_copied_trial(trial_id)
                if failed is not None:
                    log.warning("trial %d of %s failed: %s", failed[1], failed[0], COPIED_WHILE_RUNNING)
            del self._unheld_since[trial_id]


REAPER_LEASE = "reaper"


class Reaper:
    """Calls Fleet.reap at most twice per interval while it holds the fleet's reaper lease, and never
    right after its own store outage.

    Callers tick at most an interval apart (a worker's jittered heartbeat: sometimes sooner), so the
    holder renews its lease well inside the lease's two intervals.
    """

    def __init__(self, fleet: Fleet, *, grace_s: float, interval_s: float, lease: str = REAPER_LEASE) -> None:
        self.fleet = fleet
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.lease = lease
        # Unique per process and per reaper: whoever holds the lease renews it every interval.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._last_run = 0.0
        self._last_store_failure = 0.0

    def tick(self) -> list[str]:
        """Reap if due. After an outage every heartbeat looks stale; wait a grace period for them to resume."""
        now = time.monotonic()
        if now - self._last_run < self.interval_s / 2:
            return []
        self._last_run = now
        if self._last_store_failure and now - self._last_store_failure < self.grace_s:
            return []
        try:
            # Two intervals: a holder that dies is replaced within two intervals of its last sweep.
            if not self.fleet.take_lease(self.lease, self.holder, ttl_s=2 * self.interval_s):
                return []
            return self.fleet.reap(grace_s=self.grace_s)
        except Exception as error:
            if not is_transient(error):
                raise
            self._last_store_failure = time.monotonic()
            return []

    def release(self) -> None:
        """Give the lease up on a clean exit; a store error here only means the lease expires on its own."""
        try:
            self.fleet.release_lease(self.lease, self.holder)
        except Exception as error:
            log.debug("reaper lease not released (%s); it expires on its own", type(error).__name__)

    def note_store_failure(self) -> None:
        """Tell the reaper its process just failed to reach the store."""
        self._last_store_failure = time.monotonic()
