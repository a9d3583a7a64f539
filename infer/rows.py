"""What every input format reads into, defined once: labels, column names and header detection, Chunks and Rejects,
and the one place where a row is accepted or rejected.

Each format (TSV in reader.py; CSV, JSON Lines and Parquet in formats.py) turns its records into items, which
`to_chunks` gathers: a row (line, id, label value, text, raw), a Reject for a record that cannot be read at all, or
BLANK for a blank line. A row's label and text are checked here only, so every format rejects the same rows for the
same reasons.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from tsinfer.infer.labels import BINARY, LabelSet

NO_LABEL = -1
# The binary label mapping (case-insensitive): Sentiment140's 0/4, 0/1 and the words. Every reader takes the label set
# of the models it scores for (infer/labels.py); a value outside it is a reject that names it.
LABEL_MAP = BINARY.aliases
LABEL_NAMES = BINARY.names
LABELS_ACCEPTED = BINARY.accepted()
# The usual column names of every format (a TSV header, a CSV header, JSON keys, Parquet columns), matched whatever
# their case and spacing; where an input has several, the first listed wins. Twitter/X API dumps write `full_text`
# or `text` and `id_str` or `id`.
COLUMN_NAMES = {"text": ("text", "full_text", "tweet", "sentence", "content"),
                "id": ("id_str", "id", "tweet_id", "ids"),
                "label": ("label", "sentiment", "target", "polarity")}
ROLES = ("text", "id", "label")


class InputError(Exception):
    """The input as a whole cannot be read (missing, a directory, undecodable, no text column)."""


@dataclass
class Reject:
    line: int
    reason: str
    raw: str
    label: str | None = None  # the refused label value, when that is the reason


def parse_label(value: str, labels: LabelSet = BINARY) -> int | None:
    """The class index of a label value (binary: 0/1, 0/4 or negative/positive in any case -> 0 or 1); None for a
    value outside the label set."""
    return labels.index(value)


def label_reject(line: int, value: str, raw: str, labels: LabelSet = BINARY) -> Reject:
    return Reject(line, f"label {value.strip()[:20]!r} is not {labels.accepted()}", raw, label=value.strip())


@dataclass
class Chunk:
    """Rows read in input order. labels holds NO_LABEL where the input has none. Blank lines are neither rows nor
    rejects: they are counted in blank_lines, so that every line of the input is accounted for."""

    lines: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    blank_lines: int = 0
    bytes_read: int = 0  # input position after this chunk (for progress), 0 when unknown

    def __len__(self) -> int:
        return len(self.texts)

    def label_array(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.int8)

    @classmethod
    def joined(cls, chunks) -> "Chunk":
        """The chunks as one, in order (the whole input, where it fits in memory)."""
        whole = cls()
        for chunk in chunks:
            whole.lines += chunk.lines
            whole.ids += chunk.ids
            whole.labels += chunk.labels
            whole.texts += chunk.texts
            whole.rejects += chunk.rejects
            whole.blank_lines += chunk.blank_lines
        return whole

    def add(self, line: int, ident: str, label: int, text: str) -> None:
        self.lines.append(line)
        self.ids.append(ident)
        self.labels.append(label)
        self.texts.append(text)


@dataclass(frozen=True)
class Columns:
    """Column names chosen by the user; None means: the first of COLUMN_NAMES that the input has."""

    text: str | None = None
    id: str | None = None
    label: str | None = None

    def given(self) -> bool:
        return any((self.text, self.id, self.label))


def find_roles(names: list[str]) -> dict[str, int | None]:
    """{role: index of its column in names, or None}, by COLUMN_NAMES: the header detection of every format."""
    position = {}
    for i, name in enumerate(names):
        position.setdefault(str(name).strip().lower(), i)
    return {role: next((position[n] for n in COLUMN_NAMES[role] if n in position), None) for role in ROLES}


def resolve(names: list[str], columns: Columns, source: str) -> dict[str, str | None]:
    """{role: column name} for an input whose columns are named (CSV, JSON Lines, Parquet): those the user named,
    else the usual ones. A missing text column, or a named column that is not there, is an InputError that lists
    the columns the input has."""
    found = find_roles(names)
    out = {}
    for role in ROLES:
        wanted = getattr(columns, role)
        if wanted is not None and wanted not in names:
            raise InputError(f"{source} has no column {wanted!r} (--{role}-column); its columns: {', '.join(names)}")
        out[role] = wanted if wanted is not None else (None if found[role] is None else names[found[role]])
    if out["text"] is None:
        raise InputError(f"{source} has no text column ({', '.join(COLUMN_NAMES['text'])}): name it with "
                         f"--text-column; its columns: {', '.join(map(str, names)) or 'none'}")
    return out


def _label(value, labels: LabelSet) -> int | str:
    """The row's label (NO_LABEL when empty), or, when it is refused, the value as text."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return NO_LABEL
    text = str(int(value)) if isinstance(value, (bool, int, float)) and float(value).is_integer() else str(value)
    label = labels.index(text)
    return text if label is None else label


BLANK = object()  # a blank line: skipped, only counted


def to_chunks(items: Iterable, chunk_rows: int, labels: LabelSet = BINARY) -> Iterator[Chunk]:
    """Chunks of at most chunk_rows accepted rows from a format's items (see the module's docstring). A row whose
    label is outside `labels`, or whose text is missing, not a string or empty, becomes a Reject here; a reject's
    raw text, when the format gives a record (dict) instead, is the record as JSON."""
    aliases = labels.aliases
    chunk = Chunk()
    add = chunk.add
    for item in items:
        if type(item) is not tuple:
            if item is BLANK:
                chunk.blank_lines += 1
            else:
                chunk.rejects.append(item)
            continue
        line, ident, label, text, raw = item
        # the usual labels as written skip _label (the TSV reader's hot path); any other value goes through it
        label = aliases[label] if label.__class__ is str and label in aliases else _label(label, labels)
        if label.__class__ is int and text.__class__ is str and text and not text.isspace():
            add(line, str(line) if ident is None else ident if ident.__class__ is str else str(ident), label, text)
            if len(chunk.texts) >= chunk_rows:
                yield chunk
                chunk = Chunk()
                add = chunk.add
        else:
            chunk.rejects.append(_reject(line, label, text, raw, labels))
    if len(chunk) or chunk.rejects or chunk.blank_lines:
        yield chunk


def _reject(line: int, label: int | str, text, raw, labels: LabelSet) -> Reject:
    """Why a row with a refused label, or a text that is missing, not a string or empty, is rejected."""
    raw = raw if isinstance(raw, str) else json.dumps(raw, default=str, ensure_ascii=False)[:1000]
    if isinstance(label, str):
        return label_reject(line, label, raw, labels)
    if text is None:
        return Reject(line, "text is null", raw)
    return Reject(line, "empty text" if isinstance(text, str) else "text is not a string", raw)
