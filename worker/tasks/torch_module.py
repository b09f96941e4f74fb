"""The torch-module task kind: the user's pretrained nn.Module from a file, one Linear layer replaced by the head."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from studies.names import FREEZE_MODES
from studies.spec import Task
from worker.builtin_modules import is_builtin_module, load_builtin_module
from worker.data_report import note_on
from worker.data_roots import confine_task
from worker.epochs import TrainResult
from worker.hyperparams import HeadParams
from worker.model import ModelError
from worker.module_export import module_config, serialise_state, whole_state
from worker.module_files import LoadedModel, Permissions, file_stamp, load_model_file
from worker.module_inputs import ModelInputs, inputs_memo_key, load_model_inputs
from worker.module_surgery import check_freeze, check_input_width, parameter_dtype, replaced_width
from worker.module_training import train_module, with_head
from worker.tasks.interface import ModelFiles, Progress, TaskHost, TimedModel, TrialContext

# Pretrained models and input sets kept per process: a study or two at a time is what a worker serves.
_MAX_MODELS = 2
_MAX_INPUT_SETS = 4


def _remember(memo: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    while len(memo) >= limit:
        memo.pop(next(iter(memo)))
    memo[key] = value


def _replace(task: Task) -> str:
    if task.replace is None:
        raise ModelError(
            "kind torch-module needs task.replace: the dotted path of the layer the head replaces"
        )
    return task.replace


class TorchModule:
    """The torch-module kind; keeps each model file's pristine module and each data set's inputs per process.

    Model files and local data files are read only inside the worker's data roots.
    """

    def __init__(self, host: TaskHost) -> None:
        self.host = host
        self.roots = host.data_roots
        self.permissions = Permissions(
            trust_pickled_models=host.trust_pickled_models, allowed_entrypoints=host.allowed_entrypoints
        )
        self._models: dict[tuple[Any, ...], LoadedModel] = {}
        self._inputs: dict[tuple[Any, ...], ModelInputs] = {}
        self._checked: set[tuple[Any, ...]] = set()
        # The last trial's rebuilt model, with the result it was built from: measuring a trial asks for it
        # twice (its trainable parameters, then its latency), and one rebuild serves both.
        self._rebuilt: tuple[TrainResult, torch.nn.Module] | None = None

    def _model_key(self, task: Task) -> tuple[Any, ...]:
        return (task.model, file_stamp(task.model), task.factory)

    def model(self, task: Task, interrupt: Callable[[], None] | None = None) -> LoadedModel:
        """The task's pretrained model as loaded from its file, once per process (again if the file changes)."""
        # Every path is checked before the memo keys look at any file's size and time.
        confine_task(task, self.roots)
        key = self._model_key(task)
        if key not in self._models:
            if is_builtin_module(task.model):
                # Built once per node in the cache folder, and loaded from there without the pickle switch.
                loaded = load_builtin_module(
                    task.model, cache_dir=self.host.cache_dir, factory=task.factory, interrupt=interrupt
                )
            else:
                loaded = load_model_file(
                    task.model, factory=task.factory, permissions=self.permissions, roots=self.roots
                )
            _remember(self._models, key, loaded, _MAX_MODELS)
        return self._models[key]

    def inputs(self, task: Task) -> ModelInputs:
        """The task's inputs, labels and split, read once per process and data set."""
        confine_task(task, self.roots)
        key = inputs_memo_key(task)
        if key not in self._inputs:
            _remember(self._inputs, key, load_model_inputs(task, self.roots), _MAX_INPUT_SETS)
        return self._inputs[key]

    def prepare(
        self, task: Task, *, progress: Progress | None = None, interrupt: Callable[[], None] | None = None
    ) -> None:
        """Load the model and the inputs, and check that they fit each other before any trial trains."""
        loaded = self.model(task, interrupt)
        inputs = self.inputs(task)
        key = (self._model_key(task), inputs_memo_key(task), task.replace, repr(task.freeze))
        if key in self._checked:
            return
        replace = _replace(task)
        replaced_width(loaded.module, replace)
        check_freeze(loaded.module, task.freeze or FREEZE_MODES[0], replace)
        check_input_width(loaded.module, inputs.width, inputs.described)
        self._checked.add(key)

    def run(self, task: Task, trial: TrialContext) -> TrainResult:
        """Train a fresh copy of the pretrained model with a fresh head, reporting every epoch."""
        self.prepare(task)
        inputs = self.inputs(task)
        note_on(trial, inputs.report)
        encoder_learning_rate = trial.params.get("encoder_learning_rate")
        return train_module(
            model=self.model(task).fresh_copy(),
            replace=_replace(task),
            freeze=task.freeze or FREEZE_MODES[0],
            inputs=inputs,
            params=HeadParams.of(trial.params),
            encoder_learning_rate=float(encoder_learning_rate) if encoder_learning_rate else None,
            seed=trial.seed,
            device=trial.device,
            on_epoch=trial.report,
            interrupted=trial.stop_reason,
            keep=trial.keep,
            run_name=f"trial {trial.number} of {trial.study_name}",
            checkpoints=trial.checkpoints,
        )

    def model_files(self, task: Task, params: dict[str, Any], result: TrainResult) -> ModelFiles | None:
        """The whole fine-tuned state_dict as safetensors, the label names, and the config that rebuilds it."""
        loaded = self.model(task)
        inputs = self.inputs(task)
        config = module_config(
            task,
            params,
            input_size=replaced_width(loaded.module, _replace(task)),
            n_classes=len(inputs.label_names),
            columns=inputs.columns,
        )
        state = whole_state(loaded, config, result.best_state)
        return ModelFiles(weights=serialise_state(state), labels=list(inputs.label_names), config=config)

    def _fine_tuned(self, task: Task, params: dict[str, Any], result: TrainResult) -> torch.nn.Module:
        """The trial's model rebuilt in memory: a fresh copy of the pretrained one, its head, the kept weights."""
        if self._rebuilt is not None and self._rebuilt[0] is result:
            return self._rebuilt[1]
        head = HeadParams.of(params)
        replaced, _ = with_head(
            self.model(task).fresh_copy(),
            replace=_replace(task),
            freeze=task.freeze or FREEZE_MODES[0],
            n_classes=len(self.inputs(task).label_names),
            depth=head.depth,
            width=head.width,
            activation=head.activation,
        )
        # The kept weights are what training could change; the rest is the pretrained model's.
        replaced.model.load_state_dict(result.best_state, strict=False)
        self._rebuilt = (result, replaced.model)
        return replaced.model

    def params_trainable(self, task: Task, params: dict[str, Any], result: TrainResult) -> int:
        """The parameters that trained: the new head's, and those of the modules freeze lets train."""
        model = self._fine_tuned(task, params, result)
        return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)

    def timed_model(
        self,
        task: Task,
        params: dict[str, Any],
        result: TrainResult,
        archive: Path,
        *,
        batch_size: int,
        device: torch.device,
    ) -> TimedModel:
        """The fine-tuned model on the first batch_size validation rows (texts already hashed)."""
        model = self._fine_tuned(task, params, result).to(device).eval()
        rows = self.inputs(task).validation
        index = torch.arange(batch_size) % rows.n_rows
        return TimedModel(
            module=model, inputs=(rows.take(index, device=device, dtype=parameter_dtype(model)),)
        )
