"""Export a recorded task's surrogate for the peer optimizers' environment: python -m bench.peers.export."""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.replay.benchmark import budget_cpu_s
from bench.replay.curves import DATA_DIR, data_file, load
from bench.replay.forest import BEST_SO_FAR, SURROGATES
from bench.replay.record import TASKS, spec_of
from bench.replay.surrogate import Surrogate, export


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=TASKS, default="bbc-news-minilm")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument(
        "--budget-trials", type=float, default=50, help="the budget: this many random trials' compute"
    )
    parser.add_argument("--out", type=Path, help="default: .peers/TASK.npz")
    parser.add_argument(
        "--surrogate",
        choices=SURROGATES,
        default=BEST_SO_FAR,
        help="the model that replays the recorded task",
    )
    args = parser.parse_args(argv)
    recording = load(data_file(args.task, args.data_dir))
    spec = spec_of(args.task)
    assert not isinstance(spec.space, dict)
    # The surrogate bench.replay.benchmark fits: the same curves, the same seed, so the same forest.
    surrogate = Surrogate(spec, recording.fitted(), model=args.surrogate)
    out = args.out or Path(".peers") / f"{args.task}.npz"
    meta = {
        "task": args.task,
        "budget_trials": args.budget_trials,
        "budget_cpu_s": budget_cpu_s(recording, args.budget_trials),
        "recorded_configurations": len(recording.curves),
        "reference_value": statistics.median(c.value() for c in recording.curves if c.failed is None),
        "space": spec.space.model_dump(mode="json", exclude_none=True),
    }
    export(surrogate, out, meta)
    print(f"written to {out}: {len(recording.fitted())} fitted curves, budget {meta['budget_cpu_s']:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
