"""Training data for both trainers: the user's labelled files or the seed's dev.tsv/test.tsv, checked and traced.

Files are read by the scorer's own readers (infer/formats.py: TSV, CSV, JSON Lines, Parquet, the same column
options), so a file that `tsinfer score` reads trains too. The classes are the training file's label values, in the
order infer/labels.py documents (0/1, 0/4 and negative/positive: the binary classes as always); validation and test
files are read with them. Bad data never trains silently: a validation or test label outside the training file's
classes, a row without a label or a row that cannot be read stops with a DataError that counts and shows them;
empty texts are dropped and counted; a class under 1% of the rows and texts shared between the training rows and
the test file are reported as warnings.

The seed's split (--data DIR) is the notebook's: 90/10 of dev.tsv with random_state=213, not stratified, so that
`make train` keeps its figures; the user's own --train file is split stratified with the same seed.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sklearn.model_selection import train_test_split

from tsinfer.infer.formats import Columns, read_chunks
from tsinfer.infer.meta import sha256_file
from tsinfer.infer.labels import BINARY, CollectedLabels, LabelSet
from tsinfer.infer.rows import NO_LABEL, InputError, Reject
from tsinfer.train.errors import DataError

SPLIT_SEED = 213
VAL_FRACTION = 0.1
MIN_CLASS_SHARE = 0.01   # a class under this share of the training rows is warned about
READ_CHUNK_ROWS = 4096
SHOWN = 8                # offending values and line numbers shown in one message


@dataclass
class Texts:
    texts: list[str]
    labels: list[int]

    def head(self, n: int | None) -> "Texts":
        return self if n is None else Texts(self.texts[:n], self.labels[:n])


@dataclass
class TrainingData:
    """The three splits (test may be absent) and the `data` block of the training report."""

    train: Texts
    val: Texts
    test: Texts | None
    files: list[dict]
    split: dict
    duplicates: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    labels: LabelSet = BINARY  # the classes: Texts.labels index labels.names

    def limited(self, n: int | None) -> "TrainingData":
        """The first n rows of each split (smoke runs)."""
        return TrainingData(self.train.head(n), self.val.head(n), self.test.head(n) if self.test else None,
                            self.files, dict(self.split, limit=n) if n else self.split, self.duplicates,
                            self.warnings, self.labels)

    def report(self) -> dict:
        """Where the model's rows came from and what was checked, for the report and the model folder."""
        splits = {"train": self.train, "validation": self.val, "test": self.test}
        return {
            "files": self.files, "split": self.split, "labels": list(self.labels.names),
            "label_mapping": self.labels.mapping(),
            "label_mapping_note": "values compared after stripping spaces, in any case",
            "rows": {name: len(t.texts) for name, t in splits.items() if t is not None},
            "class_counts": {name: class_counts(t, self.labels) for name, t in splits.items() if t is not None},
            "empty_texts_dropped": sum(f["empty_texts_dropped"] for f in self.files),
            "duplicates": self.duplicates,
            "warnings": self.warnings,
        }


def class_counts(texts: Texts, labels: LabelSet = BINARY) -> dict[str, int]:
    counts = Counter(texts.labels)
    return {name: counts.get(index, 0) for index, name in enumerate(labels.names)}


def _rows(n: int) -> str:
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def _lines(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:SHOWN]))
    return f"line {shown}" if len(lines) == 1 else f"lines {shown}{', ...' if len(lines) > SHOWN else ''}"


def _refuse(path: str, unlabelled: list[int], bad_labels: dict[str, list[int]], unreadable: list[Reject],
            rows: int, labels: LabelSet | None) -> None:
    """A DataError naming every kind of row that cannot train, with counts, values and line numbers."""
    if bad_labels:
        n = sum(map(len, bad_labels.values()))
        values = "; ".join(f"{value[:20]!r} x{len(lines):,} ({_lines(lines)})"
                           for value, lines in sorted(bad_labels.items(), key=lambda kv: -len(kv[1]))[:SHOWN])
        raise DataError(f"{path}: {_rows(n)} with labels other than {labels.accepted()}: {values}. The classes are "
                        "the training file's labels: drop those rows, or map them to one of its classes")
    if unlabelled:
        hint = (" (no label column was found: name it with --label-column)" if len(unlabelled) == rows
                else "")
        raise DataError(f"{path}: {_rows(len(unlabelled))} without a label ({_lines(unlabelled)}){hint}: training "
                        "needs a label on every row")
    if unreadable:
        shown = "; ".join(f"line {r.line}: {r.reason}" for r in unreadable[:3])
        raise DataError(f"{path}: {_rows(len(unreadable))} that cannot be read ({shown}): fix them and run again "
                        "(`tsinfer score` writes such rows, with their reasons, to a rejects file)")


def read_labelled(path: str | Path, *, role: str, input_format: str = "auto", columns: Columns = Columns(),
                  classes: LabelSet | None = BINARY) -> tuple[Texts, dict, LabelSet]:
    """Every row of one labelled file, its record (name, size, sha256, rows, empty texts dropped) and its label
    set: `classes` as given, or with None, the file's own (LabelSet.from_values: a training file)."""
    path = str(path)
    texts, labels, unlabelled, empty, unreadable = [], [], [], [], []
    bad_labels: dict[str, list[int]] = defaultdict(list)
    reading = CollectedLabels() if classes is None else classes
    try:
        for chunk in read_chunks(path, READ_CHUNK_ROWS, input_format, columns, reading):
            for line, label, text in zip(chunk.lines, chunk.labels, chunk.texts):
                if label == NO_LABEL:
                    unlabelled.append(line)
                texts.append(text)
                labels.append(label)
            for r in chunk.rejects:
                if r.label is not None:
                    bad_labels[r.label].append(r.line)
                else:
                    (empty if r.reason == "empty text" else unreadable).append(r)
    except InputError as e:
        raise DataError(f"{role} file: {e}") from e
    _refuse(path, unlabelled, bad_labels, unreadable, rows=len(texts), labels=classes)
    if not texts:
        raise DataError(f"{path}: no labelled rows with text to {'train on' if role == 'train' else 'use'}")
    if classes is None:
        classes, labels = _ordered(path, reading, labels)
    record = {"role": role, "name": Path(path).name, "path": str(Path(path).resolve()),
              "bytes": Path(path).stat().st_size, "sha256": sha256_file(Path(path)), "rows": len(texts),
              "empty_texts_dropped": len(empty), "empty_text_lines": [r.line for r in empty[:SHOWN]]}
    return Texts(texts, labels), record, classes


def _ordered(path: str, collected: CollectedLabels, labels: list[int]) -> tuple[LabelSet, list[int]]:
    """The collected values as the documented label set, and the rows' labels renumbered to its order."""
    try:
        classes = LabelSet.from_values(collected.names)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from e
    if len(classes) < 2:
        raise DataError(f"{path}: every row has the label {collected.names[0]!r}: a classifier needs two classes "
                        "or more")
    renumber = [classes.index(name) for name in collected.names]
    return classes, [renumber[label] for label in labels]


def split_validation(rows: Texts, fraction: float, *, stratify: bool) -> tuple[Texts, Texts]:
    """train_test_split with the seed's random_state; stratified by label unless the seed's own split is asked."""
    try:
        x_tr, x_val, y_tr, y_val = train_test_split(rows.texts, rows.labels, test_size=fraction,
                                                    random_state=SPLIT_SEED,
                                                    stratify=rows.labels if stratify else None)
    except ValueError as e:  # too few rows of a class, or a fraction leaving no row on one side
        raise DataError(f"cannot hold out {fraction:g} of {len(rows.texts):,} rows for validation ({e}): give "
                        "more rows, another --val-fraction, or a --validation file") from e
    return Texts(x_tr, y_tr), Texts(x_val, y_val)


def class_warnings(rows: Texts, role: str, labels: LabelSet = BINARY) -> list[str]:
    """Every class must be there; one under MIN_CLASS_SHARE of the rows is a warning."""
    counts = class_counts(rows, labels)
    missing = [name for name, n in counts.items() if n == 0]
    if missing:
        raise DataError(f"the {role} rows have no {missing[0]} example ({counts}): a classifier needs every "
                        "class")
    total = len(rows.labels)
    return [f"{role}: class {name} is {n / total:.2%} of the rows ({n:,} of {total:,}), under "
            f"{MIN_CLASS_SHARE:.0%}: the model may never predict it" for name, n in counts.items()
            if n < MIN_CLASS_SHARE * total]


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def shared_texts(seen: Texts, other: Texts) -> int:
    """Rows of `other` whose text (spaces and case normalised) is also among `seen`'s: leaked evaluation rows."""
    known = {_normalised(t) for t in seen.texts}
    return sum(_normalised(t) in known for t in other.texts)


def load_training_data(*, train: str | Path, validation: str | Path | None = None, val_fraction: float | None = None,
                       test: str | Path | None = None, input_format: str = "auto", columns: Columns = Columns(),
                       stratify: bool = True) -> TrainingData:
    """Read, check and split the user's files; the validation split comes from `validation` or `val_fraction`."""
    if validation is not None and val_fraction is not None:
        raise DataError("give either a validation file or a validation fraction, not both")
    whole, train_record, classes = read_labelled(train, role="train", input_format=input_format, columns=columns,
                                                 classes=None)
    rows, files, warnings = whole, [train_record], class_warnings(whole, "train", classes)
    if validation is not None:
        val, record, _ = read_labelled(validation, role="validation", input_format=input_format, columns=columns,
                                       classes=classes)
        files.append(record)
        split = {"validation": "file"}
    else:
        fraction = VAL_FRACTION if val_fraction is None else val_fraction
        rows, val = split_validation(rows, fraction, stratify=stratify)
        split = {"validation": "fraction", "val_fraction": fraction, "seed": SPLIT_SEED, "stratified": stratify}
    held_out = None
    if test is not None:
        held_out, record, _ = read_labelled(test, role="test", input_format=input_format, columns=columns,
                                            classes=classes)
        files.append(record)
    # the test file against every row of the training file, the validation part included
    duplicates = {"train_test": shared_texts(whole, held_out) if held_out else None,
                  "train_validation": shared_texts(rows, val)}
    for f in files:
        if f["empty_texts_dropped"]:
            warnings.append(f"{f['name']}: {_rows(f['empty_texts_dropped'])} with an empty text dropped "
                            f"({_lines(f['empty_text_lines'])})")
    for pair, n in duplicates.items():
        if n:
            warnings.append(f"{pair.split('_')[1]}: {_rows(n)} with the same text as a training row (their "
                            "figures are flattered by rows the model learned)")
    return TrainingData(rows, val, held_out, files, split, duplicates, warnings, classes)


def seed_data(data_dir: str | Path) -> TrainingData:
    """The seed's files: dev.tsv split by the notebook (not stratified), test.tsv as the holdout."""
    data_dir = Path(data_dir)
    for name in ("dev.tsv", "test.tsv"):
        if not (data_dir / name).exists():
            raise DataError(f"{data_dir / name} is missing: run `make data` first, or give --train FILE")
    return load_training_data(train=data_dir / "dev.tsv", test=data_dir / "test.tsv", stratify=False)


def dev_split(data_dir: str | Path) -> tuple[Texts, Texts]:
    """The seed's training and validation rows (the benchmarks' and tests' shortcut)."""
    data = seed_data(data_dir)
    return data.train, data.val


def prepared(data: "TrainingData | str | Path", limit: int | None, progress: Callable[[str], None]) -> TrainingData:
    """What a trainer starts from: the data as given (a folder means the seed's files), cut to `limit` rows a split,
    with the checks' warnings sent to the progress sink before any time is spent on training."""
    data = data if isinstance(data, TrainingData) else seed_data(data)
    for warning in data.warnings:
        progress(f"warning: {warning}")
    return data.limited(limit)
