"""The files a local run writes beside its output: predictions (TSV or JSONL, under a hidden partial name until
complete), rejected rows, and the lock that keeps a second run off the same output."""
from __future__ import annotations

import io
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from tsinfer.infer.labels import BINARY, LabelSet
from tsinfer.infer.pipeline import ChunkScores, prediction_columns, written_labels, written_preds, written_scores
from tsinfer.infer.reader import tsv_field, tsv_line
from tsinfer.infer.rows import Chunk, InputError

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
    from the end of its last completed chunk. Two classes: label and pred 0/1, one score per model; more: label
    and pred are class names, one probability column per class (pipeline.prediction_columns).
    """

    def __init__(self, path: str | None, names: list[str], fmt: str = "tsv", resume_bytes: int | None = None,
                 classes: LabelSet = BINARY):
        self.path, self.names, self.fmt, self.classes = path, names, fmt, classes
        self.tsv = fmt == "tsv"
        self.columns = ["id", "label"] + [c for model in prediction_columns(names, classes) for c in model]
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
        labels = written_labels(chunk.labels, self.classes)
        preds, cols = [], []
        for r in results:
            preds.append(len(cols))
            cols.append(written_preds(r.pred, self.classes))
            bins = r.bins.reshape(len(r.pred), -1)  # one column for two classes, one per class for more
            cols += [written_scores(bins[:, c], self.fmt) for c in range(bins.shape[1])]
        if self.tsv:  # only the ids and class names can need quoting: the other fields are written here
            ids = list(map(tsv_field, chunk.ids))
            text = str if self.classes.binary else tsv_field
            labels = ["" if lab is None else text(lab) for lab in labels]
            cols = [list(map(text, col)) if k in preds else col for k, col in enumerate(cols)]
            self.fh.write("".join("\t".join(row) + "\n" for row in zip(ids, labels, *cols)))
        else:
            buf = io.StringIO()
            names = self.columns[2:]
            for row in zip(chunk.ids, labels, *cols):
                rec = {"id": row[0], "label": row[1]}
                for k, name in enumerate(names):
                    rec[name] = row[2 + k] if k in preds else float(row[2 + k])
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
