"""A live progress bar of one study: trials done of the budget, best value, pruned and failed counts."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from tunefleet.client import ApiError, TunefleetClient

FINAL_STATES = ("completed", "stopped", "failed")
ALIVE = ("idle", "busy")
# Workers just started take seconds to import torch and register (the demo starts its own right before it
# watches): only a study still untouched after this long is worth a word.
NO_WORKER_HINT_AFTER_S = 15.0


def workers_alive_if_unseen(client: TunefleetClient, study: dict[str, Any]) -> int | None:
    """None once a worker has been seen for the study (it claimed a trial of it); else how many are alive."""
    # A worker's registry row names only the trial it runs now, not the studies it would take: a claim
    # ever made shows in the study's own counts, a trial running now in both.
    if study.get("n_claimed", 0) > 0 or any(study["trial_counts"].values()):
        return None
    workers = client.workers()
    alive = [worker for worker in workers if worker["status"] in ALIVE]
    if any(worker["study_name"] == study["name"] for worker in alive):
        return None
    return len(alive)


def no_worker_hint(name: str, alive: int) -> str:
    """What to tell a user watching a study no worker has been seen for."""
    start = f"start one with: tunefleet worker --study {name} (TUNEFLEET_DATABASE_URL set to this service's store)"
    if alive == 0:
        return (
            f"no worker has been seen for this study yet, and none is alive on this service's store; {start}"
        )
    others = (
        f"{alive} worker{'s are' if alive > 1 else ' is'} alive, busy with other studies or limited to them"
    )
    return f"no worker has been seen for this study yet ({others} by --study); {start}"


def watch_study(
    client: TunefleetClient,
    name: str,
    *,
    interval_s: float = 1.0,
    check: Callable[[], None] | None = None,
    no_worker_hint_after_s: float = NO_WORKER_HINT_AFTER_S,
) -> dict[str, Any]:
    """Show progress until the study completes, stops or fails; returns the final study. check() may raise.

    A running study that no worker has been seen for after no_worker_hint_after_s gets one line on stderr
    saying so, and how to start one.
    """
    study = client.get_study(name)
    objective = study["spec"]["objective"]
    metric = objective.get("metric")  # a study of several objectives has metrics instead, and a front
    started = time.monotonic()
    looked = False  # for a worker: once is enough
    with tqdm(total=study["n_trials"], desc=name, unit="trial") as bar:
        while True:
            study = client.get_study(name)
            bar.total = study["n_trials"]
            bar.n = study["n_finished"]
            counts = study["trial_counts"]
            if metric is None:
                progress = f"Pareto front {study.get('pareto_front_size') or 0} trials"
            else:
                best = study["best_value"]
                progress = f"best {metric} {f'{best:.4f}' if best is not None else '-'}"
            bar.set_postfix_str(
                f"{progress} | running {counts['running']} pruned {counts['pruned']} failed {counts['fail']}"
            )
            bar.refresh()
            if study["state"] in FINAL_STATES:
                return study
            waited_s = time.monotonic() - started
            if not looked and study["state"] == "running" and waited_s >= no_worker_hint_after_s:
                looked = True
                hint = _hint_if_no_worker(client, study)
                if hint is not None:
                    tqdm.write(hint, file=sys.stderr)
            if check is not None:
                check()
            time.sleep(interval_s)


def _hint_if_no_worker(client: TunefleetClient, study: dict[str, Any]) -> str | None:
    try:
        alive = workers_alive_if_unseen(client, study)
    except ApiError:
        return None  # a registry this client may not read: no hint, rather than a watch that fails
    return None if alive is None else no_worker_hint(study["name"], alive)
