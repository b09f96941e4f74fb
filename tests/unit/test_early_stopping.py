"""Early stopping counts epochs without a better metric, in either direction; a stop carries the epochs so far."""

from __future__ import annotations

import pytest

from worker.early_stopping import Patience
from worker.epochs import EpochResult, StopTraining
from worker.tasks.synthetic import run_synthetic


def stalls(patience: Patience, values: list[float]) -> list[bool]:
    return [patience.stalled(v) for v in values]


def test_a_loss_stalls_after_patience_epochs_without_a_lower_one() -> None:
    # An equal loss is no better: only a strictly lower one resets the count.
    assert stalls(Patience(2, minimize=True), [1.0, 0.8, 0.9, 0.8, 0.7, 0.75, 0.71]) == [
        False,
        False,
        False,
        True,
        False,
        False,
        True,
    ]


def test_an_accuracy_stalls_after_patience_epochs_without_a_higher_one() -> None:
    assert stalls(Patience(1, minimize=False), [0.5, 0.6, 0.55]) == [False, False, True]


def test_patience_zero_never_stalls() -> None:
    assert not any(stalls(Patience(0, minimize=True), [1.0, 2.0, 3.0, 4.0]))


def test_the_synthetic_task_hands_its_epochs_so_far_to_an_early_stop() -> None:
    def stop_at_two(result: EpochResult) -> None:
        if result.epoch == 2:
            raise StopTraining("plateau")

    with pytest.raises(StopTraining) as stopped:
        run_synthetic(
            params={"epochs": 5}, seed=1, epoch_sleep_s=0.0, on_epoch=stop_at_two, interrupted=lambda: None
        )
    assert stopped.value.result is not None
    assert [e.epoch for e in stopped.value.result.epochs] == [1, 2]
