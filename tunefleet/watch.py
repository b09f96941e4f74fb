"""A live progress bar of one study: trials done of the budget, best value, pruned and failed counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from tunefleet.client import TunefleetClient

FINAL_STATES = ("completed", "stopped", "failed")


def watch_study(
    client: TunefleetClient,
    name: str,
    *,
    interval_s: float = 1.0,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Show progress until the study completes, stops or fails; returns the final study. check() may raise."""
    study = client.get_study(name)
    metric = study["spec"]["objective"]["metric"]
    with tqdm(total=study["n_trials"], desc=name, unit="trial") as bar:
        while True:
            study = client.get_study(name)
            bar.total = study["n_trials"]
            bar.n = study["n_finished"]
            best = study["best_value"]
            counts = study["trial_counts"]
            best_text = f"{best:.4f}" if best is not None else "-"
            bar.set_postfix_str(
                f"best {metric} {best_text} | running {counts['running']} pruned {counts['pruned']} "
                f"failed {counts['fail']}"
            )
            bar.refresh()
            if study["state"] in FINAL_STATES:
                return study
            if check is not None:
                check()
            time.sleep(interval_s)
