"""The on-disk cache of frozen-encoder features, built once per node under a file lock."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import filelock
import torch

from worker.data import LabelledSplit
from worker.model import Encoder, ModelError, load_encoder, mean_pool
from worker.tokenizer_check import check_coverage

logger = logging.getLogger(__name__)

# Bump when the way features are computed or stored changes, so old cache files are never read.
CACHE_FORMAT_VERSION = 1
# Texts per encoder batch when building the cache; exporting a head-mode model encodes the same way.
ENCODE_BATCH_SIZE = 64
# How often a process waiting for another's build asks whether it should stop waiting.
LOCK_POLL_S = 1.0
_READ_CHUNK_BYTES = 1 << 20
# A build's progress in the worker's log: a line at each tenth done, but none within PROGRESS_MIN_INTERVAL_S of
# the last (a quick build says only start and end), and one at least every PROGRESS_MAX_INTERVAL_S.
PROGRESS_MIN_INTERVAL_S = 2.0
PROGRESS_MAX_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Features:
    """Mean-pooled encoder features (float32 [n, hidden]) and int64 labels for train and validation."""

    train: torch.Tensor
    validation: torch.Tensor
    train_labels: torch.Tensor
    validation_labels: torch.Tensor
    label_names: list[str]


def model_fingerprint(folder: Path) -> str:
    """Return a sha256 hex digest over the relative path and bytes of every file in a model folder."""
    return _model_fingerprint_cached(Path(folder).resolve())


@functools.lru_cache(maxsize=8)
def _model_fingerprint_cached(folder: Path) -> str:
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    files: list[tuple[str, Path]] = []
    # followlinks: Hugging Face cache snapshots are folders of symlinks into a blob store.
    for root, _dirs, names in os.walk(folder, followlinks=True):
        for name in names:
            path = Path(root) / name
            files.append((path.relative_to(folder).as_posix(), path))
    digest = hashlib.sha256()
    for relative, path in sorted(files):
        # Length-prefixing keeps (name, bytes) boundaries unambiguous.
        encoded = relative.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        with path.open("rb") as stream:
            while chunk := stream.read(_READ_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def cache_key(*, model_folder: Path, split: LabelledSplit, max_length: int) -> str:
    """Return the cache key for the features of a model, a split and a max length."""
    parts = [
        f"format={CACHE_FORMAT_VERSION}",
        f"model={model_fingerprint(model_folder)}",
        f"split={split.fingerprint()}",
        f"max_length={max_length}",
    ]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def cache_path(*, cache_dir: Path, key: str) -> Path:
    """Return where the features with this key are cached."""
    return Path(cache_dir) / f"features-{key}.pt"


class ProgressLog:
    """Logs a long job's progress at INFO: each tenth done, within the intervals above; clock is for tests."""

    def __init__(self, what: str, total: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.total = total
        self.clock = clock
        self.started = clock()
        self.last_logged = self.started
        self.last_tenth = 0

    def advance(self, done: int) -> None:
        """Note that `done` of the total are done now; log a line if one is due."""
        if done >= self.total or self.total <= 0:
            return  # the end is logged by whoever finishes the job, with its results
        now = self.clock()
        tenth = done * 10 // self.total
        since_last = now - self.last_logged
        new_tenth = tenth > self.last_tenth and since_last >= PROGRESS_MIN_INTERVAL_S
        if not new_tenth and since_last < PROGRESS_MAX_INTERVAL_S:
            return
        self.last_logged = now
        self.last_tenth = tenth
        logger.info(
            "%s: %d of %d texts (%d%%) in %.0fs",
            self.what,
            done,
            self.total,
            done * 100 // self.total,
            now - self.started,
        )

    def elapsed_s(self) -> float:
        """Seconds since the job started."""
        return self.clock() - self.started


def _labels(labels: list[int]) -> torch.Tensor:
    return torch.tensor(labels, dtype=torch.int64)


def _read_cache(path: Path, split: LabelledSplit, *, warn: bool) -> Features | None:
    """Read a cache file, or return None when it is missing, unreadable or does not fit the split."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        features = Features(
            train=stored["train"],
            validation=stored["validation"],
            train_labels=stored["train_labels"],
            validation_labels=stored["validation_labels"],
            label_names=list(stored["label_names"]),
        )
        fits = (
            stored.get("format") == CACHE_FORMAT_VERSION
            and features.train.dtype == torch.float32
            and features.validation.dtype == torch.float32
            and features.train.ndim == 2
            and features.train.shape[0] == len(split.train_texts)
            and features.validation.shape[0] == len(split.validation_texts)
            and features.validation.shape[1:] == features.train.shape[1:]
            and torch.equal(features.train_labels, _labels(split.train_labels))
            and torch.equal(features.validation_labels, _labels(split.validation_labels))
            and features.label_names == split.label_names
        )
    # A truncated or foreign file can fail in many ways (pickle, zip, key, type); all mean "rebuild".
    except Exception as error:
        if warn:
            logger.warning("feature cache %s is unreadable (%s); rebuilding it", path, error)
        return None
    if not fits:
        if warn:
            logger.warning("feature cache %s does not match its data set; rebuilding it", path)
        return None
    return features


def _write_cache_atomically(path: Path, features: Features) -> None:
    stored = {
        "format": CACHE_FORMAT_VERSION,
        "train": features.train,
        "validation": features.validation,
        "train_labels": features.train_labels,
        "validation_labels": features.validation_labels,
        "label_names": features.label_names,
    }
    # Same folder as the target, so os.replace is an atomic rename on one file system:
    # a reader sees the old file or the whole new one, never half of it.
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); workers of other users on the node must read it too.
        os.fchmod(descriptor, 0o644)
        with os.fdopen(descriptor, "wb") as stream:
            torch.save(stored, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def encode_texts(
    encoder: Encoder,
    texts: list[str],
    *,
    max_length: int,
    batch_size: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Return float32 mean-pooled features [len(texts), hidden] on the CPU, in the order of texts."""
    # Longest first: batches of similar length waste little on padding, and an out-of-memory
    # error shows up on the first batch rather than after minutes of work.
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]), reverse=True)
    # Made outside inference mode and filled in place, so it stays a normal tensor: an inference
    # tensor cannot be saved for backward, and training the head on it would fail.
    result = torch.empty((len(texts), encoder.hidden_size), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = encoder.tokenizer(
                [texts[index] for index in indices],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            output = encoder.model(**batch)
            pooled = mean_pool(output.last_hidden_state, batch["attention_mask"])
            result[torch.tensor(indices)] = pooled.float().cpu()
            if progress is not None:
                progress(len(indices))
    return result


def _build_features(
    *,
    encoder_folder: Path,
    split: LabelledSplit,
    max_length: int,
    batch_size: int,
    device: torch.device,
    progress: Callable[[int, int], None] | None,
    interrupt: Callable[[], None] | None,
) -> Features:
    total = len(split.train_texts) + len(split.validation_texts)
    logged = ProgressLog("building the feature cache", total)
    encoder = load_encoder(encoder_folder)
    # Before minutes of encoding: a tokenizer that reads the texts as unknown tokens would make features
    # that say nothing about them, and every trial would train to chance.
    check_coverage(encoder.tokenizer, split.train_texts, encoder.folder)
    # Positions beyond the encoder's table would crash it, so longer requests are capped.
    max_positions = getattr(getattr(encoder.model, "config", None), "max_position_embeddings", None)
    effective_length = min(max_length, max_positions) if isinstance(max_positions, int) else max_length
    done = 0

    def advance(n_texts: int) -> None:
        nonlocal done
        done += n_texts
        logged.advance(done)
        if progress is not None:
            progress(done, total)
        if interrupt is not None:
            interrupt()

    original_device = next(encoder.model.parameters()).device
    encoder.model.to(device)
    try:
        train = encode_texts(
            encoder,
            split.train_texts,
            max_length=effective_length,
            batch_size=batch_size,
            device=device,
            progress=advance,
        )
        validation = encode_texts(
            encoder,
            split.validation_texts,
            max_length=effective_length,
            batch_size=batch_size,
            device=device,
            progress=advance,
        )
    finally:
        # The encoder is shared by the whole process; leave it where it was found.
        encoder.model.to(original_device)
    seconds = logged.elapsed_s()
    logger.info(
        "feature cache built: %d texts (%d train, %d validation), %d features each, in %.1fs (%.0f texts/s)",
        total,
        len(split.train_texts),
        len(split.validation_texts),
        encoder.hidden_size,
        seconds,
        total / seconds if seconds > 0 else 0.0,
    )
    return Features(
        train=train,
        validation=validation,
        train_labels=_labels(split.train_labels),
        validation_labels=_labels(split.validation_labels),
        label_names=list(split.label_names),
    )


def acquire_lock(lock: filelock.BaseFileLock, interrupt: Callable[[], None] | None) -> None:
    """Take a node-wide build lock, calling interrupt() (which raises to give up) while another process holds it."""
    # A build takes minutes on a CPU: a worker told to stop must not sit out another process's build.
    while True:
        try:
            lock.acquire(timeout=LOCK_POLL_S if interrupt is not None else -1)
            return
        except filelock.Timeout:
            if interrupt is not None:
                interrupt()


def load_or_build_features(
    *,
    encoder_folder: Path,
    split: LabelledSplit,
    max_length: int,
    cache_dir: Path,
    batch_size: int = ENCODE_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
    device: torch.device | None = None,
    interrupt: Callable[[], None] | None = None,
) -> Features:
    """Return the split's frozen-encoder features from the cache, building and caching them on a miss.

    progress(done_texts, total_texts) is called after each encoded batch, never on a cache hit.
    device (default CPU) is where the encoder runs on a miss; the features returned are always on the CPU.
    interrupt() is called after each encoded batch and each second spent waiting for another process's
    build; what it raises ends the wait or the build, and a build ended so leaves no cache file.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(model_folder=encoder_folder, split=split, max_length=max_length)
    path = cache_path(cache_dir=cache_dir, key=key)

    # Files appear only by atomic rename, so reading without the lock is safe and keeps hits cheap;
    # problems are reported by the second read, under the lock, so they are logged once.
    features = _read_cache(path, split, warn=False)
    if features is not None:
        logger.info(
            "using the feature cache %s (%d texts)",
            path,
            features.train.shape[0] + features.validation.shape[0],
        )
        return features
    lock = filelock.FileLock(str(cache_dir / f"features-{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        logger.info("waiting for another process to build the feature cache %s", path)
        acquire_lock(lock, interrupt)
    try:
        # Another process may have built it while this one waited for the lock.
        features = _read_cache(path, split, warn=True)
        if features is not None:
            return features
        logger.info(
            "building the feature cache for %d texts (max_length %d, on %s): %s",
            len(split.train_texts) + len(split.validation_texts),
            max_length,
            device if device is not None else "cpu",
            path,
        )
        features = _build_features(
            encoder_folder=encoder_folder,
            split=split,
            max_length=max_length,
            batch_size=batch_size,
            device=device if device is not None else torch.device("cpu"),
            progress=progress,
            interrupt=interrupt,
        )
        _write_cache_atomically(path, features)
    finally:
        lock.release()
    return features
