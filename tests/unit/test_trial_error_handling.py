"""How the trial runner ends a trial on an exception, the same whether it trained or measured its model."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy
import torch

from studies.errors import TrialVanished
from studies.resilience import GaveUp
from worker.failures import TrialFailure
from worker.runner import Handling, handling

CPU_OUT_OF_MEMORY = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 295279001600 bytes"


class MissingFile(TrialFailure):
    """A task kind's failure the user can fix."""


def dropped_connection() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def wrapped_by_optuna() -> optuna.exceptions.StorageInternalError:
    try:
        try:
            raise dropped_connection()
        except sqlalchemy.exc.OperationalError as error:
            raise optuna.exceptions.StorageInternalError("an error occurred") from error
    except optuna.exceptions.StorageInternalError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TrialFailure("no such file: train.csv"), Handling.FAIL),
        (MissingFile("no such file: train.csv"), Handling.FAIL),
        # A task kind's own words win over what they say: a failure that mentions memory is not an OOM.
        (TrialFailure("out of memory while reading the data"), Handling.FAIL),
        (optuna.exceptions.UpdateFinishedTrialError("already finished"), Handling.RAISE),
        (GaveUp("the store stayed unreachable"), Handling.RAISE),
        (TrialVanished("gone", 3), Handling.RAISE),
        (dropped_connection(), Handling.RAISE),
        (wrapped_by_optuna(), Handling.RAISE),
        (
            torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 275.00 GiB"),
            Handling.OUT_OF_MEMORY,
        ),
        (RuntimeError(CPU_OUT_OF_MEMORY), Handling.OUT_OF_MEMORY),
        (MemoryError(), Handling.OUT_OF_MEMORY),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), Handling.BROKEN),
        (ValueError("out of memory"), Handling.BROKEN),
        (sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), Handling.BROKEN),
        (KeyError("label"), Handling.BROKEN),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.name,
)
def test_each_exception_ends_its_trial_one_way(error: Exception, expected: Handling) -> None:
    assert handling(error) is expected
