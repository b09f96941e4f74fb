"""TrialFailure: what a task raises when one trial cannot go on; its message is the trial's fail_reason."""

from __future__ import annotations


class TrialFailure(Exception):
    """One trial's data, model or training cannot be used: the trial fails with this reason, the worker goes on.

    A task kind raises a subclass for what the user can fix (a missing file, a bad checkpoint, a NaN loss); the
    trial runner records the message and claims the next trial, without a traceback in the worker's log.
    """
