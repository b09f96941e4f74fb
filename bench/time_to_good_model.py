"""Benchmark 1: compute each method needs to reach the best loss random search reaches with its whole budget."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from bench.common import suggest
from bench.module_task import MODULE_PRESETS
from bench.reporting import benchmark_parser, command_line, markdown_table, median_interval, publish
from bench.text_task import PRESETS, Trainer, feature_cache_dir, load_preset, plain_trainer, versions
from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from studies.artifacts import open_artifact_store
from studies.space import conditions, distributions
from studies.spec import DEFAULT_COST_WEIGHT, DEFAULT_PATIENCE, Space
from worker.device import configure_threads
from worker.epochs import EpochResult
from worker.runner import TrialRunner

WORKER = WorkerIdentity(host=platform.node(), pid=os.getpid(), device="cpu", worker_id="bench")
# tunefleet on the unconditional head space: width and activation drawn at every depth, a linear head's included.
UNCONDITIONAL = "tunefleet-unconditional"
# tunefleet's defaults with pause and promote: a trial behind at a rung (epochs 1, 3, 9) pauses with a checkpoint and
# goes on from it when promoted (replay benchmark's tunefleet-asha).
ASHA = "tunefleet-asha"
ASHA_PRUNER = {"name": "asha", "min_resource": 1, "reduction_factor": 3}
METHODS = ("tunefleet", ASHA, UNCONDITIONAL, "optuna-tpe", "random")
# A condition that holds at every depth: width and activation drawn for a linear head too.
EVERY_DEPTH = {"depth": {"ge": 0}}


@dataclass
class Point:
    """The state of a run after one more finished trial."""

    cpu_s: float
    epochs: int
    best: float


@dataclass
class Run:
    """One method with one seed."""

    method: str
    seed: int
    points: list[Point]

    def best(self) -> float:
        return self.points[-1].best if self.points else float("inf")

    def to_reach(self, target: float) -> Point | None:
        """The first point at which the run's best was at least as good as target."""
        return next((p for p in self.points if p.best <= target + 1e-12), None)


def unconditional_head(raw: dict[str, Any]) -> dict[str, Any]:
    """The spec with width and activation drawn at every depth, a linear head's included: the unconditional space."""
    space = StudySpec.model_validate({**raw, "name": "probe"}).space
    assert isinstance(space, Space)
    dumped = space.model_dump(mode="json")
    for name in ("width", "activation"):
        param = dumped[name] if isinstance(dumped[name], dict) else {"type": "fixed", "value": dumped[name]}
        dumped[name] = {**param, "when": EVERY_DEPTH}
    return {**raw, "space": dumped}


def suggest_conditionally(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """The suggest_* calls a user would write for the spec's space, a conditional one inside its `if`."""
    dists, tests = distributions(spec.space), conditions(spec.space)
    params: dict[str, Any] = {}
    for name, distribution in dists.items():
        test = tests.get(name)
        if test is None or test(params):
            params |= suggest(trial, {name: distribution})
    return params


def run_plain_optuna(method: str, spec: StudySpec, train: Trainer, seed: int, epoch_budget: int) -> Run:
    """Plain Optuna study.optimize, no pruning: (b) default TPE or (c) random, the same training function."""
    sampler = (
        optuna.samplers.TPESampler(seed=seed)
        if method == "optuna-tpe"
        else optuna.samplers.RandomSampler(seed)
    )
    study = optuna.create_study(sampler=sampler, direction="minimize")
    run = Run(method=method, seed=seed, points=[])
    epochs_used = 0
    started = time.process_time()

    def objective(trial: optuna.Trial) -> float:
        nonlocal epochs_used
        params = suggest_conditionally(trial, spec)

        def on_epoch(result: EpochResult) -> None:
            trial.report(result.val_loss, result.epoch)

        epochs = train(params, seed * 100_003 + trial.number, on_epoch)
        epochs_used += len(epochs)
        return min(e.val_loss for e in epochs)

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        best = study.best_value if any(t.value is not None for t in study.trials) else float("inf")
        run.points.append(Point(cpu_s=time.process_time() - started, epochs=epochs_used, best=best))
        if epochs_used >= epoch_budget:
            study.stop()

    study.optimize(objective, callbacks=[record], catch=(Exception,))
    return run


def run_tunefleet(
    spec: StudySpec, seed: int, epoch_budget: int, cache_dir: Path, workdir: Path, method: str = "tunefleet"
) -> Run:
    """tunefleet's own path, in process: the claim, the training, the per-epoch reports and its pruner."""
    storage = open_storage(f"sqlite:///{workdir / f'{method}-{seed}.db'}")
    repository = StudyRepository(storage)
    repository.create(spec)
    runner = TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=cache_dir,
        # A pruner that pauses trials needs their checkpoints to promote them (written only at a pause); with a
        # store, the runner also keeps each new best trial's model, as a worker does.
        artifact_store=open_artifact_store(str(workdir / f"{method}-{seed}-artifacts"))
        if spec.rungs()
        else None,
        checkpoint_interval_s=math.inf,
    )
    # The baselines get the task's features loaded before their clocks start; so does tunefleet's
    # worker, which otherwise read them from the cache inside its first trial (a second of CPU here).
    runner.prepare(spec.task)
    run = Run(method=method, seed=seed, points=[])
    epochs_used = 0
    # Epochs each trial has reported so far: a promoted trial goes on from its checkpoint, and only its new
    # epochs are counted.
    counted: dict[int, int] = {}
    best = float("inf")
    started = time.process_time()
    while epochs_used < epoch_budget:
        claim = repository.claim(WORKER, study_names=[spec.name])
        if claim is None:
            break
        runner.run(claim)
        # The benchmark's own bookkeeping: one read of the trial, the best kept here as Study.best_value
        # keeps it (COMPLETE trials only), so the measurement costs tunefleet no more than the baselines.
        trial = repository.storage.get_trial(claim.trial._trial_id)
        epochs_used += len(trial.intermediate_values) - counted.get(trial._trial_id, 0)
        counted[trial._trial_id] = len(trial.intermediate_values)
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None:
            best = min(best, trial.value)
        run.points.append(Point(cpu_s=time.process_time() - started, epochs=epochs_used, best=best))
    storage.engine.dispose()
    return run


def seed_spec(raw: dict[str, Any], seed: int) -> StudySpec:
    """The spec one seed's runs search: tunefleet's TPE seeded with it, a budget the epoch budget ends first."""
    return StudySpec.model_validate(
        {
            **raw,
            "name": f"bench-ttg-{seed}",
            "sampler": {"name": "tpe", "seed": seed},
            "budget": {"n_trials": 100_000},
        }
    )


def run_seed(
    raw: dict[str, Any],
    seed: int,
    epoch_budget: int,
    cache_dir: Path,
    unconditional: bool = False,
    asha: bool = False,
) -> list[Run]:
    """The methods on one seed, one after another in this process (one CPU thread).

    With unconditional, tunefleet also searches the unconditional space (width and activation drawn at depth 0
    too), and with asha it also runs with pause and promote (ASHA), against the same random search: every ratio
    comes from one run.
    """
    # One thread per run, as tunefleet's CPU workers use (measured faster for small heads on 2 cores).
    configure_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = seed_spec(raw, seed)
    train = plain_trainer(spec.task, cache_dir)
    with tempfile.TemporaryDirectory() as workdir:
        runs = [run_tunefleet(spec, seed, epoch_budget, cache_dir, Path(workdir))]
        if unconditional:
            old = seed_spec(unconditional_head(raw), seed)
            runs.append(run_tunefleet(old, seed, epoch_budget, cache_dir, Path(workdir), UNCONDITIONAL))
        if asha:
            paused = seed_spec({**raw, "pruner": ASHA_PRUNER}, seed)
            runs.append(run_tunefleet(paused, seed, epoch_budget, cache_dir, Path(workdir), ASHA))
        runs += [
            run_plain_optuna("optuna-tpe", spec, train, seed, epoch_budget),
            run_plain_optuna("random", spec, train, seed, epoch_budget),
        ]
    print(f"seed {seed}: " + ", ".join(f"{r.method} best {r.best():.4f}" for r in runs), flush=True)
    return runs


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Per seed: random search's final best is the target; how much compute each method needed to reach it."""
    seeds = sorted({r.seed for r in runs})
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        by_method = {r.method: r for r in runs if r.seed == seed}
        baseline = by_method["random"]
        target = baseline.best()
        base_point = baseline.to_reach(target)
        assert base_point is not None
        for method, run in by_method.items():
            point = run.to_reach(target)
            rows.append(
                {
                    "seed": seed,
                    "method": method,
                    "target": target,
                    "best": run.best(),
                    "cpu_s_to_target": point.cpu_s if point else None,
                    "epochs_to_target": point.epochs if point else None,
                    "cpu_ratio_vs_random": point.cpu_s / base_point.cpu_s if point else None,
                    "epoch_ratio_vs_random": point.epochs / base_point.epochs if point else None,
                    "total_cpu_s": run.points[-1].cpu_s,
                    "total_epochs": run.points[-1].epochs,
                    "trials": len(run.points),
                }
            )
    summary: dict[str, Any] = {}
    for method in methods_of(runs):
        mine = [r for r in rows if r["method"] == method]
        ratios = [r["cpu_ratio_vs_random"] for r in mine if r["cpu_ratio_vs_random"] is not None]
        epoch_ratios = [r["epoch_ratio_vs_random"] for r in mine if r["epoch_ratio_vs_random"] is not None]
        # A seed that never reached the target counts as needing more than any that did.
        every_seed = [r["cpu_ratio_vs_random"] or math.inf for r in mine]
        median_all = statistics.median(every_seed) if every_seed else math.inf
        interval = median_interval(every_seed) if every_seed else (math.inf, math.inf)
        summary[method] = {
            "reached_target": f"{len(ratios)}/{len(mine)}",
            "cpu_ratio_median_all_seeds": None if math.isinf(median_all) else median_all,
            "cpu_ratio_median_all_seeds_90ci": [None if math.isinf(x) else x for x in interval],
            "cpu_ratio_median": statistics.median(ratios) if ratios else None,
            "cpu_ratio_min": min(ratios) if ratios else None,
            "cpu_ratio_max": max(ratios) if ratios else None,
            "epoch_ratio_median": statistics.median(epoch_ratios) if epoch_ratios else None,
            "best_median": statistics.median(r["best"] for r in mine),
        }
    return {"rows": rows, "summary": summary}


def methods_of(runs: list[Run]) -> list[str]:
    """The methods the runs hold, in the tables' order."""
    present = {r.method for r in runs}
    return [m for m in METHODS if m in present]


CHECKPOINTS = (0.1, 0.25, 0.5, 1.0)


def checkpoints(runs: list[Run]) -> dict[str, list[dict[str, Any]]]:
    """Per method, at fractions of random search's whole compute: the median best loss, seeds at random's best.

    A steadier view than the crossing point alone, which one lucky early trial of the baseline moves.
    """
    random_runs = {r.seed: r for r in runs if r.method == "random"}
    out: dict[str, list[dict[str, Any]]] = {}
    for method in methods_of(runs):
        mine = [r for r in runs if r.method == method and r.seed in random_runs]
        rows = []
        for fraction in CHECKPOINTS:
            bests = []
            reached = 0
            for run in mine:
                baseline = random_runs[run.seed]
                budget = fraction * baseline.points[-1].cpu_s
                best = min((p.best for p in run.points if p.cpu_s <= budget + 1e-9), default=math.inf)
                bests.append(best)
                reached += best <= baseline.best() + 1e-12
            rows.append(
                {
                    "fraction": fraction,
                    "best_median": statistics.median(bests) if bests else None,
                    "reached": f"{reached}/{len(mine)}",
                }
            )
        out[method] = rows
    return out


def checkpoint_markdown(table: dict[str, list[dict[str, Any]]]) -> str:
    def cell(r: dict[str, Any]) -> str:
        best = r["best_median"]
        return ("no trial yet" if best is None or math.isinf(best) else f"{best:.4f}") + f" ({r['reached']})"

    return markdown_table(
        ["method", *(f"{c:.0%} of random's compute" for c in CHECKPOINTS)],
        [[method, *(cell(r) for r in rows)] for method, rows in table.items()],
    )


def fmt(value: Any, spec: str = ".3f") -> str:
    return "not reached" if value is None else format(value, spec)


def interval(summary: dict[str, Any]) -> str:
    bounds = summary.get("cpu_ratio_median_all_seeds_90ci")
    if not bounds:
        return ""
    low, high = (fmt(b, ".2f") for b in bounds)
    return f" ({low} to {high})"


def markdown(result: dict[str, Any]) -> str:
    headers = [
        "method",
        "reached random's best",
        "compute to reach it vs random, median of all seeds (90% interval)",
        "median of the seeds that reached it (min to max)",
        "trial-epochs vs random (median)",
        "best val loss (median)",
    ]
    rows = [
        [
            method,
            s["reached_target"],
            fmt(s.get("cpu_ratio_median_all_seeds"), ".2f") + interval(s),
            f"{fmt(s['cpu_ratio_median'], '.2f')} ({fmt(s['cpu_ratio_min'], '.2f')} to {fmt(s['cpu_ratio_max'], '.2f')})",
            fmt(s["epoch_ratio_median"], ".2f"),
            fmt(s["best_median"], ".4f"),
        ]
        for method, s in result["summary"].items()
    ]
    return markdown_table(headers, rows)


def report(runs: list[Run], config: dict[str, Any]) -> dict[str, Any]:
    """The results file of a set of runs: the per-seed rows, the summary, the targets and the table."""
    result = summarize(runs)
    result["checkpoints"] = checkpoints(runs)
    result["config"] = config
    result["runs"] = [asdict(r) for r in runs]
    summary = result["summary"]
    # The targets judge every seed: one that never reached random search's best is not left out.
    ours = summary["tunefleet"]["cpu_ratio_median_all_seeds"]
    tpe = summary["optuna-tpe"]["cpu_ratio_median_all_seeds"]
    result["targets"] = [
        {
            "target": "tunefleet needs at most 1/4 of random search's compute to reach its best (median of all seeds)",
            "figure": fmt(ours, ".2f"),
            "met": ours is not None and ours <= 0.25,
        },
        {
            "target": "tunefleet needs less compute than plain Optuna TPE without pruning (median of all seeds)",
            "figure": f"{fmt(ours, '.2f')} vs {fmt(tpe, '.2f')}",
            "met": ours is not None and (tpe is None or ours < tpe),
        },
    ]
    task, loaded = task_text(config)
    # The two tables alone, for a section written by hand (bench/sections/) to take in place of its `{tables}` line.
    checkpoint_table = (
        "Best validation loss (median over seeds) within a share of random search's whole compute for the same"
        " seed, and in brackets the seeds that had reached random search's final best by then:\n\n"
        + checkpoint_markdown(result["checkpoints"])
    )
    result["tables"] = f"{markdown(result)}\n\n{checkpoint_table}"
    result["markdown"] = (
        markdown(result)
        + f"\n\nTask: {task}. {config['seeds']} seeds, {config['epoch_budget']} trial-epochs per run, one "
        "worker process (one CPU thread) per method; tunefleet with its defaults (TPE weighing predicted seconds per epoch at "
        f"cost_weight {DEFAULT_COST_WEIGHT}, Hyperband, early stopping after {DEFAULT_PATIENCE} epochs without a "
        f"better loss); compute = process CPU seconds, after each method has {loaded} in memory, to the first "
        "trial whose best reached random search's final best; a seed that never reached it counts as needing "
        "more than any that did.\n\n" + checkpoint_table
    )
    if UNCONDITIONAL in summary:
        result["markdown"] += (
            f"\n\n{UNCONDITIONAL}: tunefleet on the same space with width and activation drawn at every depth,"
            " a linear head's included, rather than only at depth >= 1; against the same random search."
        )
    if ASHA in summary:
        result["markdown"] += (
            f"\n\n{ASHA}: tunefleet's defaults with pruner `{json.dumps(ASHA_PRUNER)}` instead of Hyperband: a trial"
            " behind at a rung (epochs 1, 3, 9) pauses with a checkpoint and goes on from it when a later claim"
            " promotes it; only its new epochs count. It keeps each new best trial's model in an artifact store"
            " (its checkpoints need one), which the other methods here do not; its compute includes that."
        )
    if "cpu" in config:
        result["markdown"] += (
            f"\n\nMachine: {config['cores']} cores, {config['cpu']}; Python {config['python']}, "
            f"optuna {config['optuna']}, torch {config['torch']}."
        )
    return result


def task_text(config: dict[str, Any]) -> tuple[str, str]:
    """What the run searched, and what each method loads before its clock starts, as the table's text says it."""
    task = config["task"]
    if task.get("kind") == "torch-module":
        return (
            f"the `{config['preset']}` preset (kind torch-module: `{task['model']}` with `{task['replace']}` "
            f"replaced by the searched head, freeze {task.get('freeze', 'all-but-replaced')}; the baselines "
            "train it with the kind's own model, inputs and training loop)",
            "the pretrained model and the hashed inputs",
        )
    return (
        f"the `{config['preset']}` preset ({task.get('finetune', 'head')} mode)",
        "the task's cached features",
    )


def rescore(path: Path) -> dict[str, Any]:
    """Recompute a results file's summary, targets and table from its raw runs, with this script's rules."""
    old = json.loads(path.read_text())
    runs = [
        Run(method=r["method"], seed=r["seed"], points=[Point(**p) for p in r["points"]]) for r in old["runs"]
    ]
    return report(runs, old["config"])


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(
        "time_to_good_model",
        __doc__,
        quick="2 seeds, a smaller budget and data subset",
        smoke="a tiny run that only checks the script works",
    )
    parser.add_argument("--seeds", type=int, help="how many seeds (default 5, quick 2)")
    parser.add_argument("--epoch-budget", type=int, help="trial-epochs per run (default 400, quick 150)")
    parser.add_argument(
        "--preset",
        default="bbc-news-minilm",
        choices=(*PRESETS, *MODULE_PRESETS),
        help="the built-in study to search (default: BBC News with MiniLM)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="seeds run side by side, each in its own single-threaded process"
    )
    parser.add_argument(
        "--rescore", type=Path, help="only recompute this results file's figures from its runs"
    )
    parser.add_argument(
        "--asha",
        action="store_true",
        help=f"also run tunefleet with pause and promote, pruner {json.dumps(ASHA_PRUNER)} ({ASHA})",
    )
    parser.add_argument(
        "--unconditional-head",
        action="store_true",
        help=f"also run tunefleet with width and activation drawn at depth 0 too ({UNCONDITIONAL})",
    )
    args = parser.parse_args(argv)
    if args.rescore is not None:
        publish(rescore(args.rescore), args.rescore)
        return 0
    seeds = args.seeds or (1 if args.smoke else 2 if args.quick else 5)
    budget = args.epoch_budget or (12 if args.smoke else 150 if args.quick else 400)
    raw = load_preset(args.preset, smoke=args.smoke)
    if args.quick:
        raw["task"] = {**raw.get("task", {}), "max_examples": 600}
    cache = feature_cache_dir()
    started = time.monotonic()
    # The features (or the built-in pretrained model) built once here, so parallel seeds only read the cache.
    plain_trainer(StudySpec.model_validate({**raw, "name": "probe"}).task, cache)
    runs: list[Run] = []
    jobs = [(raw, seed, budget, cache, args.unconditional_head, args.asha) for seed in range(seeds)]
    if args.jobs > 1:
        # Each seed in its own single-threaded process: compute is each process's own CPU time,
        # so running seeds side by side changes the wall time, not what is measured.
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for seed_runs in pool.map(run_seed, *zip(*jobs, strict=True)):
                runs.extend(seed_runs)
    else:
        for job in jobs:
            runs.extend(run_seed(*job))
    config = {
        "command": command_line("bench.time_to_good_model", argv),
        "seeds": seeds,
        "epoch_budget": budget,
        "preset": args.preset,
        "task": raw["task"],
        **versions(),
        "jobs": args.jobs,
        "unconditional_head": args.unconditional_head,
        "asha": args.asha,
        "wall_s": round(time.monotonic() - started, 1),
    }
    result = report(runs, config)
    publish(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
