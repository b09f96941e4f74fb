"""Record a task's training curves once: random configurations of its preset's space, every epoch, CPU seconds."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from bench.replay.curves import DATA_DIR, HELD_OUT_EVERY, Curve, append, data_file, read_rows, repeat_file
from bench.replay.pypi_data import DATA_DIR as PYPI_DATA_DIR
from bench.replay.pypi_data import prepare
from bench.reporting import load_average
from bench.text_task import feature_cache_dir, load_preset, plain_trainer, versions
from studies import StudySpec
from studies.space import conditions, distributions
from studies.spec import LocalData
from worker.epochs import EpochResult, NonFiniteLoss

# The presets a recording can be made of (their spaces and data, as `tunefleet demo --preset` runs them), and the
# benchmark's own tasks on data sets from PyPI packages (bench/replay/tasks/).
TASKS = ("bbc-news-minilm", "tweets-sentiment-minilm", "mlp-bbc-news", "rotten-tomatoes-minilm")
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
SAVE_EVERY = 10
# The seed of a held-out configuration's second training: far from every first training's seed (its index).
REPEAT_SEED_OFFSET = 1_000_003
# A recording resumes only where training gives what it gave before: a few of its configurations are trained
# again first. CPU seconds depend on the machine (on one 2-core machine they came out 1.6 to 14 times, a median of
# 2.9 times, those recorded on another of the same name, and a third of the losses differed), and a recording that
# mixes two machines replays its costs in two units. A sum of seconds under MIN_CHECKED_CPU_S is too short to
# compare. A process's first training also pays its start-up: each is trained twice and the cheaper run counts,
# against configurations recorded after the recording's first chunk.
RESUME_CHECKS = 4
CPU_TOLERANCE = 1.5
MIN_CHECKED_CPU_S = 2.0
LOSS_TOLERANCE = 1e-5


def draw(
    space: Mapping[str, BaseDistribution], when: Mapping[str, Any], rng: np.random.Generator
) -> dict[str, Any]:
    """One configuration drawn uniformly (log-uniformly for log ranges), as Optuna's RandomSampler draws it;
    a conditional parameter only where its condition holds."""
    params: dict[str, Any] = {}
    for name, d in space.items():
        if name in when and not when[name](params):
            continue
        if isinstance(d, CategoricalDistribution):
            params[name] = d.choices[int(rng.integers(len(d.choices)))]
        elif isinstance(d, FloatDistribution):
            params[name] = float(
                math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
                if d.log
                else rng.uniform(d.low, d.high)
            )
        else:
            assert isinstance(d, IntDistribution)
            if d.log:
                drawn = math.exp(rng.uniform(math.log(d.low - 0.5), math.log(d.high + 0.5)))
                params[name] = int(min(max(round(drawn), d.low), d.high))
            else:
                params[name] = int(rng.integers(d.low, d.high + 1) // d.step * d.step)
    return params


def task_preset(task: str, *, smoke: bool = False) -> dict[str, Any]:
    """The task's spec as a mapping: a built-in preset, or one of the benchmark's own tasks (bench/replay/tasks/)."""
    own = TASKS_DIR / f"{task}.yaml"
    return load_preset(task, smoke=smoke, path=own if own.exists() else None)


def spec_of(task: str, *, smoke: bool = False) -> StudySpec:
    """The task's spec a recording is made of; at smoke size on a few dozen short texts."""
    return StudySpec.model_validate({**task_preset(task, smoke=smoke), "name": f"replay-{task}"})


def prepare_data(spec: StudySpec) -> None:
    """Write the task's data file from its PyPI package first, where it is one of the benchmark's own."""
    data = spec.task.data
    if isinstance(data, LocalData) and Path(data.train).parent == PYPI_DATA_DIR:
        prepare(Path(data.train).stem)


def configuration(spec: StudySpec, seed: int, index: int) -> dict[str, Any]:
    """The index-th configuration of a recording: the same on every run, so a recording resumes where it stopped."""
    assert not isinstance(spec.space, dict)
    return draw(distributions(spec.space), conditions(spec.space), np.random.default_rng([seed, index]))


def header(task: str, spec: StudySpec, seed: int) -> dict[str, Any]:
    return {
        "kind": "header",
        "task": task,
        "task_spec": spec.task.model_dump(mode="json", exclude_none=True),
        "space": spec.space.model_dump(mode="json"),
        "max_epochs": spec.space.max_epochs(),
        "configurations_seed": seed,
        "versions": versions(),
    }


_TRAINER: Any = None


def _start(task: str, smoke: bool) -> None:
    # One thread per process: the CPU seconds recorded are one core's, whatever the machine.
    global _TRAINER
    torch.set_num_threads(1)
    spec = spec_of(task, smoke=smoke)
    _TRAINER = plain_trainer(spec.task, feature_cache_dir())


def train(index: int, params: dict[str, Any], max_epochs: int, seed: int | None = None) -> dict[str, Any]:
    """Train one configuration for max_epochs (its own `epochs` is a prefix of that curve), timing each epoch."""
    epochs: list[EpochResult] = []
    cpu_s: list[float] = []
    clock = [time.process_time()]

    def on_epoch(result: EpochResult) -> None:
        now = time.process_time()
        cpu_s.append(now - clock[0])
        clock[0] = now
        epochs.append(result)

    failed: str | None = None
    try:
        _TRAINER({**params, "epochs": max_epochs}, index if seed is None else seed, on_epoch)
    except NonFiniteLoss as error:
        failed = str(error)
    return Curve(
        index=index,
        params=params,
        seed=index if seed is None else seed,
        val_loss=[e.val_loss for e in epochs],
        val_accuracy=[e.val_accuracy for e in epochs],
        cpu_s=cpu_s,
        failed=failed,
    ).to_json()


def recorded_indices(path: Path, expected: dict[str, Any]) -> set[int]:
    """The configurations already in the file; SystemExit if it was recorded from another spec or seed."""
    if not path.exists():
        return set()
    rows = list(read_rows(path))
    head = next((r for r in rows if r.get("kind") == "header"), None)
    for key in ("task_spec", "space", "configurations_seed"):
        if head is None or head.get(key) != expected[key]:
            raise SystemExit(f"{path} was recorded with another {key}; move it away to record afresh")
    return {int(r["index"]) for r in rows if r.get("kind") != "header"}


def mismatch(recorded: Sequence[Curve], again: Sequence[Curve], *, seconds: bool = True) -> str | None:
    """Why the same configurations trained again do not match their recorded curves (losses, or CPU seconds
    beyond CPU_TOLERANCE times either way), or None if they match."""
    for before, now in zip(recorded, again, strict=True):
        if len(before.val_loss) != len(now.val_loss) or any(
            abs(a - b) > LOSS_TOLERANCE for a, b in zip(before.val_loss, now.val_loss, strict=True)
        ):
            return (
                f"configuration {before.index} trained again gives other losses ({now.val_loss[-1:]} at its last"
                f" epoch, recorded {before.val_loss[-1:]}): another torch build or CPU instruction set"
            )
    then = sum(sum(c.cpu_s) for c in recorded)
    now_s = sum(sum(c.cpu_s) for c in again)
    if (
        seconds
        and min(then, now_s) >= MIN_CHECKED_CPU_S
        and not 1 / CPU_TOLERANCE <= now_s / then <= CPU_TOLERANCE
    ):
        return (
            f"configurations {', '.join(str(c.index) for c in recorded)} trained again took {now_s:.1f} CPU seconds,"
            f" recorded {then:.1f}: this machine's seconds are not the recording's"
        )
    return None


def check_resumable(
    pool: ProcessPoolExecutor, path: Path, spec: StudySpec, seed: int, max_epochs: int
) -> None:
    """SystemExit unless a few recorded configurations, trained again, give their recorded curves and costs."""
    recorded = sorted(
        (Curve.from_json(r) for r in read_rows(path) if r.get("kind") != "header"), key=lambda c: c.index
    )
    checked = recorded[SAVE_EVERY : SAVE_EVERY + RESUME_CHECKS] or recorded[:RESUME_CHECKS]
    futures = [
        [pool.submit(train, c.index, configuration(spec, seed, c.index), max_epochs) for c in checked]
        for _ in range(2)
    ]
    first, second = ([Curve.from_json(f.result()) for f in run] for run in futures)
    cheaper = [min(a, b, key=lambda c: sum(c.cpu_s)) for a, b in zip(first, second, strict=True)]
    why = mismatch(checked, first, seconds=False) or mismatch(checked, second, seconds=False)
    why = why or mismatch(checked, cheaper)
    if why is not None:
        raise SystemExit(
            f"{path} cannot be resumed here: {why}. Record it afresh on this machine (move the file away), or resume"
            " it on the machine that made it"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--configurations", type=int, default=1060, help="how many, held-out ones included")
    parser.add_argument("--seed", type=int, default=0, help="seeds the configurations drawn")
    parser.add_argument("--jobs", type=int, default=1, help="processes, one CPU thread each")
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    parser.add_argument(
        "--smoke", action="store_true", help="a few dozen short texts: checks the recorder runs"
    )
    parser.add_argument(
        "--repeat-held-out",
        action="store_true",
        help="train the held-out configurations again with another seed (into TASK.repeat.jsonl.gz): how alike"
        " two trainings of one configuration rank, the most a surrogate's fidelity can reach",
    )
    args = parser.parse_args(argv)
    spec = spec_of(args.task, smoke=args.smoke)
    prepare_data(spec)
    path = data_file(args.task, args.out_dir)
    head = header(args.task, spec, args.seed)
    if args.repeat_held_out:
        repeat_held_out(args.task, spec, args.seed, path, head, args.jobs, args.smoke)
        return
    done = recorded_indices(path, head)
    if not done and not path.exists():
        append(path, [head])
    todo = [i for i in range(args.configurations) if i not in done]
    max_epochs = int(head["max_epochs"])
    print(
        f"{args.task}: {len(done)} recorded, {len(todo)} to go, {max_epochs} epochs each; load {load_average()}"
    )
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, initializer=_start, initargs=(args.task, args.smoke)) as pool:
        if done and todo:
            check_resumable(pool, path, spec, args.seed, max_epochs)
        for start in range(0, len(todo), SAVE_EVERY):
            chunk = todo[start : start + SAVE_EVERY]
            futures = [pool.submit(train, i, configuration(spec, args.seed, i), max_epochs) for i in chunk]
            append(path, [f.result() for f in futures])
            finished = start + len(chunk)
            rate = (time.perf_counter() - started) / finished
            print(
                f"{finished}/{len(todo)} recorded, {rate:.1f} s each, about {rate * (len(todo) - finished) / 60:.0f}"
                " min to go",
                flush=True,
            )
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB); load {load_average()}")


def repeat_held_out(
    task: str, spec: StudySpec, seed: int, path: Path, head: dict[str, Any], jobs: int, smoke: bool
) -> None:
    """Train each held-out configuration of the recording again, seeded differently, into TASK.repeat.jsonl.gz."""
    recorded = recorded_indices(path, head)
    held = sorted(i for i in recorded if i % HELD_OUT_EVERY == 0)
    repeat = repeat_file(path)
    if repeat.exists():
        repeat.unlink()
    append(repeat, [head])
    max_epochs = int(head["max_epochs"])
    with ProcessPoolExecutor(jobs, initializer=_start, initargs=(task, smoke)) as pool:
        futures = [
            pool.submit(train, i, configuration(spec, seed, i), max_epochs, REPEAT_SEED_OFFSET + i)
            for i in held
        ]
        append(repeat, [f.result() for f in futures])
    print(f"wrote {repeat}: {len(held)} held-out configurations trained again")


if __name__ == "__main__":
    main(sys.argv[1:])
