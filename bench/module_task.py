"""The built-in torch-module preset as the benchmarks train it outside the fleet: the kind's model, inputs and loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from studies.names import FREEZE_MODES
from studies.spec import Task
from worker.epochs import EpochResult
from worker.hyperparams import HeadParams
from worker.module_training import train_module
from worker.tasks.interface import TaskHost
from worker.tasks.torch_module import TorchModule

MODULE_PRESETS = ("mlp-bbc-news",)


def module_trainer(
    task: Task, cache: Path
) -> Callable[[dict[str, Any], int, Callable[[EpochResult], None]], list[EpochResult]]:
    """What a plain-Optuna objective trains for a torch-module task: train(params, seed, on_epoch) -> epochs.

    The pretrained model (a built-in one is built in the node's cache first if missing) and the inputs
    are loaded here, once, as a worker's prepare() loads them; each call then trains a fresh copy of the
    model with a fresh head on the CPU, every epoch, exactly as the kind's run() does.
    """
    kind = TorchModule(TaskHost(device=torch.device("cpu"), cache_dir=cache))
    kind.prepare(task)
    replace = task.replace
    assert replace is not None  # prepare() checked it

    def train(
        params: dict[str, Any], seed: int, on_epoch: Callable[[EpochResult], None]
    ) -> list[EpochResult]:
        encoder_learning_rate = params.get("encoder_learning_rate")
        result = train_module(
            model=kind.model(task).fresh_copy(),
            replace=replace,
            freeze=task.freeze or FREEZE_MODES[0],
            inputs=kind.inputs(task),
            params=HeadParams.of(params),
            encoder_learning_rate=float(encoder_learning_rate) if encoder_learning_rate else None,
            seed=seed,
            device=torch.device("cpu"),
            on_epoch=on_epoch,
        )
        return result.epochs

    return train
