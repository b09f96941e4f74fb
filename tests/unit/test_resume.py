"""Resuming a run from its checkpoint gives the epochs, and the weights, of a run never stopped, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from tests.unit.test_training import params, two_blobs
from worker.checkpoints import from_bytes, to_bytes
from worker.epochs import EpochResult, StopTraining, TrainResult
from worker.training import train_head

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class MemoryCheckpoints:
    """Checkpoints kept as the bytes a worker would store; saved() hands back the last one."""

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data
        self.epochs: list[int] = []

    def saved(self) -> dict[str, Any] | None:
        return None if self.data is None else from_bytes(self.data)

    def save(self, epoch: int, state: Callable[[], dict[str, Any]]) -> None:
        self.data = to_bytes(state())
        self.epochs.append(epoch)


def stop_after(epoch: int, seen: list[EpochResult]) -> Callable[[EpochResult], None]:
    def on_epoch(result: EpochResult) -> None:
        seen.append(result)
        if result.epoch == epoch:
            raise StopTraining("worker stopping")

    return on_epoch


def same_run(one: TrainResult, other: TrainResult) -> None:
    assert one.epochs == other.epochs
    assert (one.best_epoch, one.kept_epoch) == (other.best_epoch, other.kept_epoch)
    assert one.best_state.keys() == other.best_state.keys()
    for name, tensor in one.best_state.items():
        assert torch.equal(tensor, other.best_state[name]), name


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam", "adamw"])
def test_a_head_resumed_after_epoch_3_ends_exactly_as_one_never_stopped(optimizer: str) -> None:
    features = two_blobs()
    chosen = params(epochs=7, optimizer=optimizer, learning_rate=0.05, batch_size=8)
    whole = train_head(features=features, params=chosen, seed=11, device=CPU)

    checkpoints = MemoryCheckpoints()
    # The checkpoint after epoch 3 is offered after its report returned: a stop at epoch 4 keeps the one after 3.
    with pytest.raises(StopTraining):
        train_head(
            features=features,
            params=chosen,
            seed=11,
            device=CPU,
            on_epoch=stop_after(4, []),
            checkpoints=checkpoints,
        )
    assert checkpoints.epochs == [1, 2, 3]
    # Whatever else ran in this process meanwhile must not matter: the random state travels in the checkpoint.
    torch.manual_seed(12345)
    torch.rand(100)
    replayed: list[EpochResult] = []
    resumed = train_head(
        features=features,
        params=chosen,
        seed=11,
        device=CPU,
        on_epoch=replayed.append,
        checkpoints=MemoryCheckpoints(checkpoints.data),
    )
    same_run(resumed, whole)
    # The epochs it did not run again are reported once more, in order, so a retried trial's pruner sees them.
    assert [r.epoch for r in replayed] == list(range(1, 8))


def test_no_checkpoint_is_offered_after_the_last_epoch() -> None:
    checkpoints = MemoryCheckpoints()
    train_head(features=two_blobs(), params=params(epochs=3), seed=1, device=CPU, checkpoints=checkpoints)
    assert checkpoints.epochs == [1, 2]


def test_a_checkpoint_of_another_model_is_refused() -> None:
    checkpoints = MemoryCheckpoints()
    train_head(
        features=two_blobs(), params=params(epochs=2, width=32), seed=1, device=CPU, checkpoints=checkpoints
    )
    with pytest.raises(ValueError, match="not this trial's model"):
        train_head(
            features=two_blobs(),
            params=params(epochs=2, width=64),
            seed=1,
            device=CPU,
            checkpoints=MemoryCheckpoints(checkpoints.data),
        )


def test_a_checkpoint_loads_no_code() -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("ran",))

    with pytest.raises(Exception, match=r"[Ww]eights only load failed|Unsupported global"):
        from_bytes(to_bytes({"epoch": 1, "x": Evil()}))
