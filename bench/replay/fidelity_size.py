"""How the surrogate's fidelity grows with the recorded configurations it is fitted on: would recording more help?"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.replay.curves import DATA_DIR, Recording, data_file, load
from bench.replay.numpy_cpu import numpy_cpu, rerun_without_avx512
from bench.replay.record import TASKS, spec_of
from bench.replay.surrogate import fidelity
from bench.reporting import command_line, load_average, markdown_table, write_result
from bench.text_task import versions
from studies import StudySpec

SIZES = (125, 250, 500, 750, 1000, 1500)


def held_out_spearman(spec: StudySpec, recording: Recording, fitted_on: Sequence[int]) -> float:
    """The trial value's rank correlation on the held-out configurations, for a surrogate fitted on only some."""
    fitted = recording.fitted()
    subset = Recording(recording.header, [*(fitted[i] for i in fitted_on), *recording.held_out()])
    value_spearman: float = fidelity(spec, subset)["value_spearman"]
    return value_spearman


def by_size(task: str, data_dir: Path, draws: int, sizes: Sequence[int] = SIZES) -> list[dict[str, Any]]:
    """Per size, the held-out Spearman of surrogates fitted on `draws` random subsets of that many configurations
    (all of them once, at the recording's own size)."""
    recording = load(data_file(task, data_dir))
    spec = spec_of(task)
    n = len(recording.fitted())
    rows = []
    for size in (*(s for s in sizes if s < n), n):
        subsets = (
            [range(n)]
            if size == n
            else [sorted(np.random.default_rng(d).choice(n, size, replace=False)) for d in range(draws)]
        )
        values = [held_out_spearman(spec, recording, [int(i) for i in s]) for s in subsets]
        held = sum(c.failed is None for c in recording.held_out())
        rows.append(
            {"fitted": size, "held_out": held, "spearman_mean": statistics.mean(values), "spearman": values}
        )
        print(
            f"{task}: fitted on {size}: {statistics.mean(values):.3f} {[round(v, 3) for v in values]}",
            flush=True,
        )
    return rows


def markdown(results: dict[str, list[dict[str, Any]]], sizes: Sequence[int] = SIZES) -> str:
    shown = sorted({r["fitted"] for rows in results.values() for r in rows[:-1] if r["fitted"] in sizes})
    rows = []
    for task, fitted in results.items():
        of = {r["fitted"]: r for r in fitted[:-1]}
        last = fitted[-1]
        cells = [f"{of[s]['spearman_mean']:.3f}" if s in of else "" for s in shown]
        rows.append(
            [task, *cells, f"{last['spearman_mean']:.3f} ({last['fitted']}; {last['held_out']} held out)"]
        )
    return markdown_table(["task", *(f"fitted on {s}" for s in shown), "fitted on all"], rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--draws", type=int, default=4, help="random subsets per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="configurations to fit on")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=Path("bench/results/replay-fidelity-size.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    before = load_average()
    results = {task: by_size(task, args.data_dir, args.draws, args.sizes) for task in args.tasks}
    table = markdown(results, args.sizes)
    print(table)
    write_result(
        {
            "benchmark": "replay-fidelity-size",
            "command": command_line("bench.replay.fidelity_size", argv),
            "config": {
                "draws": args.draws,
                "sizes": args.sizes,
                "wall_s": round(time.perf_counter() - started, 1),
                "load_average": {"before": before, "after": load_average()},
                **versions(),
                "numpy_cpu": numpy_cpu(),
            },
            "results": results,
            "markdown": table,
            "tables": table,
        },
        args.out,
    )


if __name__ == "__main__":
    rerun_without_avx512("bench.replay.fidelity_size")
    main(sys.argv[1:])
