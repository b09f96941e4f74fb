"""On a CUDA GPU: a finetune lora trial trains in bf16 around the encoder's weights on the GPU, and its best model
scores alike on a CPU, with the adapters as they are and merged.

Skipped where torch sees no GPU, or peft is not installed (a GPU machine's pack may lack it). Runs under
`pytest --noconftest -m gpu tests/gpu` as tests/gpu/test_cuda.py does: no fixture of tests/conftest.py.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import optuna
import pytest
import torch

from studies import StudyRepository, WorkerIdentity, open_storage
from studies.artifacts import MODEL_ARTIFACT_ATTR, open_artifact_store
from tests.finetune_spec import finetune_spec, run_next, write_csv
from worker.export import evaluate, load_best_model
from worker.model import builtin_model_folder, load_encoder
from worker.runner import TrialRunner

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]

WORKER = WorkerIdentity(host="gpu-test", pid=1, device="cuda")


def test_a_lora_trial_trains_on_the_gpu_and_its_model_scores_alike_on_a_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("peft")
    folder = os.environ.get("TUNEFLEET_GPU_TEST_MODEL") or str(builtin_model_folder("all-MiniLM-L6-v2"))
    monkeypatch.setenv("TUNEFLEET_DATA_ROOTS", f"{tmp_path},{Path(folder).resolve().parent}")
    repository = StudyRepository(open_storage(f"sqlite:///{tmp_path / 'store.db'}"))
    data = {
        "train": str(write_csv(tmp_path / "train.csv", 16)),
        "validation": str(write_csv(tmp_path / "val.csv", 4, 100)),
    }
    repository.create(finetune_spec("gpu-lora", folder, data, "lora", budget={"n_trials": 1}))
    runner = TrialRunner(
        repository=repository,
        device=torch.device("cuda"),
        cache_dir=tmp_path / "features",
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
    )
    outcome, trial = run_next(runner, repository, "gpu-lora", WORKER)
    repository.engine.dispose()
    assert outcome == "complete", trial.user_attrs.get("fail_reason")
    assert all(math.isfinite(v) for v in trial.intermediate_values.values())
    # Every lora trial of the process shares the encoder's weights, which stay on the GPU.
    assert next(load_encoder(Path(folder)).model.parameters()).device.type == "cuda"

    archive = tmp_path / "model.zip"
    optuna.artifacts.download_artifact(
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
        file_path=str(archive),
        artifact_id=trial.user_attrs[MODEL_ARTIFACT_ATTR],
    )
    # Trained under bf16 autocast on the GPU, scored again on the CPU in fp32.
    for merge in (False, True):
        val_loss, _ = evaluate(load_best_model(archive, merge=merge))
        assert val_loss == pytest.approx(trial.value, rel=0.05, abs=1e-3)
