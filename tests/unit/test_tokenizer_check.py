"""A tokenizer that cannot read the data is refused with a reason, before any feature is computed or trial trains."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from worker.data import LabelledSplit, load_builtin_bbc_news
from worker.features import load_or_build_features
from worker.finetune import tokenize_split
from worker.model import builtin_model_folder, load_encoder
from worker.tokenizer_check import TOKENIZER_FILES, TokenizerError, check_coverage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Amharic, in the Ethiopic script: all-MiniLM-L6-v2's English vocabulary has none of its letters.
AMHARIC = ["ሰላም ለዓለም እንዴት ነህ", "ዛሬ ዝናብ ይዘንባል", "መጽሐፍ ማንበብ እወዳለሁ", "ቡና በጣም ጥሩ ነው"]


def copy_without_tokenizer(target: Path) -> Path:
    """The built-in model's folder without its tokenizer files, the weights linked rather than copied."""
    source = builtin_model_folder("all-MiniLM-L6-v2")
    target.mkdir(parents=True, exist_ok=True)
    left_out = {*TOKENIZER_FILES, "special_tokens_map.json"}
    for path in source.iterdir():
        if path.is_file() and path.name not in left_out:
            if path.suffix == ".safetensors":
                (target / path.name).symlink_to(path)
            else:
                shutil.copy(path, target / path.name)
    return target


def amharic_split() -> LabelledSplit:
    return LabelledSplit(
        train_texts=AMHARIC * 3,
        train_labels=[0, 1] * 6,
        validation_texts=AMHARIC[:2],
        validation_labels=[0, 1],
        label_names=["a", "b"],
    )


def test_a_model_folder_without_tokenizer_files_is_refused_naming_its_vocabulary(tmp_path: Path) -> None:
    folder = copy_without_tokenizer(tmp_path / "model").resolve()
    with pytest.raises(TokenizerError) as refused:
        load_encoder(folder)
    # transformers loads such a folder as a tokenizer of BERT's five special tokens.
    assert str(refused.value).startswith(
        f"the tokenizer in {folder} has a vocabulary of 5 tokens: is the folder missing tokenizer.json / vocab.txt?"
    )
    assert "it has no tokenizer.json, vocab.txt or vocab.json" in str(refused.value)


def test_data_in_a_script_the_tokenizer_does_not_cover_is_refused_before_features_are_built(
    tmp_path: Path,
) -> None:
    folder = builtin_model_folder("all-MiniLM-L6-v2")
    with pytest.raises(TokenizerError) as refused:
        load_or_build_features(
            encoder_folder=folder, split=amharic_split(), max_length=32, cache_dir=tmp_path
        )
    assert str(refused.value).startswith(
        f"the tokenizer in {folder} maps 100% of the word pieces of 12 training texts to its unknown token [UNK]:"
        " it does not cover this data's script or language"
    )
    assert not list(tmp_path.glob("features-*.pt"))


def test_last_k_and_full_refuse_the_same_data_when_they_tokenize_it() -> None:
    encoder = load_encoder(builtin_model_folder("all-MiniLM-L6-v2"))
    with pytest.raises(TokenizerError, match="maps 100% of the word pieces of 12 training texts"):
        tokenize_split(encoder, amharic_split(), max_length=32)


def test_the_built_in_tokenizer_reads_the_built_in_data_and_a_few_unknown_words_pass() -> None:
    encoder = load_encoder(builtin_model_folder("all-MiniLM-L6-v2"))
    split = load_builtin_bbc_news(validation_fraction=0.2, seed=0, max_examples=400)
    coverage = check_coverage(encoder.tokenizer, split.train_texts, encoder.folder)
    assert coverage.texts == 200 and coverage.pieces > 10_000
    assert coverage.unknown_fraction < 0.01
    # Two English texts and one Amharic: a third of the pieces unknown, under the limit, so mixed data still runs.
    texts = ["the news today", "markets rose again this week", AMHARIC[0]]
    mixed = check_coverage(encoder.tokenizer, texts, encoder.folder)
    assert mixed.unknown == 4 and 0.25 < mixed.unknown_fraction < 0.5


def test_texts_that_are_only_special_tokens_are_refused() -> None:
    encoder = load_encoder(builtin_model_folder("all-MiniLM-L6-v2"))
    with pytest.raises(
        TokenizerError, match=r"turns each of 3 training texts into special tokens only \(6 in all\)"
    ):
        check_coverage(encoder.tokenizer, ["[PAD] [SEP]"] * 3, encoder.folder)
