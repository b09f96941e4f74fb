"""`tunefleet worker --gpus all|0,1 / --processes N`: one worker process per GPU (or slot), restarted if it crashes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("tunefleet.launcher")

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# A child that ran this long before crashing is restarted at once again: it was a fluke, not a crash loop.
HEALTHY_RUN_S = 60.0
STOP_GRACE_S = 15.0


def parse_gpus(value: str) -> list[str]:
    """`all` is every visible CUDA device; `0,2` picks those; an empty machine gives a clear error."""
    if value == "all":
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError("--gpus all: no CUDA device is visible on this host (use --processes N on CPUs)")
        return [str(i) for i in range(count)]
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids or not all(part.isdigit() for part in ids):
        raise ValueError(f"--gpus takes 'all' or a list of device indexes like 0,1; got {value!r}")
    return ids


@dataclass
class Slot:
    """One child worker: its environment, its process, and its crash history."""

    name: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    crashes: int = 0
    next_start_at: float = 0.0
    finished: bool = field(default=False)


def supervise(child_args: list[str], slot_envs: list[tuple[str, dict[str, str]]]) -> int:
    """Run one `tunefleet worker` per slot until all exit cleanly or a signal stops them; returns 0 or 1."""
    slots = [Slot(name=name, env={**os.environ, **env}) for name, env in slot_envs]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    command = [sys.executable, "-m", "tunefleet", "worker", *child_args]
    while not stopping and not all(slot.finished for slot in slots):
        now = time.monotonic()
        for slot in slots:
            if slot.finished:
                continue
            if slot.process is None:
                if now >= slot.next_start_at:
                    slot.process = subprocess.Popen(command, env=slot.env)
                    slot.started_at = now
                    log.info("started worker %s (pid %d)", slot.name, slot.process.pid)
                continue
            code = slot.process.poll()
            if code is None:
                continue
            slot.process = None
            if code == 0:
                slot.finished = True
                continue
            if now - slot.started_at >= HEALTHY_RUN_S:
                slot.crashes = 0
            delay = RESTART_BACKOFF_S[min(slot.crashes, len(RESTART_BACKOFF_S) - 1)]
            slot.crashes += 1
            slot.next_start_at = now + delay
            log.warning("worker %s exited with %d; restarting in %.0fs", slot.name, code, delay)
        time.sleep(0.2)
    running = [slot.process for slot in slots if slot.process is not None and slot.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
    return 0
