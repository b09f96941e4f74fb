"""The task kinds a worker can train, by `task.kind`: each behind the interface in worker.tasks.interface."""

from __future__ import annotations

from collections.abc import Callable

from worker.tasks.interface import TaskHost, TrialTask
from worker.tasks.python_entrypoint import PythonEntrypoint
from worker.tasks.synthetic import Synthetic
from worker.tasks.text_classification import TextClassification
from worker.tasks.torch_module import TorchModule

# A new kind is one module under worker/tasks/ and one line here; the trial runner does not change.
TASK_KINDS: dict[str, Callable[[TaskHost], TrialTask]] = {
    "text-classification": TextClassification,
    "synthetic": Synthetic,
    "python": PythonEntrypoint,
    "torch-module": TorchModule,
}
