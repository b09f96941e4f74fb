"""Tests for the frozen-encoder feature cache, using the real built-in model on a tiny split."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worker import features as features_module
from worker.data import LabelledSplit, load_builtin_bbc_news
from worker.features import ProgressLog, cache_key, cache_path, load_or_build_features, model_fingerprint
from worker.hyperparams import HeadParams
from worker.model import ModelError, builtin_model_folder, load_encoder, mean_pool
from worker.training import train_head

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_LENGTH = 32

# Run in a fresh interpreter by the two-process test: build (or read) the features, then say
# how many progress calls it saw, whether it imported transformers, and a digest of the features.
BUILD_IN_CHILD = """
import hashlib, json, sys
import torch
torch.set_num_threads(1)
from pathlib import Path
from worker.data import load_builtin_bbc_news
from worker.features import load_or_build_features
from worker.model import builtin_model_folder
calls = []
split = load_builtin_bbc_news(validation_fraction=0.25, seed=0, max_examples=12)
features = load_or_build_features(
    encoder_folder=builtin_model_folder("all-MiniLM-L6-v2"), split=split, max_length=16,
    cache_dir=Path(sys.argv[1]), batch_size=8, progress=lambda done, total: calls.append(done),
)
digest = hashlib.sha256(features.train.numpy().tobytes() + features.validation.numpy().tobytes()).hexdigest()
print(json.dumps({"progress_calls": len(calls), "loaded_transformers": "transformers" in sys.modules,
                  "digest": digest}))
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_folder() -> Path:
    return builtin_model_folder("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def tiny_split() -> LabelledSplit:
    return load_builtin_bbc_news(validation_fraction=0.25, seed=0, max_examples=20)


def build(
    model_folder: Path,
    split: LabelledSplit,
    cache_dir: Path,
    calls: list[tuple[int, int]],
    max_length: int = MAX_LENGTH,
) -> torch.Tensor:
    features = load_or_build_features(
        encoder_folder=model_folder,
        split=split,
        max_length=max_length,
        cache_dir=cache_dir,
        batch_size=8,
        progress=lambda done, total: calls.append((done, total)),
    )
    return torch.cat([features.train, features.validation])


def test_features_have_one_384_wide_float_row_per_text(
    model_folder: Path, tiny_split: LabelledSplit, tmp_path: Path
) -> None:
    calls: list[tuple[int, int]] = []
    features = load_or_build_features(
        encoder_folder=model_folder,
        split=tiny_split,
        max_length=MAX_LENGTH,
        cache_dir=tmp_path,
        batch_size=8,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert features.train.shape == (len(tiny_split.train_texts), 384)
    assert features.validation.shape == (len(tiny_split.validation_texts), 384)
    assert features.train.dtype == torch.float32 and not features.train.is_inference()
    assert features.train_labels.tolist() == tiny_split.train_labels
    assert features.label_names == tiny_split.label_names
    assert calls[-1] == (20, 20) and len(calls) == 3  # 15 train texts in 2 batches of 8, 5 validation in 1


def test_features_are_in_text_order_despite_length_sorting(
    model_folder: Path, tiny_split: LabelledSplit, tmp_path: Path
) -> None:
    features = load_or_build_features(
        encoder_folder=model_folder, split=tiny_split, max_length=MAX_LENGTH, cache_dir=tmp_path, batch_size=8
    )
    encoder = load_encoder(model_folder)
    text = tiny_split.train_texts[3]
    with torch.inference_mode():
        batch = encoder.tokenizer([text], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        alone = mean_pool(encoder.model(**batch).last_hidden_state, batch["attention_mask"])[0]
    assert torch.allclose(features.train[3], alone, atol=1e-5)


def test_a_second_call_is_a_cache_hit_that_reports_no_progress(
    model_folder: Path, tiny_split: LabelledSplit, tmp_path: Path
) -> None:
    first_calls: list[tuple[int, int]] = []
    second_calls: list[tuple[int, int]] = []
    first = build(model_folder, tiny_split, tmp_path, first_calls)
    key = cache_key(model_folder=model_folder, split=tiny_split, max_length=MAX_LENGTH)
    assert cache_path(cache_dir=tmp_path, key=key).is_file()
    second = build(model_folder, tiny_split, tmp_path, second_calls)
    assert first_calls and not second_calls
    assert torch.equal(first, second)
    assert not list(tmp_path.glob("*.tmp"))
    assert cache_path(cache_dir=tmp_path, key=key).stat().st_mode & 0o444 == 0o444


def test_a_build_logs_its_start_its_progress_by_tenths_and_its_end_and_a_hit_logs_one_line(
    model_folder: Path,
    tiny_split: LabelledSplit,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This build takes under the usual interval between progress lines: let every tenth have its line.
    monkeypatch.setattr(features_module, "PROGRESS_MIN_INTERVAL_S", 0.0)
    caplog.set_level(logging.INFO, logger="worker.features")
    build(model_folder, tiny_split, tmp_path, [])
    said = [r.getMessage() for r in caplog.records if r.name == "worker.features"]
    path = cache_path(
        cache_dir=tmp_path, key=cache_key(model_folder=model_folder, split=tiny_split, max_length=MAX_LENGTH)
    )
    assert said[0] == f"building the feature cache for 20 texts (max_length {MAX_LENGTH}, on cpu): {path}"
    # 15 train texts in batches of 8 and 7, then 5 validation texts: 8 and 15 of 20 done before the end.
    assert [re.sub(r"in \d+s$", "in Ns", line) for line in said[1:-1]] == [
        "building the feature cache: 8 of 20 texts (40%) in Ns",
        "building the feature cache: 15 of 20 texts (75%) in Ns",
    ]
    assert re.fullmatch(
        r"feature cache built: 20 texts \(15 train, 5 validation\), 384 features each, in \d+\.\ds \(\d+ texts/s\)",
        said[-1],
    )
    caplog.clear()
    build(model_folder, tiny_split, tmp_path, [])
    assert [r.getMessage() for r in caplog.records if r.name == "worker.features"] == [
        f"using the feature cache {path} (20 texts)"
    ]


def test_build_progress_is_logged_at_each_tenth_but_at_most_every_few_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="worker.features")
    seconds = [0.0]
    fast = ProgressLog("fast", 1000, clock=lambda: seconds[0])
    for done in range(10, 1001, 10):  # a tenth a second: a line every other tenth, none at the end
        seconds[0] = done / 100
        fast.advance(done)
    slow = ProgressLog("slow", 100, clock=lambda: seconds[0])
    for done in range(1, 8):  # four seconds a text: a line every 12 seconds, though no tenth is reached
        seconds[0] += 4.0
        slow.advance(done)
    assert [r.getMessage() for r in caplog.records] == [
        "fast: 200 of 1000 texts (20%) in 2s",
        "fast: 400 of 1000 texts (40%) in 4s",
        "fast: 600 of 1000 texts (60%) in 6s",
        "fast: 800 of 1000 texts (80%) in 8s",
        "slow: 3 of 100 texts (3%) in 12s",
        "slow: 6 of 100 texts (6%) in 24s",
    ]


def test_cached_features_train_a_head(model_folder: Path, tiny_split: LabelledSplit, tmp_path: Path) -> None:
    features = load_or_build_features(
        encoder_folder=model_folder, split=tiny_split, max_length=MAX_LENGTH, cache_dir=tmp_path
    )
    params = HeadParams(
        learning_rate=1e-2, batch_size=8, epochs=2, depth=1, width=16, activation="gelu", optimizer="adamw"
    )
    result = train_head(features=features, params=params, seed=0, device=torch.device("cpu"))
    assert len(result.epochs) == 2


def test_the_cache_key_changes_with_max_length_data_and_model(
    model_folder: Path, tiny_split: LabelledSplit, tmp_path: Path
) -> None:
    key = cache_key(model_folder=model_folder, split=tiny_split, max_length=MAX_LENGTH)
    assert key == cache_key(model_folder=model_folder, split=tiny_split, max_length=MAX_LENGTH)
    assert key != cache_key(model_folder=model_folder, split=tiny_split, max_length=MAX_LENGTH + 1)
    other_split = load_builtin_bbc_news(validation_fraction=0.25, seed=1, max_examples=20)
    assert key != cache_key(model_folder=model_folder, split=other_split, max_length=MAX_LENGTH)
    fake_model = tmp_path / "model"
    fake_model.mkdir()
    (fake_model / "config.json").write_text("{}")
    fingerprint = model_fingerprint(fake_model)
    assert fingerprint != model_fingerprint(model_folder)
    assert key != cache_key(model_folder=fake_model, split=tiny_split, max_length=MAX_LENGTH)


def test_a_corrupt_cache_file_is_rebuilt(
    model_folder: Path, tiny_split: LabelledSplit, tmp_path: Path
) -> None:
    original = build(model_folder, tiny_split, tmp_path, [])
    path = cache_path(
        cache_dir=tmp_path, key=cache_key(model_folder=model_folder, split=tiny_split, max_length=MAX_LENGTH)
    )
    path.write_bytes(path.read_bytes()[:100])
    calls: list[tuple[int, int]] = []
    rebuilt = build(model_folder, tiny_split, tmp_path, calls)
    assert calls
    assert torch.allclose(rebuilt, original, atol=1e-6)
    reread_calls: list[tuple[int, int]] = []
    build(model_folder, tiny_split, tmp_path, reread_calls)
    assert not reread_calls


def test_two_processes_building_the_same_features_at_once_build_them_once(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    env = {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD_IN_CHILD, str(cache_dir)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    reports = []
    for child in children:
        stdout, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    builders = [report for report in reports if report["progress_calls"] > 0]
    readers = [report for report in reports if report["progress_calls"] == 0]
    assert len(builders) == 1 and len(readers) == 1
    assert builders[0]["digest"] == readers[0]["digest"]
    # A cache hit must not pay for loading the encoder (nor even importing transformers).
    assert not readers[0]["loaded_transformers"]
    assert len(list(cache_dir.glob("features-*.pt"))) == 1


def test_builtin_model_folder_rejects_an_unknown_name() -> None:
    with pytest.raises(ModelError, match="no-such-model"):
        builtin_model_folder("no-such-model")


def test_load_encoder_explains_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_encoder(tmp_path / "missing")
    with pytest.raises(ModelError, match=r"config\.json"):
        load_encoder(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelError, match="cannot load"):
        load_encoder(tmp_path)


def test_load_encoder_returns_the_same_encoder_in_eval_mode_each_time(model_folder: Path) -> None:
    encoder = load_encoder(model_folder)
    assert encoder is load_encoder(model_folder / ".." / model_folder.name)
    assert encoder.hidden_size == 384 and not encoder.model.training


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]


class Stop(Exception):
    """What a worker's interrupt raises (StopTraining there)."""


def test_an_interrupt_ends_a_build_between_batches_and_leaves_no_cache(
    model_folder: Path, tiny_split: LabelledSplit, tmp_path: Path
) -> None:
    # A worker told to stop must not sit out the whole build (44 s on BBC News on 2 cores, minutes on
    # bigger data) before it hands its trial back.
    batches: list[int] = []

    def stop_after_the_first_batch() -> None:
        batches.append(1)
        raise Stop

    with pytest.raises(Stop):
        load_or_build_features(
            encoder_folder=model_folder,
            split=tiny_split,
            max_length=MAX_LENGTH,
            cache_dir=tmp_path,
            batch_size=4,
            interrupt=stop_after_the_first_batch,
        )
    assert batches == [1]
    key = cache_key(model_folder=model_folder, split=tiny_split, max_length=MAX_LENGTH)
    assert not cache_path(cache_dir=tmp_path, key=key).exists()
    # The lock was let go: the next build runs to the end.
    load_or_build_features(
        encoder_folder=model_folder, split=tiny_split, max_length=MAX_LENGTH, cache_dir=tmp_path
    )
    assert cache_path(cache_dir=tmp_path, key=key).is_file()


def test_an_interrupt_ends_the_wait_for_another_process_build(
    model_folder: Path, tiny_split: LabelledSplit, tmp_path: Path
) -> None:
    key = cache_key(model_folder=model_folder, split=tiny_split, max_length=MAX_LENGTH)
    held = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import filelock, sys, time; filelock.FileLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)",
            str(tmp_path / f"features-{key}.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert held.stdout is not None and held.stdout.readline().strip() == "held"
        waits: list[int] = []

        def stop_on_the_second_wait() -> None:
            waits.append(1)
            if len(waits) == 2:
                raise Stop

        with pytest.raises(Stop):
            load_or_build_features(
                encoder_folder=model_folder,
                split=tiny_split,
                max_length=MAX_LENGTH,
                cache_dir=tmp_path,
                interrupt=stop_on_the_second_wait,
            )
        assert len(waits) == 2
    finally:
        held.kill()
        held.wait()
