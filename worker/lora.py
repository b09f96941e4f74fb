"""finetune lora: low-rank adapters (peft) on the frozen encoder's attention and feed-forward layers."""

from __future__ import annotations

import copy
import json
import math
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from studies.artifacts import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from studies.names import LORA_TARGETS
from worker.model import ModelError

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

# A lora trial's kept weights name its adapters' tensors `adapter.` + peft's own name for them.
ADAPTER_PREFIX = "adapter."

# Layers by what they do, as paths inside an encoder block: a layer belongs to a family when its name ends
# with one of them. BERT, RoBERTa, MiniLM, ELECTRA and XLM-R (attention.self.query), DeBERTa (query_proj),
# DistilBERT (q_lin), MPNet (attn.q), ModernBERT (attn.Wqkv) and BART-style encoders (self_attn.q_proj).
ATTENTION_LAYERS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.self.query_proj",
    "attention.self.key_proj",
    "attention.self.value_proj",
    "attention.output.dense",
    "attention.q_lin",
    "attention.k_lin",
    "attention.v_lin",
    "attention.out_lin",
    "attention.attn.q",
    "attention.attn.k",
    "attention.attn.v",
    "attention.attn.o",
    "attn.Wqkv",
    "attn.Wo",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "self_attn.o_proj",
)
FEED_FORWARD_LAYERS = (
    "intermediate.dense",
    "output.dense",
    "ffn.lin1",
    "ffn.lin2",
    "mlp.Wi",
    "mlp.Wo",
    "mlp.fc1",
    "mlp.fc2",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
# Attention first: attention.output.dense also ends with the feed-forward output.dense.
_FAMILIES = {"attention": ATTENTION_LAYERS, "feed-forward": FEED_FORWARD_LAYERS}
_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": ("attention",),
    "attention+ffn": ("attention", "feed-forward"),
}
# Keyed by the spec's lora_targets names: a name added there without its families here fails at import.
TARGET_PRESETS: dict[str, tuple[str, ...]] = {name: _PRESETS[name] for name in LORA_TARGETS}
# How many of a model's layer names a failure lists (block numbers folded into N first).
_LISTED_LAYERS = 24


@dataclass(frozen=True)
class LoraParams:
    """A lora trial's adapter parameters: rank, scale (a multiple of the rank), dropout and which layers."""

    rank: int
    alpha: float
    dropout: float
    targets: str

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora_rank must be at least 1, got {self.rank}")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"lora_alpha must be positive and finite, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.dropout}")
        if self.targets not in TARGET_PRESETS:
            raise ValueError(
                f"unknown lora_targets {self.targets!r}; choose from {', '.join(TARGET_PRESETS)}"
            )

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> LoraParams:
        """The lora parameters among a trial's parameters (a lora study's spec always has all four)."""
        return cls(
            rank=int(params["lora_rank"]),
            alpha=float(params["lora_alpha"]),
            dropout=float(params["lora_dropout"]),
            targets=str(params["lora_targets"]),
        )

    @property
    def peft_alpha(self) -> float:
        """peft's lora_alpha: the update is scaled by peft_alpha / rank, which is self.alpha."""
        return self.alpha * self.rank


def _family(name: str) -> str | None:
    for family, paths in _FAMILIES.items():
        if any(name == path or name.endswith("." + path) for path in paths):
            return family
    return None


def _layer_names(model: torch.nn.Module) -> list[str]:
    # Every module with a weight matrix, block numbers folded: what a user needs to see to know the model.
    seen: dict[str, None] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
            seen.setdefault(re.sub(r"(^|\.)\d+(?=\.|$)", r"\1N", name), None)
    return list(seen)


def adapted_layers(model: torch.nn.Module, targets: str) -> list[str]:
    """The full names of the model's linear layers that a lora_targets preset adapts, in the model's order.

    ModelError, listing the layers the model has, when a family the preset names matches none of them.
    """
    families = TARGET_PRESETS[targets]
    adapted: list[str] = []
    seen: set[str] = set()
    for name, module in model.named_modules():
        family = _family(name)
        if family in families and isinstance(module, torch.nn.Linear):
            adapted.append(name)
            seen.add(family)
    missing = [family for family in families if family not in seen]
    if missing:
        layers = _layer_names(model)
        listed = ", ".join(layers[:_LISTED_LAYERS])
        if len(layers) > _LISTED_LAYERS:
            listed += f" and {len(layers) - _LISTED_LAYERS} more"
        examples = _FAMILIES[missing[0]]
        raise ModelError(
            f"finetune lora (lora_targets {targets}): {type(model).__name__} has no {' or '.join(missing)} layer"
            f" lora can adapt (it looks for names such as {examples[0]} or {examples[-1]}); the model's layers"
            f" are {listed or 'none'} (N: each block's number); use finetune last-k or full for this model"
        )
    return adapted


def lora_config(model: torch.nn.Module, lora: LoraParams) -> LoraConfig:
    """peft's LoraConfig of a trial's adapters on this encoder: its layers named in full, as this model names them."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.rank,
        # peft types it int, and computes with it as a number: a float scale is what it is here.
        lora_alpha=lora.peft_alpha,  # type: ignore[arg-type]
        lora_dropout=lora.dropout,
        target_modules=adapted_layers(model, lora.targets),
        bias="none",
    )


def adapter_config(model: torch.nn.Module, lora: LoraParams) -> dict[str, Any]:
    """The adapter_config.json peft itself writes for a trial's adapters on this encoder, as a dict."""
    with tempfile.TemporaryDirectory(prefix="tunefleet-adapter-") as folder:
        lora_config(model, lora).save_pretrained(folder)
        config: dict[str, Any] = json.loads((Path(folder) / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    return config


def with_adapters(model: torch.nn.Module, lora: LoraParams) -> PeftModel:
    """Fresh adapters (seed torch first) around the encoder's own weights, frozen and shared, never copied.

    peft swaps layers in a copy of the modules, so the encoder passed in keeps its own layers; only its
    parameters' requires_grad is turned off (it stays in eval mode, and nothing trains it).
    """
    from peft import get_peft_model

    config = lora_config(model, lora)
    shared = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers())}
    copied = copy.deepcopy(model, memo=shared)
    with warnings.catch_warnings():
        # transformers deprecates a property peft reads: the warning is peft's to act on, not the user's.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(copied, config)


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors under peft's own names (as adapter_model.safetensors holds them), not copied."""
    from peft import get_peft_model_state_dict

    return dict(get_peft_model_state_dict(model))


def adapter_files(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, bytes]:
    """peft's two files for the adapters among a lora model's kept weights (`adapter.*`) and its adapter config."""
    import safetensors.torch

    tensors = {
        name.removeprefix(ADAPTER_PREFIX): tensor.detach().cpu().contiguous()
        for name, tensor in state.items()
        if name.startswith(ADAPTER_PREFIX)
    }
    if not tensors:
        raise ValueError("the weights hold no adapters")
    return {
        # The metadata peft's own save_pretrained writes.
        ADAPTER_WEIGHTS_FILE: safetensors.torch.save(tensors, metadata={"format": "pt"}),
        ADAPTER_CONFIG_FILE: (json.dumps(dict(config), indent=2, sort_keys=True) + "\n").encode("utf-8"),
    }


def load_adapters(model: torch.nn.Module, folder: Path) -> PeftModel:
    """Adapters saved in peft's format, loaded around the model (changed in place: pass a copy to keep it)."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(model, str(folder))
