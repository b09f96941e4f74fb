"""Out of memory is information: the trial ends with the reason, the worker goes on, and TPE steers away.

Only the error is faked (no test machine has a GPU to exhaust): the trial function raises the very
exception torch raises, torch.cuda.OutOfMemoryError, which can be built on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from optuna.trial import TrialState

from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from worker.runner import OUT_OF_MEMORY_CONSTRAINT, TrialRunner, allocation_size, is_out_of_memory
from worker.tasks import synthetic as synthetic_task

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")
# What torch says when a 275 GiB allocation fails: on a GPU, and in host memory (275 GiB in bytes).
CUDA_OUT_OF_MEMORY = (
    "CUDA out of memory. Tried to allocate 275.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which"
    " 77.12 GiB is free. Of the allocated memory 1.20 GiB is allocated by PyTorch."
)
CPU_OUT_OF_MEMORY = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory:"
    " you tried to allocate 295279001600 bytes. Error code 12 (Cannot allocate memory)"
)
BATCH_SIZES = [16, 32, 64, 128, 256, 512]
FITS_BELOW = 128
WIDEST_THAT_FITS = 1024


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[StudyRepository]:
    repo = StudyRepository(open_storage(f"sqlite:///{tmp_path / 'store.db'}"))
    yield repo
    repo.engine.dispose()


@pytest.fixture
def runner(repository: StudyRepository, tmp_path: Path) -> TrialRunner:
    return TrialRunner(repository=repository, device=torch.device("cpu"), cache_dir=tmp_path)


def fake_device_memory(monkeypatch: pytest.MonkeyPatch, error: BaseException | None = None) -> None:
    """Trials with batch_size >= FITS_BELOW or a head wider than WIDEST_THAT_FITS raise what torch raises
    when memory runs out (error, or a CUDA out-of-memory error of a 275 GiB allocation)."""
    real = synthetic_task.run_synthetic

    def run(**kwargs: Any) -> Any:
        params = kwargs["params"]
        # A linear head (depth 0) has no width: only its batch can be too big.
        if params["batch_size"] >= FITS_BELOW or params.get("width", 0) > WIDEST_THAT_FITS:
            raise error or torch.cuda.OutOfMemoryError(CUDA_OUT_OF_MEMORY)
        return real(**kwargs)

    monkeypatch.setattr(synthetic_task, "run_synthetic", run)


def synthetic(name: str, **overrides: Any) -> StudySpec:
    body: dict[str, Any] = {
        "name": name,
        "task": {"kind": "synthetic"},
        "space": {"batch_size": {"type": "categorical", "choices": BATCH_SIZES}, "epochs": 1},
        # Plain TPE: the cost-aware one weighs measured seconds, which vary with the machine's load.
        "sampler": {"name": "tpe", "seed": 11, "n_startup_trials": 8, "cost_weight": 0},
        "pruner": {"name": "none"},
        "budget": {"n_trials": 2},
    }
    body.update(overrides)
    return StudySpec.model_validate(body)


HEAD = {"batch_size": 16, "depth": 3, "width": 65536, "epochs": 1, "learning_rate": 1e-3}


@pytest.mark.parametrize(
    "error",
    [torch.cuda.OutOfMemoryError(CUDA_OUT_OF_MEMORY), RuntimeError(CPU_OUT_OF_MEMORY)],
    ids=["cuda", "cpu"],
)
def test_an_out_of_memory_trial_names_the_allocation_and_the_parameters_that_asked_for_it(
    repository: StudyRepository,
    runner: TrialRunner,
    study_name: str,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
) -> None:
    # A head 65536 wide asks for 275 GiB at a batch size that fits: the reason must name the head, not
    # only the batch size, and say how much was asked for.
    fake_device_memory(monkeypatch, error)
    repository.create(synthetic(study_name, space=HEAD))
    repository.create(synthetic(f"{study_name}-small", space={**HEAD, "width": 64}))

    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    assert runner.run(claim) == "out of memory"
    trial = repository.trial(repository.get(study_name), claim.trial.number)
    assert trial.user_attrs["fail_reason"] == (
        "out of memory: tried to allocate 275.00 GiB (batch_size=16, depth=3, width=65536)"
    )
    assert trial.state == TrialState.PRUNED
    assert trial.constraints == {OUT_OF_MEMORY_CONSTRAINT: 1.0}

    # The same runner takes the next trial as if nothing happened.
    claim = repository.claim(WORKER, study_names=[f"{study_name}-small"])
    assert claim is not None
    assert runner.run(claim) == "complete"
    done = repository.trial(repository.get(f"{study_name}-small"), claim.trial.number)
    assert done.state == TrialState.COMPLETE and done.constraints == {}


def test_an_out_of_memory_error_that_gives_no_size_still_names_the_parameters(
    repository: StudyRepository, runner: TrialRunner, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_device_memory(monkeypatch, MemoryError())
    repository.create(synthetic(study_name, space={**HEAD, "batch_size": 512, "width": 64}))
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    assert runner.run(claim) == "out of memory"
    trial = repository.trial(repository.get(study_name), claim.trial.number)
    assert trial.user_attrs["fail_reason"] == "out of memory (batch_size=512, depth=3, width=64)"
    assert trial.state == TrialState.PRUNED


def test_the_allocation_size_is_read_as_torch_writes_it_on_each_device() -> None:
    assert allocation_size(CUDA_OUT_OF_MEMORY) == "275.00 GiB"
    assert allocation_size(CPU_OUT_OF_MEMORY) == "275.00 GiB"
    assert allocation_size("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 4.00 GiB total)") == (
        "20.00 MiB"
    )
    mps = "MPS backend out of memory (MPS allocated: 1.00 GB). Tried to allocate 256 bytes on private pool."
    assert allocation_size(mps) == "256 bytes"
    assert allocation_size("DefaultCPUAllocator: you tried to allocate 3221225472 bytes") == "3.00 GiB"
    assert allocation_size("CUDA out of memory") is None


def test_only_memory_errors_count_as_out_of_memory() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError(CPU_OUT_OF_MEMORY))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_tpe_learns_to_avoid_batch_sizes_that_ran_out_of_memory(
    repository: StudyRepository, runner: TrialRunner, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_device_memory(monkeypatch)
    n_trials, n_startup = 32, 8
    repository.create(synthetic(study_name, budget={"n_trials": n_trials}))
    outcomes = []
    for _ in range(n_trials):
        claim = repository.claim(WORKER, study_names=[study_name])
        assert claim is not None
        outcomes.append(runner.run(claim))
    guided = outcomes[n_startup:]
    # Half the choices do not fit: blind sampling runs out of memory about half the time.
    assert guided.count("out of memory") <= len(guided) // 4, outcomes
    assert repository.progress(repository.get(study_name)).state == "completed"


def test_a_missing_data_file_trips_the_breaker_after_three_alike_failures(
    repository: StudyRepository, runner: TrialRunner, study_name: str, tmp_path: Path
) -> None:
    missing = tmp_path / "gone" / "train.csv"
    repository.create(
        StudySpec.model_validate(
            {
                "name": study_name,
                "task": {"data": {"train": str(missing)}, "max_length": 32},
                "budget": {"n_trials": 10},
            }
        )
    )
    reasons = []
    for _ in range(3):
        claim = repository.claim(WORKER, study_names=[study_name])
        assert claim is not None
        assert runner.run(claim) == "fail"
        reasons.append(
            repository.trial(repository.get(study_name), claim.trial.number).user_attrs["fail_reason"]
        )
    assert len(set(reasons)) == 1 and str(missing) in reasons[0] and "missing on worker host" in reasons[0]
    record = repository.get(study_name)
    assert record.state == "failed"
    assert record.state_reason == f"the first 3 trials failed: {reasons[0]}"
    assert repository.claim(WORKER, study_names=[study_name]) is None
