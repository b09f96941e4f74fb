"""A trial's fine-tuned model as a file: saved when it is the study's new best, loaded back by users.

README.md ("Taking the best model away") shows the five lines that download, load and evaluate one.
"""

from __future__ import annotations

import copy
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from studies.artifacts import CONFIG_FILE, LABELS_FILE, PARAMS_FILE, WEIGHTS_FILE
from studies.spec import Task
from worker.data import load_split
from worker.features import ENCODE_BATCH_SIZE, encode_texts
from worker.finetune import TokenizedTexts, evaluate_tokens
from worker.model import (
    Encoder,
    EncoderClassifier,
    ModelError,
    build_head,
    builtin_model_folder,
    effective_max_length,
    load_encoder,
)
from worker.training import evaluate_head

ARCHIVE_FORMAT = 1


def _export_names(state: dict[str, torch.Tensor], finetune: str) -> dict[str, torch.Tensor]:
    # train_head names the head's tensors as the head does (0.weight); the archive always says head.0.weight.
    if finetune == "head":
        return {f"head.{name}": tensor for name, tensor in state.items()}
    return dict(state)


def serialise_weights(state: dict[str, torch.Tensor], *, finetune: str) -> bytes:
    """The kept weights as safetensors bytes: `head.*`, plus the trained `encoder.*` tensors."""
    tensors = {
        name: tensor.detach().cpu().contiguous() for name, tensor in _export_names(state, finetune).items()
    }
    return safetensors.torch.save(tensors, metadata={"format": "pt"})


def model_config(
    task: Task, params: dict[str, Any], state: dict[str, torch.Tensor], *, n_classes: int
) -> dict[str, Any]:
    """What it takes to rebuild the model around the weights: encoder reference, mode, head architecture."""
    weights = _export_names(state, task.finetune)
    first = weights.get("head.0.weight")
    if first is None:
        raise ValueError("the weights have no head.0.weight")
    return {
        "format": ARCHIVE_FORMAT,
        "encoder": task.model,
        "finetune": task.finetune,
        "k": task.k,
        "max_length": task.max_length,
        "pooling": "mean",
        "head": {
            "input_size": int(first.shape[1]),
            "n_classes": n_classes,
            "depth": int(params["depth"]),
            "width": int(params["width"]),
            "activation": str(params["activation"]),
        },
        # The whole task, so evaluate() can rebuild the trial's own validation split.
        "task": task.model_dump(mode="json"),
    }


@dataclass
class BestModel:
    """A downloaded model: encoder (with its fine-tuned blocks), tokenizer, head and label names."""

    encoder: torch.nn.Module
    tokenizer: Any
    head: torch.nn.Sequential
    labels: list[str]
    config: dict[str, Any]
    params: dict[str, Any]

    @property
    def classifier(self) -> EncoderClassifier:
        """Encoder, mean pooling and head as one module: token ids and mask in, logits out."""
        return EncoderClassifier(self.encoder, self.head)

    @property
    def max_length(self) -> int:
        """The tokens per text the trial used."""
        return effective_max_length(self._encoder(), int(self.config["max_length"]))

    def _encoder(self) -> Encoder:
        hidden_size = int(self.config["head"]["input_size"])
        return Encoder(
            tokenizer=self.tokenizer, model=self.encoder, folder=Path("."), hidden_size=hidden_size
        )

    def predict(self, texts: list[str], *, device: torch.device | None = None) -> list[str]:
        """The label name each text is predicted to have."""
        logits = self.logits(texts, device=device)
        return [self.labels[i] for i in logits.argmax(dim=1).tolist()]

    def logits(self, texts: list[str], *, device: torch.device | None = None) -> torch.Tensor:
        """Logits [len(texts), n_labels] on the CPU."""
        device = device or torch.device("cpu")
        self.encoder.to(device)
        self.head.to(device)
        self.head.eval()
        features = encode_texts(
            self._encoder(), texts, max_length=self.max_length, batch_size=ENCODE_BATCH_SIZE, device=device
        )
        with torch.no_grad():
            return self.head(features.to(device)).float().cpu()


def read_archive_members(path: Path) -> dict[str, bytes]:
    """The four files of a downloaded model: from its folder, or from the zip itself."""
    names = (WEIGHTS_FILE, PARAMS_FILE, LABELS_FILE, CONFIG_FILE)
    if path.is_file():
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in names}
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a tunefleet model folder: {', '.join(missing)} missing")
    return {name: (path / name).read_bytes() for name in names}


def _encoder_folder(reference: str) -> Path:
    if reference.startswith("builtin:"):
        return builtin_model_folder(reference.removeprefix("builtin:"))
    folder = Path(reference).expanduser()
    if not folder.is_dir():
        raise ModelError(f"the model was fine-tuned from {reference!r}, which is not a folder here")
    return folder


def load_best_model(path: str | Path) -> BestModel:
    """Load a downloaded model (the folder download_best_model returns, or the zip itself), ready to evaluate."""
    members = read_archive_members(Path(path))
    config: dict[str, Any] = json.loads(members[CONFIG_FILE])
    params: dict[str, Any] = json.loads(members[PARAMS_FILE])
    labels: list[str] = json.loads(members[LABELS_FILE])
    if config.get("format") != ARCHIVE_FORMAT:
        raise ValueError(f"unknown model archive format {config.get('format')!r}")
    if config.get("kind") == "torch-module":
        raise ValueError(
            f"{path} is a torch-module model: load it with worker.module_export.load_best_module(path) and"
            " evaluate it with worker.module_export.evaluate_module(model)"
        )
    if config.get("kind") == "python":
        raise ValueError(
            f"{path} is the model a kind python study's own code saved: build your model and load"
            f" {WEIGHTS_FILE} into it (safetensors.torch.load_file, then model.load_state_dict)"
        )
    weights = safetensors.torch.load(members[WEIGHTS_FILE])
    pristine = load_encoder(_encoder_folder(str(config["encoder"])))
    # A copy: the process-wide encoder stays pristine for anything else that uses it.
    encoder = copy.deepcopy(pristine.model)
    encoder_weights = {
        name.removeprefix("encoder."): t for name, t in weights.items() if name.startswith("encoder.")
    }
    if encoder_weights:
        result = encoder.load_state_dict(encoder_weights, strict=False)
        if result.unexpected_keys:
            raise ModelError(f"weights do not fit the encoder: {', '.join(result.unexpected_keys[:5])}")
    head_config = config["head"]
    head = build_head(
        input_size=int(head_config["input_size"]),
        n_classes=int(head_config["n_classes"]),
        depth=int(head_config["depth"]),
        width=int(head_config["width"]),
        activation=str(head_config["activation"]),
    )
    head.load_state_dict(
        {name.removeprefix("head."): t for name, t in weights.items() if name.startswith("head.")}
    )
    encoder.eval()
    head.eval()
    return BestModel(
        encoder=encoder, tokenizer=pristine.tokenizer, head=head, labels=labels, config=config, params=params
    )


def evaluate(
    model: BestModel,
    texts: list[str] | None = None,
    labels: list[str] | None = None,
    *,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on texts with label names; by default on the trial's own validation split.

    Computed the way the trial computed it, so the default reproduces the trial's validation loss.
    """
    device = device or torch.device("cpu")
    if texts is None:
        split = load_split(Task.model_validate(model.config["task"]))
        if split.label_names != model.labels:
            raise ValueError(f"the data's labels {split.label_names} are not the model's {model.labels}")
        texts, label_ids = split.validation_texts, split.validation_labels
    else:
        if labels is None or len(labels) != len(texts):
            raise ValueError("give one label name per text")
        index = {name: i for i, name in enumerate(model.labels)}
        unknown = sorted(set(labels) - index.keys())
        if unknown:
            raise ValueError(f"labels the model does not know: {', '.join(unknown[:10])}")
        label_ids = [index[name] for name in labels]
    targets = torch.tensor(label_ids, dtype=torch.int64)
    model.encoder.to(device)
    model.head.to(device)
    if model.config["finetune"] == "head":
        # The frozen encoder's features, batched as the feature cache batches them, then the head.
        features = encode_texts(
            model._encoder(), texts, max_length=model.max_length, batch_size=ENCODE_BATCH_SIZE, device=device
        )
        return evaluate_head(model.head, features.to(device), targets.to(device))
    encoded = model.tokenizer(texts, truncation=True, max_length=model.max_length, padding=False)
    tokenized = TokenizedTexts(
        ids=[torch.tensor(row, dtype=torch.int64) for row in encoded["input_ids"]], labels=targets
    )
    pad_id = model.tokenizer.pad_token_id
    classifier = model.classifier.to(device)
    return evaluate_tokens(
        classifier,
        tokenized,
        pad_id=int(pad_id) if pad_id is not None else 0,
        batch_size=int(model.params["params"]["batch_size"]),
        device=device,
    )
