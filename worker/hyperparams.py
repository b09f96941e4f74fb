"""The searched hyperparameters of a run that trains a head, and the optimizer they name."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from studies.names import ACTIVATION_NAMES, OPTIMIZER_NAMES

SGD_MOMENTUM = 0.9


@dataclass(frozen=True, kw_only=True)
class HeadParams:
    """The sampled hyperparameters of one head-training run; width and activation only for hidden layers."""

    learning_rate: float
    batch_size: int
    epochs: int
    depth: int
    # A linear head (depth 0) has neither; the built-in space draws them only when depth is at least 1.
    width: int | None = None
    activation: str | None = None
    optimizer: str

    def __post_init__(self) -> None:
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be positive and finite, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.depth < 0:
            raise ValueError(f"depth must be at least 0, got {self.depth}")
        if self.depth > 0 and (self.width is None or self.activation is None):
            raise ValueError(f"a head of depth {self.depth} needs width and activation")
        if self.width is not None and self.width < 1:
            raise ValueError(f"width must be at least 1, got {self.width}")
        if self.activation is not None and self.activation not in ACTIVATION_NAMES:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATION_NAMES)}"
            )
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZER_NAMES)}"
            )

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> HeadParams:
        """The head parameters among a trial's sampled parameters (others, like encoder_learning_rate, ignored).

        Width and activation may be absent: a depth-0 trial of the built-in space has neither.
        """
        return cls(
            **{name: params[name] for name in _ALWAYS_DRAWN},
            width=params.get("width"),
            activation=params.get("activation"),
        )


_ALWAYS_DRAWN = ("learning_rate", "batch_size", "epochs", "depth", "optimizer")


def head_architecture(params: Mapping[str, Any]) -> dict[str, Any]:
    """The head's shape as a model's config records it: depth, and width and activation only for hidden layers."""
    depth = int(params["depth"])
    if depth == 0:
        return {"depth": 0}
    return {"depth": depth, "width": int(params["width"]), "activation": str(params["activation"])}


def make_optimizer(
    name: str, parameters: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], learning_rate: float
) -> torch.optim.Optimizer:
    """Return the named optimizer (sgd with momentum 0.9, adagrad, adam or adamw) over parameters.

    parameters may be parameter groups (dicts with their own "lr"); learning_rate is the default.
    """
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=learning_rate, momentum=SGD_MOMENTUM)
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, lr=learning_rate)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=learning_rate)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=learning_rate)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZER_NAMES)}")
