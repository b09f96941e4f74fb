"""Early stopping: ends a trial whose validation metric has stopped getting better."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Patience:
    """Counts the epochs since the metric last got better; stalled once that count reaches `epochs` (0: never)."""

    epochs: int
    minimize: bool
    best: float | None = None
    since_best: int = 0

    def stalled(self, value: float) -> bool:
        """Take one epoch's metric; whether the trial has now gone `epochs` epochs without a better one."""
        if self.best is None or (value < self.best if self.minimize else value > self.best):
            self.best = value
            self.since_best = 0
        else:
            self.since_best += 1
        return self.epochs > 0 and self.since_best >= self.epochs

    def reason(self) -> str:
        """Why the trial ended early, as recorded on it."""
        return f"no better validation metric in {self.epochs} epochs"
