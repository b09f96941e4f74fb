"""On a CUDA GPU: a trial of several objectives measures its model there, latency synchronized on the device.

Skipped where torch sees no GPU (CI). Run as tests/gpu/test_cuda.py is (`pytest --noconftest -m gpu tests/gpu`):
no fixture of tests/conftest.py, no import of the service. TUNEFLEET_GPU_TEST_MODEL names the encoder folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from studies import StudyRepository, WorkerIdentity, open_storage
from studies.artifacts import MODEL_ARTIFACT_ATTR, open_artifact_store
from tests.finetune_spec import finetune_spec, run_next, write_csv
from worker.measures import latency_ms
from worker.model import builtin_model_folder
from worker.runner import TrialRunner
from worker.tasks.interface import TimedModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]

WORKER = WorkerIdentity(host="gpu-test", pid=1, device="cuda")


def encoder_folder() -> str:
    return os.environ.get("TUNEFLEET_GPU_TEST_MODEL") or str(builtin_model_folder("all-MiniLM-L6-v2"))


@pytest.fixture
def repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StudyRepository]:
    monkeypatch.setenv("TUNEFLEET_DATA_ROOTS", f"{tmp_path},{Path(encoder_folder()).resolve().parent}")
    repo = StudyRepository(open_storage(f"sqlite:///{tmp_path / 'store.db'}"))
    yield repo
    repo.engine.dispose()


def test_latency_on_the_gpu_waits_for_the_device_and_grows_with_the_work() -> None:
    device = torch.device("cuda")
    small = torch.nn.Linear(64, 64).to(device)
    large = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(8)]).to(device)
    quick = latency_ms(TimedModel(small, (torch.randn(1, 64, device=device),)), device)
    # Eight 4096-wide layers over 2,048 rows: far more work than one 64-wide layer over one row. Without the
    # synchronisation both would time only the kernel launches.
    slow = latency_ms(TimedModel(large, (torch.randn(2048, 4096, device=device),)), device)
    assert 0 < quick < slow


@pytest.mark.parametrize("finetune", ["head", "full"])
def test_a_trial_of_several_objectives_measures_its_model_on_the_gpu(
    repository: StudyRepository, tmp_path: Path, finetune: str
) -> None:
    data = {"train": str(write_csv(tmp_path / "train.csv", 16))}
    objective = {
        "metrics": [
            {"name": "val_loss", "direction": "minimize"},
            {"name": "latency_ms", "direction": "minimize"},
            {"name": "params_trainable", "direction": "minimize"},
        ],
        "constraints": ["model_size_mb <= 1000"],
        "latency_batch_size": 8,
    }
    name = f"gpu-front-{finetune}"
    repository.create(finetune_spec(name, encoder_folder(), data, finetune, objective=objective))
    runner = TrialRunner(
        repository=repository,
        device=torch.device("cuda"),
        cache_dir=tmp_path / "cache",
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
    )
    outcome, trial = run_next(runner, repository, name, WORKER)
    attrs = trial.user_attrs
    assert outcome == "complete", attrs.get("fail_reason")
    assert trial.state == TrialState.COMPLETE
    assert trial.values == [attrs["val_loss"], attrs["latency_ms"], attrs["params_trainable"]]
    assert attrs["latency_device"].startswith("cuda") and attrs["latency_ms"] > 0
    assert attrs["latency_batch_size"] == 8 and attrs[MODEL_ARTIFACT_ATTR]
    # A full fine-tune trains the encoder too: millions of parameters, not a head's thousands.
    assert (attrs["params_trainable"] > 1_000_000) == (finetune == "full")
