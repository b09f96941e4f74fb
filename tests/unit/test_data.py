"""Tests for the built-in BBC News data set and its seeded split."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from worker.data import DataError, LabelledSplit, load_builtin_bbc_news, split_texts_by_label

REPO_ROOT = Path(__file__).resolve().parents[2]
BBC_TOPICS = ["business", "entertainment", "politics", "sports", "tech"]
UNIQUE_BBC_TEXTS = 2225 - 98


@pytest.fixture(scope="module")
def full_split() -> LabelledSplit:
    return load_builtin_bbc_news(validation_fraction=0.2, seed=0, max_examples=None)


def test_builtin_bbc_news_has_five_sorted_label_names(full_split: LabelledSplit) -> None:
    assert full_split.label_names == BBC_TOPICS


def test_builtin_bbc_news_drops_duplicates_so_no_text_is_in_both_train_and_validation(
    full_split: LabelledSplit,
) -> None:
    train, validation = set(full_split.train_texts), set(full_split.validation_texts)
    assert not train & validation
    assert len(train) == len(full_split.train_texts)
    assert len(train) + len(validation) == UNIQUE_BBC_TEXTS


def test_builtin_bbc_news_validation_share_is_stratified(full_split: LabelledSplit) -> None:
    n_validation = len(full_split.validation_texts)
    assert n_validation == pytest.approx(0.2 * UNIQUE_BBC_TEXTS, abs=5)
    train_counts = Counter(full_split.train_labels)
    validation_counts = Counter(full_split.validation_labels)
    for label in range(5):
        share = validation_counts[label] / (validation_counts[label] + train_counts[label])
        assert share == pytest.approx(0.2, abs=0.01)


def test_builtin_bbc_news_texts_decode_cleanly(full_split: LabelledSplit) -> None:
    # A UTF-8 file read as latin-1 turns the pound sign into "Â£".
    assert not any("Â£" in text for text in full_split.train_texts + full_split.validation_texts)
    assert any("£" in text for text in full_split.train_texts)


def test_the_same_arguments_in_another_process_give_the_same_fingerprint() -> None:
    here = load_builtin_bbc_news(validation_fraction=0.25, seed=3, max_examples=200).fingerprint()
    code = (
        "from worker.data import load_builtin_bbc_news;"
        "print(load_builtin_bbc_news(validation_fraction=0.25, seed=3, max_examples=200).fingerprint())"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "123"},
    ).stdout.strip()
    assert there == here


def test_a_different_seed_gives_a_different_split() -> None:
    first = load_builtin_bbc_news(validation_fraction=0.2, seed=0, max_examples=100)
    second = load_builtin_bbc_news(validation_fraction=0.2, seed=1, max_examples=100)
    assert first.fingerprint() != second.fingerprint()


def test_max_examples_is_respected_and_every_class_is_in_train() -> None:
    split = load_builtin_bbc_news(validation_fraction=0.2, seed=0, max_examples=50)
    assert len(split.train_texts) + len(split.validation_texts) == 50
    assert Counter(split.train_labels) == {label: 8 for label in range(5)}
    assert Counter(split.validation_labels) == {label: 2 for label in range(5)}


def test_a_tiny_split_keeps_at_least_one_validation_example_per_class() -> None:
    split = load_builtin_bbc_news(validation_fraction=0.05, seed=0, max_examples=10)
    assert sorted(split.validation_labels) == [0, 1, 2, 3, 4]
    assert sorted(split.train_labels) == [0, 1, 2, 3, 4]


def test_a_split_too_small_to_validate_raises_data_error() -> None:
    with pytest.raises(DataError, match="validation"):
        load_builtin_bbc_news(validation_fraction=0.2, seed=0, max_examples=5)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_a_validation_fraction_outside_zero_and_one_raises_data_error(fraction: float) -> None:
    with pytest.raises(DataError, match="validation_fraction"):
        split_texts_by_label(
            [["a", "b"], ["c", "d"]], ["x", "y"], validation_fraction=fraction, seed=0, max_examples=None
        )


def test_labels_outside_the_label_names_raise_data_error() -> None:
    with pytest.raises(DataError, match="label 2"):
        LabelledSplit(["a"], [2], ["b"], [0], ["x", "y"])
