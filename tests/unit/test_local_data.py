"""Users' own data files: CSV, JSONL and Parquet, their spec, and a clear reason for every problem."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from studies import StudySpec, load_spec_file, preset_path
from studies.spec import LocalData, Task
from worker.data import DataError, data_memo_key, load_builtin_tweets_sentiment, load_local_data, load_split
from worker.module_inputs import load_model_inputs

ROWS = [
    {"text": f"{word} example number {i}", "label": label}
    for i in range(10)
    for word, label in (("great", "positive"), ("awful", "negative"), ("table", "neutral"))
]
# Rows training does not have, for validation files.
HELD_OUT = [
    {"text": f"{word} held-out example {i}", "label": label}
    for i in range(2)
    for word, label in (("great", "positive"), ("awful", "negative"), ("table", "neutral"))
]


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] = ("text", "label")) -> Path:
    lines = [",".join(columns)] + [",".join(str(row[c]) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def load(train: Path | str, validation: Path | str | None = None, **options: Any) -> Any:
    settings: dict[str, Any] = {
        "text_column": "text",
        "label_column": "label",
        "validation_fraction": 0.2,
        "seed": 0,
        "max_examples": None,
    }
    settings.update(options)
    return load_local_data(
        train=str(train), validation=None if validation is None else str(validation), **settings
    )


def reason(train: Path | str, validation: Path | str | None = None, **options: Any) -> str:
    with pytest.raises(DataError) as info:
        load(train, validation, **options)
    return str(info.value)


# -- reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", [write_csv, write_jsonl, write_parquet])
def test_each_file_type_gives_the_same_sorted_labels_and_a_stratified_split(
    writer: Any, tmp_path: Path
) -> None:
    suffix = {write_csv: ".csv", write_jsonl: ".jsonl", write_parquet: ".parquet"}[writer]
    split = load(writer(tmp_path / f"train{suffix}", ROWS))
    assert split.label_names == ["negative", "neutral", "positive"]
    assert len(split.train_texts) == 24 and len(split.validation_texts) == 6
    assert Counter(split.validation_labels) == {0: 2, 1: 2, 2: 2}
    assert not set(split.train_texts) & set(split.validation_texts)


def test_the_split_is_seeded(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ROWS)
    assert load(train, seed=3) == load(train, seed=3)
    assert load(train, seed=3).validation_texts != load(train, seed=4).validation_texts


def test_a_validation_file_is_used_whole_and_shares_the_training_label_index(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    validation = write_csv(tmp_path / "validation.csv", HELD_OUT)
    split = load(train, validation)
    assert split.validation_texts == [row["text"] for row in HELD_OUT]
    assert [split.label_names[i] for i in split.validation_labels] == [row["label"] for row in HELD_OUT]
    assert len(split.train_texts) == len(ROWS)


def test_max_examples_caps_only_training_when_there_is_a_validation_file(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ROWS)
    split = load(train, write_csv(tmp_path / "v.csv", HELD_OUT[:5]), max_examples=12)
    assert len(split.train_texts) == 12 and Counter(split.train_labels) == {0: 4, 1: 4, 2: 4}
    assert len(split.validation_texts) == 5


def test_integer_labels_are_names_sorted_numerically(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate([10, 2, 1] * 4)]
    split = load(write_jsonl(tmp_path / "train.jsonl", rows))
    assert split.label_names == ["1", "2", "10"]


def test_other_column_names_are_read(tmp_path: Path) -> None:
    rows = [{"review": row["text"], "stars": row["label"]} for row in ROWS]
    split = load(
        write_csv(tmp_path / "t.csv", rows, ("review", "stars")), text_column="review", label_column="stars"
    )
    assert split.label_names == ["negative", "neutral", "positive"]


def test_a_byte_order_mark_and_quoted_commas_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(
        '\ufefftext,label\n"hi, you",a\n"hi, me",a\n"bye, you",b\n"bye, me",b\n', encoding="utf-8"
    )
    split = load(path, validation_fraction=0.5)
    assert sorted(split.train_texts + split.validation_texts) == ["bye, me", "bye, you", "hi, me", "hi, you"]


# -- every problem has a reason ------------------------------------------------------------------


def test_a_missing_file_names_the_path_as_given_as_resolved_and_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = reason("data/train.csv")
    assert "'data/train.csv'" in text and str(tmp_path / "data" / "train.csv") in text
    assert socket.gethostname() in text and "missing" in text


def test_a_missing_validation_file_says_it_is_the_validation_file(tmp_path: Path) -> None:
    text = reason(write_csv(tmp_path / "t.csv", ROWS), tmp_path / "nope.jsonl")
    assert text.startswith("validation file") and "nope.jsonl" in text


def test_an_unknown_extension_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("text,label\n", encoding="utf-8")
    text = reason(path)
    assert "unknown extension '.txt'" in text and ".csv, .jsonl, .parquet" in text


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "train.csv").mkdir()
    assert "is not a file" in reason(tmp_path / "train.csv")


@pytest.mark.parametrize("writer", [write_csv, write_jsonl, write_parquet])
def test_a_missing_column_is_named_with_the_columns_present(writer: Any, tmp_path: Path) -> None:
    suffix = {write_csv: ".csv", write_jsonl: ".jsonl", write_parquet: ".parquet"}[writer]
    rows = [{"body": row["text"], "label": row["label"]} for row in ROWS]
    path = (
        writer(tmp_path / f"t{suffix}", rows)
        if writer is not write_csv
        else write_csv(tmp_path / "t.csv", rows, ("body", "label"))
    )
    text = reason(path)
    assert "no column 'text'" in text and "task.data.text_column" in text
    assert "columns present: 'body', 'label'" in text


def test_a_missing_label_column_is_named(tmp_path: Path) -> None:
    text = reason(write_csv(tmp_path / "t.csv", ROWS), label_column="sentiment")
    assert "no column 'sentiment'" in text and "'text', 'label'" in text


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.csv", ""), ("header-only.csv", "text,label\n"), ("empty.jsonl", "\n\n")],
)
def test_an_empty_file_says_so(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert "is empty" in reason(path)


def test_an_empty_parquet_file_says_so(tmp_path: Path) -> None:
    schema = pa.schema([("text", pa.string()), ("label", pa.string())])
    pq.write_table(schema.empty_table(), tmp_path / "t.parquet")
    assert "is empty" in reason(tmp_path / "t.parquet")


def test_a_validation_label_not_in_training_is_named_with_the_training_labels(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ROWS)
    validation = write_csv(tmp_path / "v.csv", [{"text": "meh", "label": "mixed"}, *HELD_OUT[:2]])
    text = reason(train, validation)
    assert "'mixed'" in text and "not in the training file" in text
    assert "'negative', 'neutral', 'positive'" in text


def test_a_single_label_cannot_be_learned(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": "only"} for i in range(5)]
    assert "only one label" in reason(write_csv(tmp_path / "t.csv", rows))


def test_a_file_that_is_not_utf8_says_so(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    assert "not UTF-8" in reason(path)


def test_a_bad_json_line_is_numbered(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": oops}\n', encoding="utf-8")
    assert "line 2 is not valid JSON" in reason(path)


def test_a_json_line_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('["a", "x"]\n', encoding="utf-8")
    assert "line 1 is a JSON list" in reason(path)


def test_a_row_without_a_label_is_numbered(tmp_path: Path) -> None:
    rows = [*ROWS[:3], {"text": "no label here", "label": None}]
    assert "row 4 has no usable label" in reason(write_jsonl(tmp_path / "t.jsonl", rows))


def test_a_null_text_is_numbered(tmp_path: Path) -> None:
    rows = [*ROWS[:3], {"text": None, "label": "positive"}]
    assert "row 4 has no text" in reason(write_parquet(tmp_path / "t.parquet", rows))


def test_a_damaged_parquet_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    assert "not a readable Parquet file" in reason(path)


# -- the spec ------------------------------------------------------------------------------------


def spec_errors(task: dict[str, Any], **rest: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        StudySpec.model_validate({"name": "s", "task": task, **rest})
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in info.value.errors()]


def test_the_spec_takes_a_mapping_of_local_files_and_round_trips_it() -> None:
    data = {"train": "data/train.csv", "validation": "data/v.jsonl", "text_column": "body"}
    spec = StudySpec.model_validate({"name": "s", "task": {"data": data}})
    assert spec.task.data == LocalData(train="data/train.csv", validation="data/v.jsonl", text_column="body")
    stored = spec.model_dump(mode="json")
    assert stored["task"]["data"] == {**data, "label_column": "label"}
    assert StudySpec.model_validate(stored) == spec


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"train": "a.csv", "format": "csv"}, "task.data.files.format", "Extra inputs"),
        ({"validation": "a.csv"}, "task.data.files.train", "Field required"),
        ({"train": "a\x00.csv"}, "task.data.files.train", "NUL"),
        ({"train": "x" * 4097 + ".csv"}, "task.data.files.train", "at most 4096"),
        ({"train": "a.xlsx"}, "task.data.files.train", "unknown file type '.xlsx'"),
        ({"train": "a.csv", "validation": "b"}, "task.data.files.validation", "(no extension)"),
        ({"train": "a.csv", "text_column": "label"}, "task.data.files", "both 'label'"),
        ({"train": "a.csv", "label_column": ""}, "task.data.files.label_column", "at least 1"),
        ("data/train.csv", "task.data", "unknown data set"),
        (42, "task.data", "builtin:NAME or a mapping"),
    ],
)
def test_bad_data_in_the_spec_is_rejected_with_the_field_named(data: Any, field: str, words: str) -> None:
    found = spec_errors({"data": data})
    assert any(loc == field and words in msg for loc, msg in found), found


def test_the_builtin_tweets_are_a_known_data_set() -> None:
    assert StudySpec.model_validate({"name": "s", "task": {"data": "builtin:tweets-sentiment"}})


@pytest.mark.parametrize(
    ("task", "space", "words"),
    [
        ({"finetune": "last-k"}, {}, "needs k"),
        ({"finetune": "head", "k": 2}, {}, "k applies only to finetune last-k"),
        ({"finetune": "full", "k": 2}, {}, "k applies only to finetune last-k"),
        ({"finetune": "last-k", "k": 0}, {}, "greater than or equal to 1"),
        ({}, {"encoder_learning_rate": 1e-5}, "applies only to finetune last-k or full"),
        (
            {"finetune": "full"},
            {"encoder_learning_rate": {"type": "int", "low": 1, "high": 2}},
            "float range",
        ),
    ],
)
def test_finetune_modes_and_their_options_are_checked(
    task: dict[str, Any], space: dict[str, Any], words: str
) -> None:
    found = spec_errors(task, space=space)
    assert any(words in msg for _, msg in found), found


def test_the_encoder_learning_rate_is_an_eighth_parameter_only_when_given() -> None:
    plain = StudySpec.model_validate({"name": "s", "task": {"finetune": "full"}})
    assert "encoder_learning_rate" not in plain.space.params()
    assert "encoder_learning_rate" not in plain.model_dump(mode="json")["space"]
    searched = StudySpec.model_validate(
        {
            "name": "s",
            "task": {"finetune": "last-k", "k": 2},
            "space": {"encoder_learning_rate": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True}},
        }
    )
    assert list(searched.space.params())[-1] == "encoder_learning_rate"
    assert StudySpec.model_validate(searched.model_dump(mode="json")) == searched


# -- the worker's memo and the built-in tweets ----------------------------------------------------


def test_the_memo_key_tells_data_sets_apart_and_notices_a_rewritten_file(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "a.csv", ROWS)
    second = write_csv(tmp_path / "b.csv", ROWS)

    def task(**data: Any) -> Task:
        return Task.model_validate({"data": {"train": str(first), **data}})

    assert data_memo_key(task()) == data_memo_key(task())
    assert data_memo_key(task()) != data_memo_key(task(train=str(second)))
    assert data_memo_key(task()) != data_memo_key(task(text_column="body"))
    assert data_memo_key(task()) != data_memo_key(Task())
    before = data_memo_key(task())
    write_csv(first, ROWS[:6])
    assert data_memo_key(task()) != before
    assert len(load_split(task()).train_texts) + len(load_split(task()).validation_texts) == 6


def test_the_builtin_tweets_have_three_sentiments_and_no_duplicates() -> None:
    split = load_builtin_tweets_sentiment(validation_fraction=0.2, seed=0, max_examples=None)
    assert split.label_names == ["negative", "neutral", "positive"]
    texts = split.train_texts + split.validation_texts
    assert len(texts) == len(set(texts)) == 37243


def test_the_tweets_preset_is_a_valid_spec_on_the_builtin_tweets() -> None:
    spec = StudySpec.model_validate(load_spec_file(preset_path("tweets-sentiment-minilm")))
    assert spec.name == "tweets-sentiment-minilm"
    assert spec.task.data == "builtin:tweets-sentiment" and spec.task.finetune == "head"


# -- duplicates, conflicting labels, labels never validated ----------------------------------------


def test_duplicate_rows_are_dropped_before_the_split_counted_and_warned_about(tmp_path: Path) -> None:
    # 185 distinct rows, then 115 of them again: 300 rows, as a user's export with repeated pages might be.
    pages = [{"text": f"{row['text']} page {i}", "label": row["label"]} for i in range(7) for row in ROWS]
    distinct = pages[:185]
    train = write_csv(tmp_path / "train.csv", distinct + distinct[:115])
    split = load(train)
    assert len(split.train_texts) + len(split.validation_texts) == 185
    assert not set(split.train_texts) & set(split.validation_texts)
    assert split.report.duplicates_dropped == 115 and split.report.conflicting_labels == 0
    assert split.report.attrs()["data_duplicates_dropped"] == 115
    assert any("115 duplicate rows" in warning and str(train) in warning for warning in split.report.warnings)


def test_a_text_with_two_labels_is_counted_and_kept_once_per_label(tmp_path: Path) -> None:
    clash = [{"text": ROWS[0]["text"], "label": "negative"}, {"text": ROWS[3]["text"], "label": "neutral"}]
    split = load(write_csv(tmp_path / "train.csv", ROWS + clash + clash))
    assert split.report.conflicting_labels == 2 and split.report.duplicates_dropped == 2
    assert len(split.train_texts) + len(split.validation_texts) == len(ROWS) + 2
    assert split.report.attrs()["data_conflicting_labels"] == 2
    assert any("2 examples with more than one label" in warning for warning in split.report.warnings)


def test_validation_rows_that_training_has_are_dropped_from_validation_and_counted(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ROWS)
    # Two rows training has (one under another label), one of them twice, and the held-out rows.
    leaked = [ROWS[0], ROWS[0], {"text": ROWS[1]["text"], "label": "positive"}]
    validation = write_csv(tmp_path / "validation.csv", leaked + HELD_OUT)
    split = load(train, validation)
    assert split.validation_texts == [row["text"] for row in HELD_OUT]
    assert not set(split.train_texts) & set(split.validation_texts)
    assert split.report.validation_overlap_dropped == 2 and split.report.duplicates_dropped == 1
    assert any("2 rows dropped" in warning for warning in split.report.warnings)


def test_a_validation_file_made_only_of_training_rows_is_refused(tmp_path: Path) -> None:
    text = reason(write_csv(tmp_path / "train.csv", ROWS), write_csv(tmp_path / "v.csv", ROWS[:6]))
    assert "every row of validation file" in text and "also in training file" in text


def test_a_label_with_a_single_example_trains_and_is_warned_about(tmp_path: Path) -> None:
    split = load(write_csv(tmp_path / "train.csv", [*ROWS, {"text": "so-so at best", "label": "mixed"}]))
    mixed = split.label_names.index("mixed")
    assert mixed in split.train_labels and mixed not in split.validation_labels
    (warning,) = split.report.warnings
    assert "no example of label ('mixed')" in warning and "at least 2 examples" in warning
    assert split.report.attrs()["data_warnings"] == [warning]


def test_a_validation_file_without_a_label_training_has_is_warned_about(tmp_path: Path) -> None:
    validation = write_csv(tmp_path / "v.csv", [row for row in HELD_OUT if row["label"] != "neutral"])
    split = load(write_csv(tmp_path / "train.csv", ROWS), validation)
    (warning,) = split.report.warnings
    assert str(validation) in warning and "no example of label that training has ('neutral')" in warning


def test_clean_files_record_zero_counts_and_no_warnings(tmp_path: Path) -> None:
    split = load(write_csv(tmp_path / "train.csv", ROWS))
    assert split.report.attrs() == {
        "data_duplicates_dropped": 0,
        "data_conflicting_labels": 0,
        "data_validation_overlap_dropped": 0,
    }


def test_rows_of_numbers_for_a_torch_module_drop_duplicates_by_the_same_rule(tmp_path: Path) -> None:
    rows = [f"{i},{i * 2},{'odd' if i % 2 else 'even'}" for i in range(20)]
    path = tmp_path / "columns.csv"
    path.write_text("\n".join(["a,b,label", *rows, *rows[:10]]) + "\n", encoding="utf-8")
    task = Task.model_validate(
        {
            "kind": "torch-module",
            "model": "model.pt",
            "replace": "fc",
            "inputs": {"kind": "columns"},
            "data": {"train": str(path)},
        }
    )
    inputs = load_model_inputs(task)
    assert inputs.report.duplicates_dropped == 10
    assert inputs.train.dense is not None and inputs.validation.dense is not None
    train = {tuple(row) for row in inputs.train.dense.tolist()}
    validation = {tuple(row) for row in inputs.validation.dense.tolist()}
    assert len(train) + len(validation) == 20 and not train & validation
