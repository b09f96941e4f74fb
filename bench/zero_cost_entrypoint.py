"""A kind python entry point that does what the synthetic task does: no training, the same seeded reports.

Benchmark 2c runs it on workers started with TUNEFLEET_ALLOWED_ENTRYPOINTS=bench and the checkout on
PYTHONPATH, against the synthetic task on the same workers, to measure what the Trial API costs per trial.
"""

from __future__ import annotations

from tunefleet import Trial
from worker.synthetic_loss import synthetic_loss


def run(trial: Trial) -> None:
    """For each of the trial's epochs, as the synthetic task: ask whether to stop, then report the synthetic loss."""
    for epoch in range(1, int(trial.params.get("epochs", 1)) + 1):
        if trial.should_stop():
            return
        loss = synthetic_loss(trial.params, seed=trial.seed, epoch=epoch)
        if trial.report(epoch, train_loss=loss, val_loss=loss, val_accuracy=1.0 / (1.0 + loss)):
            return
