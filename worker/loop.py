"""The pull loop: claim a trial, run it, record it, repeat; idle politely when there is nothing to do."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from types import FrameType

import sqlalchemy.exc

from studies import StudyRepository, WorkerIdentity, open_storage
from worker.device import configure_threads, describe, pick_device
from worker.objective import TrialRunner
from worker.settings import WorkerSettings

log = logging.getLogger("tunefleet.worker")

# Store errors while claiming are retried with this backoff rather than ending the worker.
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class LoopOptions:
    """What a worker run is limited to: one study, a number of trials, or until idle."""

    study_name: str | None = None
    max_trials: int | None = None
    exit_when_idle: bool = False


def build_runner(settings: WorkerSettings) -> tuple[TrialRunner, WorkerIdentity]:
    """Open the store and pick the device: what every worker process does once at start."""
    device = pick_device(settings.device)
    if device.type == "cpu":
        configure_threads(settings.cpu_threads)
    repository = StudyRepository(open_storage(settings.database_url, pool_size=settings.pool_size))
    identity = WorkerIdentity(host=socket.gethostname(), pid=os.getpid(), device=describe(device))
    return TrialRunner(repository=repository, device=device, cache_dir=settings.cache_dir), identity


def install_signal_handlers(runner: TrialRunner) -> None:
    """First SIGTERM or SIGINT: hand the trial back at the next epoch and exit. Second: exit now."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if runner.stopping.is_set():
            raise KeyboardInterrupt
        log.info("%s received: stopping after handing back the current trial", signal.Signals(signum).name)
        runner.stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def run_loop(
    runner: TrialRunner, identity: WorkerIdentity, options: LoopOptions, poll_interval_s: float
) -> int:
    """Pull and run trials until told to stop, idle with exit_when_idle, or max_trials done; returns trials run."""
    done = 0
    failures = 0
    log.info("worker %s on %s pulling %s", identity.label, identity.device, options.study_name or "any study")
    while not runner.stopping.is_set():
        if options.max_trials is not None and done >= options.max_trials:
            break
        try:
            claim = runner.repository.claim(identity, study_name=options.study_name)
        except sqlalchemy.exc.OperationalError as error:
            wait_s = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            if failures == 0:
                log.warning("store unavailable (%s); retrying every few seconds", type(error).__name__)
            failures += 1
            runner.stopping.wait(wait_s)
            continue
        if failures:
            log.info("store reachable again after %d failed attempts", failures)
            failures = 0
        if claim is None:
            if options.exit_when_idle:
                break
            runner.stopping.wait(poll_interval_s)
            continue
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
    return done
