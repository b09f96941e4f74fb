"""Fixtures of the fine-tuning tests: a tiny local encoder and a small labelled data set, made once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.finetune_spec import small_data, tiny_bert


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-block, 32-wide BERT with random weights and the built-in model's tokenizer."""
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A training file of 8 rows per label and a validation file of 3 per label."""
    return small_data(tmp_path_factory.mktemp("data"))
