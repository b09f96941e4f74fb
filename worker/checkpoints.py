"""A running trial's checkpoints: written to the artifact store every so often, read back when it resumes."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import torch

from studies import Claim, StudyRepository
from studies.artifacts import ArtifactStore
from studies.checkpoints import CheckpointRef, discard_checkpoint, read_checkpoint, write_checkpoint
from studies.errors import TrialVanished
from studies.resilience import GaveUp

log = logging.getLogger("tunefleet.worker")

T = TypeVar("T")
# A store call about the claim's trial, made as the runner makes them (waits out outages, TrialVanished if gone).
OnTrial = Callable[[str, Callable[[], T]], T]
# The user attributes a trial records about its checkpoints.
RESUMED_FROM_EPOCH = "resumed_from_epoch"
CHECKPOINT_ERROR = "checkpoint_error"
# What a checkpoint also holds: the trial's seconds up to it, over all its runs.
SECONDS_KEY = "trial_s"


def to_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> dict[str, Any]:
    # weights_only: a checkpoint holds tensors and plain values, and nothing in it may run code when loaded.
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict) or "epoch" not in loaded:
        raise ValueError("it is not a tunefleet checkpoint")
    return loaded


class TrialCheckpoints:
    """The EpochCheckpoints of one claimed trial: at most one checkpoint every interval_s of its run, the last
    one kept in the artifact store and named on the trial, so a hand-back or a retry resumes after its epoch."""

    def __init__(
        self,
        *,
        claim: Claim,
        repository: StudyRepository,
        store: ArtifactStore,
        interval_s: float,
        clock: Callable[[], float],
        on_trial: OnTrial[Any],
        note: Callable[[str, Any], None],
    ) -> None:
        self.claim = claim
        self.repository = repository
        self.store = store
        self.interval_s = interval_s
        self.clock = clock
        self.on_trial = on_trial
        self.note = note
        self.current: CheckpointRef | None = None
        self.started = self.last_saved = clock()
        self.failed = False
        # The trial's seconds before this run, by its checkpoint: a resumed trial's trial_s counts every run of it.
        self.seconds_before = 0.0

    def _name(self) -> str:
        return f"trial {self.claim.trial.number} of {self.claim.study_name}"

    def saved(self) -> dict[str, Any] | None:
        """The checkpoint the trial resumes from, or None; one that cannot be read is logged and left aside."""
        ref = self.on_trial("checkpoint", lambda: self.repository.checkpoint_of(self.claim))
        if ref is None:
            return None
        self.current = ref
        try:
            state = from_bytes(read_checkpoint(self.store, ref.artifact_id))
        except Exception as error:
            # Losing the checkpoint costs the epochs it held, not the trial: train from the first epoch.
            reason = (
                f"its checkpoint after epoch {ref.epoch} could not be read ({type(error).__name__}: {error})"
            )
            log.warning("%s: %s; training from epoch 1", self._name(), reason)
            self.note(CHECKPOINT_ERROR, reason[:500])
            return None
        self.note(RESUMED_FROM_EPOCH, int(state["epoch"]))
        self.seconds_before = float(state.get(SECONDS_KEY, 0.0))
        self.last_saved = self.clock()
        return state

    def seconds(self) -> float:
        """The trial's seconds so far, over every run of it since its first epoch."""
        return self.seconds_before + self.clock() - self.started

    def save(self, epoch: int, state: Callable[[], dict[str, Any]], *, force: bool = False) -> None:
        """Write a checkpoint after the epoch when interval_s has passed since the last one (or the start), or
        when forced (the trial pauses after this epoch)."""
        if self.failed or (not force and self.clock() - self.last_saved < self.interval_s):
            return
        try:
            artifact_id = write_checkpoint(self.store, to_bytes({**state(), SECONDS_KEY: self.seconds()}))
        except Exception as error:
            # A full disk or an unreachable bucket must not cost the trial: it trains on without checkpoints.
            self.failed = True
            log.warning("%s: checkpoint not saved, going on without: %s", self._name(), error)
            self.note(
                CHECKPOINT_ERROR, f"not saved after epoch {epoch}: {type(error).__name__}: {error}"[:500]
            )
            return
        ref = CheckpointRef(artifact_id, epoch)
        try:
            self.on_trial("save checkpoint", lambda: self.repository.save_checkpoint(self.claim, ref))
        except (optuna.exceptions.UpdateFinishedTrialError, GaveUp, TrialVanished):
            discard_checkpoint(self.store, artifact_id)
            raise
        previous, self.current = self.current, ref
        self.last_saved = self.clock()
        if previous is not None:
            discard_checkpoint(self.store, previous.artifact_id)

    def discard(self) -> None:
        """Delete the trial's checkpoint once it has ended: nothing resumes a finished trial."""
        if self.current is not None:
            discard_checkpoint(self.store, self.current.artifact_id)
            self.current = None
