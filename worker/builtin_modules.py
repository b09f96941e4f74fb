"""The built-in torch-module models: small MLPs over hashed text, pretrained once per node and cached as .pth files."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import filelock
import torch

from studies.names import BUILTIN_MODULES
from worker.data import LabelledSplit, load_builtin_tweets_sentiment, tweets_sentiment_file
from worker.features import acquire_lock
from worker.model import ModelError
from worker.module_files import LoadedModel
from worker.module_inputs import hash_texts

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
MLP_TWEETS_SENTIMENT = "mlp-tweets-sentiment"
# Bump when the class, the recipe's meaning or the files' layout changes, so old cached models are never read.
BUILTIN_FORMAT_VERSION = 1
# A model that does not beat always answering the most common class by this much is broken, not pretrained.
MIN_ACCURACY_OVER_MAJORITY = 0.1
# Validation runs in chunks: hashed text is wide, and the whole set made dense at once is needlessly large.
_EVAL_CHUNK_ROWS = 2048


class HashedTextMLP(torch.nn.Module):
    """An MLP text classifier over hashed text: features (Linear, ReLU, Dropout), then classifier (Dropout, Linear).

    classifier.1 is the Linear layer that names the pretrained classes: the one a torch-module study replaces.
    """

    def __init__(self, n_features: int, hidden: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout)
        )
        self.classifier = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(hidden, n_classes))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits, one per pretrained class, for a batch of hashed texts."""
        return self.classifier(self.features(inputs))


# Every class a built-in model file holds: the only globals its restricted unpickling may construct.
_MODEL_CLASSES: tuple[type, ...] = (
    HashedTextMLP,
    torch.nn.Sequential,
    torch.nn.Linear,
    torch.nn.ReLU,
    torch.nn.Dropout,
)


@dataclass(frozen=True)
class Recipe:
    """How a built-in model is pretrained: its shape, its data, and a fixed seeded training run."""

    data: str
    n_features: int
    hidden: int
    dropout: float
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    validation_fraction: float
    data_seed: int


# 4096 hashed features and 3 epochs of Adam: about 72% on the tweets' validation split (majority class 43%),
# built in well under a minute on one CPU thread.
RECIPES: dict[str, Recipe] = {
    MLP_TWEETS_SENTIMENT: Recipe(
        data="builtin:tweets-sentiment",
        n_features=4096,
        hidden=128,
        dropout=0.2,
        epochs=3,
        batch_size=128,
        learning_rate=1e-3,
        seed=0,
        validation_fraction=0.2,
        data_seed=0,
    ),
}


@dataclass(frozen=True)
class BuiltinFiles:
    """Where a built-in model is cached: the torch.save file, and the record of how it was built beside it."""

    model: Path
    record: Path
    lock: Path


def is_builtin_module(model: str) -> bool:
    """Whether a task's model names a built-in torch-module model (builtin:NAME)."""
    return model.startswith(BUILTIN_PREFIX) and model.removeprefix(BUILTIN_PREFIX) in BUILTIN_MODULES


def _recipe(model: str) -> Recipe:
    name = model.removeprefix(BUILTIN_PREFIX)
    recipe = RECIPES.get(name)
    if recipe is None:
        raise ModelError(f"built-in model {model!r} is not available on this worker")
    return recipe


def _data_digest(recipe: Recipe) -> str:
    # The corpus's bytes, not its package's version: a changed corpus means another model.
    if recipe.data != "builtin:tweets-sentiment":
        raise ModelError(f"built-in models cannot be pretrained on {recipe.data!r}")
    return hashlib.sha256(tweets_sentiment_file().read_bytes()).hexdigest()


def builtin_files(model: str, cache_dir: Path) -> BuiltinFiles:
    """The cache files of a built-in model, named by a hash of its recipe and its pretraining corpus."""
    recipe = _recipe(model)
    parts = [
        f"format={BUILTIN_FORMAT_VERSION}",
        f"model={model}",
        f"recipe={json.dumps(asdict(recipe), sort_keys=True)}",
        f"data={_data_digest(recipe)}",
    ]
    key = hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:24]
    stem = f"builtin-{model.removeprefix(BUILTIN_PREFIX)}-{key}"
    folder = Path(cache_dir)
    return BuiltinFiles(
        model=folder / f"{stem}.pth", record=folder / f"{stem}.json", lock=folder / f"{stem}.lock"
    )


def _read_verified(files: BuiltinFiles, recipe: Recipe, *, warn: bool) -> torch.nn.Module | None:
    """The cached model, or None when it is missing or cannot be trusted (then it is to be rebuilt).

    The file is a whole pickled module, as a user's own would be, yet it loads without the operator's
    TUNEFLEET_TRUST_PICKLED_MODELS: the worker wrote it itself, from its own class. That exception is kept
    narrow because the cache folder may be shared and writable by others. Only this exact path is read, never
    a path a study names; its sha256 must match the record the build wrote beside it; and even then it is
    unpickled by torch's weights-only unpickler allowing only the built-in's own classes, so a file swapped
    in together with its record still cannot run code. A file that fails any check is rebuilt.
    """
    if not files.model.is_file():
        return None
    problem: str
    try:
        record = json.loads(files.record.read_text(encoding="utf-8"))
        data = files.model.read_bytes()
        if not isinstance(record, dict) or record.get("format") != BUILTIN_FORMAT_VERSION:
            problem = "its record is missing or of another format"
        elif hashlib.sha256(data).hexdigest() != record.get("sha256"):
            problem = "its sha256 is not the one recorded when it was built"
        else:
            with torch.serialization.safe_globals(list(_MODEL_CLASSES)):
                module = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if _fits(module, recipe):
                return module
            problem = "it does not hold the built-in model's class and shape"
    # A missing record, bad JSON, a damaged zip, a global the restricted unpickler refuses: all mean "rebuild".
    except Exception as error:
        problem = f"it cannot be read as the built-in model ({type(error).__name__}: {error})"
    if warn:
        logger.warning("built-in model file %s is not trusted: %s; rebuilding it", files.model, problem)
    return None


def _fits(module: Any, recipe: Recipe) -> bool:
    if type(module) is not HashedTextMLP:
        return False
    first, last = module.features[0], module.classifier[1]
    return (
        isinstance(first, torch.nn.Linear)
        and isinstance(last, torch.nn.Linear)
        and first.in_features == recipe.n_features
        and first.out_features == recipe.hidden
        and last.in_features == recipe.hidden
    )


def _write_atomically(path: Path, data: bytes) -> None:
    # Same folder as the target, so os.replace is an atomic rename on one file system:
    # a reader sees the old file or the whole new one, never half of it.
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); workers of other users on the node must read it too.
        os.fchmod(descriptor, 0o644)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _evaluate(model: torch.nn.Module, rows: Any, labels: torch.Tensor) -> float:
    """Accuracy of the model on hashed rows (a scipy CSR matrix), in chunks."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, rows.shape[0], _EVAL_CHUNK_ROWS):
            chunk = torch.from_numpy(rows[start : start + _EVAL_CHUNK_ROWS].toarray())
            predicted = model(chunk).argmax(dim=1)
            correct += int((predicted == labels[start : start + _EVAL_CHUNK_ROWS]).sum())
    return correct / int(rows.shape[0])


def _majority_rate(split: LabelledSplit) -> float:
    counts = [split.validation_labels.count(label) for label in range(len(split.label_names))]
    return max(counts) / len(split.validation_labels)


def _pretrain(
    model_name: str, recipe: Recipe, interrupt: Callable[[], None] | None
) -> tuple[HashedTextMLP, dict[str, Any]]:
    """A freshly pretrained model and what its build measured; ModelError when it fails its sanity check."""
    started = time.perf_counter()
    split = load_builtin_tweets_sentiment(
        validation_fraction=recipe.validation_fraction, seed=recipe.data_seed, max_examples=None
    )
    train_rows = hash_texts(split.train_texts, recipe.n_features)
    validation_rows = hash_texts(split.validation_texts, recipe.n_features)
    train_labels = torch.tensor(split.train_labels, dtype=torch.int64)
    validation_labels = torch.tensor(split.validation_labels, dtype=torch.int64)
    # Seeded inside a fork of the global RNG: the build must not change what the process's next trial draws.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        generator = torch.Generator().manual_seed(recipe.seed)
        model = HashedTextMLP(recipe.n_features, recipe.hidden, len(split.label_names), recipe.dropout)
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)

        def batches() -> Iterator[torch.Tensor]:
            order = torch.randperm(len(split.train_labels), generator=generator)
            yield from order.split(recipe.batch_size)

        for _ in range(recipe.epochs):
            model.train()
            for index in batches():
                inputs = torch.from_numpy(train_rows[index.numpy()].toarray())
                loss = torch.nn.functional.cross_entropy(model(inputs), train_labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if interrupt is not None:
                    interrupt()
    accuracy = _evaluate(model, validation_rows, validation_labels)
    majority = _majority_rate(split)
    if not accuracy >= majority + MIN_ACCURACY_OVER_MAJORITY:
        raise ModelError(
            f"building {model_name} failed its sanity check: its validation accuracy on {recipe.data} is"
            f" {accuracy:.3f}, not clearly above the {majority:.3f} of always answering the most common class;"
            " nothing was cached"
        )
    model.eval()
    measured = {
        "validation_accuracy": round(accuracy, 4),
        "majority_class_rate": round(majority, 4),
        "label_names": list(split.label_names),
        "build_s": round(time.perf_counter() - started, 2),
    }
    return model, measured


def _build(
    model_name: str, recipe: Recipe, files: BuiltinFiles, interrupt: Callable[[], None] | None
) -> None:
    model, measured = _pretrain(model_name, recipe, interrupt)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    data = buffer.getvalue()
    record = {
        "format": BUILTIN_FORMAT_VERSION,
        "model": model_name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "recipe": asdict(recipe),
        "torch": torch.__version__,
        **measured,
    }
    # The record first: a reader that meets the new record beside the old file finds the hashes differ and
    # waits for this build's lock, never trusting a mismatched pair.
    _write_atomically(files.record, json.dumps(record, indent=2).encode("utf-8"))
    _write_atomically(files.model, data)
    logger.info(
        "built %s in %.1fs: %s validation accuracy %.3f (majority class %.3f); saved to %s",
        model_name,
        measured["build_s"],
        recipe.data,
        measured["validation_accuracy"],
        measured["majority_class_rate"],
        files.model,
    )


def load_builtin_module(
    model: str,
    *,
    cache_dir: Path,
    factory: str | None = None,
    interrupt: Callable[[], None] | None = None,
) -> LoadedModel:
    """A built-in model (builtin:NAME) in eval mode on the CPU: read from the node's cache, built there on a miss.

    The build runs once per node, under a file lock; interrupt() is called after each training batch and each
    second spent waiting for another process's build, and what it raises ends the wait or the build.
    """
    if factory is not None:
        raise ModelError(
            f"model {model!r} is a built-in model with its own code; factory {factory} applies only to a"
            " state_dict file: leave it out"
        )
    recipe = _recipe(model)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    files = builtin_files(model, cache_dir)
    # Files appear only by atomic rename, so reading without the lock is safe and keeps hits cheap;
    # problems are reported by the second read, under the lock, so they are logged once.
    module = _read_verified(files, recipe, warn=False)
    if module is None:
        lock = filelock.FileLock(str(files.lock))
        acquire_lock(lock, interrupt)
        try:
            # Another process may have built it while this one waited for the lock.
            module = _read_verified(files, recipe, warn=True)
            if module is None:
                logger.info("building %s (one time on this node) in %s", model, files.model)
                _build(model, recipe, files, interrupt)
                module = _read_verified(files, recipe, warn=True)
                if module is None:
                    raise ModelError(f"{model} was built in {files.model} but cannot be read back")
        finally:
            lock.release()
    module.eval()
    return LoadedModel(module=module, stored_as="pickled module")
