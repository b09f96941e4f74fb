"""Early stopping counts epochs without a better metric, in either direction."""

from __future__ import annotations

from worker.early_stopping import Patience


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
