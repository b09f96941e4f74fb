"""Picks the torch device a worker trains on and sizes its CPU thread pool."""

import torch


def pick_device(requested: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; anything else is taken as torch spells it."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} asked for, but CUDA is not available here")
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
