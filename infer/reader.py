"""The TSV reader, and the record reader that CSV shares: streams a text input as chunks of rows.

Layouts (decided on the first data rows, or by a header naming the columns with rows.COLUMN_NAMES, as every format):
- 5 columns: index, id, label, alpha, text   (the seed's test.tsv, with a header line)
- 4 columns: id, label, alpha, text          (the seed's dev.tsv, no header)
- 3 columns: id, label, text
- 2 columns: id, text                        (unlabeled)
- 1 column:  text                            (unlabeled, id = line number)
Fields may be double-quoted (and then hold tabs); CRLF, LF or CR; a UTF-8 BOM is skipped. Labels map to class indices
by the models' label set (infer/labels.py; binary: 0/4, 0/1 or negative/positive in any case -> 0/1); an empty
label means unlabeled. A row that cannot be read is rejected
with its line number and a reason, never dropped silently; extra tabs in an unquoted text stay part of the text. A
blank (whitespace-only) line is skipped and counted, not a row.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from contextlib import contextmanager
from itertools import chain, islice
from pathlib import Path
from typing import IO, Iterator

from tsinfer.infer.labels import BINARY, LabelSet
from tsinfer.infer.rows import BLANK, NO_LABEL, Chunk, InputError, Reject, find_roles, to_chunks
from tsinfer.infer.textio import damaged_as_input_error, open_text

__all__ = ["DEFAULT_CHUNK_ROWS", "MAX_LINE_CHARS", "NO_LABEL", "InputError", "iter_chunks", "parse_chunks",
           "read_all", "records", "tsv_line", "write_rows"]

# Column layouts by count: the field index of id, label and text (None = absent).
LAYOUTS = {5: (1, 2, 4), 4: (0, 1, 3), 3: (0, 1, 2), 2: (0, None, 1), 1: (None, None, 0)}
DEFAULT_CHUNK_ROWS = 4096  # sorted and batched together; larger chunks pad a little less but hold more memory
MAX_QUOTED_LINES = 64   # a quoted field may span this many more lines; beyond, its quote is taken as unterminated
LAYOUT_SAMPLE = 64      # records read before the column layout is decided
MAX_LINE_CHARS = 1_000_000  # a longer line is rejected, read in pieces of this size: memory stays bounded


def too_long(line: int, head: str) -> Reject:
    return Reject(line, f"line longer than {MAX_LINE_CHARS:,} characters", head)


def iter_chunks(path: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS, labels: LabelSet = BINARY) -> Iterator[Chunk]:
    """Yield Chunks of at most chunk_rows accepted rows; memory stays flat in the file's size."""
    with open_text(path) as fh, damaged_as_input_error(fh, path):
        for chunk in parse_chunks(fh, chunk_rows, labels):
            try:
                chunk.bytes_read = fh.raw.tell()  # bytes of the file as stored, compressed or not
            except (AttributeError, OSError, ValueError):  # stdin or a pipe
                pass
            yield chunk


def _quoted_fields(record: str, delimiter: str = "\t") -> list[str] | None:
    """csv-parse one record; None when a quoted field is still open at its end (it may go on next line)."""
    with _field_limit(len(record)):
        try:
            return next(csv.reader([record], delimiter=delimiter, quotechar='"', strict=True), [""])
        except csv.Error as e:
            if "unexpected end of data" in str(e):
                return None
            return next(csv.reader([record], delimiter=delimiter, quotechar='"', strict=False), [""])


@contextmanager
def _field_limit(size: int):
    """The csv module's field size limit (process-wide, 131,072 characters by default) raised for one record
    that needs more, and put back: one very long quoted tweet is a row, not a crash."""
    old = csv.field_size_limit()
    if size <= old:
        yield
        return
    csv.field_size_limit(size)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def records(fh: IO[str], delimiter: str = "\t") -> Iterator[tuple[int, list[str] | None, str]]:
    """(first line number, fields, raw text) per record; fields [] for a blank line (whitespace only, as written).
    Lines without a double quote split on the delimiter (the fast path); a quoted field may run over at most
    MAX_QUOTED_LINES lines, else its line is read on its own, literally, and the lines after it are read as records
    again: an unterminated quote never swallows the rest of the file. NUL bytes are dropped (the csv module cannot
    read them). A line over MAX_LINE_CHARS comes back with fields None and the start of its text, read in pieces
    (CSV files share this reader with TSV)."""
    pushback: list[str] = []
    line_no = 0

    def next_line():
        return pushback.pop() if pushback else fh.readline(MAX_LINE_CHARS + 1)

    while True:
        line = next_line()
        if not line:
            return
        line_no += 1
        if len(line) > MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            head = line[:200]
            while line and not line.endswith(("\n", "\r")):  # the rest of the line, piece by piece, dropped
                line = next_line()
            yield line_no, None, head
            continue
        if line.isspace():  # checked before NULs are dropped: a line of NULs is no blank line
            yield line_no, [], ""
            continue
        if "\0" in line:
            line = line.replace("\0", "")
        if '"' not in line:
            body = line.rstrip("\r\n")
            yield line_no, body.split(delimiter), body
            continue
        record, taken = line, []
        fields = _quoted_fields(record, delimiter)
        while fields is None and len(taken) < MAX_QUOTED_LINES:
            more = next_line()
            if not more:
                break
            taken.append(more.replace("\0", ""))
            record += taken[-1]
            fields = _quoted_fields(record, delimiter)
        if fields is None:  # unterminated: this line alone, as written
            pushback.extend(reversed(taken))
            body = line.rstrip("\r\n")
            yield line_no, body.split(delimiter), body
            continue
        if fields and fields[-1].endswith(("\n", "\r")) and not record.rstrip("\r\n").endswith('"'):
            fields[-1] = fields[-1].rstrip("\r\n")
        yield line_no, fields, record.rstrip("\r\n")
        line_no += len(taken)


def _header_layout(fields: list[str]) -> tuple[int | None, int | None, int | None, int] | None:
    """Column roles from a header line: it must name a text column and an id or label column."""
    roles = find_roles(fields)
    if roles["text"] is None or (roles["id"] is None and roles["label"] is None):
        return None
    return roles["id"], roles["label"], roles["text"], len(fields)


def _choose_layout(first: list[tuple[int, list[str] | None, str]]):
    """A header names the columns; otherwise the most common column count among the first rows decides. Returns
    the layout and the header's index in `first` (None without one)."""
    start = next((k for k, (_, fields, _) in enumerate(first) if fields != []), None)  # blank lines are no header
    if start is not None and first[start][1]:
        header = _header_layout(first[start][1])
        if header is not None:
            return header, start
    counts = Counter(min(len(f), 5) for _, f, _ in first if f and any(x.strip() for x in f))
    n = counts.most_common(1)[0][0] if counts else 1
    return (*LAYOUTS[n], n), None


def parse_chunks(fh: IO[str], chunk_rows: int = DEFAULT_CHUNK_ROWS, labels: LabelSet = BINARY) -> Iterator[Chunk]:
    """Chunks of an open text stream (see textio.TEXT_DECODING): iter_chunks for paths, the Ray engine for shard
    bytes."""
    return to_chunks(_tsv_items(fh), chunk_rows, labels)


def _tsv_items(fh: IO[str]):
    """rows.to_chunks items of a TSV stream, by its layout."""
    found = records(fh)
    first = list(islice(found, LAYOUT_SAMPLE))
    (id_col, label_col, text_col, n_cols), header_at = _choose_layout(first)
    text_last = text_col == n_cols - 1
    if header_at is not None:
        del first[header_at]
    for line, fields, raw in chain(first, found):
        if fields is None:
            yield too_long(line, raw)
        elif not fields:
            yield BLANK
        # a text that is the last column keeps any extra tabs; elsewhere extra columns are an error
        elif (len(fields) == n_cols or len(fields) > n_cols and text_last) and (
                fields[text_col].strip() or any(f.strip() for f in fields)):
            yield (line, None if id_col is None else fields[id_col], None if label_col is None else fields[label_col],
                   "\t".join(fields[text_col:]) if text_last else fields[text_col], raw)
        elif not any(f.strip() for f in fields):
            yield Reject(line, "empty row", raw)  # not blank as written: quoted empty fields or NUL bytes
        else:
            yield Reject(line, f"expected {n_cols} columns, got {len(fields)}", raw)


_NEEDS_QUOTES = re.compile('[\t"\r\n]').search


def tsv_field(value) -> str:
    """Quote a field when it holds a tab, quote, CR or LF (csv's QUOTE_MINIMAL misses a bare CR with LF endings)."""
    value = str(value)
    if _NEEDS_QUOTES(value):
        return '"' + value.replace('"', '""') + '"'
    return value


def tsv_line(fields) -> str:
    return "\t".join(map(tsv_field, fields)) + "\n"


def write_rows(path: str | Path, ids, labels, texts) -> None:
    """Write an `id<TAB>label<TAB>text` file with a header that iter_chunks reads back exactly."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(tsv_line(["id", "label", "text"]))
        fh.writelines(tsv_line(("" if i is None else i, "" if lab in (None, NO_LABEL) else lab, t))
                      for i, lab, t in zip(ids, labels, texts))


def read_all(path: str | Path, labels: LabelSet = BINARY) -> Chunk:
    """The whole file as one Chunk: for training and reports, where the data fits in memory."""
    return Chunk.joined(iter_chunks(path, labels=labels))
