"""A worker reads study data and local models only inside its data roots, and its reasons quote no data."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from studies.spec import Task
from studies.startup import build_settings
from worker.command import build_parser, main
from worker.data import load_local_data
from worker.data_roots import DataRoots, OutsideDataRoots, confine_task
from worker.failures import TrialFailure
from worker.model import model_folder
from worker.module_files import Permissions, load_model_file
from worker.module_inputs import load_model_inputs
from worker.settings import WorkerSettings

ROWS = "text,label\n" + "".join(f"good thing {i},yes\nbad thing {i},no\n" for i in range(5))
# What a file outside the roots holds: no reason may ever quote it.
SECRET = "s3cret-column,other\nhunter2,x\n"

_opened: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # Python's audit hooks see every file any code in this process opens; this one only listens while asked.
    if _opened is not None and event == "open" and isinstance(args[0], str | Path):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """The paths this process opens while the test runs."""
    global _opened
    _opened = []
    yield _opened
    _opened = None


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A root with data and a model in it, and a folder beside it with a secret file and a model."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "train.csv").write_text(ROWS, encoding="utf-8")
    (outside / "secret.csv").write_text(SECRET, encoding="utf-8")
    torch.save(torch.nn.Linear(2, 2).state_dict(), outside / "model.pt")
    (outside / "encoder").mkdir()
    (root / "link.csv").symlink_to(outside / "secret.csv")
    (root / "linked-folder").symlink_to(outside)
    return {"root": root, "outside": outside}


def load(train: Path | str, roots: DataRoots) -> Any:
    return load_local_data(
        train=str(train),
        validation=None,
        text_column="text",
        label_column="label",
        validation_fraction=0.2,
        seed=0,
        max_examples=None,
        roots=roots,
    )


def refused(call: Any, opened: list[str], outside: Path) -> str:
    with pytest.raises(OutsideDataRoots) as info:
        call()
    assert not [path for path in opened if path.startswith(str(outside))], opened
    return str(info.value)


@pytest.mark.parametrize(
    "path",
    [
        "{outside}/secret.csv",
        "{root}/../outside/secret.csv",
        "{root}/link.csv",
        "{root}/linked-folder/secret.csv",
    ],
)
def test_a_data_file_outside_the_roots_is_refused_unopened_with_a_reason_naming_the_setting(
    layout: dict[str, Path], opened: list[str], path: str
) -> None:
    given = path.format(**layout)
    text = refused(lambda: load(given, DataRoots.of([layout["root"]])), opened, layout["outside"])
    assert text.startswith(f"training file {given!r} is not inside this worker's data roots")
    assert "TUNEFLEET_DATA_ROOTS" in text and "--data-root" in text
    assert "hunter2" not in text and "s3cret" not in text and "missing" not in text


def test_the_reason_is_the_same_whether_or_not_the_outside_path_exists(
    layout: dict[str, Path], opened: list[str]
) -> None:
    roots = DataRoots.of([layout["root"]])
    there = refused(lambda: load(layout["outside"] / "secret.csv", roots), opened, layout["outside"])
    absent = refused(lambda: load(layout["outside"] / "absent.csv", roots), opened, layout["outside"])
    assert there.replace("secret.csv", "X") == absent.replace("absent.csv", "X")


def test_a_relative_path_resolves_against_the_workers_folder(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch, opened: list[str]
) -> None:
    monkeypatch.chdir(layout["root"])
    roots = DataRoots.of(["."])
    assert len(load("train.csv", roots).train_texts) == 8
    assert str(layout["root"] / "train.csv") in opened
    with pytest.raises(OutsideDataRoots):
        load("../outside/secret.csv", roots)


def test_a_symlink_inside_the_roots_to_a_file_inside_them_is_read_by_its_own_name(
    layout: dict[str, Path],
) -> None:
    # A content-addressed store: the link says the type, the blob it points at has no extension.
    (layout["root"] / "blobs").mkdir()
    (layout["root"] / "blobs" / "9f86d08").write_text(ROWS, encoding="utf-8")
    (layout["root"] / "current.csv").symlink_to(layout["root"] / "blobs" / "9f86d08")
    split = load(layout["root"] / "current.csv", DataRoots.of([layout["root"]]))
    assert len(split.train_texts) + len(split.validation_texts) == 10


def test_a_missing_file_inside_the_roots_keeps_its_helpful_reason(layout: dict[str, Path]) -> None:
    with pytest.raises(TrialFailure) as info:
        load(layout["root"] / "data" / "train.csv", DataRoots.of([layout["root"]]))
    text = str(info.value)
    assert "is missing on worker host" in text and socket.gethostname() in text
    assert str(layout["root"] / "data" / "train.csv") in text


def test_a_column_error_quotes_the_column_names_and_no_row(layout: dict[str, Path]) -> None:
    path = layout["root"] / "no-header.csv"
    # A file without a header row: its first row of data is read as the column names, the rest never shown.
    path.write_text("great film,yes\nsecret row two,no\nsecret row three,no\n", encoding="utf-8")
    with pytest.raises(TrialFailure) as info:
        load(path, DataRoots.of([layout["root"]]))
    text = str(info.value)
    assert "no column 'text'" in text and "columns present: 'great film', 'yes'" in text
    assert "secret row" not in text


def test_a_cell_that_is_not_a_number_is_named_by_row_and_column_not_by_its_value(
    layout: dict[str, Path],
) -> None:
    path = layout["root"] / "columns.csv"
    path.write_text("a,b,label\n1.0,private-value,yes\n2.0,3.0,no\n", encoding="utf-8")
    task = Task.model_validate(
        {
            "kind": "torch-module",
            "model": "model.pt",
            "replace": "fc",
            "inputs": {"kind": "columns"},
            "data": {"train": str(path)},
        }
    )
    with pytest.raises(TrialFailure) as info:
        load_model_inputs(task, DataRoots.of([layout["root"]]))
    text = str(info.value)
    assert "column 'b'" in text and "row 1 is not a number" in text and "private-value" not in text


def test_model_files_and_folders_outside_the_roots_are_refused_unopened(
    layout: dict[str, Path], opened: list[str]
) -> None:
    roots = DataRoots.of([layout["root"]])
    permissions = Permissions()
    for given in (str(layout["outside"] / "model.pt"), str(layout["root"] / "linked-folder" / "model.pt")):
        loading = partial(load_model_file, given, factory=None, permissions=permissions, roots=roots)
        text = refused(loading, opened, layout["outside"])
        assert text.startswith(f"model file {given!r} is not inside") and "TUNEFLEET_DATA_ROOTS" in text
    task = Task.model_validate({"model": str(layout["outside"] / "encoder")})
    assert refused(lambda: model_folder(task, roots), opened, layout["outside"]).startswith("model folder")


def test_every_path_a_task_names_is_checked(layout: dict[str, Path]) -> None:
    roots = DataRoots.of([layout["root"]])
    inside = str(layout["root"] / "train.csv")
    outside = str(layout["outside"] / "secret.csv")
    confine_task(Task.model_validate({"data": {"train": inside}}), roots)
    for task, what in [
        ({"data": {"train": outside}}, "training file"),
        ({"data": {"train": inside, "validation": outside}}, "validation file"),
        ({"model": str(layout["outside"] / "encoder"), "data": {"train": inside}}, "model folder"),
    ]:
        with pytest.raises(OutsideDataRoots, match=f"^{what}"):
            confine_task(Task.model_validate(task), roots)


def test_the_roots_default_to_the_workers_folder_and_come_comma_separated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNEFLEET_DATA_ROOTS")
    assert WorkerSettings().data_roots == (tmp_path,)
    monkeypatch.setenv("TUNEFLEET_DATA_ROOTS", "")
    assert WorkerSettings().data_roots == (tmp_path,)
    monkeypatch.setenv("TUNEFLEET_DATA_ROOTS", "/data/a, /data/b,")
    assert WorkerSettings().data_roots == (Path("/data/a"), Path("/data/b"))
    args = build_parser().parse_args(["--data-root", "/srv/x", "--data-root", "y"])
    flags = {"data_roots": ("--data-root", tuple(args.data_root))}
    assert build_settings(WorkerSettings, flags).data_roots == (Path("/srv/x"), Path("y"))
    assert DataRoots.of(["y"]).folders == (tmp_path / "y",)


def test_a_data_root_with_a_comma_is_one_readable_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-root", "/data/a,b"]) == 2
    assert (
        capsys.readouterr().err
        == "tunefleet: error: --data-root: a folder name with a comma cannot be a data root\n"
    )
