"""Opening an input as text: compressed streams recognised by their first bytes, files that are plainly not text
refused, the decoding chosen (UTF-8 with replacement, or UTF-16/32 by a byte-order mark). Every format's reader
opens its file here; errors name the path and the fix.
"""
from __future__ import annotations

import io
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tsinfer.infer.rows import InputError

# Bad UTF-8 becomes U+FFFD (the row is still read and counted); a BOM is skipped; newline="" keeps quoted CR/LF.
TEXT_DECODING = {"encoding": "utf-8-sig", "errors": "replace", "newline": ""}


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
