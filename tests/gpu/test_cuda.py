"""On a CUDA GPU: every fine-tune mode trains there in bf16, a real out-of-memory prunes its trial and the
worker goes on, and `--gpus` pins one process per GPU.

Skipped where torch sees no GPU (CI). bench/device_check.sh runs them on a GPU machine without network access as
`pytest --noconftest -m gpu tests/gpu`, so nothing here may use a fixture of tests/conftest.py, nor import the
service (that machine has the worker's dependencies only). TUNEFLEET_GPU_TEST_MODEL names the encoder
folder (there: the built-in MiniLM's architecture with random weights, bench/device_model.py); by default the
built-in MiniLM.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from studies import StudyRepository, WorkerIdentity, open_storage
from studies.artifacts import MODEL_ARTIFACT_ATTR, extract_model_archive, open_artifact_store
from tests.finetune_spec import finetune_spec, run_next, write_csv
from worker.device import DeviceError, pick_device
from worker.export import evaluate, load_best_model
from worker.finetune import autocast_for
from worker.model import builtin_model_folder
from worker.runner import TrialRunner

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]

WORKER = WorkerIdentity(host="gpu-test", pid=1, device="cuda")


def encoder_folder() -> str:
    return os.environ.get("TUNEFLEET_GPU_TEST_MODEL") or str(builtin_model_folder("all-MiniLM-L6-v2"))


@pytest.fixture(autouse=True)
def _worker_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers read data and local models only inside their data roots, and join a store rather than make one:
    # these tests' files and stores live in tmp_path.
    monkeypatch.setenv("TUNEFLEET_DATA_ROOTS", f"{tmp_path},{Path(encoder_folder()).resolve().parent}")
    monkeypatch.setenv("TUNEFLEET_CREATE_STORE", "1")


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[StudyRepository]:
    repo = StudyRepository(open_storage(f"sqlite:///{tmp_path / 'store.db'}"))
    yield repo
    repo.engine.dispose()


@pytest.fixture
def runner(repository: StudyRepository, tmp_path: Path) -> TrialRunner:
    return TrialRunner(
        repository=repository,
        device=torch.device("cuda"),
        cache_dir=tmp_path / "features",
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
    )


def create(repository: StudyRepository, tmp_path: Path, name: str, finetune: str, n_trials: int = 1) -> None:
    data = {
        "train": str(write_csv(tmp_path / "train.csv", 16)),
        "validation": str(write_csv(tmp_path / "val.csv", 4, 100)),
    }
    repository.create(finetune_spec(name, encoder_folder(), data, finetune, budget={"n_trials": n_trials}))


def test_a_gpu_trains_under_bf16_autocast() -> None:
    x = torch.ones(8, 8, device="cuda")
    with autocast_for(torch.device("cuda")):
        product = x @ x
    assert product.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)


@pytest.mark.parametrize("finetune", ["head", "last-k", "full"])
def test_every_mode_trains_on_the_gpu_and_its_best_model_scores_alike_on_a_cpu(
    finetune: str, repository: StudyRepository, runner: TrialRunner, tmp_path: Path
) -> None:
    create(repository, tmp_path, "gpu-" + finetune, finetune)
    outcome, trial = run_next(runner, repository, "gpu-" + finetune, WORKER)
    assert outcome == "complete", trial.user_attrs.get("fail_reason")
    assert sorted(trial.intermediate_values) == [1, 2]
    assert all(math.isfinite(v) for v in trial.intermediate_values.values())
    archive = tmp_path / "model.zip"
    optuna.artifacts.download_artifact(
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
        file_path=str(archive),
        artifact_id=trial.user_attrs[MODEL_ARTIFACT_ATTR],
    )
    # Weights trained on the GPU (bf16 autocast in last-k and full), scored again on the CPU in fp32.
    val_loss, _ = evaluate(load_best_model(extract_model_archive(archive, tmp_path / "model")))
    assert val_loss == pytest.approx(trial.value, rel=0.05, abs=1e-3)


def test_a_real_out_of_memory_prunes_the_trial_and_the_next_one_runs(
    repository: StudyRepository, runner: TrialRunner, tmp_path: Path
) -> None:
    create(repository, tmp_path, "gpu-oom", "last-k", n_trials=2)
    torch.cuda.empty_cache()
    # A real allocation failure from the CUDA allocator: this process may use about 1 MB of the GPU.
    torch.cuda.set_per_process_memory_fraction(2**20 / torch.cuda.get_device_properties(0).total_memory)
    try:
        outcome, starved = run_next(runner, repository, "gpu-oom", WORKER)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert outcome == "out of memory"
    assert starved.state == TrialState.PRUNED
    assert re.fullmatch(
        r"out of memory: tried to allocate .+ \(batch_size=8, depth=\d+, width=\d+\)",
        starved.user_attrs["fail_reason"],
    )
    outcome, trial = run_next(runner, repository, "gpu-oom", WORKER)
    assert outcome == "complete", trial.user_attrs.get("fail_reason")


def test_a_device_index_past_the_gpus_is_refused_with_its_reason() -> None:
    count = torch.cuda.device_count()
    assert pick_device(f"cuda:{count - 1}").index == count - 1
    with pytest.raises(DeviceError, match=f"this host has {count} CUDA device"):
        pick_device(f"cuda:{count}")


@pytest.mark.parametrize("visible", [None, "0"])
def test_gpus_all_starts_one_pinned_worker_per_visible_gpu(visible: str | None, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TUNEFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"),
        "TUNEFLEET_ARTIFACT_DIR": str(tmp_path / "artifacts"),
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    result = subprocess.run(
        [sys.executable, "-m", "tunefleet", "worker", "--gpus", "all", "--exit-when-idle"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    expected = torch.cuda.device_count() if visible is None else 1
    # Each child sees its one GPU as cuda:0 and names it.
    assert result.stderr.count(" on cuda:0 (") == expected, result.stderr
