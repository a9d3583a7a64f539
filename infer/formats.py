"""Inputs other than TSV: JSON Lines, CSV and Parquet, read into the same Chunks as the TSV reader.

Each record becomes a row with the TSV path's rules: labels 0/1/4 (or empty), an empty text rejected, a record
that cannot be read rejected with its line (row, for Parquet) number and reason, never dropped. Columns are found
by name: --text-column/--id-column/--label-column, else the usual names (Twitter/X API dumps write `full_text` or
`text` and `id_str` or `id`). JSON Lines and CSV stream through open_text, so they may be compressed too; Parquet is
read by pyarrow one record batch at a time, never whole.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tsinfer.infer.reader import LABEL_MAP, NO_LABEL, Chunk, InputError, Reject, iter_chunks, open_text

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
    for role in ("text", "id", "label"):
        wanted = getattr(columns, role)
        if wanted is not None and wanted not in names:
            raise InputError(f"{source} has no column {wanted!r} (--{role}-column); its columns: {', '.join(names)}")
        out[role] = wanted or next((n for n in DEFAULT_NAMES[role] if n in names), None)
    if out["text"] is None:
        raise InputError(f"{source} has no text column ({', '.join(DEFAULT_NAMES['text'])}): name it with "
                         f"--text-column; its columns: {', '.join(names) or 'none'}")
    return out


def _label(value) -> int | str:
    """The row's label (NO_LABEL when empty), or the reason it is refused."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return NO_LABEL
    text = str(int(value)) if isinstance(value, (bool, int, float)) and float(value).is_integer() else str(value)
    return LABEL_MAP.get(text.strip(), f"label {text.strip()[:20]!r} is not 0, 1 or 4")


def rows_to_chunks(records: Iterator[tuple[int, dict | None, str]], roles: dict, chunk_rows: int,
                   ) -> Iterator[Chunk]:
    """(line, record or None with (reason, raw) in raw's place, raw text or None) -> Chunks, by the TSV path's
    rules; a reject's raw text, when None, is its record as JSON."""
    chunk = Chunk()
    for line, record, raw in records:
        reason = None
        if record is None:
            reason, raw = raw
        else:
            text = record.get(roles["text"])
            label = _label(record.get(roles["label"])) if roles["label"] else NO_LABEL
            if isinstance(label, str):
                reason = label
            elif text is None:
                reason = f"no {roles['text']!r} field"
            elif not isinstance(text, str):
                reason = "text is not a string"
            elif not text.strip():
                reason = "empty text"
        if reason:
            raw = raw if raw is not None else json.dumps(record, default=str, ensure_ascii=False)[:1000]
            chunk.rejects.append(Reject(line, reason, raw))
            continue
        ident = record.get(roles["id"]) if roles["id"] else None
        chunk.add(line, str(line) if ident is None else str(ident), label, text)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = Chunk()
    if len(chunk) or chunk.rejects:
        yield chunk


def jsonl_chunks(path: str, columns: Columns, chunk_rows: int) -> Iterator[Chunk]:
    with open_text(path) as fh:
        lines = ((n, line.rstrip("\r\n")) for n, line in enumerate(fh, 1))
        first = [(n, line) for n, line in _until_first_object(lines)]
        names = list(json.loads(first[-1][1])) if first and _object(first[-1][1]) else []
        roles = resolve(names, columns, path) if first else {"text": None, "id": None, "label": None}

        def records():
            for n, line in _chain(first, lines):
                if not line.strip():
                    yield n, None, ("empty line", line)
                    continue
                obj = _object(line)
                yield (n, obj, line) if obj is not None else (n, None, ("not a JSON object", line[:1000]))
        yield from rows_to_chunks(records(), roles, chunk_rows)


def _object(line: str) -> dict | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _until_first_object(lines):
    """The lines up to and including the first JSON object (its keys name the columns)."""
    for n, line in lines:
        yield n, line
        if _object(line) is not None:
            return


def _chain(first, rest):
    yield from first
    yield from rest


def csv_chunks(path: str, columns: Columns, chunk_rows: int) -> Iterator[Chunk]:
    with open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return
        roles = resolve(header, columns, path)

        def records():
            start = reader.line_num + 1
            for row in reader:
                raw = ",".join(row)
                if not any(cell.strip() for cell in row):
                    yield start, None, ("empty line", raw)
                elif len(row) != len(header):
                    yield start, None, (f"expected {len(header)} columns, got {len(row)}", raw)
                else:
                    yield start, dict(zip(header, row)), raw
                start = reader.line_num + 1
        yield from rows_to_chunks(records(), roles, chunk_rows)


def parquet_chunks(path: str, columns: Columns, chunk_rows: int) -> Iterator[Chunk]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path} is Parquet: pip install pyarrow (or tsinfer-sentiment[dist])") from None
    if str(path) == "-":
        raise InputError("Parquet cannot be read from stdin: give its path")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError types
        raise InputError(f"cannot read {path} as Parquet: {str(e).splitlines()[0]}") from e
    roles = resolve(parquet.schema_arrow.names, columns, path)
    wanted = [c for c in dict.fromkeys(roles.values()) if c]
    row = 0

    def records():
        # one row group in memory at a time (pyarrow's own batch iterator reads ahead several)
        nonlocal row
        for group in range(parquet.num_row_groups):
            for batch in parquet.read_row_group(group, columns=wanted, use_threads=False).to_batches(chunk_rows):
                data = batch.to_pydict()
                for i in range(batch.num_rows):
                    row += 1
                    yield row, {c: data[c][i] for c in wanted}, None  # raw text made only for a reject
    yield from rows_to_chunks(records(), roles, chunk_rows)
