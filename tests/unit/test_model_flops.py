"""The MFU arithmetic of the GPU throughput benchmark: the analytic FLOPs against PyTorch's own count."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.model_flops import encoder_training_flops, matmul_weights, peak_flops
from studies.spec import Task
from worker.model import EncoderClassifier, build_head, load_encoder, mark_trainable, model_folder


@pytest.mark.parametrize("length", [16, 128])
def test_encoder_training_flops_match_pytorchs_count_of_a_real_step(length: int) -> None:
    # A copy trained in full, as a worker trains one: the process's cached encoder is shared, and a LoRA trial
    # leaves its parameters frozen.
    encoder = copy.deepcopy(load_encoder(model_folder(Task())).model)
    mark_trainable(encoder, finetune="full", k=None)
    head = build_head(
        input_size=encoder.config.hidden_size, n_classes=5, depth=1, width=64, activation="relu"
    )
    classifier = EncoderClassifier(encoder, head).train()
    batch = 4
    ids = torch.randint(1000, 2000, (batch, length))
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(
            classifier(ids, torch.ones_like(ids)), torch.zeros(batch).long()
        )
        loss.backward()
    counted = counter.get_total_flops()
    estimated = encoder_training_flops(
        layer_weights=matmul_weights(encoder.encoder),
        n_layers=encoder.config.num_hidden_layers,
        hidden_size=encoder.config.hidden_size,
        per_sequence_weights=matmul_weights(head),
        lengths=[length] * batch,
    )
    # What the estimate leaves out is the unused pooler's forward pass: well under 1% here.
    assert estimated == pytest.approx(counted, rel=0.01)


def test_peak_flops_from_the_device_name_or_the_override() -> None:
    assert peak_flops("NVIDIA H200") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe") == pytest.approx(756e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
    assert peak_flops("Some Future GPU") is None
    assert peak_flops("Some Future GPU", override_tflops=100.0) == pytest.approx(100e12)
