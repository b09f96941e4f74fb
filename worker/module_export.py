"""A torch-module trial's fine-tuned model as files: the whole state_dict and how to rebuild it, loaded back by users.

The model is rebuilt from the pretrained model file the study named (which must be there where it is loaded), its
layer replaced by the head the config describes, then filled with the fine-tuned weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from studies.artifacts import CONFIG_FILE, LABELS_FILE, PARAMS_FILE, WEIGHTS_FILE
from studies.spec import Task
from worker.builtin_modules import is_builtin_module, load_builtin_module
from worker.export import ARCHIVE_FORMAT, read_archive_members
from worker.hyperparams import head_architecture
from worker.module_files import LoadedModel, Permissions, load_model_file
from worker.module_inputs import HASHING, hash_texts, load_model_inputs, row_features
from worker.module_surgery import parameter_dtype
from worker.module_training import evaluate_rows, with_head
from worker.settings import WorkerSettings

KIND = "torch-module"


def _head_config(params: Mapping[str, Any], *, input_size: int, n_classes: int) -> dict[str, Any]:
    return {
        "input_size": input_size,
        "n_classes": n_classes,
        # A linear head (depth 0) records no width or activation: it has neither.
        **head_architecture(params),
    }


def module_config(
    task: Task, params: Mapping[str, Any], *, input_size: int, n_classes: int, columns: list[str] | None
) -> dict[str, Any]:
    """What it takes to rebuild the fine-tuned model: the model file, the replaced layer, the head, the inputs."""
    inputs = task.inputs.model_dump(mode="json") if task.inputs is not None else None
    return {
        "format": ARCHIVE_FORMAT,
        "kind": KIND,
        "model": task.model,
        "factory": task.factory,
        "replace": task.replace,
        "freeze": task.freeze,
        "head": _head_config(params, input_size=input_size, n_classes=n_classes),
        "inputs": inputs,
        # The feature columns in the order the model reads them (inputs kind columns).
        "columns": columns,
        "hashing": (
            {**HASHING, "n_features": inputs["n_features"]}
            if inputs is not None and inputs["kind"] == "hashed-text"
            else None
        ),
        # The whole task, so evaluate_module() can rebuild the trial's own validation split.
        "task": task.model_dump(mode="json"),
    }


def _rebuild(pristine: LoadedModel, config: Mapping[str, Any]) -> torch.nn.Module:
    head = config["head"]
    replaced, _ = with_head(
        pristine.fresh_copy(),
        replace=str(config["replace"]),
        freeze=config["freeze"],
        n_classes=int(head["n_classes"]),
        depth=int(head["depth"]),
        width=head.get("width"),
        activation=head.get("activation"),
    )
    return replaced.model


def whole_state(
    pristine: LoadedModel, config: Mapping[str, Any], kept: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The fine-tuned model's whole state_dict: the pristine model's, with the head and what trained from kept."""
    state = _rebuild(pristine, config).state_dict()
    unknown = sorted(set(kept) - set(state))
    if unknown:
        raise ValueError(f"kept weights that the rebuilt model lacks: {', '.join(unknown[:5])}")
    state.update(kept)
    # Copies: tied weights share memory, which safetensors refuses to write.
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state.items()}


def serialise_state(state: Mapping[str, torch.Tensor]) -> bytes:
    """A state_dict as safetensors bytes."""
    return safetensors.torch.save(dict(state), metadata={"format": "pt"})


@dataclass
class FineTunedModule:
    """A downloaded torch-module model: the fine-tuned module (eval mode), its label names and how it was made."""

    model: torch.nn.Module
    labels: list[str]
    config: dict[str, Any]
    params: dict[str, Any]

    def features(self, inputs: Sequence[str] | Sequence[Mapping[str, Any]] | torch.Tensor) -> torch.Tensor:
        """The model's input rows: texts hashed as in training, or rows of the feature columns (by name)."""
        if isinstance(inputs, torch.Tensor):
            return inputs.float()
        rows = list(inputs)
        if self.config["columns"] is None:
            if not all(isinstance(text, str) for text in rows):
                raise TypeError("this model reads texts: give a list of strings")
            n_features = int(self.config["inputs"]["n_features"])
            return torch.from_numpy(hash_texts([str(text) for text in rows], n_features).toarray())
        if not all(isinstance(row, Mapping) for row in rows):
            raise TypeError(
                "this model reads numeric columns: give a tensor, or rows as {column: value} mappings"
            )
        mappings = [row for row in rows if isinstance(row, Mapping)]
        return torch.tensor(row_features(mappings, list(self.config["columns"]), "the rows given"))

    def logits(
        self,
        inputs: Sequence[str] | Sequence[Mapping[str, Any]] | torch.Tensor,
        *,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Logits [rows, n_labels] on the CPU."""
        device = device or torch.device("cpu")
        self.model.to(device).eval()
        features = self.features(inputs).to(device=device, dtype=parameter_dtype(self.model))
        with torch.no_grad():
            return self.model(features).float().cpu()

    def predict(
        self,
        inputs: Sequence[str] | Sequence[Mapping[str, Any]] | torch.Tensor,
        *,
        device: torch.device | None = None,
    ) -> list[str]:
        """The label name each input row is predicted to have."""
        return [self.labels[i] for i in self.logits(inputs, device=device).argmax(dim=1).tolist()]


def load_best_module(
    path: str | Path,
    *,
    trust_pickled_models: bool = False,
    allowed_entrypoints: tuple[str, ...] = (),
    cache_dir: Path | None = None,
) -> FineTunedModule:
    """Load a downloaded torch-module model (the folder download_best_model returns, or the zip itself).

    The pretrained model file the study named must be here too. It loads as a worker would: a whole pickled
    module only with trust_pickled_models=True, a factory only when allowed_entrypoints allows it. A built-in
    model is read from (or built in) cache_dir, by default the worker's (TUNEFLEET_CACHE_DIR).
    """
    members = read_archive_members(Path(path))
    config: dict[str, Any] = json.loads(members[CONFIG_FILE])
    params: dict[str, Any] = json.loads(members[PARAMS_FILE])
    labels: list[str] = json.loads(members[LABELS_FILE])
    if config.get("format") != ARCHIVE_FORMAT or config.get("kind") != KIND:
        raise ValueError(
            f"{path} is not a torch-module model (kind {config.get('kind', 'text-classification')!r});"
            " load it with worker.export.load_best_model"
        )
    permissions = Permissions(
        trust_pickled_models=trust_pickled_models,
        allowed_entrypoints=allowed_entrypoints,
        pickle_hint="pass trust_pickled_models=True to load_best_module",
        entrypoint_hint="pass allowed_entrypoints=({0!r},) to load_best_module",
    )
    if is_builtin_module(str(config["model"])):
        pristine = load_builtin_module(
            str(config["model"]),
            cache_dir=cache_dir if cache_dir is not None else WorkerSettings().cache_dir,
            factory=config.get("factory"),
        )
    else:
        pristine = load_model_file(
            str(config["model"]), factory=config.get("factory"), permissions=permissions
        )
    model = _rebuild(pristine, config)
    model.load_state_dict(safetensors.torch.load(members[WEIGHTS_FILE]), strict=True)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.eval()
    return FineTunedModule(model=model, labels=labels, config=config, params=params)


def evaluate_module(model: FineTunedModule, *, device: torch.device | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the trial's own validation split, computed as the trial computed it."""
    inputs = load_model_inputs(Task.model_validate(model.config["task"]))
    if inputs.label_names != model.labels:
        raise ValueError(f"the data's labels {inputs.label_names} are not the model's {model.labels}")
    device = device or torch.device("cpu")
    model.model.to(device)
    scores = evaluate_rows(model.model, inputs.validation, inputs.validation_labels, device=device)
    return scores.loss, scores.accuracy
