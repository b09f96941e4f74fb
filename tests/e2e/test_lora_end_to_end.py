"""A finetune lora study on the built-in encoder, run by two real worker processes, its best model taken away."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service import ServiceSettings, create_app
from studies import StudyRepository, StudySpec, open_storage
from tunefleet.client import TunefleetClient
from worker.export import evaluate, export_adapters, load_best_model
from worker.model import builtin_model_folder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def lora_spec(name: str) -> StudySpec:
    """A small subset of BBC News in short texts, rank and the adapters' learning rate searched, 2 epochs."""
    return StudySpec.model_validate(
        {
            "name": name,
            "task": {"finetune": "lora", "max_examples": 48, "max_length": 32},
            "space": {
                "learning_rate": 0.003,
                "batch_size": 8,
                "epochs": 2,
                "depth": 1,
                "width": 16,
                "activation": "relu",
                "optimizer": "adam",
                "encoder_learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                "lora_rank": {"type": "int", "low": 2, "high": 8, "log": True},
            },
            "objective": {"patience": 0},
            "sampler": {"name": "random", "seed": 5},
            "pruner": {"name": "none"},
            "budget": {"n_trials": 4},
        }
    )


def test_two_workers_run_a_lora_study_and_its_adapters_load_with_peft(
    tmp_path: Path, study_name: str
) -> None:
    from peft import PeftModel
    from transformers import AutoModel

    url = f"sqlite:///{tmp_path / 'store.db'}"
    repository = StudyRepository(open_storage(url))
    repository.create(lora_spec(study_name))
    env = {
        **os.environ,
        "TUNEFLEET_DATABASE_URL": url,
        "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"),
        "TUNEFLEET_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "TUNEFLEET_POLL_INTERVAL_S": "0.3",
        # Each worker trains through the encoder on every core: two of them on a small machine must wait for
        # each other's threads asleep, not spinning, or both crawl.
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "worker", "--study", study_name, "--exit-when-idle", "--device", "cpu"]
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    workers = [
        subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT) for log in logs
    ]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=300) == 0, log.read_text()

    trials = repository.storage.get_all_trials(repository.get(study_name).optuna_study_id)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, [
        t.user_attrs.get("fail_reason") for t in trials
    ]
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    best = min(trials, key=lambda t: t.value or float("inf"))

    settings = ServiceSettings(
        database_url=url, artifact_dir=str(tmp_path / "artifacts"), mount_dashboard=False
    )
    with TestClient(create_app(settings, repository=repository)) as http:
        client = TunefleetClient("http://testserver")
        client._http = http
        folder = client.download_best_model(study_name, tmp_path / "best-model")
    repository.engine.dispose()

    model = load_best_model(folder)
    assert model.params["number"] == best.number and model.params["params"] == best.params
    assert evaluate(model)[0] == pytest.approx(best.value, abs=1e-5)

    # peft's own files and loader, around a plain transformers encoder.
    adapters = export_adapters(folder, tmp_path / "adapters")
    assert sorted(p.name for p in adapters.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((adapters / "adapter_config.json").read_text())
    rank = best.params["lora_rank"]
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", rank, 2.0 * rank)
    # The built-in MiniLM has 6 blocks: query, key, value and the attention output of each.
    assert len(config["target_modules"]) == 24
    base = AutoModel.from_pretrained(builtin_model_folder("all-MiniLM-L6-v2"), local_files_only=True)
    with_peft = dataclasses.replace(model, encoder=PeftModel.from_pretrained(base, str(adapters)).eval())
    assert evaluate(with_peft)[0] == pytest.approx(best.value, abs=1e-5)

    merged = load_best_model(folder, merge=True)
    assert not isinstance(merged.encoder, PeftModel)
    assert evaluate(merged)[0] == pytest.approx(best.value, abs=1e-4)

    texts = ["Shares rose as the bank cut interest rates", "The striker scored twice in the cup final"]
    logits = model.logits(texts)
    torch.testing.assert_close(with_peft.logits(texts), logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(merged.logits(texts), logits, rtol=1e-4, atol=1e-4)
    assert model.predict(texts) == with_peft.predict(texts) == merged.predict(texts)
