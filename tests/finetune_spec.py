"""A study on a small labelled CSV with a local encoder, in any fine-tune mode, and running its next trial.

Shared by the fine-tuning tests and the GPU tests; it imports nothing of the service, which the GPU machine
lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from studies import StudyRepository, StudySpec, WorkerIdentity
from worker.runner import TrialRunner

CPU_WORKER = WorkerIdentity(host="test", pid=1, device="cpu")

WORDS = {
    "positive": ["great", "lovely", "wonderful", "superb"],
    "negative": ["awful", "dreadful", "terrible", "horrid"],
    "neutral": ["table", "window", "pencil", "carpet"],
}


def write_csv(path: Path, n_per_label: int, offset: int = 0) -> Path:
    """n_per_label rows for each of three labels, each text with two words that give its label away."""
    lines = ["text,label"]
    for i in range(offset, offset + n_per_label):
        for label, words in WORDS.items():
            lines.append(f"this {words[i % 4]} thing number {i} is {words[(i + 1) % 4]},{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def tiny_bert(folder: Path) -> Path:
    """A 2-block, 32-wide BERT with random weights and the built-in model's tokenizer, saved in folder."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from worker.model import builtin_model_folder

    builtin = builtin_model_folder("all-MiniLM-L6-v2")
    for name in TOKENIZER_FILES:
        shutil.copy(builtin / name, folder / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def small_data(folder: Path) -> dict[str, str]:
    """A training file of 8 rows per label and a validation file of 3 per label, with no text in both."""
    return {
        "train": str(write_csv(folder / "train.csv", 8)),
        "validation": str(write_csv(folder / "validation.csv", 3, offset=100)),
    }


def finetune_spec(
    name: str, model: Path | str, data: dict[str, str], finetune: str, **overrides: Any
) -> StudySpec:
    """Fixed parameters (2 epochs, batch 8, a 16-wide head), random sampler, no pruner, a budget of 2 trials."""
    task: dict[str, Any] = {"model": str(model), "data": data, "finetune": finetune, "max_length": 32}
    if finetune == "last-k":
        task["k"] = 1
    body: dict[str, Any] = {
        "name": name,
        "task": task,
        "space": {
            "learning_rate": 0.01,
            "batch_size": 8,
            "epochs": 2,
            "depth": 1,
            "width": 16,
            "activation": "relu",
            "optimizer": "adam",
            **({} if finetune == "head" else {"encoder_learning_rate": 0.001}),
        },
        "sampler": {"name": "random", "seed": 3},
        "pruner": {"name": "none"},
        "budget": {"n_trials": 2},
    }
    body["space"].update(overrides.pop("space", {}))
    body.update(overrides)
    return StudySpec.model_validate(body)


def run_next(
    runner: TrialRunner, repository: StudyRepository, name: str, worker: WorkerIdentity = CPU_WORKER
) -> tuple[str, optuna.trial.FrozenTrial]:
    """Claim the study's next trial as worker, run it to its end; what became of it, and the trial as stored."""
    claim = repository.claim(worker, study_names=[name])
    assert claim is not None
    outcome = runner.run(claim)
    return outcome, repository.trial(repository.get(name), claim.trial.number)
