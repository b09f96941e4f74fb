"""Refuse a tokenizer that cannot read a study's texts: a vocabulary too small to be real, or mostly unknown tokens."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.failures import TrialFailure

logger = logging.getLogger(__name__)

# The smallest real vocabularies (byte-level ones) hold 256 byte tokens and more. A folder without its tokenizer
# files still loads, as a tokenizer of only its special tokens (five for BERT), which maps every word to unknown.
MIN_VOCABULARY = 100
# Enough texts to measure coverage in a fraction of a second, even with a slow tokenizer on long texts.
SAMPLE_TEXTS = 200
SAMPLE_TOKENS = 512
MAX_UNKNOWN_FRACTION = 0.5
# The files a Hugging Face tokenizer is loaded from, across tokenizer kinds (WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "tokenizer_config.json",
)


class TokenizerError(TrialFailure):
    """A tokenizer that would turn the data into unknown tokens: training on it would only reach chance."""


@dataclass(frozen=True)
class Coverage:
    """How a tokenizer read a sample of texts: word pieces in all, unknown ones, and special ones (unknown included)."""

    texts: int
    pieces: int
    unknown: int
    special: int

    @property
    def unknown_fraction(self) -> float:
        """The share of word pieces that are the unknown token (0 for no pieces)."""
        return self.unknown / self.pieces if self.pieces else 0.0


def check_vocabulary(tokenizer: Any, folder: Path) -> None:
    """TokenizerError naming the vocabulary's size and the tokenizer files present, unless it is plausibly real."""
    size = len(tokenizer)
    if size >= MIN_VOCABULARY:
        return
    present = [name for name in TOKENIZER_FILES if (Path(folder) / name).is_file()]
    found = f"it has {', '.join(present)}" if present else "it has no tokenizer.json, vocab.txt or vocab.json"
    raise TokenizerError(
        f"the tokenizer in {folder} has a vocabulary of {size} tokens: is the folder missing tokenizer.json /"
        f" vocab.txt? ({found}; save the tokenizer with the model: tokenizer.save_pretrained(folder))"
    )


def sample_texts(texts: list[str]) -> list[str]:
    """Up to SAMPLE_TEXTS texts spread evenly over the list, the same ones on every worker."""
    step = max(1, len(texts) // SAMPLE_TEXTS)
    return texts[::step][:SAMPLE_TEXTS]


def measure_coverage(tokenizer: Any, texts: list[str]) -> Coverage:
    """Tokenize a sample of the texts (without the special tokens a sequence is framed with) and count pieces."""
    sample = sample_texts(texts)
    if not sample:
        return Coverage(texts=0, pieces=0, unknown=0, special=0)
    rows = tokenizer(sample, add_special_tokens=False, truncation=True, max_length=SAMPLE_TOKENS)["input_ids"]
    unknown_id = tokenizer.unk_token_id
    special_ids = set(tokenizer.all_special_ids)
    pieces = unknown = special = 0
    for row in rows:
        pieces += len(row)
        for token_id in row:
            if token_id == unknown_id:
                unknown += 1
            if token_id in special_ids:
                special += 1
    return Coverage(texts=len(sample), pieces=pieces, unknown=unknown, special=special)


def check_coverage(tokenizer: Any, texts: list[str], folder: Path) -> Coverage:
    """TokenizerError unless the tokenizer reads most of a sample of the training texts as known word pieces."""
    coverage = measure_coverage(tokenizer, texts)
    if coverage.texts == 0:
        return coverage
    sampled = f"{coverage.texts} training texts"
    if coverage.unknown_fraction > MAX_UNKNOWN_FRACTION:
        raise TokenizerError(
            f"the tokenizer in {folder} maps {coverage.unknown_fraction:.0%} of the word pieces of {sampled} to"
            f" its unknown token {tokenizer.unk_token}: it does not cover this data's script or language (or"
            " the folder's tokenizer files do not belong to the model); use a model whose tokenizer does, e.g."
            " a multilingual one, or check the data's text column"
        )
    if coverage.pieces == coverage.special:
        raise TokenizerError(
            f"the tokenizer in {folder} turns each of {sampled} into special tokens only"
            f" ({coverage.pieces} in all): is the folder missing tokenizer.json / vocab.txt, or are the texts"
            " empty?"
        )
    logger.debug(
        "tokenizer in %s: %d of %d word pieces of %s unknown",
        folder,
        coverage.unknown,
        coverage.pieces,
        sampled,
    )
    return coverage
