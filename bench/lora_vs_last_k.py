"""Benchmark 3c: finetune lora against last-k on the same encoder and data: what trains, seconds per epoch, best loss."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from bench.reporting import benchmark_parser, command_line, load_average, markdown_table, publish, size_of
from bench.text_task import feature_cache_dir, versions
from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from worker.data import load_split
from worker.device import configure_threads
from worker.finetune import build_classifier
from worker.hyperparams import HeadParams
from worker.lora import LoraParams
from worker.model import load_encoder, model_folder
from worker.runner import TrialRunner

# The head and its optimizer, the same in every mode; only the encoder's side differs.
HEAD: dict[str, Any] = {
    "learning_rate": 1e-3,
    "batch_size": 16,
    "depth": 1,
    "width": 128,
    "activation": "relu",
    "optimizer": "adamw",
}
# name -> (what the table calls it, task fields, lora parameters)
MODES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "last-k": ("last-k, k=1 (the top block and the head)", {"finetune": "last-k", "k": 1}, {}),
    "lora": (
        "lora, rank 8, attention (every block's query, key, value, attention output)",
        {"finetune": "lora"},
        {"lora_rank": 8, "lora_alpha": 2.0, "lora_dropout": 0.1, "lora_targets": "attention"},
    ),
    "lora-ffn": (
        "lora, rank 8, attention+ffn (and every block's feed-forward layers)",
        {"finetune": "lora"},
        {"lora_rank": 8, "lora_alpha": 2.0, "lora_dropout": 0.1, "lora_targets": "attention+ffn"},
    ),
}
# (max_examples, max_length, epochs, the encoder learning rates each mode tries) per size.
SIZES: dict[str, tuple[int, int, int, list[float]]] = {
    "smoke": (40, 32, 1, [1e-3]),
    "quick": (300, 64, 3, [3e-4, 1e-3, 3e-3]),
    "full": (1000, 128, 4, [1e-4, 3e-4, 1e-3, 3e-3]),
}


def study_spec(mode: str, size: str) -> StudySpec:
    """One mode's study: the fixed head, every epoch trained, a grid over the encoder's learning rate."""
    max_examples, max_length, epochs, rates = SIZES[size]
    _, task, lora = MODES[mode]
    return StudySpec.model_validate(
        {
            "name": f"bench-lora-vs-last-k-{mode}",
            "task": {**task, "max_examples": max_examples, "max_length": max_length},
            "space": {**HEAD, "epochs": epochs, "encoder_learning_rate": rates, **lora},
            # Every epoch, in every mode: the comparison is after the same number of epochs.
            "objective": {"patience": 0},
            "sampler": {"name": "grid", "seed": 0},
            "pruner": {"name": "none"},
            "budget": {"n_trials": len(rates)},
        }
    )


def trainable_parameters(spec: StudySpec) -> dict[str, int]:
    """What a trial of the spec trains (the encoder's side and the head) and the encoder's size."""
    task = spec.task
    encoder = load_encoder(model_folder(task))
    n_classes = len(load_split(task).label_names)
    params = {name: param.value for name, param in spec.space.params().items() if param.type == "fixed"}
    lora = LoraParams.of(params) if task.finetune == "lora" else None
    classifier, _ = build_classifier(
        encoder,
        n_classes=n_classes,
        params=HeadParams.of(params),
        finetune=task.finetune,
        k=task.k,
        lora=lora,
    )
    trained = sum(p.numel() for p in classifier.encoder.parameters() if p.requires_grad)
    return {
        "encoder_trained": trained,
        "head": sum(p.numel() for p in classifier.head.parameters()),
        "encoder_total": sum(p.numel() for p in encoder.model.parameters()),
    }


def run_studies(
    specs: list[StudySpec], workdir: Path, device: torch.device
) -> dict[str, list[dict[str, Any]]]:
    """Every trial of the studies through tunefleet's real path (claim, training, per-epoch reports, tell),
    one trial of each study in turn: whatever else the machine runs weighs on every mode alike."""
    repository = StudyRepository(open_storage(f"sqlite:///{workdir / 'lora.db'}"))
    worker = WorkerIdentity(host=platform.node(), pid=os.getpid(), device=str(device), worker_id="bench-lora")
    runner = TrialRunner(repository=repository, device=device, cache_dir=feature_cache_dir())
    for spec in specs:
        repository.create(spec)
        # The process's one-time encoder load and tokenization are not part of a trial.
        runner.prepare(spec.task)
    rows: dict[str, list[dict[str, Any]]] = {spec.name: [] for spec in specs}
    for _ in range(max(spec.budget.n_trials for spec in specs)):
        for spec in specs:
            claim = repository.claim(worker, study_names=[spec.name])
            if claim is None:
                continue
            outcome = runner.run(claim)
            trial = repository.storage.get_trial(claim.trial._trial_id)
            if outcome != "complete":
                raise RuntimeError(
                    f"{spec.name} trial {trial.number}: {outcome} {trial.user_attrs.get('fail_reason')}"
                )
            epochs = int(trial.user_attrs["epochs_run"])
            rows[spec.name].append(
                {
                    "encoder_learning_rate": trial.params["encoder_learning_rate"],
                    "best_val_loss": trial.value,
                    "val_accuracy": trial.user_attrs["val_accuracy"],
                    "epochs": epochs,
                    "train_s": float(trial.user_attrs["train_s"]),
                    "s_per_epoch": float(trial.user_attrs["train_s"]) / epochs,
                }
            )
    repository.engine.dispose()
    return rows


def measure(modes: list[str], size: str, device: torch.device) -> list[dict[str, Any]]:
    """Each mode's trainable parameters, and its trials over the learning-rate grid."""
    specs = [study_spec(mode, size) for mode in modes]
    with tempfile.TemporaryDirectory() as workdir:
        trials = run_studies(specs, Path(workdir), device)
    measured = []
    for mode, spec in zip(modes, specs, strict=True):
        rows = trials[spec.name]
        measured.append(
            {
                "mode": mode,
                "label": MODES[mode][0],
                "parameters": trainable_parameters(spec),
                "s_per_epoch": statistics.median(t["s_per_epoch"] for t in rows),
                "best": min(rows, key=lambda t: t["best_val_loss"]),
                "trials": rows,
            }
        )
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(
        "lora_vs_last_k",
        __doc__,
        quick="300 examples of 64 tokens, 3 epochs, 3 learning rates per mode",
        smoke="a tiny run that only checks the script works",
    )
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), help="default: all three")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no GPU on this machine: use --device cpu", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    configure_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    size = size_of(args)
    started = time.monotonic()
    load_at_start = load_average()
    modes = measure(list(args.modes or MODES), size, device)
    max_examples, max_length, epochs, rates = SIZES[size]
    by_mode = {m["mode"]: m for m in modes}
    result: dict[str, Any] = {
        "device": str(device),
        "modes": modes,
        "config": {
            "command": command_line("bench.lora_vs_last_k", argv),
            "model": "builtin:all-MiniLM-L6-v2",
            "data": "builtin:bbc-news",
            "size": size,
            "max_examples": max_examples,
            "max_length": max_length,
            "epochs": epochs,
            "encoder_learning_rates": rates,
            "head": HEAD,
            **versions(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": load_average(),
            "wall_s": round(time.monotonic() - started, 1),
        },
    }

    def share(m: dict[str, Any]) -> str:
        return f"{m['parameters']['encoder_trained'] / m['parameters']['encoder_total']:.2%}"

    lines = [
        f"MiniLM-L6 on {max_examples} BBC News examples ({max_length} tokens), {device}; every mode trains the same "
        f"head (depth 1, width 128, adamw at 1e-3) for {epochs} epoch(s), once at each encoder learning rate "
        f"({', '.join(f'{r:g}' for r in rates)}), through tunefleet's trial runner, one trial of each mode in turn; "
        "the best of each mode's trials is shown. Seconds per epoch are each mode's median, validation pass "
        "included, on every core (as a worker trains through the encoder).",
        "",
        markdown_table(
            [
                "mode",
                "encoder parameters trained (share of the encoder's)",
                "head parameters",
                "s per epoch",
                "s per epoch vs last-k",
                "best val loss",
                "its val accuracy",
                "at encoder lr",
            ],
            [
                [
                    m["label"],
                    f"{m['parameters']['encoder_trained']:,} ({share(m)})",
                    f"{m['parameters']['head']:,}",
                    f"{m['s_per_epoch']:.2f}",
                    f"{m['s_per_epoch'] / by_mode['last-k']['s_per_epoch']:.2f}x"
                    if "last-k" in by_mode
                    else "-",
                    f"{m['best']['best_val_loss']:.4f}",
                    f"{m['best']['val_accuracy']:.3f}",
                    f"{m['best']['encoder_learning_rate']:g}",
                ]
                for m in modes
            ],
        ),
    ]
    busy = result["config"]["load_average_at_start"], result["config"]["load_average_at_end"]
    lines += [
        "",
        f"Machine: {result['config']['cores']} cores, {result['config']['cpu']}; load average (1 min) "
        f"{busy[0][0] if busy[0] else '?'} at start, {busy[1][0] if busy[1] else '?'} at end (other work shares "
        "this machine).",
    ]
    result["targets"] = []
    if "lora" in by_mode and "last-k" in by_mode:
        lora, last_k = by_mode["lora"], by_mode["last-k"]
        trained = lora["parameters"]["encoder_trained"] / last_k["parameters"]["encoder_trained"]
        loss = lora["best"]["best_val_loss"] / last_k["best"]["best_val_loss"]
        result["targets"] = [
            {
                "target": "lora (rank 8, attention) trains under a tenth of the encoder parameters last-k k=1 trains",
                "figure": f"{trained:.1%} of last-k's",
                "met": trained < 0.1,
            },
            {
                "target": "lora's best validation loss within 10% of last-k's after the same epochs",
                "figure": f"{loss:.2f}x last-k's",
                "met": loss <= 1.1 if size != "smoke" else None,
            },
        ]
    result["markdown"] = "\n".join(lines)
    publish(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
