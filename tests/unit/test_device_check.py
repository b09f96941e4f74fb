"""What bench/device_check.sh runs on a GPU machine without network access: the random-weight encoder, and GPU
tests that need nothing such a machine lacks (the worker's dependencies, once the packed wheels are in; not the
service's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from bench.device_model import write_random_encoder
from worker.model import builtin_model_folder, load_encoder

ROOT = Path(__file__).resolve().parents[2]


def test_the_random_encoder_has_minilms_shapes_and_tokenizer_but_not_its_weights(tmp_path: Path) -> None:
    builtin = builtin_model_folder("all-MiniLM-L6-v2")
    ours = load_encoder(write_random_encoder(builtin, tmp_path / "minilm"))
    real = load_encoder(builtin)
    shapes = {name: p.shape for name, p in ours.model.named_parameters()}
    assert shapes == {name: p.shape for name, p in real.model.named_parameters()}
    assert ours.tokenizer("a test")["input_ids"] == real.tokenizer("a test")["input_ids"]
    weight = "embeddings.word_embeddings.weight"
    assert not torch.equal(
        dict(ours.model.named_parameters())[weight], dict(real.model.named_parameters())[weight]
    )


def test_the_gpu_tests_import_neither_the_service_nor_the_test_fixtures() -> None:
    # bench/device_check.sh runs them with --noconftest on a machine without FastAPI or the dashboard.
    probe = (
        "import sys; import tests.gpu.test_cuda; "
        "bad = [m for m in ('fastapi', 'service', 'optuna_dashboard', 'tests.conftest') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_device_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "device_check.sh")]).returncode == 0
