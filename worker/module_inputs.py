"""A torch-module task's inputs: numeric columns or hashed text, labels as class indexes, a fixed seeded split."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from studies.spec import ColumnInputs, HashedTextInputs, LocalData, Task
from worker.data import (
    DataError,
    data_memo_key,
    label_of,
    load_split,
    name_listing,
    read_rows,
    split_local,
)
from worker.data_report import DataReport
from worker.data_roots import DataRoots

# How hashed text is made (with n_features from the task), recorded with a kept model so anyone can make it again.
HASHING = {
    "vectorizer": "sklearn.feature_extraction.text.HashingVectorizer",
    "arguments": {"dtype": "float32"},
    "other_arguments": "scikit-learn's defaults",
}
_LISTED_COLUMNS = 30


@dataclass(frozen=True)
class FeatureRows:
    """A set's input rows: a dense float tensor, or (hashed text) a sparse matrix made dense a batch at a time."""

    dense: torch.Tensor | None = None
    # A scipy.sparse CSR matrix: hashed text is wide and mostly zeros, too big to hold dense.
    sparse: Any = None

    @property
    def n_rows(self) -> int:
        """How many rows there are."""
        return int(self.dense.shape[0]) if self.dense is not None else int(self.sparse.shape[0])

    @property
    def width(self) -> int:
        """How many features each row has."""
        return int(self.dense.shape[1]) if self.dense is not None else int(self.sparse.shape[1])

    def to(self, device: torch.device) -> FeatureRows:
        """The rows with dense ones moved to the device once; sparse ones stay where scipy can index them."""
        if self.dense is None:
            return self
        return FeatureRows(dense=self.dense.to(device))

    def take(self, index: torch.Tensor, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The rows at index as a dense [len(index), width] tensor on the device."""
        if self.dense is not None:
            return self.dense[index.to(self.dense.device)].to(device=device, dtype=dtype)
        dense = self.sparse[index.cpu().numpy()].toarray()
        return torch.from_numpy(dense).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class ModelInputs:
    """Train and validation inputs with int64 class indexes into label_names, and what the inputs are."""

    train: FeatureRows
    train_labels: torch.Tensor
    validation: FeatureRows
    validation_labels: torch.Tensor
    label_names: list[str]
    # The feature columns in order (inputs kind columns); None for hashed text.
    columns: list[str] | None
    # For reasons: "4 columns: a, b, c, d" or "the text hashed into 64 features".
    described: str
    # What loading found (duplicates, conflicts, labels never validated).
    report: DataReport = field(default=DataReport())

    @property
    def width(self) -> int:
        """How many features a row has: what the model's input width must be."""
        return self.train.width


def hash_texts(texts: list[str], n_features: int) -> Any:
    """Texts as a float32 CSR matrix of n_features hashed token counts: stateless, the same on every host."""
    # Imported here: scikit-learn takes most of a second to import, and only hashed-text studies need it.
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(n_features=n_features, dtype=np.float32)
    return vectorizer.transform(texts).tocsr()


def _number(value: Any, *, given: str, number: int, column: str, present: list[str]) -> float:
    parsed: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        parsed = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            parsed = float(value)
        except ValueError:
            parsed = None
    if parsed is None or not math.isfinite(parsed):
        # What the cell is, never what it holds: a reason quotes a file's column names, not its data.
        if value is None or (isinstance(value, str) and not value.strip()):
            what = "is empty"
        elif parsed is not None:
            what = "is not finite"
        else:
            what = "is not a number"
        raise DataError(
            f"column {column!r} of {given!r} is not numeric: row {number} {what}; inputs kind columns reads"
            f" finite numbers, so name the numeric columns in task.inputs.columns (columns present:"
            f" {name_listing(present)})"
        )
    return parsed


def feature_columns(present: list[str], wanted: list[str] | None, label_column: str, given: str) -> list[str]:
    """The feature columns, in order: those named, or every column but the label; DataError naming a missing one."""
    if label_column not in present:
        raise DataError(
            f"{given!r} has no column {label_column!r} (task.data.label_column); columns present: {name_listing(present)}"
        )
    if wanted is None:
        columns = [name for name in present if name != label_column]
        if not columns:
            raise DataError(f"{given!r} has no column besides the label {label_column!r} to use as an input")
        return columns
    for column in wanted:
        if column == label_column:
            raise DataError(f"task.inputs.columns lists the label column {label_column!r}")
        if column not in present:
            raise DataError(
                f"{given!r} has no column {column!r} (task.inputs.columns); columns present: {name_listing(present)}"
            )
    return list(wanted)


def row_features(
    rows: Sequence[Mapping[str, Any]], columns: list[str], given: str
) -> list[tuple[float, ...]]:
    """Each row's feature columns as numbers; DataError naming a column that is missing or not numeric."""
    present = list(rows[0]) if rows else []
    features = []
    for number, row in enumerate(rows, start=1):
        features.append(
            tuple(
                _number(row.get(column), given=given, number=number, column=column, present=present)
                for column in columns
            )
        )
    return features


def _read_columns(
    given: str, *, role: str, wanted: list[str] | None, label_column: str, roots: DataRoots | None
) -> tuple[list[str], list[tuple[float, ...]], list[str]]:
    present, rows = read_rows(given, role=role, roots=roots)
    columns = feature_columns(present, wanted, label_column, given)
    labels = [
        label_of(row.get(label_column), given=given, number=number, label_column=label_column)
        for number, row in enumerate(rows, start=1)
    ]
    return columns, row_features(rows, columns, given), labels


def _labels(pairs: Sequence[tuple[Any, int]]) -> torch.Tensor:
    return torch.tensor([label for _, label in pairs], dtype=torch.int64)


def _column_inputs(
    task: Task, data: LocalData, wanted: list[str] | None, roots: DataRoots | None
) -> ModelInputs:
    columns, features, labels = _read_columns(
        data.train, role="training", wanted=wanted, label_column=data.label_column, roots=roots
    )
    validation = None
    if data.validation is not None:
        _, validation_features, validation_labels = _read_columns(
            data.validation, role="validation", wanted=columns, label_column=data.label_column, roots=roots
        )
        validation = list(zip(validation_features, validation_labels, strict=True))
    split = split_local(
        list(zip(features, labels, strict=True)),
        validation,
        train_file=data.train,
        validation_file=data.validation,
        validation_fraction=task.validation_fraction,
        seed=task.data_seed,
        max_examples=task.max_examples,
    )

    def dense(pairs: list[tuple[tuple[float, ...], int]]) -> FeatureRows:
        return FeatureRows(dense=torch.tensor([item for item, _ in pairs], dtype=torch.float32))

    shown = ", ".join(columns[:_LISTED_COLUMNS]) + (" ..." if len(columns) > _LISTED_COLUMNS else "")
    return ModelInputs(
        train=dense(split.train),
        train_labels=_labels(split.train),
        validation=dense(split.validation),
        validation_labels=_labels(split.validation),
        label_names=split.label_names,
        columns=columns,
        described=f"{len(columns)} column{'s' if len(columns) != 1 else ''}: {shown}",
        report=split.report,
    )


def _hashed_inputs(task: Task, n_features: int, roots: DataRoots | None) -> ModelInputs:
    # Texts are split as kind text-classification splits them: the same duplicates dropped, the same warnings.
    split = load_split(task, roots)
    train_pairs = list(zip(split.train_texts, split.train_labels, strict=True))
    validation_pairs = list(zip(split.validation_texts, split.validation_labels, strict=True))

    def hashed(pairs: list[tuple[str, int]]) -> FeatureRows:
        return FeatureRows(sparse=hash_texts([text for text, _ in pairs], n_features))

    return ModelInputs(
        train=hashed(train_pairs),
        train_labels=_labels(train_pairs),
        validation=hashed(validation_pairs),
        validation_labels=_labels(validation_pairs),
        label_names=list(split.label_names),
        columns=None,
        described=f"the text hashed into {n_features} features",
        report=split.report,
    )


def load_model_inputs(task: Task, roots: DataRoots | None = None) -> ModelInputs:
    """The task's inputs, labels and split, as task.inputs and task.data say; DataError with the reason.

    A worker passes its data roots: a local file outside them is refused unread.
    """
    inputs = task.inputs
    if isinstance(inputs, HashedTextInputs):
        return _hashed_inputs(task, inputs.n_features, roots)
    if isinstance(inputs, ColumnInputs):
        if not isinstance(task.data, LocalData):
            raise DataError(
                "inputs kind columns reads numeric columns of local files, not a built-in data set"
            )
        return _column_inputs(task, task.data, inputs.columns, roots)
    raise DataError(
        "kind torch-module needs task.inputs: {kind: columns} or {kind: hashed-text, n_features: N}"
    )


def inputs_memo_key(task: Task) -> tuple[Any, ...]:
    """What a process's memo of loaded inputs is keyed on: the data, its files' stamps, the inputs, the split."""
    inputs = task.inputs.model_dump_json() if task.inputs is not None else None
    return (*data_memo_key(task), inputs)
