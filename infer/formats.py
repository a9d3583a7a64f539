"""Inputs other than TSV: JSON Lines, CSV and Parquet, read into the same Chunks as the TSV reader.

Each record becomes a row with the TSV path's rules: labels 0/1/4 or negative/positive (or empty), an empty text
rejected, a record that cannot be read rejected with its line (row, for Parquet) number and reason, never dropped.
Columns are found by name: --text-column/--id-column/--label-column, else the usual names (Twitter/X API dumps write
`full_text` or `text` and `id_str` or `id`). JSON Lines and CSV stream through open_text, so they may be compressed too; Parquet is
read by pyarrow one record batch at a time, never whole.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator

from tsinfer.infer.reader import (MAX_LINE_CHARS, NO_LABEL, Chunk, InputError, Reject, _records,
                                  damaged_as_input_error, iter_chunks, label_reject, open_text, parse_label)

FORMATS = ("tsv", "jsonl", "csv", "parquet")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
            ".pq": "parquet", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv"}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
DEFAULT_NAMES = {"text": ("text", "full_text", "tweet", "sentence", "content"),
                 "id": ("id_str", "id", "tweet_id", "ids"),
                 "label": ("label", "sentiment", "target", "polarity")}


@dataclass(frozen=True)
class Columns:
    """Column names chosen by the user; None means: the first of DEFAULT_NAMES that the input has."""

    text: str | None = None
    id: str | None = None
    label: str | None = None

    def given(self) -> bool:
        return any((self.text, self.id, self.label))


def input_format(path: str, requested: str = "auto") -> str:
    """The format to read: as requested, else by the file's suffix (under any compression suffix), else TSV."""
    if requested != "auto":
        return requested
    name = Path(str(path)).name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    return SUFFIXES.get(Path(name).suffix, "tsv")


def read_chunks(path: str, chunk_rows: int, fmt: str = "auto", columns: Columns = Columns()) -> Iterator[Chunk]:
    """Chunks of any supported input: the one entry point of the scorer's reader thread."""
    fmt = input_format(path, fmt)
    if fmt == "tsv":
        if columns.given():
            raise InputError(f"{path} is read as TSV, whose columns come from its layout or header line: "
                             "--text/--id/--label-column apply to CSV, JSON Lines and Parquet (--input-format)")
        return iter_chunks(path, chunk_rows)
    return {"jsonl": jsonl_chunks, "csv": csv_chunks, "parquet": parquet_chunks}[fmt](path, columns, chunk_rows)


def resolve(names: list[str], columns: Columns, source: str) -> dict[str, str | None]:
    """{role: column name} for text, id and label; a missing text column, or a named column that is not there,
    is an InputError that lists the columns the input has."""
    out = {}
    # the usual names match whatever their case and spacing (as TSV headers do); a named column must match exactly
    usual = {n.strip().lower(): n for n in reversed(names)}
    for role in ("text", "id", "label"):
        wanted = getattr(columns, role)
        if wanted is not None and wanted not in names:
            raise InputError(f"{source} has no column {wanted!r} (--{role}-column); its columns: {', '.join(names)}")
        out[role] = wanted or next((usual[n] for n in DEFAULT_NAMES[role] if n in usual), None)
    if out["text"] is None:
        raise InputError(f"{source} has no text column ({', '.join(DEFAULT_NAMES['text'])}): name it with "
                         f"--text-column; its columns: {', '.join(names) or 'none'}")
    return out


def _label(value) -> int | str:
    """The row's label (NO_LABEL when empty), or, when it is refused, the value as text."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return NO_LABEL
    text = str(int(value)) if isinstance(value, (bool, int, float)) and float(value).is_integer() else str(value)
    label = parse_label(text)
    return text if label is None else label


def rows_to_chunks(records: Iterator[tuple[int, dict | None, str]], roles: dict, chunk_rows: int,
                   ) -> Iterator[Chunk]:
    """(line, record or None with (reason, raw) in raw's place, raw text or None) -> Chunks, by the TSV path's
    rules; a reject's raw text, when None, is its record as JSON."""
    chunk = Chunk()
    for line, record, raw in records:
        reason = bad_label = None
        if record is None:
            reason, raw = raw
        else:
            text = record.get(roles["text"])
            label = _label(record.get(roles["label"])) if roles["label"] else NO_LABEL
            if isinstance(label, str):
                bad_label = label
            elif text is None:
                reason = f"no {roles['text']!r} field"
            elif not isinstance(text, str):
                reason = "text is not a string"
            elif not text.strip():
                reason = "empty text"
        if reason or bad_label is not None:
            raw = raw if raw is not None else json.dumps(record, default=str, ensure_ascii=False)[:1000]
            chunk.rejects.append(Reject(line, reason, raw) if reason else label_reject(line, bad_label, raw))
            continue
        ident = record.get(roles["id"]) if roles["id"] else None
        chunk.add(line, str(line) if ident is None else str(ident), label, text)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = Chunk()
    if len(chunk) or chunk.rejects:
        yield chunk


def jsonl_chunks(path: str, columns: Columns, chunk_rows: int) -> Iterator[Chunk]:
    with open_text(path) as fh, damaged_as_input_error(fh, path):
        lines = _bounded_lines(fh)
        first = list(_until_first_object(lines))
        if first and first[0][1] is not None and first[0][1].lstrip().startswith("["):
            raise InputError(f"{path} is a JSON array, not JSON Lines (one object a line): convert it, for example "
                             "with jq -c '.[]'")
        obj = _object(first[-1][1]) if first and first[-1][1] is not None else None
        roles = resolve(list(obj) if obj else [], columns, path) if first else {"text": None, "id": None,
                                                                               "label": None}

        def records():
            for n, line in chain(first, lines):
                if line is None:
                    yield n, None, (f"line longer than {MAX_LINE_CHARS:,} characters", "")
                elif not line.strip():
                    yield n, None, ("empty line", line)
                elif (obj := _object(line)) is None:
                    yield n, None, ("not a JSON object", line[:1000])
                else:
                    yield n, obj, line
        yield from rows_to_chunks(records(), roles, chunk_rows)


def _bounded_lines(fh):
    """(line number, line without its end) with memory bounded: a line over MAX_LINE_CHARS comes back as None."""
    n = 0
    while line := fh.readline(MAX_LINE_CHARS + 1):
        n += 1
        if len(line) > MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            while line and not line.endswith(("\n", "\r")):
                line = fh.readline(MAX_LINE_CHARS)
            yield n, None
        else:
            yield n, line.rstrip("\r\n")


def _object(line: str) -> dict | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _until_first_object(lines, limit: int = 64):
    """The lines up to and including the first JSON object (its keys name the columns), at most `limit`."""
    for k, (n, line) in enumerate(lines):
        yield n, line
        if (line is not None and _object(line) is not None) or k + 1 >= limit:
            return


def csv_chunks(path: str, columns: Columns, chunk_rows: int) -> Iterator[Chunk]:
    """CSV with a header line, through the TSV path's record reader (bounded quotes and lines, line numbers)."""
    with open_text(path) as fh, damaged_as_input_error(fh, path):
        records = _records(fh, delimiter=",")
        first = next(records, None)
        if first is None:
            return
        header = first[1] or []
        roles = resolve(header, columns, path)

        def rows():
            for line, fields, raw in records:
                if fields is None:
                    yield line, None, (f"line longer than {MAX_LINE_CHARS:,} characters", raw)
                elif not any(cell.strip() for cell in fields):
                    yield line, None, ("empty line", raw)
                elif len(fields) != len(header):
                    yield line, None, (f"expected {len(header)} columns, got {len(fields)}", raw)
                else:
                    yield line, dict(zip(header, fields)), raw
        yield from rows_to_chunks(rows(), roles, chunk_rows)


def parquet_chunks(path: str, columns: Columns, chunk_rows: int) -> Iterator[Chunk]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path} is Parquet: pip install 'tsinfer-sentiment[formats]' (pyarrow)") from None
    if str(path) == "-":
        raise InputError("Parquet cannot be read from stdin: give its path")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError types
        raise InputError(f"cannot read {path} as Parquet: {str(e).splitlines()[0]}") from e
    try:
        yield from _parquet_rows(parquet, resolve(parquet.schema_arrow.names, columns, path), chunk_rows)
    finally:
        parquet.close()


def _parquet_rows(parquet, roles: dict, chunk_rows: int) -> Iterator[Chunk]:
    wanted = [c for c in dict.fromkeys(roles.values()) if c]
    row = 0

    def records():
        # one row group in memory at a time (pyarrow's own batch iterator reads ahead several)
        nonlocal row
        for group in range(parquet.num_row_groups):
            for batch in parquet.read_row_group(group, columns=wanted, use_threads=False).to_batches(chunk_rows):
                data = batch.to_pydict()
                for values in zip(*(data[c] for c in wanted)):
                    row += 1
                    yield row, dict(zip(wanted, values)), None  # raw text made only for a reject
    yield from rows_to_chunks(records(), roles, chunk_rows)
