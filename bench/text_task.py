"""The built-in text tasks as the fine-tuning benchmarks load them: presets, the node's feature cache, versions."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from bench.module_task import module_trainer
from bench.reporting import cpu_model
from studies import load_spec_file, preset_path
from studies.spec import Task
from worker.data import load_split
from worker.epochs import EpochResult
from worker.features import Features, load_or_build_features
from worker.hyperparams import HeadParams
from worker.model import model_folder
from worker.training import train_head

PRESETS = ("bbc-news-minilm", "tweets-sentiment-minilm")

# What a plain-Optuna objective calls: train(params, seed, on_epoch) -> every epoch's results.
Trainer = Callable[[dict[str, Any], int, Callable[[EpochResult], None]], list[EpochResult]]


def load_preset(preset: str, *, smoke: bool = False, path: Path | None = None) -> dict[str, Any]:
    """A built-in preset's spec (or the spec file at path) as a mapping; at smoke size, on a tiny subset (of short
    texts, for an encoder)."""
    raw = load_spec_file(path or preset_path(preset))
    if smoke:
        task = raw.get("task", {})
        short = {"max_length": 32} if task.get("kind", "text-classification") == "text-classification" else {}
        raw["task"] = {**task, "max_examples": 60, **short}
    return raw


def feature_cache_dir() -> Path:
    """Where the node's feature cache lives: TUNEFLEET_CACHE_DIR, as for a worker, else ~/.cache/tunefleet."""
    return Path(os.environ.get("TUNEFLEET_CACHE_DIR", Path.home() / ".cache" / "tunefleet"))


def cached_features(task: Task, cache: Path) -> Features:
    """The task's encoder features, read from the node's cache (built there first if missing)."""
    return load_or_build_features(
        encoder_folder=model_folder(task), split=load_split(task), max_length=task.max_length, cache_dir=cache
    )


def train_on_cpu(
    features: Features, params: dict[str, Any], seed: int, on_epoch: Callable[[EpochResult], None]
) -> list[EpochResult]:
    """One head trained on cached features with these parameters, every epoch: what a plain-Optuna objective runs."""
    result = train_head(
        features=features,
        params=HeadParams(**params),
        seed=seed,
        device=torch.device("cpu"),
        on_epoch=on_epoch,
    )
    return result.epochs


def plain_trainer(task: Task, cache: Path) -> Trainer:
    """The task's training as a plain-Optuna objective runs it, its data (and model) loaded once, before any clock.

    A text-classification head trains on the node's cached features; a torch-module task fine-tunes the
    kind's model on the kind's inputs (bench.module_task).
    """
    if task.kind == "torch-module":
        return module_trainer(task, cache)
    features = cached_features(task, cache)
    return lambda params, seed, on_epoch: train_on_cpu(features, params, seed, on_epoch)


def versions() -> dict[str, Any]:
    """The machine and the versions a fine-tuning benchmark's figures depend on."""
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        # Machines that report the same CPU name can differ in the vector code torch runs (and in its results' bits).
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "optuna": optuna.__version__,
        "torch": torch.__version__,
    }
