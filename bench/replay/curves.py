"""Recorded training curves: one gzipped JSON line per configuration, every epoch's loss, accuracy and CPU seconds."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"
# Every HELD_OUT_EVERY-th recorded configuration is never shown to the surrogate: its curve is what fresh
# training gave, and the surrogate's fidelity is measured on those.
HELD_OUT_EVERY = 20


@dataclass(frozen=True)
class Curve:
    """One configuration trained for the space's most epochs: each epoch's validation loss, accuracy, CPU seconds."""

    index: int
    params: dict[str, Any]
    seed: int
    val_loss: list[float]
    val_accuracy: list[float]
    cpu_s: list[float]
    # Why training stopped before the last epoch (a NaN loss), or None: the curve holds the epochs before it.
    failed: str | None = None

    @property
    def held_out(self) -> bool:
        return self.index % HELD_OUT_EVERY == 0

    @property
    def epochs(self) -> int:
        """The epochs the configuration itself asks for (its recorded curve may run further)."""
        return min(int(self.params.get("epochs", len(self.val_loss))), len(self.val_loss))

    def fails_within(self, epochs: int) -> bool:
        """Whether a trial of this configuration running `epochs` epochs fails (its loss turned NaN by then)."""
        return self.failed is not None and epochs > len(self.val_loss)

    def value(self, epochs: int | None = None) -> float:
        """What tunefleet records as such a trial's value: the best validation loss of its first epochs."""
        n = self.epochs if epochs is None else min(epochs, len(self.val_loss))
        return min(self.val_loss[:n]) if n else math.inf

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "params": self.params,
            "seed": self.seed,
            "val_loss": [round(v, 6) for v in self.val_loss],
            "val_accuracy": [round(v, 6) for v in self.val_accuracy],
            "cpu_s": [round(v, 5) for v in self.cpu_s],
            **({"failed": self.failed} if self.failed else {}),
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Curve:
        return cls(
            index=int(row["index"]),
            params=dict(row["params"]),
            seed=int(row["seed"]),
            val_loss=[float(v) for v in row["val_loss"]],
            val_accuracy=[float(v) for v in row["val_accuracy"]],
            cpu_s=[float(v) for v in row["cpu_s"]],
            failed=row.get("failed"),
        )


def data_file(task: str, folder: Path = DATA_DIR) -> Path:
    return folder / f"{task}.jsonl.gz"


def repeat_file(recording: Path) -> Path:
    """Where the held-out configurations of a recording, trained a second time with other seeds, are kept."""
    return recording.with_name(recording.name.replace(".jsonl.gz", ".repeat.jsonl.gz"))


def append(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows as one more gzip member: concatenated members read back as one file, so a recording resumes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "at", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n")


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as rows:
        for line in rows:
            if line.strip():
                yield json.loads(line)


@dataclass(frozen=True)
class Recording:
    """A task's recording: what it was made from (its header) and its curves, in index order."""

    header: dict[str, Any]
    curves: list[Curve]

    @property
    def max_epochs(self) -> int:
        return int(self.header["max_epochs"])

    def fitted(self) -> list[Curve]:
        return [c for c in self.curves if not c.held_out]

    def held_out(self) -> list[Curve]:
        return [c for c in self.curves if c.held_out]


def load(path: Path) -> Recording:
    """A recording from its file; ValueError if it has no header or a curve is not finite."""
    rows = list(read_rows(path))
    headers = [r for r in rows if r.get("kind") == "header"]
    if not headers:
        raise ValueError(f"{path}: no header line; record it with python -m bench.replay.record")
    curves: dict[int, Curve] = {}
    for row in rows:
        if row.get("kind") == "header":
            continue
        curve = Curve.from_json(row)
        if not all(math.isfinite(v) for v in curve.val_loss):
            raise ValueError(f"{path}: configuration {curve.index} has a loss that is not finite")
        curves[curve.index] = curve
    return Recording(header=headers[0], curves=[curves[i] for i in sorted(curves)])
