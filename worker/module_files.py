"""A torch-module model file: its format found from its contents, and loaded only as its owner allowed."""

from __future__ import annotations

import copy
import importlib
import io
import pickle
import socket
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch

from worker.data_roots import DataRoots, absolute
from worker.entrypoints import is_allowed
from worker.model import ModelError

FileFormat = Literal["torchscript", "torch-save", "safetensors"]
# The keys a training checkpoint commonly keeps its model's state_dict under, beside optimizer state.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
_WORKER_PICKLE_HINT = "set TUNEFLEET_TRUST_PICKLED_MODELS=1 on the workers"
_WORKER_ENTRYPOINT_HINT = (
    "start the workers with TUNEFLEET_ALLOWED_ENTRYPOINTS={0} or --allow-entrypoint {0}"
    " (or --allow-entrypoint {1}, this factory only)"
)


@dataclass(frozen=True)
class Permissions:
    """What the one loading a model file allows: unpickling whole modules, and which factories may run.

    The hints say how to allow more where the model is being loaded (a worker's settings, or arguments).
    """

    trust_pickled_models: bool = False
    allowed_entrypoints: tuple[str, ...] = ()
    pickle_hint: str = _WORKER_PICKLE_HINT
    # Formatted with the factory's top-level package and the factory itself.
    entrypoint_hint: str = _WORKER_ENTRYPOINT_HINT


@dataclass(frozen=True)
class LoadedModel:
    """A pretrained model in eval mode on the CPU, and how its file was stored."""

    module: torch.nn.Module
    stored_as: Literal["torchscript", "pickled module", "state_dict"]
    # A TorchScript model is copied by loading it again: copy.deepcopy gives it parameters that are not
    # leaves of the autograd graph, which an optimizer cannot train.
    script: bytes | None = None

    def fresh_copy(self) -> torch.nn.Module:
        """A private copy of the pristine model, in eval mode on the CPU, that a trial may change and train."""
        if self.script is not None:
            copied: torch.nn.Module = torch.jit.load(io.BytesIO(self.script), map_location="cpu")
        else:
            copied = copy.deepcopy(self.module)
        copied.eval()
        return copied


def resolve_model_file(given: str, roots: DataRoots | None = None) -> Path:
    """The model file a task names, as this host sees it; ModelError naming both spellings if it is not there.

    With roots (a worker's), a path outside them fails first, before anything about the file is looked up.
    """
    shown = absolute(given)
    resolved = roots.confine(given, what="model file") if roots is not None else shown
    host = socket.gethostname()
    if not resolved.exists():
        raise ModelError(f"model file {given!r} is missing on worker host {host} (looked for {shown})")
    if not resolved.is_file():
        raise ModelError(f"model {given!r} on worker host {host} is not a file ({shown})")
    return resolved


def file_format(path: Path, given: str) -> FileFormat:
    """TorchScript, torch.save or safetensors, told from the bytes (a file's name says nothing reliable)."""
    with path.open("rb") as stream:
        head = stream.read(9)
    if not head:
        raise ModelError(f"model file {given!r} is empty")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as error:
            raise ModelError(f"model file {given!r} is a damaged zip archive: {error}") from error
        # torch.jit.save writes the compiled code (<root>/code/) and constants.pkl; torch.save writes neither.
        if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
            return "torchscript"
        if any(name.endswith("/data.pkl") for name in names):
            return "torch-save"
        raise ModelError(
            f"model file {given!r} is a zip archive, but neither a TorchScript file nor one written by torch.save"
        )
    # torch.save's legacy format (_use_new_zipfile_serialization=False) is a pickle: protocol 2 or later.
    if head[0] == 0x80:
        return "torch-save"
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] <= path.stat().st_size:
        return "safetensors"
    raise ModelError(
        f"model file {given!r} is not a model torch can read (damaged, or another format); use a TorchScript"
        " file, a module or a state_dict saved with torch.save, or a state_dict in safetensors"
    )


def build_from_factory(factory: str, permissions: Permissions) -> torch.nn.Module:
    """The empty model the factory builds: run only when it is allowed; ModelError with the reason otherwise."""
    package = factory.partition(":")[0].split(".")[0]
    if not is_allowed(factory, permissions.allowed_entrypoints):
        allowed = ", ".join(permissions.allowed_entrypoints) or "none"
        raise ModelError(
            f"factory {factory} is not an allowed entry point on this worker (allowed: {allowed});"
            f" to allow it, {permissions.entrypoint_hint.format(package, factory)}"
        )
    module_name, _, function_name = factory.partition(":")
    try:
        module = importlib.import_module(module_name)
    # Importing user code can fail in any way its module-level code does (sys.exit included): each is one reason.
    except (Exception, SystemExit) as error:
        raise ModelError(
            f"factory {factory} cannot be imported on worker host {socket.gethostname()}:"
            f" {type(error).__name__}: {error}; install its package on every worker or put it on PYTHONPATH"
        ) from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelError(f"factory {factory}: module {module_name} has no function {function_name!r}")
    try:
        built = function()
    except Exception as error:
        raise ModelError(f"factory {factory} raised {type(error).__name__}: {error}") from error
    if not isinstance(built, torch.nn.Module):
        raise ModelError(f"factory {factory} returned a {type(built).__name__}, not a torch.nn.Module")
    return built


def _state_dict_in(loaded: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict a weights-only load gave: the mapping itself, or one under a checkpoint's usual key."""
    if not isinstance(loaded, Mapping):
        return None
    if loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
        return {str(name): value for name, value in loaded.items()}
    for key in _STATE_DICT_KEYS:
        inner = loaded.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return {str(name): value for name, value in inner.items()}
    return None


def _fill(module: torch.nn.Module, state: dict[str, torch.Tensor], given: str, factory: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        # torch lists every missing, unexpected and wrongly shaped key; the first few say enough.
        detail = " ".join(str(error).split())[:600]
        raise ModelError(
            f"the state_dict in {given!r} does not fit the model factory {factory} builds: {detail}"
        ) from error


def _pickled_class(path: Path) -> str:
    """ " (class pkg.mod.Net)": the class a pickled module was saved as, read without running the file; or ""."""
    unsafe = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if unsafe is None or not zipfile.is_zipfile(path):
        return ""
    try:
        names = [str(name) for name in unsafe(path)]
    # Only a hint for the reason: a file it cannot read is reported by the load that follows.
    except Exception:
        return ""
    own = [name for name in names if not name.startswith("torch.")] or names
    return f" (class {own[0]})" if own else ""


def _load_torch_save(path: Path, given: str, factory: str | None, permissions: Permissions) -> LoadedModel:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Not weights alone: a pickled object, which only a full unpickling (running code from the file) loads.
        return _load_pickled_module(path, given, factory, permissions)
    except Exception as error:
        raise ModelError(f"model file {given!r} cannot be read (damaged?): {_short(error)}") from error
    state = _state_dict_in(loaded)
    if state is None:
        raise ModelError(
            f"model file {given!r} holds a {type(loaded).__name__}, not a module or a state_dict of tensors"
        )
    if factory is None:
        raise ModelError(
            f"model file {given!r} holds a state_dict (weights without the model's code); name task.factory:"
            " package.module:function that builds the empty model for it"
        )
    module = build_from_factory(factory, permissions)
    _fill(module, state, given, factory)
    return LoadedModel(module=module, stored_as="state_dict")


def _load_pickled_module(
    path: Path, given: str, factory: str | None, permissions: Permissions
) -> LoadedModel:
    what = _pickled_class(path)
    if factory is not None:
        raise ModelError(
            f"model file {given!r} holds a whole pickled module{what}, not a state_dict for factory {factory};"
            " save model.state_dict() for the factory to fill, or leave factory out"
        )
    if not permissions.trust_pickled_models:
        raise ModelError(
            f"model file {given!r} holds a whole pickled module{what}; loading it runs code from the file,"
            f" so it is refused unless you trust it: {permissions.pickle_hint}. Or ship a TorchScript file"
            " (torch.jit.script(model).save(path)) or a state_dict (torch.save(model.state_dict(), path))"
            " with task.factory"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as error:
        # A class defined in the script that saved the model lives in no module another process can import.
        if "__main__." in what:
            raise ModelError(
                f"model file {given!r} holds a pickled module{what} defined in the script that saved it, which no"
                " other process can import: define the class in an importable module and save again, or ship"
                " TorchScript or a state_dict with task.factory"
            ) from error
        raise ModelError(
            f"model file {given!r} holds a pickled module{what} whose code cannot be imported on worker host"
            f" {socket.gethostname()}: {_short(error)}; its module must be importable where the model loads"
            " (installed, or on PYTHONPATH)"
        ) from error
    except Exception as error:
        raise ModelError(f"model file {given!r} cannot be unpickled: {_short(error)}") from error
    if not isinstance(loaded, torch.nn.Module):
        raise ModelError(f"model file {given!r} holds a {type(loaded).__name__}, not a torch.nn.Module")
    return LoadedModel(module=loaded, stored_as="pickled module")


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:400]}"


def load_model_file(
    given: str, *, factory: str | None, permissions: Permissions, roots: DataRoots | None = None
) -> LoadedModel:
    """Load the model a torch-module task names, in eval mode on the CPU; ModelError with the reason otherwise.

    A worker passes its data roots: a file outside them is refused unread.
    """
    path = resolve_model_file(given, roots)
    stored = file_format(path, given)
    if stored == "torchscript":
        if factory is not None:
            raise ModelError(
                f"model file {given!r} is TorchScript, which carries its own code; factory {factory} applies only"
                " to a state_dict file: leave it out"
            )
        try:
            script = path.read_bytes()
            module = torch.jit.load(io.BytesIO(script), map_location="cpu")
        except Exception as error:
            raise ModelError(f"TorchScript file {given!r} cannot be loaded: {_short(error)}") from error
        loaded = LoadedModel(module=module, stored_as="torchscript", script=script)
    elif stored == "safetensors":
        try:
            state = safetensors.torch.load_file(str(path), device="cpu")
        except Exception as error:
            raise ModelError(f"safetensors file {given!r} cannot be read: {_short(error)}") from error
        if factory is None:
            raise ModelError(
                f"model file {given!r} holds weights only (safetensors); name task.factory: package.module:function"
                " that builds the empty model for them"
            )
        module = build_from_factory(factory, permissions)
        _fill(module, state, given, factory)
        loaded = LoadedModel(module=module, stored_as="state_dict")
    else:
        loaded = _load_torch_save(path, given, factory, permissions)
    loaded.module.eval()
    return loaded


def file_stamp(given: str) -> tuple[str, int, int] | None:
    """The file's resolved path, size and modification time: a rewritten model file is loaded again."""
    try:
        path = Path(given).expanduser().resolve()
        stat = path.stat()
    except OSError:
        return None
    return str(path), stat.st_size, stat.st_mtime_ns
