"""Replacing one layer of a pretrained module with the searched head, and choosing what trains around it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from studies.names import FREEZE_MODES
from worker.model import ModelError

# Enough module paths to find the one meant, few enough to read in a fail_reason.
_LISTED_PATHS = 40
_FREEZE_ALL_BUT_REPLACED, _FREEZE_NONE = FREEZE_MODES


def _children(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    # named_children works alike on nn.Module and TorchScript modules (which refuse get_submodule).
    return dict(module.named_children())


def module_paths(model: torch.nn.Module) -> list[str]:
    """Every submodule's dotted path, in the model's own order (Sequential and ModuleList items by index)."""
    return [name for name, _ in model.named_modules() if name]


def _listing(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:_LISTED_PATHS]) or "none"
    more = len(paths) - _LISTED_PATHS
    return f"{shown} (and {more} more)" if more > 0 else shown


def find_module(model: torch.nn.Module, path: str, *, field: str) -> torch.nn.Module:
    """The submodule at a dotted path (indexes into Sequential and ModuleList); ModelError listing what exists."""
    module = model
    walked: list[str] = []
    for part in path.split("."):
        children = _children(module)
        if part not in children:
            where = f"{'.'.join(walked)} has no submodule {part!r}" if walked else f"no module {part!r}"
            which = "its submodules" if walked else "its top-level modules"
            inside = f"; {which}: {', '.join(children) or 'none'}"
            raise ModelError(
                f"{field} {path!r} is not in the model: {where}{inside}."
                f" The model's modules: {_listing(module_paths(model))}"
            )
        module = children[part]
        walked.append(part)
    return module


def _kind(module: torch.nn.Module) -> str:
    # A TorchScript module's Python type is RecursiveScriptModule; original_name is the class it was.
    return str(getattr(module, "original_name", type(module).__name__))


def is_linear(module: torch.nn.Module) -> bool:
    """An nn.Linear layer, or one compiled into a TorchScript model."""
    if isinstance(module, torch.nn.Linear):
        return True
    weight = getattr(module, "weight", None)
    return (
        isinstance(module, torch.jit.ScriptModule)
        and _kind(module) == "Linear"
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
    )


def linear_in_features(module: torch.nn.Module) -> int:
    """A Linear layer's input width, read from its weight (a TorchScript constant may be stale)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[1])


def _linear_layers(model: torch.nn.Module) -> list[str]:
    return [
        f"{name} ({linear_in_features(m)}→{int(m.weight.shape[0])})"
        for name, m in model.named_modules()
        if name and is_linear(m)
    ]


def replaced_width(model: torch.nn.Module, replace: str) -> int:
    """The input width of the Linear layer `replace` names: the head's input width; ModelError otherwise."""
    layer = find_module(model, replace, field="replace")
    if not is_linear(layer):
        raise ModelError(
            f"replace {replace!r} is a {_kind(layer)}, not a Linear layer: the head replaces a Linear layer and"
            f" takes its in_features as its input width. The model's Linear layers:"
            f" {_listing(_linear_layers(model))}"
        )
    width = linear_in_features(layer)
    if width < 1:
        raise ModelError(f"replace {replace!r} is a Linear layer without weights yet (in_features {width})")
    return width


def _under(name: str, paths: Sequence[str]) -> bool:
    return any(path == "" or name == path or name.startswith(path + ".") for path in paths)


def check_freeze(model: torch.nn.Module, freeze: str | list[str], replace: str) -> None:
    """ModelError when a module path listed to train is not in the model or lies inside the replaced layer."""
    if isinstance(freeze, str):
        return
    for path in freeze:
        if _under(path, [replace]):
            raise ModelError(
                f"freeze lists {path!r}, which is the layer replace names or inside it; the new head always trains"
            )
        find_module(model, path, field="freeze")


def parameter_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype inputs must have to meet the model's weights."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def check_input_width(model: torch.nn.Module, width: int, described: str) -> None:
    """ModelError naming both widths unless the model runs on a batch of `width` input features."""
    sample = torch.zeros(2, width, dtype=parameter_dtype(model))
    try:
        with torch.no_grad():
            model(sample)
    # The model is the user's: whatever a wrong input width makes it raise, the reason is the same.
    except Exception as error:
        first = next(
            ((name, linear_in_features(m)) for name, m in model.named_modules() if name and is_linear(m)),
            None,
        )
        takes = f"; its first Linear layer, {first[0]}, takes {first[1]}" if first else ""
        # A TorchScript error is a traceback of the compiled code; its last line says what went wrong.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[-1][:300] if lines else type(error).__name__
        raise ModelError(
            f"the model does not take {width} input features ({described}){takes}: {detail}"
        ) from error


def check_logits(model: torch.nn.Module, width: int, n_classes: int, replace: str) -> None:
    """ModelError unless the model with its new head turns a batch of inputs into one logit per class."""
    model.eval()
    parameter = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(4, width, generator=generator).to(
        device=parameter.device, dtype=parameter_dtype(model)
    )
    with torch.no_grad():
        output = model(sample)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (4, n_classes):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(
            f"with {replace!r} replaced by the head, a batch of 4 gives output {shape}, not (4, {n_classes}):"
            " the replaced layer's output must be the model's output, one logit per class"
        )
    # Cross-entropy takes logits (log-probabilities too); probabilities from a softmax would train it blind.
    sums = output.float().sum(dim=1)
    if bool((output >= 0).all()) and torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise ModelError(
            f"with {replace!r} replaced by the head, the model's output rows are probabilities (non-negative,"
            " summing to 1): it applies a softmax after the head, and training needs logits. Replace the layer"
            " whose output is the model's output, or save the model without its final softmax"
        )


class HeadOnOutput(torch.nn.Module):
    """A TorchScript model whose last Linear layer passes its inputs through, and the head on its output."""

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The head's logits for the model's last-layer inputs."""
        return self.head(self.model(inputs))


@dataclass(frozen=True)
class Replaced:
    """A model with its new head: where the head sits, and the parameters that must never train."""

    model: torch.nn.Module
    head_path: str
    # Where the pretrained modules' paths now live in `model` ("" or, around a TorchScript model, "model.").
    core_prefix: str
    fixed: frozenset[str]


def _returns_output_of(model: torch.jit.ScriptModule, replace: str) -> bool:
    """Whether a TorchScript model's output is the replaced Linear layer's output, read from its compiled graph."""
    try:
        # Held in a name: a node of a graph nobody holds is invalid.
        graph: Any = model.inlined_graph
        outputs = list(graph.return_node().inputs())
        if len(outputs) != 1 or outputs[0].node().kind() != "aten::linear":
            return False
        weight = list(outputs[0].node().inputs())[1]
        path: list[str] = []
        step = weight.node()
        while step.kind() == "prim::GetAttr":
            path.append(step.s("name"))
            step = next(iter(step.inputs())).node()
    # A graph torch cannot show or that looks otherwise is one this rule cannot vouch for.
    except Exception:
        return False
    return ".".join(reversed(path)) == f"{replace}.weight"


def _swap_weights(layer: torch.nn.Module, linear: torch.nn.Module) -> None:
    # A TorchScript layer keeps its type; only its tensors can change shape. A layer without a bias stays so.
    assert isinstance(linear, torch.nn.Linear)
    layer.weight = torch.nn.Parameter(linear.weight.detach().clone())
    if layer.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.detach().clone())


def attach_head(model: torch.nn.Module, replace: str, head: torch.nn.Sequential) -> Replaced:
    """Put the head where the Linear layer `replace` is (a model of this process's own, changed in place).

    A TorchScript model's compiled code fixes each submodule's type, so its layer cannot become a Sequential:
    a depth-0 head's weights go into the layer itself, and a deeper head goes on the model's output, the layer
    made to pass its inputs through, when the compiled graph shows the layer's output is the model's output.
    """
    parent_path, _, name = replace.rpartition(".")
    parent = find_module(model, parent_path, field="replace") if parent_path else model
    layer = _children(parent)[name]
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    dtype = weight.dtype
    head = head.to(dtype)
    if not isinstance(model, torch.jit.ScriptModule):
        setattr(parent, name, head)
        return Replaced(model=model, head_path=replace, core_prefix="", fixed=frozenset())
    if len(head) == 1:
        _swap_weights(layer, head[0])
        return Replaced(model=model, head_path=replace, core_prefix="", fixed=frozenset())
    if not _returns_output_of(model, replace):
        raise ModelError(
            f"this TorchScript model cannot take a head of depth {len(head) // 2} at {replace!r}: its compiled"
            " code fixes each layer's type, so a deeper head can only go on the model's output, and the compiled"
            f" graph does more with {replace!r}'s output before returning it. Search depth 0 (space.depth: 0),"
            " or ship a state_dict with task.factory, or a whole module"
        )
    width = linear_in_features(layer)
    layer.weight = torch.nn.Parameter(torch.eye(width, dtype=dtype), requires_grad=False)
    fixed = {f"model.{replace}.weight"}
    if layer.bias is not None:
        layer.bias = torch.nn.Parameter(torch.zeros(width, dtype=dtype), requires_grad=False)
        fixed.add(f"model.{replace}.bias")
    return Replaced(
        model=HeadOnOutput(model, head), head_path="head", core_prefix="model.", fixed=frozenset(fixed)
    )


def trained_paths(replaced: Replaced, freeze: str | list[str]) -> list[str]:
    """The module paths (in the replaced model) that train: the head, and what freeze lets train beside it."""
    if freeze == _FREEZE_NONE:
        return [""]
    if freeze == _FREEZE_ALL_BUT_REPLACED:
        return [replaced.head_path]
    if isinstance(freeze, str):
        raise ModelError(f"unknown freeze {freeze!r}; use all-but-replaced, none or a list of module paths")
    return [replaced.head_path, *(replaced.core_prefix + path for path in freeze)]


def mark_trainable(replaced: Replaced, trained: list[str]) -> None:
    """Parameters under the trained paths train; every other one (and the fixed ones) is frozen."""
    for name, parameter in replaced.model.named_parameters():
        parameter.requires_grad_(_under(name, trained) and name not in replaced.fixed)


def set_train_mode(replaced: Replaced, trained: list[str]) -> None:
    """Trained modules in train mode; frozen ones in eval mode, as the feature extractors they are (no dropout)."""
    replaced.model.eval()
    for path in trained:
        module = replaced.model if path == "" else find_module(replaced.model, path, field="freeze")
        module.train()


def changing_state(replaced: Replaced, trained: list[str]) -> list[str]:
    """The state_dict entries training can change: everything under the trained paths, but the fixed ones."""
    return [
        name for name in replaced.model.state_dict() if _under(name, trained) and name not in replaced.fixed
    ]


def is_head_parameter(replaced: Replaced, name: str) -> bool:
    """Whether a parameter of the replaced model belongs to the new head."""
    return _under(name, [replaced.head_path])
