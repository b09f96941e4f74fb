"""A trial's fine-tuned model as a file: saved when it is the study's new best, loaded back by users.

README.md ("Taking the best model away") shows the five lines that download, load and evaluate one.
"""

from __future__ import annotations

import copy
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import safetensors.torch
import torch

from studies.artifacts import CONFIG_FILE, LABELS_FILE, PARAMS_FILE, WEIGHTS_FILE
from studies.spec import Task
from worker.data import load_split
from worker.features import ENCODE_BATCH_SIZE, encode_texts
from worker.finetune import TokenizedTexts, evaluate_tokens
from worker.hyperparams import head_architecture
from worker.lora import adapter_files, load_adapters
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
    """The kept weights as safetensors bytes: `head.*`, plus the trained `encoder.*` tensors or lora's `adapter.*`."""
    tensors = {
        name: tensor.detach().cpu().contiguous() for name, tensor in _export_names(state, finetune).items()
    }
    return safetensors.torch.save(tensors, metadata={"format": "pt"})


def model_config(
    task: Task,
    params: dict[str, Any],
    state: dict[str, torch.Tensor],
    *,
    n_classes: int,
    adapter_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What it takes to rebuild the model around the weights: encoder reference, mode, head architecture, and
    for finetune lora the adapter_config.json peft wrote for its adapters."""
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
            # A linear head (depth 0) records no width or activation: it has neither.
            **head_architecture(params),
        },
        # The whole task, so evaluate() can rebuild the trial's own validation split.
        "task": task.model_dump(mode="json"),
        **({"adapter_config": adapter_config} if adapter_config is not None else {}),
    }


@dataclass
class BestModel:
    """A downloaded model: encoder (with its fine-tuned blocks, or a peft model with lora's adapters, or those
    merged into its weights), tokenizer, head and label names."""

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


def load_best_model(path: str | Path, *, merge: bool = False) -> BestModel:
    """Load a downloaded model (the folder download_best_model returns, or the zip itself), ready to evaluate.

    A finetune lora model's encoder is a peft PeftModel around the pristine encoder; with merge, the adapters
    are merged into its weights and it is a plain encoder again (the other modes' encoders always are).
    """
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
    if config.get("finetune") == "lora":
        # Through peft's own files and loader: the model is what PeftModel.from_pretrained makes of them.
        with tempfile.TemporaryDirectory(prefix="tunefleet-adapters-") as folder:
            _write_files(Path(folder), _adapter_files(path, weights, config))
            peft_model = load_adapters(encoder, Path(folder))
        encoder = peft_model.merge_and_unload() if merge else peft_model
    head_config = config["head"]
    head = build_head(
        input_size=int(head_config["input_size"]),
        n_classes=int(head_config["n_classes"]),
        depth=int(head_config["depth"]),
        width=head_config.get("width"),
        activation=head_config.get("activation"),
    )
    head.load_state_dict(
        {name.removeprefix("head."): t for name, t in weights.items() if name.startswith("head.")}
    )
    encoder.eval()
    head.eval()
    return BestModel(
        encoder=encoder, tokenizer=pristine.tokenizer, head=head, labels=labels, config=config, params=params
    )


def _adapter_files(
    path: str | Path, weights: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, bytes]:
    if config.get("finetune") != "lora" or not isinstance(config.get("adapter_config"), dict):
        raise ValueError(
            f"{path} is a finetune {config.get('finetune')} model: only finetune lora has adapters"
        )
    return adapter_files(weights, config["adapter_config"])


def _write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def export_adapters(path: str | Path, folder: str | Path) -> Path:
    """Write a finetune lora model's adapters into folder in peft's own format: adapter_model.safetensors and
    adapter_config.json, which PeftModel.from_pretrained(encoder, folder) loads; returns the folder."""
    members = read_archive_members(Path(path))
    config: dict[str, Any] = json.loads(members[CONFIG_FILE])
    weights = safetensors.torch.load(members[WEIGHTS_FILE])
    return _write_files(Path(folder), _adapter_files(path, weights, config))


def export_encoder(path: str | Path, folder: str | Path) -> Path:
    """Write a downloaded model's encoder as a plain Hugging Face folder (config, weights, tokenizer), lora's
    adapters merged into its weights; AutoModel.from_pretrained(folder) loads it, and so does a study's
    task.model. Returns the folder."""
    model = load_best_model(path, merge=True)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    # transformers models, which nn.Module's type does not know to have save_pretrained.
    cast(Any, model.encoder).save_pretrained(out)
    model.tokenizer.save_pretrained(out)
    return out


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
    scores = evaluate_tokens(
        classifier,
        tokenized,
        pad_id=int(pad_id) if pad_id is not None else 0,
        batch_size=int(model.params["params"]["batch_size"]),
        device=device,
    )
    return scores.loss, scores.accuracy
