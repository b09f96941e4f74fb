"""Benchmark 3d: how far to trust latency_ms: the spread of a trial's latency measurement, run to run, on this machine."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from bench.reporting import benchmark_parser, command_line, load_average, markdown_table, publish, size_of
from bench.text_task import feature_cache_dir, versions
from bench.trial_api_overhead import NullTrial
from studies.artifacts import write_model_archive
from studies.spec import Task
from worker.device import configure_threads
from worker.epochs import TrainResult
from worker.export import load_best_model
from worker.measures import TIMED_CALLS, WARMUP_CALLS, call_seconds
from worker.tasks.interface import Measurable, TaskHost, TimedModel
from worker.tasks.text_classification import TextClassification

MODEL = "builtin:all-MiniLM-L6-v2"
DATA = "builtin:bbc-news"
# The head every trial trains, for one epoch: what is timed is the model's shape, not how well it learned.
HEAD: dict[str, Any] = {
    "learning_rate": 1e-3,
    "batch_size": 16,
    "epochs": 1,
    "depth": 1,
    "width": 128,
    "activation": "relu",
    "optimizer": "adamw",
}
LORA: dict[str, Any] = {"lora_rank": 8, "lora_alpha": 2.0, "lora_dropout": 0.1, "lora_targets": "attention"}
# name -> (what the table calls it, task fields, more parameters)
MODES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "head": ("finetune head", {"finetune": "head"}, {}),
    "last-k": ("finetune last-k, k=1", {"finetune": "last-k", "k": 1}, {"encoder_learning_rate": 1e-3}),
    "lora": (
        "finetune lora, rank 8, attention (merged, as timed)",
        {"finetune": "lora"},
        {"encoder_learning_rate": 1e-3, **LORA},
    ),
}
# The unmerged peft model, timed beside the merged one: what merging saves.
UNMERGED = "lora-unmerged"
UNMERGED_LABEL = "finetune lora, unmerged (peft's wrapper; not what a trial times)"
BATCH_SIZES = (1, 8)
# (runs in this process, fresh processes, max_examples, max_length) per size.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "smoke": (2, 1, 40, 32),
    "quick": (8, 3, 60, 128),
    "full": (20, 5, 60, 128),
}
# Two independent measurements, each with coefficient of variation c, differ by under 2 * sqrt(2) * c in 95%
# of pairs (normal errors).
PAIR_BAND = 2 * math.sqrt(2)


@dataclass(frozen=True)
class Trained:
    """One trial's model as a worker keeps it: its task, parameters, training result and archive."""

    mode: str
    task: Task
    params: dict[str, Any]
    result: TrainResult
    archive: Path


def task_of(mode: str, max_examples: int, max_length: int) -> Task:
    """The built-in encoder and data in one fine-tune mode."""
    fields = MODES[mode][1]
    return Task.model_validate(
        {"model": MODEL, "data": DATA, "max_examples": max_examples, "max_length": max_length, **fields}
    )


def train(kind: TextClassification, mode: str, task: Task, workdir: Path) -> Trained:
    """One trial of the mode, trained by the task kind, and its model written as the runner writes it."""
    params = {**HEAD, **MODES[mode][2]}
    kind.prepare(task)
    result = kind.run(task, NullTrial(params, seed=0, number=0))
    files = kind.model_files(task, params, result)
    if files is None:
        raise RuntimeError(f"finetune {mode} kept no model files")
    archive = workdir / f"{mode}-model.zip"
    write_model_archive(
        archive,
        weights=files.weights,
        params={"study": "bench-latency", "number": 0, "value": result.best_val_loss, "params": params},
        labels=files.labels,
        config=files.config,
        extra=files.extra,
    )
    return Trained(mode=mode, task=task, params=params, result=result, archive=archive)


def timed_model(kind: Measurable, trained: Trained, batch_size: int, device: torch.device) -> TimedModel:
    """What a trial's measurement times: the kind's model from the archive, on the fixed validation batch."""
    return kind.timed_model(
        trained.task, trained.params, trained.result, trained.archive, batch_size=batch_size, device=device
    )


def one_run(
    kind: Measurable, trained: Trained, batch_size: int, device: torch.device, *, merged: bool
) -> list[float]:
    """One trial's latency measurement (model loaded from its archive, warm-up, timed calls): each call's seconds.

    Unmerged, the same batch through the peft model load_best_model gives without merge.
    """
    timed = timed_model(kind, trained, batch_size, device)
    if not merged:
        unmerged = load_best_model(trained.archive).classifier.to(device).eval()
        timed = TimedModel(module=unmerged, inputs=timed.inputs)
    return call_seconds(timed, device)


def configs(trained: dict[str, Trained], batch_sizes: tuple[int, ...]) -> list[tuple[str, int]]:
    """Every (row, batch size) measured: each mode, and lora unmerged beside it."""
    rows = [*trained, *([UNMERGED] if "lora" in trained else [])]
    return [(row, b) for b in batch_sizes for row in rows]


def measure_once(
    kind: Measurable, trained: dict[str, Trained], row: str, batch_size: int, device: torch.device
) -> list[float]:
    """One run of a row: a trial's latency measurement, merged or not."""
    mode = "lora" if row == UNMERGED else row
    return one_run(kind, trained[mode], batch_size, device, merged=row != UNMERGED)


def cv(values: list[float]) -> float:
    """Coefficient of variation: sample standard deviation over mean (NaN for fewer than two values)."""
    if len(values) < 2:
        return math.nan
    return statistics.stdev(values) / statistics.mean(values)


def pair_p95(values: list[float]) -> float:
    """The 95th percentile of |a - b| / mean(a, b) over every pair of runs: how far two measurements differ."""
    gaps = sorted(abs(a - b) / ((a + b) / 2) for a, b in combinations(values, 2))
    if not gaps:
        return math.nan
    return gaps[min(len(gaps) - 1, math.ceil(0.95 * len(gaps)) - 1)]


def child(workdir: Path, batch_sizes: tuple[int, ...], device: torch.device) -> int:
    """A fresh process's measurements: each mode once, as a worker process's first trials would take them."""
    manifest = json.loads((workdir / "manifest.json").read_text())
    kind = TextClassification(TaskHost(device=device, cache_dir=feature_cache_dir()))
    trained = {
        mode: Trained(
            mode=mode,
            task=Task.model_validate(entry["task"]),
            params=entry["params"],
            result=torch.load(workdir / entry["result"], weights_only=False),
            archive=Path(entry["archive"]),
        )
        for mode, entry in manifest.items()
    }
    medians = {
        f"{row}@{b}": statistics.median(measure_once(kind, trained, row, b, device)) * 1000.0
        for row, b in configs(trained, batch_sizes)
        if row != UNMERGED
    }
    print(json.dumps(medians))
    return 0


def fresh_processes(
    workdir: Path, trained: dict[str, Trained], n: int, batch_sizes: tuple[int, ...], args: Any
) -> dict[str, list[float]]:
    """Each row's latency in n fresh processes, one after another (workers are separate processes)."""
    manifest = {}
    for mode, t in trained.items():
        torch.save(t.result, workdir / f"{mode}-result.pt")
        manifest[mode] = {
            "task": t.task.model_dump(mode="json"),
            "params": t.params,
            "result": f"{mode}-result.pt",
            "archive": str(t.archive),
        }
    (workdir / "manifest.json").write_text(json.dumps(manifest))
    command = [sys.executable, "-m", "bench.latency_spread", "--child", str(workdir), "--device", args.device]
    command += ["--cpu-threads", str(args.cpu_threads), "--batch-sizes", *map(str, batch_sizes)]
    found: dict[str, list[float]] = {}
    for _ in range(n):
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
        for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
            found.setdefault(key, []).append(value)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(
        "latency_spread",
        __doc__,
        quick="8 runs in this process and 3 fresh processes per row",
        smoke="a tiny run (32 tokens, 2 runs, 1 fresh process) that only checks the script works",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--cpu-threads", type=int, default=1, help="torch threads, as the worker's (default 1)"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--runs", type=int, help="runs in this process per row (default by size)")
    parser.add_argument("--fresh", type=int, help="fresh processes (default by size)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no GPU on this machine: use --device cpu", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    # A worker times its trials on its own thread pool (TUNEFLEET_CPU_THREADS, default 1), not every core.
    configure_threads(args.cpu_threads)
    batch_sizes = tuple(args.batch_sizes)
    if args.child is not None:
        return child(args.child, batch_sizes, device)
    size = size_of(args)
    runs, fresh, max_examples, max_length = SIZES[size]
    runs, fresh = args.runs or runs, args.fresh if args.fresh is not None else fresh
    started = time.monotonic()
    load_at_start = load_average()
    print(f"load average at start: {load_at_start}", flush=True)
    kind = TextClassification(TaskHost(device=device, cache_dir=feature_cache_dir()))
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as folder:
        workdir = Path(folder)
        trained = {
            mode: train(kind, mode, task_of(mode, max_examples, max_length), workdir) for mode in MODES
        }
        # Trials' training used every core; the measurements run on the worker's threads.
        configure_threads(args.cpu_threads)
        rows = configs(trained, batch_sizes)
        calls: dict[tuple[str, int], list[list[float]]] = {key: [] for key in rows}
        # Round robin: whatever else the machine runs meanwhile weighs on every row alike.
        # The load at start and end misses what ran in between: sampled after every round too.
        loads = [load_at_start]
        for _ in range(runs):
            for row, b in rows:
                calls[(row, b)].append(measure_once(kind, trained, row, b, device))
            loads.append(load_average())
        in_fresh = fresh_processes(workdir, trained, fresh, batch_sizes, args) if fresh else {}
    load_at_end = load_average()
    loads.append(load_at_end)
    print(f"load average at end: {load_at_end}", flush=True)

    measured: list[dict[str, Any]] = []
    for row, b in rows:
        per_run = calls[(row, b)]
        medians = [statistics.median(seconds) * 1000.0 for seconds in per_run]
        fresh_medians = in_fresh.get(f"{row}@{b}", [])
        measured.append(
            {
                "row": row,
                "label": UNMERGED_LABEL if row == UNMERGED else MODES[row][0],
                "batch_size": b,
                "run_medians_ms": medians,
                "median_ms": statistics.median(medians),
                "run_cv": cv(medians),
                "pair_p95": pair_p95(medians),
                # Within one run: the spread of the timed calls whose median is the run's latency.
                "within_run_cv": statistics.median(cv(seconds) for seconds in per_run),
                "fresh_medians_ms": fresh_medians,
                "fresh_cv": cv(fresh_medians),
            }
        )
    by_key = {(m["row"], m["batch_size"]): m for m in measured}
    timed = [m for m in measured if m["row"] != UNMERGED]
    # Two measurements differ by under this 95% of the time: in one process, the runs' own pairs; across fresh
    # processes, too few for a percentile, PAIR_BAND times their CV.
    bands = [m["pair_p95"] for m in timed] + [PAIR_BAND * m["fresh_cv"] for m in timed]
    band = max((b for b in bands if not math.isnan(b)), default=math.nan)
    cores = os.cpu_count() or 1
    busiest = max((load[0] for load in loads if load), default=math.nan)
    busy = not math.isnan(busiest) and busiest >= cores
    result: dict[str, Any] = {
        "device": str(device),
        "rows": measured,
        "noise_band": band,
        "config": {
            "command": command_line("bench.latency_spread", argv),
            "model": MODEL,
            "data": DATA,
            "size": size,
            "max_examples": max_examples,
            "max_length": max_length,
            "runs": runs,
            "fresh_processes": fresh,
            "warmup_calls": WARMUP_CALLS,
            "timed_calls": TIMED_CALLS,
            "cpu_threads": args.cpu_threads,
            "batch_sizes": list(batch_sizes),
            **versions(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": load_at_end,
            "load_average_peak_1min": busiest,
            "wall_s": round(time.monotonic() - started, 1),
        },
    }

    def pct(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.1%}"

    def vs_merged(m: dict[str, Any]) -> str:
        merged = by_key.get(("lora", m["batch_size"]))
        if m["row"] != UNMERGED or merged is None:
            return "-"
        return f"{m['median_ms'] / merged['median_ms']:.2f}x merged"

    lines = [
        f"MiniLM-L6 ({MODEL}) on BBC News validation texts ({max_length} tokens), {device}, "
        f"{args.cpu_threads} torch thread(s) as a worker's default; one trial of each mode trained (1 epoch) and its "
        "model written as a worker writes it. One run is what a trial's latency_ms measurement does: the model "
        f"loaded from its archive, {WARMUP_CALLS} untimed calls, the median of {TIMED_CALLS} timed ones "
        f"(tunefleet's own measurement code). {runs} runs per row in one process, round robin across the rows; "
        f"then each row once in each of {fresh} fresh process(es), as separate workers would measure it. "
        "Run-to-run CV: standard deviation over mean of the runs' medians; pairs p95: 95th percentile of the "
        "relative difference between two runs; within-run CV: the timed calls' spread inside a run (median over runs).",
        "",
        markdown_table(
            [
                "model",
                "batch",
                "latency_ms (median of runs)",
                "run-to-run CV",
                "pairs p95",
                "within-run CV",
                "CV across fresh processes",
                "vs merged",
            ],
            [
                [
                    m["label"],
                    m["batch_size"],
                    f"{m['median_ms']:.2f}",
                    pct(m["run_cv"]),
                    pct(m["pair_p95"]),
                    pct(m["within_run_cv"]),
                    f"{pct(m['fresh_cv'])} (n={len(m['fresh_medians_ms'])})"
                    if m["fresh_medians_ms"]
                    else "-",
                    vs_merged(m),
                ]
                for m in measured
            ],
        ),
        "",
        f"Machine: {result['config']['cores']} cores, {result['config']['cpu']}; load average (1, 5, 15 min) "
        f"{load_at_start or '?'} at start, {load_at_end or '?'} at end, 1-minute peak {busiest} (sampled after "
        f"every round; this run's own {args.cpu_threads} thread(s) count in it; other work shares this machine).",
    ]
    if busy:
        lines.append(
            f"The machine was busy (1-minute load up to {busiest} on {cores} cores): the spread above includes "
            "other work's interference, as a shared worker's measurements would."
        )
    verdict = (
        f"Differences under {math.ceil(band * 1000) / 10:.1f}% between two trials' latency_ms are within the "
        "measurement's noise on this machine (the largest of each row's pairs p95 and "
        f"{PAIR_BAND:.1f} x its CV across fresh processes: two measurements differ by less 95% of the time)."
        if not math.isnan(band)
        else "Too few runs to estimate the measurement's noise."
    )
    lines += ["", verdict, "GPU: not yet measured on a GPU."]
    result["verdict"] = verdict
    result["targets"] = []
    result["markdown"] = "\n".join(lines)
    publish(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
