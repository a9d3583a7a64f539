"""The one TSV reader: streams any supported input file as chunks of rows.

Layouts (decided on the first data row, or by a header naming the columns):
- 5 columns: index, id, label, alpha, text   (the seed's test.tsv, with a header line)
- 4 columns: id, label, alpha, text          (the seed's dev.tsv, no header)
- 3 columns: id, label, text
- 2 columns: id, text                        (unlabeled)
- 1 column:  text                            (unlabeled, id = line number)
Fields may be double-quoted (and then hold tabs); CRLF or LF; a UTF-8 BOM is skipped. Labels 0/4 (Sentiment140),
0/1 or negative/positive (any case) map to 0/1; an empty label means unlabeled. A row that cannot be read is rejected with its line number and a
reason, never dropped silently; extra tabs in an unquoted text stay part of the text.
"""
from __future__ import annotations

import csv
import io
import re
import sys
from collections import Counter
from contextlib import contextmanager
from itertools import chain, islice
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import numpy as np

NO_LABEL = -1
# The one label mapping of every reader, the trainers included (case-insensitive): Sentiment140's 0/4, 0/1 and the
# words. Binary only; any other value is a reject that names it.
LABEL_MAP = {"0": 0, "1": 1, "4": 1, "negative": 0, "positive": 1}
LABEL_NAMES = ("negative", "positive")
LABELS_ACCEPTED = "0/1, 0/4 or negative/positive"
HEADER_NAMES = {
    "id": {"id", "tweet_id", "ids"},
    "label": {"label", "sentiment", "target", "polarity"},
    "text": {"text", "tweet", "sentence", "content"},
}
# Column layouts by count: the field index of id, label and text (None = absent).
LAYOUTS = {5: (1, 2, 4), 4: (0, 1, 3), 3: (0, 1, 2), 2: (0, None, 1), 1: (None, None, 0)}
DEFAULT_CHUNK_ROWS = 4096  # sorted and batched together; larger chunks pad a little less but hold more memory
MAX_QUOTED_LINES = 64   # a quoted field may span this many more lines; beyond, its quote is taken as unterminated
LAYOUT_SAMPLE = 64      # rows read before the column layout is decided
MAX_LINE_CHARS = 1_000_000  # a longer line is rejected, read in pieces of this size: memory stays bounded
# Bad UTF-8 becomes U+FFFD (the row is still read and counted); a BOM is skipped; newline="" keeps quoted CR/LF.
TEXT_DECODING = {"encoding": "utf-8-sig", "errors": "replace", "newline": ""}


@dataclass
class Reject:
    line: int
    reason: str
    raw: str
    label: str | None = None  # the refused label value, when that is the reason


def parse_label(value: str) -> int | None:
    """0/1, 0/4 or negative/positive in any case -> 0 or 1; None for any other value."""
    return LABEL_MAP.get(value.strip().lower())


def label_reject(line: int, value: str, raw: str) -> Reject:
    return Reject(line, f"label {value.strip()[:20]!r} is not {LABELS_ACCEPTED}", raw, label=value.strip())


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

    def add(self, line: int, ident: str, label: int, text: str) -> None:
        """One accepted row (every reader builds its chunks through this)."""
        self.lines.append(line)
        self.ids.append(ident)
        self.labels.append(label)
        self.texts.append(text)


class InputError(Exception):
    """The input as a whole cannot be read (missing, a directory, undecodable)."""


def _header_layout(fields: list[str]) -> tuple[int | None, int | None, int | None, int] | None:
    """Column roles from a header line: it must name a text column and an id or label column."""
    names = [f.strip().lower() for f in fields]
    found = {}
    for role, aliases in HEADER_NAMES.items():
        for i, name in enumerate(names):
            if name in aliases:
                found[role] = i
                break
    if "text" not in found or not ({"id", "label"} & found.keys()):
        return None
    return found.get("id"), found.get("label"), found["text"], len(fields)


# Inputs are recognised by their first bytes, not their names (also on stdin): compressed streams are read through
# the standard library's decompressors (zstd through the optional `zstandard` package), files that are plainly not
# text are refused at once instead of being scored as garbage, and a UTF-16/32 byte-order mark picks the decoding.
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
NOT_TEXT = {b"PK\x03\x04": "a zip archive", b"PAR1": "a Parquet file", b"\x89PNG": "a PNG image",
            b"%PDF": "a PDF document", b"SQLite format 3\x00": "an SQLite database", b"\x7fELF": "an executable",
            b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive", b"Rar!": "a RAR archive"}
UNICODE_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"),
                (b"\xfe\xff", "utf-16"))


BINARY_SAMPLE = 8192    # bytes looked at to tell text from binary data
BINARY_NUL_SHARE = 0.05  # binary: more NUL bytes than this share of the sample,
BINARY_BAD_SHARE = 0.1   # or more bytes that are not UTF-8 than this share


def _looks_binary(sample: bytes) -> bool:
    """A file whose first bytes are largely NULs or not UTF-8 is no text, whatever stray bad bytes a text may
    hold; control characters alone do not decide it (a text may carry them, and the writer writes them back)."""
    sample = sample[:BINARY_SAMPLE]
    if len(sample) < 64:
        return False
    # replacement characters from undecodable bytes, not those the text itself holds (valid EF BF BD)
    bad = sample.decode("utf-8", errors="replace").count("\ufffd") - sample.count("\ufffd".encode())
    return sample.count(0) > BINARY_NUL_SHARE * len(sample) or bad > BINARY_BAD_SHARE * len(sample)


def _damaged_stream_errors() -> tuple:
    """The exceptions a damaged or cut-short compressed stream raises while it is read."""
    import lzma
    import zlib

    errors: tuple = (EOFError, zlib.error, lzma.LZMAError)
    try:
        import zstandard
        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


DAMAGED = _damaged_stream_errors()


def _decompressed(raw: IO[bytes], kind: str, name: str) -> IO[bytes]:
    import bz2
    import gzip
    import lzma

    if kind == "zstd":
        try:
            import zstandard
        except ImportError:
            raise InputError(f"{name} is zstd-compressed: pip install zstandard, or decompress it first") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    opener = {"gzip": gzip.GzipFile, "bz2": bz2.BZ2File, "xz": lzma.LZMAFile}[kind]
    return io.BufferedReader(opener(fileobj=raw) if kind == "gzip" else opener(raw))


def open_text(path: str | Path) -> IO[str]:
    """Open a path (or '-' for stdin) as text for the csv module, decompressing it where its first bytes say so;
    errors name the path and the fix. The text stream's `compression` and `raw` (the file as stored, for progress
    by bytes) are set on it."""
    name = "stdin" if str(path) == "-" else str(path)
    if str(path) == "-":
        raw = sys.stdin.buffer if hasattr(sys.stdin.buffer, "peek") else io.BufferedReader(sys.stdin.buffer)
    else:
        p = Path(path)
        if not p.exists():
            raise InputError(f"input file not found: {p}")
        if p.is_dir():
            raise InputError(f"input is a directory, not a TSV file: {p}")
        try:
            raw = open(p, "rb")
        except OSError as e:
            raise InputError(f"cannot open {p}: {e.strerror}") from e
    try:
        kind = next((k for magic, k in COMPRESSED.items() if raw.peek(8).startswith(magic)), None)
        stream = _decompressed(raw, kind, name) if kind else raw
        try:
            head = stream.peek(32)
            sample = stream.peek(BINARY_SAMPLE)
        except (*DAMAGED, OSError) as e:
            raise InputError(f"{name}: the {kind} stream is damaged or cut short ({e})") from e
        encoding = next((enc for bom, enc in UNICODE_BOMS if head.startswith(bom)), TEXT_DECODING["encoding"])
        what = next((v for magic, v in NOT_TEXT.items() if head.startswith(magic)), None)
        if what is None and encoding == TEXT_DECODING["encoding"] and _looks_binary(sample):
            what = "binary data (an unknown format or compression)"
        if what:
            raise InputError(f"{name} is {what}, not text: give a TSV or text file (gzip, bz2, xz or zstd "
                             "compressed)")
    except BaseException:
        if str(path) != "-":
            raw.close()  # a decompressor does not close the file it was given
        raise
    fh = _Text(stream, **dict(TEXT_DECODING, encoding=encoding))
    fh.compression, fh.raw, fh.owns_raw = kind, raw, str(path) != "-"
    return fh


class _Text(io.TextIOWrapper):
    """A text stream that also closes the file under a decompressor (which leaves a file it was given open)."""

    def close(self):
        super().close()
        if getattr(self, "owns_raw", False):
            self.raw.close()


def refuse_input_as_output(inputs: list[str], outputs: dict[str, str | None]) -> None:
    """Raise InputError when a path to be written ({what: path}) is one of the input files: the same file by
    device and inode, so also through links and other spellings. Called before anything is written."""
    import os

    sources = {}
    for source in inputs:
        if source != "-" and os.path.exists(source):
            st = os.stat(source)
            sources[(st.st_dev, st.st_ino)] = source
    for what, path in outputs.items():
        if path in (None, "-") or not os.path.exists(path):
            continue
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in sources:
            raise InputError(f"the {what} path {path} is the input file {sources[(st.st_dev, st.st_ino)]}: writing "
                             "it would destroy the input; choose another path")


def iter_chunks(path: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Chunk]:
    """Yield Chunks of at most chunk_rows accepted rows; memory stays flat in the file's size."""
    with open_text(path) as fh, damaged_as_input_error(fh, path):
        for chunk in parse_chunks(fh, chunk_rows):
            try:
                chunk.bytes_read = fh.raw.tell()  # bytes of the file as stored, compressed or not
            except (AttributeError, OSError, ValueError):  # stdin or a pipe
                pass
            yield chunk


@contextmanager
def damaged_as_input_error(fh, path):
    """A compressed input that breaks while it is read (cut short, damaged) becomes one InputError."""
    try:
        yield
    except (*DAMAGED, OSError) as e:
        if not getattr(fh, "compression", None):
            raise
        raise InputError(f"{path}: the {fh.compression} stream is damaged or cut short ({e})") from e


def input_size(path: str | Path) -> int | None:
    """Size in bytes of a regular input file, for progress estimates; None for stdin or pipes."""
    try:
        p = Path(path)
        return p.stat().st_size if str(path) != "-" and p.is_file() else None
    except OSError:
        return None


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


def _records(fh: IO[str], delimiter: str = "\t") -> Iterator[tuple[int, list[str] | None, str]]:
    """(first line number, fields, raw text) per record. Lines without a double quote split on the delimiter (the
    fast path); a quoted field may run over at most MAX_QUOTED_LINES lines, else its line is read on its own,
    literally, and the lines after it are read as records again: an unterminated quote never swallows the rest of
    the file. NUL bytes are dropped (the csv module cannot read them). A line over MAX_LINE_CHARS comes back with
    fields None and the start of its text, read in pieces (CSV files share this reader with TSV)."""
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


def _choose_layout(first: list[tuple[int, list[str], str]]):
    """A header names the columns; otherwise the most common column count among the first rows decides."""
    if not first:
        return None, 0
    header = _header_layout(first[0][1]) if first[0][1] else None
    if header is not None:
        return header, 1
    counts = Counter(min(len(f), 5) for _, f, _ in first if f and any(x.strip() for x in f))
    n = counts.most_common(1)[0][0] if counts else 1
    return (*LAYOUTS[n], n), 0


def parse_chunks(fh: IO[str], chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Chunk]:
    """Chunks of an open text stream (see TEXT_DECODING): iter_chunks for paths, the Ray engine for shard bytes."""
    records = _records(fh)
    first = list(islice(records, LAYOUT_SAMPLE))
    layout, skip = _choose_layout(first)
    chunk = Chunk()
    for line, fields, raw in chain(first[skip:], records):
        if fields is None:
            chunk.rejects.append(Reject(line, f"line longer than {MAX_LINE_CHARS:,} characters", raw))
            continue
        if not any(f.strip() for f in fields):
            chunk.rejects.append(Reject(line, "empty line", raw))
            continue
        id_col, label_col, text_col, n_cols = layout
        if len(fields) < n_cols:
            chunk.rejects.append(Reject(line, f"expected {n_cols} columns, got {len(fields)}", raw))
            continue
        # a text that is the last column keeps any extra tabs; elsewhere extra columns are an error
        if len(fields) > n_cols and text_col != n_cols - 1:
            chunk.rejects.append(Reject(line, f"expected {n_cols} columns, got {len(fields)}", raw))
            continue
        text = "\t".join(fields[text_col:]) if text_col == n_cols - 1 else fields[text_col]
        label = NO_LABEL
        if label_col is not None:
            raw_label = fields[label_col].strip()
            if raw_label:
                label = parse_label(raw_label)
                if label is None:
                    chunk.rejects.append(label_reject(line, raw_label, raw))
                    continue
        if not text.strip():
            chunk.rejects.append(Reject(line, "empty text", raw))
            continue
        chunk.add(line, fields[id_col] if id_col is not None else str(line), label, text)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = Chunk()
    if len(chunk) or chunk.rejects:
        yield chunk


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
