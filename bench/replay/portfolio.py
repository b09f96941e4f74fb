"""Write the built-in warm-start sources (`warm_start: {studies: builtin}`) from the recorded head tasks."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.replay.curves import DATA_DIR, data_file, load
from bench.replay.record import spec_of
from studies.warm_start import BUILTIN_PORTFOLIO_FILE, MAX_PRIOR_PER_STUDY

# The recorded tasks of the built-in model's head: what `builtin` learns from.
HEAD_TASKS = ("bbc-news-minilm", "tweets-sentiment-minilm", "rotten-tomatoes-minilm")
# A portfolio of at most 50 and a prior of at most MAX_PRIOR_PER_STUDY (a study's best quarter) read no further
# than each task's best few; the rest only stretches the values' spread, which warm start scales to 0..1.
KEPT_PER_TASK = 300
assert MAX_PRIOR_PER_STUDY <= KEPT_PER_TASK


def portfolio_of(tasks: Sequence[str], folder: Path) -> dict[str, Any]:
    """Each task's best recorded configurations (the value a trial of it records: its best loss), best first."""
    studies = []
    first = spec_of(tasks[0])
    for task in tasks:
        spec = spec_of(task)
        if (spec.task.model, spec.task.finetune) != (first.task.model, first.task.finetune):
            raise SystemExit(f"{task} is not a {first.task.finetune} study of {first.task.model}")
        curves = [c for c in load(data_file(task, folder)).curves if c.failed is None]
        ranked = sorted(curves, key=lambda c: (c.value(), c.index))
        kept = ranked[:KEPT_PER_TASK]
        studies.append(
            {
                "task": task,
                "configurations": len(curves),
                "trials": [[c.index, c.params, round(c.value(), 6)] for c in kept],
            }
        )
    return {
        "kind": first.task.kind,
        "model": first.task.model,
        "finetune": first.task.finetune,
        "metric": "val_loss",
        "direction": "minimize",
        "written_by": "python -m bench.replay.portfolio",
        "studies": studies,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=list(HEAD_TASKS), choices=HEAD_TASKS)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=BUILTIN_PORTFOLIO_FILE)
    args = parser.parse_args(argv)
    written = portfolio_of(args.tasks, args.data_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(written, separators=(",", ":")) + "\n", encoding="utf-8")
    kept = ", ".join(f"{s['task']} {len(s['trials'])} of {s['configurations']}" for s in written["studies"])
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB): {kept}")


if __name__ == "__main__":
    main(sys.argv[1:])
