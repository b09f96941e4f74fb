"""The task one trial runs: the study's task, in the fine-tune mode the trial drew where the space searches it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from studies.spec import Task


def trial_task(task: Task, params: Mapping[str, Any]) -> Task:
    """The study's task with the trial's finetune (and k only for last-k), or the task itself without one."""
    mode = params.get("finetune")
    if mode is None or task.kind != "text-classification":
        return task
    # k only goes with last-k: a head or lora trial's model config then reads as a task of its own mode.
    return task.model_copy(update={"finetune": str(mode), "k": task.k if mode == "last-k" else None})
