"""A head's parameters and shape: a linear head (depth 0) needs no width or activation, a deeper one both."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from worker.hyperparams import HeadParams, head_architecture
from worker.model import build_head

LINEAR = {"learning_rate": 0.01, "batch_size": 16, "epochs": 2, "depth": 0, "optimizer": "adam"}


def test_a_depth_0_trials_params_without_width_or_activation_make_a_linear_head() -> None:
    params = HeadParams.of({**LINEAR, "encoder_learning_rate": 1e-5})
    assert (params.width, params.activation) == (None, None)
    head = build_head(
        input_size=8, n_classes=3, depth=params.depth, width=params.width, activation=params.activation
    )
    assert [type(layer) for layer in head] == [torch.nn.Linear]
    assert head_architecture(LINEAR) == {"depth": 0}


def test_a_linear_head_ignores_a_width_and_activation_drawn_anyway() -> None:
    # A space that draws them at every depth (when: {depth: {ge: 0}}) gives a linear head both.
    params = HeadParams.of({**LINEAR, "width": 584, "activation": "elu"})
    torch.manual_seed(0)
    with_them = build_head(
        input_size=8, n_classes=3, depth=0, width=params.width, activation=params.activation
    )
    torch.manual_seed(0)
    without = build_head(input_size=8, n_classes=3, depth=0)
    assert torch.equal(with_them[0].weight, without[0].weight)
    assert head_architecture({**LINEAR, "width": 584, "activation": "elu"}) == {"depth": 0}


def test_a_deeper_head_records_its_width_and_activation() -> None:
    params = HeadParams.of({**LINEAR, "depth": 2, "width": 32, "activation": "gelu"})
    head = build_head(input_size=8, n_classes=3, depth=2, width=params.width, activation=params.activation)
    assert [layer.out_features for layer in head if isinstance(layer, torch.nn.Linear)] == [32, 32, 3]
    assert head_architecture({**LINEAR, "depth": 2, "width": 32, "activation": "gelu"}) == {
        "depth": 2,
        "width": 32,
        "activation": "gelu",
    }


@pytest.mark.parametrize("missing", ["width", "activation"])
def test_a_deeper_head_without_its_width_or_activation_is_refused_saying_so(missing: str) -> None:
    params: dict[str, Any] = {**LINEAR, "depth": 1, "width": 32, "activation": "relu"}
    del params[missing]
    with pytest.raises(ValueError, match="a head of depth 1 needs width and activation"):
        HeadParams.of(params)
    with pytest.raises(ValueError, match="a head of depth 1 needs width and activation"):
        build_head(
            input_size=8, n_classes=3, depth=1, width=params.get("width"), activation=params.get("activation")
        )
