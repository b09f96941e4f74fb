"""Benchmark 3: training throughput and time-in-training of tunefleet's trial loop against a plain PyTorch loop."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import optuna
import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModel, AutoTokenizer

from bench.model_flops import encoder_training_flops, matmul_weights, peak_flops
from bench.reporting import benchmark_parser, command_line, cpu_model, markdown_table, publish, size_of
from bench.text_task import feature_cache_dir, versions
from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from worker.data import LabelledSplit, load_split
from worker.device import all_cores, configure_threads
from worker.finetune import tokenize_split
from worker.hyperparams import make_optimizer
from worker.model import build_head, load_encoder, mean_pool, model_folder
from worker.runner import TrialRunner

PARAMS: dict[str, Any] = {
    "learning_rate": 1e-3,
    "batch_size": 16,
    "depth": 3,
    "width": 1024,
    "activation": "relu",
    "optimizer": "adamw",
}


def make_head(input_size: int, n_classes: int) -> torch.nn.Module:
    """The head every loop trains, of PARAMS' shape."""
    return build_head(
        input_size=input_size,
        n_classes=n_classes,
        depth=int(PARAMS["depth"]),
        width=int(PARAMS["width"]),
        activation=str(PARAMS["activation"]),
    )


def load_afresh(spec: StudySpec, seed: int) -> tuple[LabelledSplit, Any, Any]:
    """A plain trial's start: seed torch, read the data, load the tokenizer and the model.

    Loaded afresh each trial, as a plain script run once per configuration would.
    """
    torch.manual_seed(seed)
    split = load_split(spec.task)
    folder = model_folder(spec.task)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return split, tokenizer, AutoModel.from_pretrained(folder, local_files_only=True)


def naive_trial(spec: StudySpec, epochs: int, seed: int, device: torch.device) -> dict[str, float]:
    """The obvious plain-PyTorch trial: load the model, encode every text (fp32, no cache), train the head."""
    started = time.perf_counter()
    task = spec.task
    split, tokenizer, model = load_afresh(spec, seed)
    model = model.eval().to(device)

    def encode(texts: list[str]) -> torch.Tensor:
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), 32):
                batch = tokenizer(
                    texts[start : start + 32],
                    truncation=True,
                    max_length=task.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                batch = batch.to(device)
                output = model(**batch)
                chunks.append(mean_pool(output.last_hidden_state, batch["attention_mask"]))
        return torch.cat(chunks)

    train_x = encode(split.train_texts)
    val_x = encode(split.validation_texts)
    train_y = torch.tensor(split.train_labels, device=device)
    val_y = torch.tensor(split.validation_labels, device=device)
    encoded = time.perf_counter()
    head = make_head(train_x.shape[1], len(split.label_names)).to(device)
    optimizer = make_optimizer(str(PARAMS["optimizer"]), head.parameters(), float(PARAMS["learning_rate"]))
    loader = DataLoader(TensorDataset(train_x, train_y), batch_size=int(PARAMS["batch_size"]), shuffle=True)
    for _ in range(epochs):
        head.train()
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(head(inputs), labels)
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            torch.nn.functional.cross_entropy(head(val_x), val_y).item()
    finished = time.perf_counter()
    return {
        "wall_s": finished - started,
        "train_s": finished - encoded,
        "samples": float(len(split.train_texts) * epochs),
        "epochs": float(epochs),
    }


def naive_encoder_trial(spec: StudySpec, epochs: int, seed: int, device: torch.device) -> dict[str, float]:
    """The obvious plain-PyTorch last-k or full trial: load the model, freeze all but its top k blocks (last-k),
    and tokenize (padded per batch) and run every batch through the whole encoder, fp32, on every core."""
    started = time.perf_counter()
    task = spec.task
    split, tokenizer, model = load_afresh(spec, seed)
    model = model.to(device)
    if task.finetune == "last-k":
        for parameter in model.parameters():
            parameter.requires_grad = False
        for block in model.encoder.layer[-int(task.k or 1) :]:
            for parameter in block.parameters():
                parameter.requires_grad = True
    head = make_head(model.config.hidden_size, len(split.label_names)).to(device)
    trained = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = make_optimizer(str(PARAMS["optimizer"]), trained, float(PARAMS["learning_rate"]))

    def forward(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(
            texts, truncation=True, max_length=task.max_length, padding=True, return_tensors="pt"
        ).to(device)
        output = model(**batch)
        return head(mean_pool(output.last_hidden_state, batch["attention_mask"]))

    loaded = time.perf_counter()
    size = int(PARAMS["batch_size"])
    train = list(zip(split.train_texts, split.train_labels, strict=True))
    for _ in range(epochs):
        model.train()
        head.train()
        order = torch.randperm(len(train)).tolist()
        for start in range(0, len(order), size):
            rows = [train[i] for i in order[start : start + size]]
            optimizer.zero_grad()
            logits = forward([text for text, _ in rows])
            labels = torch.tensor([label for _, label in rows], device=device)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            loss.backward()
            optimizer.step()
        model.eval()
        head.eval()
        with torch.no_grad():
            for start in range(0, len(split.validation_texts), size):
                logits = forward(split.validation_texts[start : start + size])
                labels = torch.tensor(split.validation_labels[start : start + size], device=device)
                torch.nn.functional.cross_entropy(logits, labels).item()
    finished = time.perf_counter()
    return {
        "wall_s": finished - started,
        "train_s": finished - loaded,
        "samples": float(len(train) * epochs),
        "epochs": float(epochs),
    }


def tunefleet_trials(
    spec: StudySpec, repeats: int, cache_dir: Path, workdir: Path, device: torch.device
) -> list[dict[str, float]]:
    """Trials through tunefleet's real path: claim, cached features, training, per-epoch reports, tell."""
    repository = StudyRepository(open_storage(f"sqlite:///{workdir / 'throughput.db'}"))
    worker = WorkerIdentity(
        host=platform.node(), pid=os.getpid(), device=str(device), worker_id="bench-throughput"
    )
    repository.create(spec)
    runner = TrialRunner(repository=repository, device=device, cache_dir=cache_dir)
    # The node's one-time feature cache, or the process's one-time tokenization, is not part of a trial.
    runner.prepare(spec.task)
    train_size = len(load_split(spec.task).train_texts)
    results = []
    for _ in range(repeats):
        started = time.perf_counter()
        claim = repository.claim(worker, study_names=[spec.name])
        assert claim is not None
        runner.run(claim)
        wall = time.perf_counter() - started
        trial = repository.storage.get_trial(claim.trial._trial_id)
        epochs = len(trial.intermediate_values)
        results.append(
            {
                "wall_s": wall,
                "train_s": float(trial.user_attrs["train_s"]),
                "samples": float(train_size * epochs),
                "epochs": float(epochs),
            }
        )
    repository.engine.dispose()
    return results


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


# (max_examples, epochs, max_length) per size; quick trials are sized to last 10 s or more on 2 cores.
SIZES: dict[str, dict[str, tuple[int | None, int, int]]] = {
    "head": {"smoke": (60, 2, 32), "quick": (400, 45, 128), "full": (None, 20, 128)},
    "last-k": {"smoke": (24, 1, 32), "quick": (250, 2, 128), "full": (600, 3, 128)},
    # Every weight trains: measured on a GPU (make bench-gpu), where it reports MFU; on a CPU only when asked.
    "full": {"smoke": (16, 1, 32), "quick": (400, 1, 128), "full": (None, 2, 128)},
}
LOOPS = {
    "head": ("tunefleet (head, cached features)", "plain PyTorch (re-encode per trial, fp32)"),
    "last-k": (
        "tunefleet (last-k k=1, tokenized once, length buckets)",
        "plain PyTorch (last-k k=1, tokenize per batch, fp32)",
    ),
    "full": (
        "tunefleet (full, tokenized once, length buckets, bf16 autocast on a GPU)",
        "plain PyTorch (full, tokenize per batch, fp32)",
    ),
}


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    return {
        "trial_wall_s": median(rows, "wall_s"),
        "train_s": median(rows, "train_s"),
        "samples_per_s_of_trial_wall": median(rows, "samples") / median(rows, "wall_s"),
        "samples_per_s_in_training": median(rows, "samples") / median(rows, "train_s"),
        "time_in_training": median(rows, "train_s") / median(rows, "wall_s"),
        "epochs": median(rows, "epochs"),
    }


def study_spec(mode: str, size: str, repeats: int, model: str | None = None) -> StudySpec:
    """The study both loops run in one mode: the fixed head parameters, every epoch trained."""
    max_examples, epochs, max_length = SIZES[mode][size]
    task: dict[str, Any] = {"max_examples": max_examples, "max_length": max_length}
    if model is not None:
        task["model"] = model
    if mode == "last-k":
        task.update(finetune="last-k", k=1)
    elif mode == "full":
        task.update(finetune="full")
    return StudySpec.model_validate(
        {
            "name": f"bench-throughput-{mode}",
            "task": task,
            "space": {**PARAMS, "epochs": epochs},
            # Every epoch, as the plain loop trains: this measures the loop, not early stopping.
            "objective": {"patience": 0},
            "pruner": {"name": "none"},
            "budget": {"n_trials": repeats},
        }
    )


def epoch_flops(spec: StudySpec) -> float:
    """Model FLOPs of one epoch of full fine-tuning over the study's training split, as tunefleet tokenizes it."""
    task = spec.task
    encoder = load_encoder(model_folder(task))
    tokens = tokenize_split(encoder, load_split(task), max_length=task.max_length)
    head = make_head(encoder.hidden_size, len(tokens.label_names))
    return encoder_training_flops(
        # transformers types its submodules loosely (Tensor | Module): these are the BERT encoder and its config.
        layer_weights=matmul_weights(cast(torch.nn.Module, encoder.model.encoder)),
        n_layers=int(cast(Any, encoder.model.config).num_hidden_layers),
        hidden_size=encoder.hidden_size,
        per_sequence_weights=matmul_weights(head),
        lengths=tokens.train.lengths,
    )


def add_mfu(figures: dict[str, float], flops: float, peak: float | None) -> None:
    """Model FLOP/s over the trial's training time (validation passes included), and its share of the peak."""
    figures["model_tflops_per_s"] = flops * figures["epochs"] / figures["train_s"] / 1e12
    figures["mfu"] = figures["model_tflops_per_s"] * 1e12 / peak if peak else math.nan


def measure_mode(
    mode: str,
    size: str,
    repeats: int,
    cache_dir: Path,
    device: torch.device,
    peak: float | None,
    model: str | None = None,
) -> dict[str, Any]:
    """tunefleet's loop and the plain loop, `repeats` trials each, in one fine-tuning mode."""
    max_examples, epochs, max_length = SIZES[mode][size]
    spec = study_spec(mode, size, repeats, model)
    with tempfile.TemporaryDirectory() as workdir:
        ours = tunefleet_trials(spec, repeats, cache_dir, Path(workdir), device)
    if mode == "head":
        naive = [naive_trial(spec, epochs, seed, device) for seed in range(repeats)]
    else:
        # A plain script leaves torch on its default of every core; tunefleet's last-k does the same.
        with all_cores():
            naive = [naive_encoder_trial(spec, epochs, seed, device) for seed in range(repeats)]
    t, p = summary(ours), summary(naive)
    if mode == "full":
        flops = epoch_flops(spec)
        add_mfu(t, flops, peak)
        add_mfu(p, flops, peak)
    return {
        "mode": mode,
        "params": {**PARAMS, "epochs": epochs},
        "max_examples": max_examples,
        "max_length": max_length,
        "tunefleet": t,
        "plain_pytorch": p,
        "speedup_per_trial": p["trial_wall_s"] / t["trial_wall_s"],
        "runs": {"tunefleet": ours, "plain_pytorch": naive},
    }


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(
        "finetune_throughput",
        __doc__,
        quick="trials of 10 s or more, one per loop and mode",
        smoke="a tiny run that only checks the script works",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=tuple(SIZES), help="default: head and last-k; and full on a GPU"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's peak bf16 TFLOP/s for MFU (known GPUs: from a table)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="trials per loop and mode (default 3; 1 with --quick, to fit `make bench-quick`)",
    )
    parser.add_argument(
        "--model",
        help="a local Hugging Face encoder folder instead of the built-in MiniLM (on a machine without the "
        "built-in package: bench/device_model.py writes MiniLM's architecture with random weights, which "
        "trains at the same speed)",
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no GPU on this machine: the GPU throughput benchmark cannot run here", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    configure_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    size = size_of(args)
    repeats = args.repeats or (1 if args.smoke or args.quick else 3)
    started = time.monotonic()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    peak = peak_flops(device_name, args.peak_tflops)
    names = args.modes or ["head", "last-k", *(["full"] if device.type == "cuda" else [])]
    modes = [
        measure_mode(mode, size, repeats, feature_cache_dir(), device, peak, args.model) for mode in names
    ]
    gpu = "not measured: no GPU on this machine" if not torch.cuda.is_available() else device_name
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name,
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "modes": modes,
        "gpu": gpu,
        "config": {
            "command": command_line("bench.finetune_throughput", argv),
            "model": args.model or "builtin:all-MiniLM-L6-v2",
            "size": size,
            "repeats": repeats,
            "threads": "1 for head trials (tunefleet's worker default); every core for last-k, both loops",
            **versions(),
            "wall_s": round(time.monotonic() - started, 1),
        },
    }
    result["targets"] = [
        {
            "target": f"{m['mode']}: time in training at least 95% of a worker's wall time for trials of 10 s or more",
            "figure": f"{m['tunefleet']['time_in_training']:.1%} at {m['tunefleet']['trial_wall_s']:.1f} s per trial",
            "met": m["tunefleet"]["time_in_training"] >= 0.95
            if m["tunefleet"]["trial_wall_s"] >= 10
            else None,
        }
        for m in modes
    ]
    # Random weights train at the same speed (same shapes, same FLOPs); the figures say which were used.
    model_words = "MiniLM-L6" if args.model is None else f"the encoder in {args.model}"
    lines = [
        f"Median of {repeats} trial(s) per loop, {device}; the same model ({model_words}), data, seed, batch size "
        "and head; training samples/s counts training examples over the trial's whole wall time.",
        "",
        markdown_table(
            [
                "mode",
                "loop",
                "examples, epochs",
                "trial wall s",
                "training samples/s (of trial wall)",
                "time in training",
            ],
            [
                [
                    m["mode"],
                    name,
                    f"{m['max_examples'] or 'all'}, {m['params']['epochs']}",
                    f"{figures['trial_wall_s']:.2f}",
                    f"{figures['samples_per_s_of_trial_wall']:.0f}",
                    f"{figures['time_in_training']:.1%}",
                ]
                for m in modes
                for name, figures in zip(LOOPS[m["mode"]], (m["tunefleet"], m["plain_pytorch"]), strict=True)
            ],
        ),
        "",
        "Per-trial speed-up: " + ", ".join(f"{m['mode']} {m['speedup_per_trial']:.1f}x" for m in modes) + ".",
    ]
    for m in modes:
        if m["mode"] != "full":
            continue
        t, p = m["tunefleet"], m["plain_pytorch"]
        share = (
            f"MFU {t['mfu']:.1%} (tunefleet) and {p['mfu']:.1%} (plain) of {peak / 1e12:.0f} TFLOP/s, "
            f"{device_name}'s peak bf16"
            if peak
            else f"MFU not computed: no peak bf16 rate known for {device_name} (pass --peak-tflops)"
        )
        lines.append(
            f"Full fine-tuning: {t['model_tflops_per_s']:.2f} model TFLOP/s (tunefleet) and "
            f"{p['model_tflops_per_s']:.2f} (plain) over the trials' training time, validation included; {share}. "
            "Model FLOPs as PaLM counts them (bench/model_flops.py)."
        )
    if not any(m["mode"] == "full" for m in modes):
        lines.append(f"GPU (full mode, bf16, MFU: `make bench-gpu`): {gpu}.")
    result["markdown"] = "\n".join(lines)
    publish(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
