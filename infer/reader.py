"""The one TSV reader: streams any supported input file as chunks of rows.

Layouts (decided on the first data row, or by a header naming the columns):
- 5 columns: index, id, label, alpha, text   (the seed's test.tsv, with a header line)
- 4 columns: id, label, alpha, text          (the seed's dev.tsv, no header)
- 3 columns: id, label, text
- 2 columns: id, text                        (unlabeled)
- 1 column:  text                            (unlabeled, id = line number)
Fields may be double-quoted (and then hold tabs); CRLF or LF; a UTF-8 BOM is skipped. Labels 0/4 (Sentiment140)
or 0/1 map to 0/1; an empty label means unlabeled. A row that cannot be read is rejected with its line number and a
reason, never dropped silently; extra tabs in an unquoted text stay part of the text.
"""
from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import numpy as np

NO_LABEL = -1
LABEL_MAP = {"0": 0, "1": 1, "4": 1}
HEADER_NAMES = {
    "id": {"id", "tweet_id", "ids"},
    "label": {"label", "sentiment", "target", "polarity"},
    "text": {"text", "tweet", "sentence", "content"},
}
# Column layouts by count: the field index of id, label and text (None = absent).
LAYOUTS = {5: (1, 2, 4), 4: (0, 1, 3), 3: (0, 1, 2), 2: (0, None, 1), 1: (None, None, 0)}
DEFAULT_CHUNK_ROWS = 16384

csv.field_size_limit(sys.maxsize)  # one very long tweet is a row, not a crash


@dataclass
class Reject:
    line: int
    reason: str
    raw: str


@dataclass
class Chunk:
    """Rows read in input order. labels holds NO_LABEL where the input has none."""

    lines: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    bytes_read: int = 0  # input position after this chunk (for progress), 0 when unknown

    def __len__(self) -> int:
        return len(self.texts)

    def label_array(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.int8)


class InputError(Exception):
    """The input as a whole cannot be read (missing, a directory, undecodable)."""


def _header_layout(fields: list[str]) -> tuple[int | None, int | None, int | None, int] | None:
    names = [f.strip().lower() for f in fields]
    found = {}
    for role, aliases in HEADER_NAMES.items():
        for i, name in enumerate(names):
            if name in aliases:
                found[role] = i
                break
    if "text" not in found:
        return None
    return found.get("id"), found.get("label"), found["text"], len(fields)


def open_text(path: str | Path) -> IO[str]:
    """Open a path (or '-' for stdin) as text for the csv module; errors name the path and the fix."""
    if str(path) == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="replace", newline="")
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file not found: {p}")
    if p.is_dir():
        raise InputError(f"input is a directory, not a TSV file: {p}")
    try:
        return open(p, encoding="utf-8-sig", errors="replace", newline="")
    except OSError as e:
        raise InputError(f"cannot open {p}: {e.strerror}") from e


def iter_chunks(path: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Chunk]:
    """Yield Chunks of at most chunk_rows accepted rows; memory stays flat in the file's size."""
    with open_text(path) as fh:
        for chunk in _parse(fh, chunk_rows):
            try:
                chunk.bytes_read = fh.buffer.tell()
            except (AttributeError, OSError, ValueError):  # stdin or a pipe
                pass
            yield chunk


def input_size(path: str | Path) -> int | None:
    """Size in bytes of a regular input file, for progress estimates; None for stdin or pipes."""
    try:
        p = Path(path)
        return p.stat().st_size if str(path) != "-" and p.is_file() else None
    except OSError:
        return None


def _parse(fh: IO[str], chunk_rows: int) -> Iterator[Chunk]:
    rows = csv.reader(fh, delimiter="\t", quotechar='"', doublequote=True, strict=False)
    layout = None  # (id_col, label_col, text_col, n_cols)
    chunk = Chunk()
    first_line = 1
    for fields in rows:
        line = first_line
        first_line = rows.line_num + 1
        if not fields or (len(fields) == 1 and fields[0].strip() == ""):
            if fields:
                chunk.rejects.append(Reject(line, "empty line", ""))
            continue
        if layout is None:
            layout = _header_layout(fields)
            if layout is not None:
                continue  # a header line
            n = min(len(fields), 5)
            layout = (*LAYOUTS[n], n)
        id_col, label_col, text_col, n_cols = layout
        if len(fields) < n_cols:
            chunk.rejects.append(Reject(line, f"expected {n_cols} columns, got {len(fields)}", "\t".join(fields)))
            continue
        text = "\t".join(fields[text_col:]) if text_col == n_cols - 1 else fields[text_col]
        label = NO_LABEL
        if label_col is not None:
            raw_label = fields[label_col].strip()
            if raw_label:
                if raw_label not in LABEL_MAP:
                    chunk.rejects.append(Reject(line, f"label {raw_label!r} is not 0, 1 or 4", "\t".join(fields)))
                    continue
                label = LABEL_MAP[raw_label]
        if not text.strip():
            chunk.rejects.append(Reject(line, "empty text", "\t".join(fields)))
            continue
        chunk.lines.append(line)
        chunk.ids.append(fields[id_col] if id_col is not None else str(line))
        chunk.labels.append(label)
        chunk.texts.append(text)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = Chunk()
    if len(chunk) or chunk.rejects:
        yield chunk


def read_all(path: str | Path) -> Chunk:
    """The whole file as one Chunk: for training and reports, where the data fits in memory."""
    whole = Chunk()
    for chunk in iter_chunks(path):
        whole.lines += chunk.lines
        whole.ids += chunk.ids
        whole.labels += chunk.labels
        whole.texts += chunk.texts
        whole.rejects += chunk.rejects
    return whole
