"""Model FLOPs of fine-tuning a transformer encoder with a head, and GPUs' peak bf16 rates, for MFU."""

from __future__ import annotations

from collections.abc import Iterable

import torch

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets; matched against
# torch.cuda.get_device_name() in this order. Anything else needs --peak-tflops.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
]


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """The device's peak bf16 FLOP/s: the override if given, else the table's, else None."""
    if override_tflops:
        return override_tflops * 1e12
    for name, tflops in PEAK_BF16_TFLOPS:
        if name in device_name:
            return tflops * 1e12
    return None


def matmul_weights(module: torch.nn.Module) -> int:
    """The number of weights that multiply activations: every Linear's weight matrix."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def encoder_training_flops(
    *,
    layer_weights: int,
    n_layers: int,
    hidden_size: int,
    per_sequence_weights: int,
    lengths: Iterable[int],
) -> float:
    """FLOPs of one forward and backward pass over sequences of these lengths, every weight trained.

    As PaLM's MFU counts them (Chowdhery et al. 2022, appendix B): 6 FLOPs per weight and token in
    the encoder's layers (2 forward, 4 backward), 12 * layers * hidden * length per token for
    attention's two products, and 6 per weight and sequence for what runs once per sequence (the
    pooled head). Embedding lookups, norms and activations are not matrix products and count nothing.
    """
    total = 0.0
    for length in lengths:
        total += 6.0 * layer_weights * length
        total += 12.0 * n_layers * hidden_size * length * length
        total += 6.0 * per_sequence_weights
    return total
