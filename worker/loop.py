"""The pull loop: claim a trial, run it, record it, repeat; heartbeat throughout; idle politely."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from types import FrameType

from studies import StudyRepository, WorkerIdentity, open_storage
from studies.artifacts import ArtifactStore, open_artifact_store
from studies.checkpoints import discard_checkpoint
from studies.errors import StudyNotFound, WorkerDeclaredLost
from studies.fleet import Fleet, Reaper, new_worker_id
from studies.resilience import GaveUp, is_transient, with_retry
from worker.data_roots import DataRoots
from worker.device import configure_threads, describe, pick_device
from worker.runner import TrialRunner
from worker.settings import WorkerSettings

log = logging.getLogger("tunefleet.worker")


@dataclass(frozen=True)
class LoopOptions:
    """What a worker run is limited to: some studies, a number of trials, or until idle."""

    study_names: tuple[str, ...] | None = None
    max_trials: int | None = None
    exit_when_idle: bool = False


def build_runner(settings: WorkerSettings) -> tuple[TrialRunner, WorkerIdentity]:
    """Open the store and pick the device: what every worker process does once at start."""
    device = pick_device(settings.device)
    if device.type == "cpu":
        configure_threads(settings.cpu_threads)
    # A worker started while the database restarts waits for it rather than crash-looping.
    repository = with_retry(
        lambda: StudyRepository(open_storage(settings.database_url, pool_size=settings.pool_size)),
        what="open the store",
    )
    identity = WorkerIdentity(host=socket.gethostname(), pid=os.getpid(), device=describe(device))
    identity = replace(identity, worker_id=new_worker_id(identity))
    try:
        artifact_store: ArtifactStore | None = open_artifact_store(settings.artifact_dir)
    except (OSError, ImportError, ValueError) as error:
        # A worker without a model store still runs trials; it only cannot keep the best weights.
        log.warning(
            "artifact store %s unusable (%s): best models will not be kept", settings.artifact_dir, error
        )
        artifact_store = None
    runner = TrialRunner(
        repository=repository,
        device=device,
        cache_dir=settings.cache_dir,
        artifact_store=artifact_store,
        trust_pickled_models=settings.trust_pickled_models,
        allowed_entrypoints=settings.allowed_entrypoints,
        data_roots=DataRoots.of(settings.data_roots),
        checkpoint_interval_s=settings.checkpoint_interval_s if settings.checkpoints else None,
    )
    return runner, identity


def freeze_startup_heap() -> int:
    """Collect once, then keep every object now alive out of later collections; returns how many."""
    # A worker's imports (torch, transformers, Optuna, SQLAlchemy) leave ~250k objects that live as
    # long as the process and that every full collection walks again: 120-150 ms on 2 cores, a
    # stall that lands in whatever the worker is doing (a claim, a report, a training step).
    # Frozen, a full collection walks only what the trials themselves made.
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def install_signal_handlers(runner: TrialRunner) -> None:
    """First SIGTERM or SIGINT: hand the trial back at the next batch and exit. Second: exit now."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if runner.stopping.is_set():
            raise KeyboardInterrupt
        log.info("%s received: handing back the current trial and exiting", signal.Signals(signum).name)
        runner.stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def heartbeat_waits(interval_s: float, rng: random.Random) -> Iterator[float]:
    """Seconds before each beat: a random phase first, then between 3/4 of the interval and all of it."""
    # A fleet started together would otherwise beat in step for good: once an interval, every
    # worker's registry and lease writes at once, and each claim caught in the burst waits behind
    # them. A random phase and waits from the interval's last quarter spread the beats, and no gap
    # is ever longer than the interval the grace period is set against.
    yield rng.uniform(0.0, interval_s)
    while True:
        yield rng.uniform(0.75, 1.0) * interval_s


class Heartbeat(threading.Thread):
    """Proves this worker alive every interval, and reaps workers that stopped proving it."""

    def __init__(self, fleet: Fleet, runner: TrialRunner, identity: WorkerIdentity, settings: WorkerSettings):
        super().__init__(name="tunefleet-heartbeat", daemon=True)
        self.fleet = fleet
        self.runner = runner
        self.worker_id = identity.worker_id
        self.interval_s = settings.heartbeat_interval_s
        self.reaper = Reaper(fleet, grace_s=settings.grace_period_s, interval_s=settings.heartbeat_interval_s)
        self.done = threading.Event()
        self.identity_lock = threading.Lock()

    def run(self) -> None:
        for wait in heartbeat_waits(self.interval_s, random.Random()):
            if self.done.wait(wait):
                return
            try:
                # Under the lock, so a re-registration cannot slip between reading the id and
                # flagging it lost: a stale "lost" would abandon the new identity's first trial.
                with self.identity_lock:
                    if not self.fleet.heartbeat(self.worker_id):
                        # Silent past the grace period (paused, partitioned): our trial was retried
                        # elsewhere. Stop it now; the loop re-registers under a new id.
                        log.warning("this worker was declared lost; dropping its trial")
                        self.runner.lost.set()
                self.reaper.tick()
            except Exception as error:
                if not is_transient(error):
                    log.exception("heartbeat failed")
                self.reaper.note_store_failure()


def _say_which_studies_are_missing(
    repository: StudyRepository, names: tuple[str, ...], stop: threading.Event
) -> None:
    """A `--study` naming no study is waited for (it may be created later), but said once: it may be a typo."""
    for name in names:
        try:
            with_retry(partial(repository.get, name), what="look up a study", stop=stop)
        except StudyNotFound:
            log.warning("study %r does not exist (yet): this worker waits for it", name)
        except GaveUp:
            return


def run_loop(
    runner: TrialRunner, identity: WorkerIdentity, options: LoopOptions, settings: WorkerSettings
) -> int:
    """Pull and run trials until stopped, idle with exit_when_idle, or max_trials done; returns trials run."""
    store = runner.artifact_store
    fleet = Fleet(
        runner.repository,
        discard_checkpoint=None if store is None else partial(discard_checkpoint, store),
    )
    stop = runner.stopping
    with_retry(partial(fleet.register, identity, settings.grace_period_s), what="register", stop=stop)
    heartbeat = Heartbeat(fleet, runner, identity, settings)
    heartbeat.start()
    done = 0
    which = ", ".join(options.study_names) if options.study_names else "any study"
    log.info("worker %s on %s pulling %s", identity.worker_id, identity.device, which)
    _say_which_studies_are_missing(runner.repository, options.study_names or (), stop)
    try:
        while not stop.is_set():
            if options.max_trials is not None and done >= options.max_trials:
                break
            if runner.lost.is_set():
                identity = replace(identity, worker_id=new_worker_id(identity))
                with_retry(
                    partial(fleet.register, identity, settings.grace_period_s), what="register", stop=stop
                )
                with heartbeat.identity_lock:
                    heartbeat.worker_id = identity.worker_id
                    runner.lost.clear()
            try:
                claim = with_retry(
                    partial(
                        runner.repository.claim,
                        identity,
                        study_names=options.study_names,
                        can_run=runner.can_run,
                    ),
                    what="claim",
                    stop=stop,
                    reset=runner.repository.reset_session,
                )
            except GaveUp:
                continue
            except WorkerDeclaredLost:
                # Declared lost while silent (paused, partitioned): nothing was claimed; register anew.
                log.warning("this worker was declared lost; registering again")
                runner.lost.set()
                continue
            if claim is None:
                if options.exit_when_idle:
                    break
                stop.wait(settings.poll_interval_s)
                continue
            # The claim recorded the trial in this worker's registry row, and its end clears it.
            started = time.perf_counter()
            outcome = runner.run(claim)
            done += 1
            log.info(
                "trial %d of %s: %s in %.1fs %s",
                claim.trial.number,
                claim.study_name,
                outcome,
                time.perf_counter() - started,
                claim.params,
            )
            if outcome in ("abandoned", "dropped") and not runner.lost.is_set():
                # The store stayed unreachable: let the trial go, so the reaper's sweep retries it. Or the
                # trial went with its study: the registry must not name it (on SQLite its id is reused).
                with contextlib.suppress(GaveUp):
                    with_retry(partial(fleet.set_trial, identity.worker_id, None), what="idle", stop=stop)
    finally:
        heartbeat.done.set()
        heartbeat.reaper.release()
        try:
            fleet.deregister(identity.worker_id)
        except Exception as error:
            log.warning(
                "could not deregister (%s); the reaper will mark this worker lost", type(error).__name__
            )
    return done
