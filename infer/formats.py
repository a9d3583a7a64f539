"""The one entry point of every input format, and the formats other than TSV: JSON Lines, CSV and Parquet.

Every format makes rows.to_chunks items, so labels, texts and rejects follow the same rules (rows.py); a record that
cannot be read is rejected with its line (row, for Parquet) number and reason, never dropped; blank lines are skipped
and counted. Columns are found by name: --text-column/--id-column/--label-column, else rows.COLUMN_NAMES, as a TSV
header is. JSON Lines and CSV stream through open_text, so they may be compressed too; Parquet is read by pyarrow one
row group at a time, never whole.
"""
from __future__ import annotations

import json
from itertools import chain
from pathlib import Path
from typing import Iterator

from tsinfer.infer.reader import LAYOUT_SAMPLE, MAX_LINE_CHARS, iter_chunks, records, too_long
from tsinfer.infer.labels import BINARY, LabelSet
from tsinfer.infer.rows import BLANK, Chunk, Columns, InputError, Reject, resolve, to_chunks
from tsinfer.infer.textio import damaged_as_input_error, open_text

FORMATS = ("tsv", "jsonl", "csv", "parquet")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
            ".pq": "parquet", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv"}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def input_format(path: str, requested: str = "auto") -> str:
    """The format to read: as requested, else by the file's suffix (under any compression suffix), else TSV."""
    if requested != "auto":
        return requested
    name = Path(str(path)).name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    return SUFFIXES.get(Path(name).suffix, "tsv")


def read_chunks(path: str, chunk_rows: int, fmt: str = "auto", columns: Columns = Columns(),
                labels: LabelSet = BINARY) -> Iterator[Chunk]:
    """Chunks of any supported input: the one entry point of the scorer's reader thread. `labels`: the models'
    label set, which the label column's values must belong to."""
    fmt = input_format(path, fmt)
    if fmt == "tsv":
        if columns.given():
            raise InputError(f"{path} is read as TSV, whose columns come from its layout or header line: "
                             "--text/--id/--label-column apply to CSV, JSON Lines and Parquet (--input-format)")
        return iter_chunks(path, chunk_rows, labels)
    return {"jsonl": jsonl_chunks, "csv": csv_chunks, "parquet": parquet_chunks}[fmt](path, columns, chunk_rows,
                                                                                      labels)


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


def _parsed(numbered_lines):
    """(line number, line or None when too long, its object or None) per line; blank lines are not parsed."""
    for n, line in numbered_lines:
        yield n, line, _object(line) if line is not None and line.strip() else None


def _sample(lines, size: int) -> list[tuple[int, str | None, dict | None]]:
    """The first `size` lines that are not blank, parsed, and the blank lines among them."""
    out, filled = [], 0
    for n, line, obj in lines:
        out.append((n, line, obj))
        filled += line is None or bool(line.strip())
        if filled >= size:
            break
    return out


def jsonl_chunks(path: str, columns: Columns, chunk_rows: int, labels: LabelSet = BINARY) -> Iterator[Chunk]:
    """JSON Lines: the columns are the keys of the first chunk's objects (a stream may begin with records that have
    no text, such as Twitter/X delete notices: those are rejects); refused only when none of them has a text key."""
    with open_text(path) as fh, damaged_as_input_error(fh, path):
        lines = _parsed(_bounded_lines(fh))
        parsed = _sample(lines, max(chunk_rows, LAYOUT_SAMPLE))
        written = [line for _, line, _ in parsed if line is None or line.strip()]
        if not written:  # nothing but blank lines
            yield from to_chunks((BLANK for _ in parsed), chunk_rows, labels)
            return
        if (written[0] or "").lstrip().startswith("["):
            raise InputError(f"{path} is a JSON array, not JSON Lines (one object a line): convert it, for example "
                             "with jq -c '.[]'")
        keys = list(dict.fromkeys(key for _, _, obj in parsed if obj for key in obj))
        more = next(lines, None)  # None: the sample is the whole file
        roles = resolve(keys, columns, path if more is None else f"{path} (in its first {len(parsed):,} lines)")
        rest = chain(parsed, [more] if more else [], lines)
        yield from to_chunks((_json_item(*record, roles) for record in rest), chunk_rows, labels)


def _json_item(n: int, line: str | None, obj: dict | None, roles: dict):
    if line is None:
        return too_long(n, "")
    if not line.strip():
        return BLANK
    if obj is None:
        return Reject(n, "not a JSON object", line[:1000])
    if roles["text"] not in obj:
        return Reject(n, f"no {roles['text']!r} field (a delete notice or limit message?)", line)
    return (n, obj.get(roles["id"]) if roles["id"] else None, obj.get(roles["label"]) if roles["label"] else None,
            obj[roles["text"]], line)


def csv_chunks(path: str, columns: Columns, chunk_rows: int, labels: LabelSet = BINARY) -> Iterator[Chunk]:
    """CSV with a header line (its first line that is not blank), through the TSV path's record reader (bounded
    quotes and lines, line numbers)."""
    with open_text(path) as fh, damaged_as_input_error(fh, path):
        found = records(fh, delimiter=",")
        blanks = 0
        for first in found:
            if first[1] != []:
                break
            blanks += 1
        else:
            if blanks:
                yield from to_chunks((BLANK for _ in range(blanks)), chunk_rows, labels)
            return
        header = first[1] or []
        roles = resolve(header, columns, path)
        where = {role: header.index(name) if name is not None else None for role, name in roles.items()}

        def items():
            yield from (BLANK for _ in range(blanks))
            for line, fields, raw in found:
                if fields is None:
                    yield too_long(line, raw)
                elif not fields:
                    yield BLANK
                elif len(fields) != len(header):
                    yield Reject(line, f"expected {len(header)} columns, got {len(fields)}", raw)
                else:
                    yield (line, None if where["id"] is None else fields[where["id"]],
                           None if where["label"] is None else fields[where["label"]], fields[where["text"]], raw)
        yield from to_chunks(items(), chunk_rows, labels)


def parquet_chunks(path: str, columns: Columns, chunk_rows: int, labels: LabelSet = BINARY) -> Iterator[Chunk]:
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
        yield from to_chunks(_parquet_items(parquet, resolve(parquet.schema_arrow.names, columns, path), chunk_rows),
                             chunk_rows, labels)
    finally:
        parquet.close()


def _parquet_items(parquet, roles: dict, chunk_rows: int):
    """One row group in memory at a time (pyarrow's own batch iterator reads ahead several)."""
    wanted = [c for c in dict.fromkeys(roles.values()) if c]
    row = 0
    for group in range(parquet.num_row_groups):
        for batch in parquet.read_row_group(group, columns=wanted, use_threads=False).to_batches(chunk_rows):
            data = batch.to_pydict()
            for values in zip(*(data[c] for c in wanted)):
                row += 1
                record = dict(zip(wanted, values))  # the reject's raw text is made from it, only for a reject
                yield (row, record.get(roles["id"]) if roles["id"] else None,
                       record.get(roles["label"]) if roles["label"] else None, record[roles["text"]], record)
