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
# A child that exits 2 this soon refused its settings at start-up (one line on its stderr, say a device this
# host lacks or a store URL no driver reads): a restart would only repeat it.
EXIT_USAGE = 2
STOP_GRACE_S = 15.0


def parse_gpus(value: str, visible: str | None = None, count: int | None = None) -> list[str]:
    """Each child's CUDA_VISIBLE_DEVICES for `--gpus all` or `--gpus 0,2`, indexes as torch numbers the GPUs here.

    `visible` is this process's own CUDA_VISIBLE_DEVICES and `count` the devices torch sees (asked when
    needed). A scheduler that gives a job GPUs 4 and 5 of a node (Slurm without device cgroups) sets
    CUDA_VISIBLE_DEVICES=4,5, where torch calls them 0 and 1: a child pinned to index 0 would train on the
    node's GPU 0, which another job may hold. So index i becomes the i-th entry of that list (an index, a
    UUID or a MIG id), and an index past the visible devices is refused here, not in a crash-looping child.
    """
    if value != "all":
        ids = [part.strip() for part in value.split(",") if part.strip()]
        if not ids or not all(part.isdigit() for part in ids):
            raise ValueError(f"--gpus takes 'all' or a list of device indexes like 0,1; got {value!r}")
    if count is None:
        import torch

        count = torch.cuda.device_count()
    if count == 0:
        raise ValueError(
            f"--gpus {value}: no CUDA device is visible on this host (use --processes N on CPUs)"
        )
    indexes = list(range(count)) if value == "all" else [int(part) for part in ids]
    if past := [i for i in indexes if i >= count]:
        raise ValueError(
            f"--gpus {value}: GPU {past[0]} is not visible here; this host shows {count} "
            f"(indexes 0 to {count - 1})"
        )
    entries = [entry.strip() for entry in visible.split(",")] if visible is not None else []
    return [entries[i] if i < len(entries) else str(i) for i in indexes]


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
    refused: bool = False


def supervise(child_args: list[str], slot_envs: list[tuple[str, dict[str, str]]]) -> int:
    """Run one `python -m worker` per slot until all exit or a signal stops them; 2 if any refused to start."""
    slots = [Slot(name=name, env={**os.environ, **env}) for name, env in slot_envs]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    command = [sys.executable, "-m", "worker", *child_args]
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
            if code == EXIT_USAGE and now - slot.started_at < HEALTHY_RUN_S:
                slot.finished = slot.refused = True
                log.error("worker %s refused to start (its error is above); not restarting it", slot.name)
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
    return EXIT_USAGE if any(slot.refused for slot in slots) else 0
