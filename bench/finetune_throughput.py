"""Benchmark 3: training throughput and time-in-training of tunefleet's trial loop against a plain PyTorch loop."""

from __future__ import annotations

import argparse
import json
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
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModel, AutoTokenizer

from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from worker.device import configure_threads
from worker.model import build_head, mean_pool
from worker.objective import TrialRunner, load_split, model_folder
from worker.training import make_optimizer

WORKER = WorkerIdentity(host=platform.node(), pid=os.getpid(), device="cpu", worker_id="bench-throughput")
PARAMS = {
    "learning_rate": 1e-3,
    "batch_size": 16,
    "depth": 3,
    "width": 1024,
    "activation": "relu",
    "optimizer": "adamw",
}


def naive_trial(spec: StudySpec, epochs: int, seed: int, device: torch.device) -> dict[str, float]:
    """The obvious plain-PyTorch trial: load the model, encode every text (fp32, no cache), train the head."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    task = spec.task
    split = load_split(task)
    # Loaded afresh each trial, as a plain script run once per configuration would.
    folder = model_folder(task)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval().to(device)

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
    head = build_head(
        input_size=train_x.shape[1],
        n_classes=len(split.label_names),
        depth=int(PARAMS["depth"]),
        width=int(PARAMS["width"]),
        activation=str(PARAMS["activation"]),
    ).to(device)
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
    }


def tunefleet_trials(
    spec: StudySpec, repeats: int, cache_dir: Path, workdir: Path, device: torch.device
) -> list[dict[str, float]]:
    """Trials through tunefleet's real path: claim, cached features, training, per-epoch reports, tell."""
    repository = StudyRepository(open_storage(f"sqlite:///{workdir / 'throughput.db'}"))
    repository.create(spec)
    runner = TrialRunner(repository=repository, device=device, cache_dir=cache_dir)
    runner.features(spec.task)  # the node's one-time cache build is not part of a trial
    results = []
    for _ in range(repeats):
        started = time.perf_counter()
        claim = repository.claim(WORKER, study_names=[spec.name])
        assert claim is not None
        runner.run(claim)
        wall = time.perf_counter() - started
        trial = repository.storage.get_trial(claim.trial._trial_id)
        samples = len(runner.features(spec.task).train) * len(trial.intermediate_values)
        results.append(
            {"wall_s": wall, "train_s": float(trial.user_attrs["train_s"]), "samples": float(samples)}
        )
    repository.engine.dispose()
    return results


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="bench/results/finetune_throughput.json")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no GPU on this machine: the GPU throughput benchmark cannot run here", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    configure_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    repeats = 1 if args.smoke else 3
    epochs = 2 if args.smoke else 6 if args.quick else 20
    max_examples = 60 if args.smoke else 400 if args.quick else None
    spec = StudySpec.model_validate(
        {
            "name": "bench-throughput",
            "task": {"max_examples": max_examples, "max_length": 32 if args.smoke else 128},
            "space": {**PARAMS, "epochs": epochs},
            "pruner": {"name": "none"},
            "budget": {"n_trials": repeats},
        }
    )
    cache_dir = Path(os.environ.get("TUNEFLEET_CACHE_DIR", Path.home() / ".cache" / "tunefleet"))
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        ours = tunefleet_trials(spec, repeats, cache_dir, Path(workdir), device)
    naive = [naive_trial(spec, epochs, seed, device) for seed in range(repeats)]
    ours_rate = median(ours, "samples") / median(ours, "wall_s")
    naive_rate = median(naive, "samples") / median(naive, "wall_s")
    result: dict[str, Any] = {
        "mode": "head",
        "device": str(device),
        "tunefleet": {
            "trial_wall_s": median(ours, "wall_s"),
            "train_s": median(ours, "train_s"),
            "samples_per_s_of_trial_wall": ours_rate,
            "samples_per_s_in_training": median(ours, "samples") / median(ours, "train_s"),
            "time_in_training": median(ours, "train_s") / median(ours, "wall_s"),
        },
        "plain_pytorch": {
            "trial_wall_s": median(naive, "wall_s"),
            "train_s": median(naive, "train_s"),
            "samples_per_s_of_trial_wall": naive_rate,
            "samples_per_s_in_training": median(naive, "samples") / median(naive, "train_s"),
            "time_in_training": median(naive, "train_s") / median(naive, "wall_s"),
        },
        "speedup_per_trial": median(naive, "wall_s") / median(ours, "wall_s"),
        "last_k": "not measured: last-k fine-tuning is not in this build's benchmark yet",
        "gpu": "not measured: no GPU on this machine" if not torch.cuda.is_available() else "see a GPU run",
        "config": {
            "command": " ".join(["python", "-m", "bench.finetune_throughput", *sys.argv[1:]]),
            "params": {**PARAMS, "epochs": epochs},
            "max_examples": max_examples,
            "repeats": repeats,
            "cores": os.cpu_count(),
            "threads": 1,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "wall_s": round(time.monotonic() - started, 1),
        },
        "runs": {"tunefleet": ours, "plain_pytorch": naive},
    }
    t, p = result["tunefleet"], result["plain_pytorch"]
    result["targets"] = [
        {
            "target": "time in training at least 95% of a worker's wall time for trials of 10 s or more",
            "figure": f"{t['time_in_training']:.1%} at {t['trial_wall_s']:.1f} s per trial",
            "met": t["time_in_training"] >= 0.95 if t["trial_wall_s"] >= 10 else None,
        }
    ]
    result["markdown"] = "\n".join(
        [
            "| loop | trial wall s | training samples/s (of trial wall) | time in training |",
            "| --- | --- | --- | --- |",
            f"| tunefleet (head, cached features) | {t['trial_wall_s']:.2f} | {ours_rate:.0f} | "
            f"{t['time_in_training']:.1%} |",
            f"| plain PyTorch (re-encode per trial, fp32) | {p['trial_wall_s']:.2f} | {naive_rate:.0f} | "
            f"{p['time_in_training']:.1%} |",
            "",
            f"Per-trial speed-up {result['speedup_per_trial']:.1f}x. GPU: {result['gpu']}. last-k: {result['last_k']}.",
        ]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(result["markdown"])
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
