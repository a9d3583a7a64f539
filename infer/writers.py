"""The files a local run writes beside its output: predictions (TSV or JSONL, under a hidden partial name until
complete), rejected rows, and the lock that keeps a second run off the same output."""
from __future__ import annotations

import io
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from tsinfer.infer.pipeline import ChunkScores, prediction_columns, written_scores
from tsinfer.infer.reader import tsv_field, tsv_line
from tsinfer.infer.rows import NO_LABEL, Chunk, InputError

COMPRESSED_OUTPUT = (".gz", ".zst")  # output names that are written compressed (not resumable: see RunFiles)


def sidecar(output: str, kind: str) -> Path:
    """Hidden files beside the output: the partial output, the checkpoint and the metrics rows of a run."""
    target = Path(output)
    return target.with_name(f".{target.name}.{kind}")


def _open_output(tmp: Path, final: str):
    if final.endswith(".gz"):
        import gzip

        return gzip.open(tmp, "wt", encoding="utf-8", newline="")
    if final.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise InputError(f"{final}: writing zstd needs pip install zstandard (or name the output .gz)") from None
        return zstandard.open(tmp, "wt", encoding="utf-8", newline="")
    return open(tmp, "w", encoding="utf-8", newline="")


class PredictionWriter:
    """TSV (csv-quoted where a field needs it, so the reader reads it back) or JSONL, to a file or stdout.

    A file is written under a hidden `.NAME.partial` name in the same folder and renamed when complete, so an
    interrupted run never leaves a half-written file under the final name; `resume_bytes` continues a partial file
    from the end of its last completed chunk.
    """

    def __init__(self, path: str | None, names: list[str], fmt: str = "tsv", resume_bytes: int | None = None):
        self.path, self.names, self.fmt = path, names, fmt
        self.tsv = fmt == "tsv"
        self.columns = ["id", "label"] + [c for pair in prediction_columns(names) for c in pair]
        if path in (None, "-"):
            self.tmp, self.fh = None, sys.stdout
        else:
            self.tmp = sidecar(path, "partial")
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            if resume_bytes is not None:
                os.truncate(self.tmp, resume_bytes)
                self.fh = open(self.tmp, "a", encoding="utf-8", newline="")
                return
            self.fh = _open_output(self.tmp, str(path))
        if self.tsv:
            self.fh.write(tsv_line(self.columns))

    def position(self) -> int:
        self.fh.flush()
        return os.fstat(self.fh.fileno()).st_size

    def write(self, chunk: Chunk, results: list[ChunkScores]) -> None:
        labels = ["" if lab == NO_LABEL else str(lab) for lab in chunk.labels]
        cols = []
        for r in results:
            cols.append(list(map(str, r.pred.tolist())))
            cols.append(written_scores(r.bins, self.fmt))
        if self.tsv:  # only the ids can need quoting: the other fields are written here
            ids = list(map(tsv_field, chunk.ids))
            self.fh.write("".join("\t".join(row) + "\n" for row in zip(ids, labels, *cols)))
        else:
            buf = io.StringIO()
            for row in zip(chunk.ids, labels, *cols):
                rec = {"id": row[0], "label": int(row[1]) if row[1] else None}
                for k, name in enumerate(self.columns[2:]):
                    rec[name] = int(row[2 + k]) if name.startswith("pred") else float(row[2 + k])
                buf.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.fh.write(buf.getvalue())

    def close(self, ok: bool = True, keep: bool = False) -> None:
        """ok: rename into place; else the partial file is removed, or kept for --resume."""
        if self.tmp is None:
            self.fh.flush()
            return
        self.fh.close()
        if ok:
            os.replace(self.tmp, self.path)
        elif not keep:
            self.tmp.unlink(missing_ok=True)


class RejectWriter:
    """Rows that could not be scored: input file, line number, reason and the raw row (created on first use)."""

    def __init__(self, path: str | None, resume_bytes: int = 0, resume_count: int = 0):
        self.path, self.fh, self.count = path, None, resume_count
        if path and resume_bytes:
            os.truncate(path, resume_bytes)
            self.fh = open(path, "a", encoding="utf-8", newline="")
        elif path and Path(path).exists():
            Path(path).unlink()  # a stale rejects file from an earlier run would mislead

    def position(self) -> int:
        if self.fh is None:
            return 0
        self.fh.flush()
        return os.fstat(self.fh.fileno()).st_size

    def write(self, source: str, chunk: Chunk) -> None:
        self.count += len(chunk.rejects)
        if not chunk.rejects or self.path is None:
            return
        if self.fh is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "w", encoding="utf-8", newline="")
            self.fh.write(tsv_line(["file", "line", "reason", "raw"]))
        self.fh.write("".join(tsv_line((source, r.line, r.reason, r.raw)) for r in chunk.rejects))

    def close(self) -> None:
        if self.fh:
            self.fh.close()


@contextmanager
def output_lock(output: str | None):
    """Hold an exclusive lock on a hidden file beside the output while a run writes it: a second run on the same
    output would share its partial file, checkpoint and rejects, so it stops at once instead. The lock file is
    left in place (removing it would let a third run lock a new file while the second holds the old one)."""
    if output in (None, "-"):
        yield
        return
    import fcntl

    path = sidecar(output, "lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another tsinfer run is writing {output}: wait for it to end, or choose another "
                             "--output") from None
        yield
