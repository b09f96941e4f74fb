"""Early stopping's default: the CPU random trials spend after their validation loss stalls, and what it finds."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from bench.common import suggest
from bench.reporting import benchmark_parser, command_line, markdown_table, publish
from bench.text_task import PRESETS, cached_features, feature_cache_dir, load_preset, train_on_cpu, versions
from studies import StudySpec
from studies.space import distributions
from studies.spec import DEFAULT_PATIENCE
from worker.device import configure_threads
from worker.early_stopping import Patience
from worker.epochs import EpochResult

PATIENCES = (1, 2, 3, 4, 5)


@dataclass
class Trial:
    """One random configuration trained for all its epochs: each epoch's validation loss and the CPU to its end."""

    params: dict[str, Any]
    val_loss: list[float]
    cpu_s: list[float]

    def stop_epoch(self, patience: int) -> int:
        """How many epochs the trial would have run with this patience (the worker's own rule)."""
        rule = Patience(patience, minimize=True)
        return next((i + 1 for i, v in enumerate(self.val_loss) if rule.stalled(v)), len(self.val_loss))


def run_trials(features: Any, dists: dict[str, Any], n: int, seed: int) -> list[Trial]:
    """n random configurations of the space, each trained to its last epoch (no pruning, no early stop)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed))
    trials: list[Trial] = []
    for number in range(n):
        asked = study.ask()
        params = suggest(asked, dists)
        started = time.process_time()
        cpu: list[float] = []

        def on_epoch(result: EpochResult, cpu: list[float] = cpu, started: float = started) -> None:
            cpu.append(time.process_time() - started)

        losses = [e.val_loss for e in train_on_cpu(features, params, seed * 100_003 + number, on_epoch)]
        study.tell(asked, min(losses))
        trials.append(Trial(params=params, val_loss=losses, cpu_s=cpu))
    return trials


def summarize(trials: list[Trial], best_share: float = 0.1) -> list[dict[str, Any]]:
    """Per patience: CPU against running every epoch, and how many trials (and of the best ones) it cost."""
    full_cpu = sum(t.cpu_s[-1] for t in trials)
    full_epochs = sum(len(t.val_loss) for t in trials)
    n_best = max(1, round(len(trials) * best_share))
    best = sorted(trials, key=lambda t: min(t.val_loss))[:n_best]
    rows = []
    for patience in PATIENCES:
        stops = [t.stop_epoch(patience) for t in trials]
        changed = [
            min(t.val_loss[:stop]) - min(t.val_loss)
            for t, stop in zip(trials, stops, strict=True)
            if min(t.val_loss[:stop]) > min(t.val_loss)
        ]
        best_changed = sum(min(t.val_loss[: t.stop_epoch(patience)]) > min(t.val_loss) for t in best)
        rows.append(
            {
                "patience": patience,
                "cpu_ratio": sum(t.cpu_s[stop - 1] for t, stop in zip(trials, stops, strict=True)) / full_cpu,
                "epoch_ratio": sum(stops) / full_epochs,
                "trials_worse": len(changed),
                "best_trials_worse": best_changed,
                "n_best": n_best,
                "median_loss_given_up": statistics.median(changed) if changed else 0.0,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], n_trials: int) -> str:
    headers = [
        "patience (epochs)",
        "CPU vs every epoch",
        "epochs vs every epoch",
        "trials that lost their best epoch",
        "of the best 10%",
        "median loss given up",
    ]
    return markdown_table(
        headers,
        [
            [
                f"{r['patience']}" + (" (default)" if r["patience"] == DEFAULT_PATIENCE else ""),
                f"{r['cpu_ratio']:.2f}",
                f"{r['epoch_ratio']:.2f}",
                f"{r['trials_worse']}/{n_trials}",
                f"{r['best_trials_worse']}/{r['n_best']}",
                f"{r['median_loss_given_up']:.4f}",
            ]
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(
        "early_stopping", __doc__, quick="30 trials", smoke="a tiny run that only checks the script works"
    )
    parser.add_argument("--trials", type=int, help="random configurations to train (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="bbc-news-minilm", choices=PRESETS)
    args = parser.parse_args(argv)
    n = args.trials or (4 if args.smoke else 30 if args.quick else 200)
    configure_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = load_preset(args.preset, smoke=args.smoke)
    if args.smoke:
        raw["space"] = {**raw["space"], "epochs": {"type": "int", "low": 1, "high": 6}}
    spec = StudySpec.model_validate({**raw, "name": "early-stopping"})
    features = cached_features(spec.task, feature_cache_dir())
    started = time.monotonic()
    trials = run_trials(features, distributions(spec.space), n, args.seed)
    rows = summarize(trials)
    default = next(r for r in rows if r["patience"] == DEFAULT_PATIENCE)
    result: dict[str, Any] = {
        "rows": rows,
        "config": {
            "command": command_line("bench.early_stopping", argv),
            "preset": args.preset,
            "trials": n,
            **versions(),
            "wall_s": round(time.monotonic() - started, 1),
        },
        "targets": [
            {
                "target": f"the default patience ({DEFAULT_PATIENCE}) costs none of the best 10% of trials "
                "their best epoch",
                "figure": f"{default['best_trials_worse']}/{default['n_best']} lost it, at "
                f"{default['cpu_ratio']:.2f}x the CPU",
                "met": default["best_trials_worse"] == 0,
            }
        ],
        "trials": [asdict(t) for t in trials],
    }
    result["markdown"] = (
        markdown(rows, n)
        + f"\n\n{n} random configurations of the `{args.preset}` preset's space, each trained for all its epochs "
        "(one CPU thread); each row replays the worker's own early-stopping rule on those same trials, so the "
        "baseline (every epoch) is measured in the same run."
    )
    publish(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
