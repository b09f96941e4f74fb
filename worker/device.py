"""Picks the torch device a worker trains on and sizes its CPU thread pool."""

import contextlib
import os
from collections.abc import Iterator

import torch


class DeviceError(ValueError):
    """The device asked for is not one this host can train on: the worker refuses to start."""


def pick_device(requested: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; anything else is taken as torch spells it, if this host has it."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device: torch.device | None = torch.device(requested)
    except RuntimeError:
        device = None
    # Training is written and tested for CPUs and CUDA only; torch's other kinds (mps, meta, xla) would
    # fail inside the first trial instead of here.
    if device is None or device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {requested!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {requested!r} asked for, but CUDA is not available here")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"device {requested!r} asked for, but this host has {count} CUDA device(s): "
                f"cuda:0 to cuda:{count - 1}"
            )
    return device


def configure_threads(cpu_threads: int) -> None:
    """Cap intra-op threads: small head models lose more to thread hand-offs than they gain."""
    torch.set_num_threads(cpu_threads)


def describe(device: torch.device) -> str:
    """A human label for the device, e.g. `cuda:0 (NVIDIA H200)` or `cpu`."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


@contextlib.contextmanager
def all_cores() -> Iterator[None]:
    """Run a big batch job (encoding, training through the encoder) on every core, then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
