"""The Ray engine's steps that run on the workers, each a Ray Data map_batches function or actor: shards parsed into
chunks by the local reader, chunks scored by the local engine's own steps (infer/pipeline.py), rejects exploded,
and the written predictions counted into metrics that merge across blocks, shards and machines. The driver that
chains them is infer/ray_engine.py."""
from __future__ import annotations

import io

import numpy as np

from tsinfer.infer.labels import BINARY, LabelSet
from tsinfer.infer.metrics import score_bins, streaming_metrics
from tsinfer.infer.models import ScorerSettings
from tsinfer.infer.pipeline import (close_scorers, load_scorers, model_names, prediction_columns, run_classes,
                                    score_chunk, written_labels, written_preds, written_scores)
from tsinfer.infer.reader import DEFAULT_CHUNK_ROWS, parse_chunks
from tsinfer.infer.textio import TEXT_DECODING


def _chunk_schema():
    import pyarrow as pa

    return pa.schema([("shard", pa.string()), ("chunk", pa.int64()), ("lines", pa.list_(pa.int64())),
                      ("ids", pa.list_(pa.string())), ("labels", pa.list_(pa.int8())),
                      ("texts", pa.list_(pa.string())), ("reject_lines", pa.list_(pa.int64())),
                      ("reject_reasons", pa.list_(pa.string())), ("reject_raws", pa.list_(pa.string())),
                      ("bytes", pa.int64())])


def parse_shards(batch, chunk_rows: int = DEFAULT_CHUNK_ROWS, labels: LabelSet = BINARY):
    """Ray map_batches: whole shards (bytes, path) -> one row per chunk, by the local path's reader (labels read
    as the models' classes).

    A chunk's `bytes` is the share of its shard it covers (for progress): the reader's position after it, less
    the position after the chunk before; the shard's last chunk takes the rest, so they add up to the shard's size.
    """
    import pyarrow as pa

    rows = {name: [] for name in _chunk_schema().names}
    for data, path in zip(batch["bytes"], batch["path"]):
        raw = io.BytesIO(data)
        size = raw.seek(0, io.SEEK_END)
        raw.seek(0)
        with io.TextIOWrapper(raw, **TEXT_DECODING) as fh:
            done, first = 0, len(rows["bytes"])
            for k, chunk in enumerate(parse_chunks(fh, chunk_rows, labels)):
                for name, value in (("shard", path), ("chunk", k), ("lines", chunk.lines), ("ids", chunk.ids),
                                    ("labels", chunk.labels), ("texts", chunk.texts),
                                    ("reject_lines", [r.line for r in chunk.rejects]),
                                    ("reject_reasons", [r.reason for r in chunk.rejects]),
                                    ("reject_raws", [r.raw for r in chunk.rejects]),
                                    ("bytes", raw.tell() - done)):  # read ahead by the text layer: an estimate
                    rows[name].append(value)
                done = raw.tell()
            if len(rows["bytes"]) > first and done < size:
                rows["bytes"][-1] += size - done
    return pa.Table.from_pydict(rows, schema=_chunk_schema())


class ProgressCounter:
    """Ray actor (no CPU of its own): the rows and input bytes of every chunk scored, counted once per
    (shard, chunk) so that a chunk retried after a lost node is not counted twice."""

    def __init__(self):
        self.done: dict[tuple[str, int], tuple[int, int]] = {}
        self.rows = self.bytes = 0

    def add(self, shard: str, chunk: int, rows: int, nbytes: int) -> None:
        if (shard, chunk) not in self.done:
            self.done[(shard, chunk)] = (rows, nbytes)
            self.rows += rows
            self.bytes += nbytes

    def totals(self) -> tuple[int, int]:
        return self.rows, self.bytes


class ChunkScorer:
    """Ray actor: the models loaded once; scores whole chunks through the local engine's own steps
    (infer/pipeline.py), so each row gets the same prediction and written score."""

    def __init__(self, models: list[str], settings: ScorerSettings, fmt: str, progress=None):
        self.scorers = load_scorers(models, settings)
        self.classes = run_classes([scorer.meta for scorer in self.scorers], models)
        self.columns = prediction_columns(model_names(models), self.classes)
        self.fmt = fmt
        self.progress = progress  # a ProgressCounter actor, or None

    def __call__(self, batch):
        import pyarrow as pa

        out = {"shard": [], "line": [], "id": [], "label": []}
        results = [([], []) for _ in self.scorers]
        for shard, chunk, lines, ids, labels, texts, rejects, nbytes in zip(
                *(batch[c].to_pylist() for c in ("shard", "chunk", "lines", "ids", "labels", "texts",
                                                 "reject_lines", "bytes"))):
            if texts:
                out["shard"] += [shard] * len(texts)
                out["line"] += lines
                out["id"] += ids
                out["label"] += written_labels(labels, self.classes)
                for scores, (preds, bins) in zip(score_chunk(self.scorers, texts), results):
                    preds.append(scores.pred)
                    bins.append(scores.bins)
            if self.progress is not None:  # fire and forget: the counter never holds up scoring
                self.progress.add.remote(shard, chunk, len(texts) + len(rejects), nbytes)
        binary = self.classes.binary  # labels and preds 0/1 as always; for more classes their names
        table = {"shard": pa.array(out["shard"], pa.string()), "line": pa.array(out["line"], pa.int64()),
                 "id": pa.array(out["id"], pa.string()),
                 "label": pa.array(out["label"], pa.int8() if binary else pa.string())}
        width = 1 if binary else len(self.classes)
        for (pred_col, *score_cols), (preds, bins) in zip(self.columns, results):
            pred = np.concatenate(preds) if preds else np.zeros(0, np.int8)
            table[pred_col] = pa.array(pred) if binary else pa.array(written_preds(pred, self.classes), pa.string())
            bins = (np.concatenate(bins) if bins else np.zeros(0, np.int64)).reshape(-1, width)
            for c, score_col in enumerate(score_cols):
                scores = written_scores(bins[:, c], self.fmt)
                table[score_col] = pa.array(scores, pa.float64() if self.fmt == "parquet" else pa.string())
        return pa.table(table)

    def __del__(self):
        close_scorers(getattr(self, "scorers", []))


def explode_rejects(batch):
    """Ray map_batches: chunk rows -> one row per rejected input row."""
    import pyarrow as pa

    shards, lines, reasons, raws = [], [], [], []
    for shard, r_lines, r_reasons, r_raws in zip(batch["shard"].to_pylist(), batch["reject_lines"].to_pylist(),
                                                 batch["reject_reasons"].to_pylist(), batch["reject_raws"].to_pylist()):
        shards += [shard] * len(r_lines)
        lines += r_lines
        reasons += r_reasons
        raws += r_raws
    return pa.table({"shard": pa.array(shards, pa.string()), "line": pa.array(lines, pa.int64()),
                     "reason": pa.array(reasons, pa.string()), "raw": pa.array(raws, pa.string())})


def bin_columns(classes: LabelSet) -> list[str]:
    """The partial counts' score-bin columns: one for two classes, one per class for more."""
    return ["bin"] if classes.binary else [f"bin_{c}" for c in range(len(classes))]


def _class_indices(column, classes: LabelSet) -> np.ndarray:
    """A written label or pred column as class indices (-1 where empty): 0/1 as written, or by class name."""
    if classes.binary:
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        return np.where(np.isnan(values), -1, values).astype(np.int64)
    position = {name: i for i, name in enumerate(classes.names)}
    return np.array([-1 if v is None else position[str(v)] for v in column.to_pylist()], dtype=np.int64)


def count_partials(batch, columns: list[tuple[str, ...]], classes: LabelSet = BINARY):
    """Ray map_batches over the written predictions: per model, this block's labelled rows counted per
    (label, pred, written score(s)). They add up exactly across blocks, shards and machines."""
    import pyarrow as pa

    label = _class_indices(batch["label"], classes)
    keep = label >= 0
    y = label[keep]
    names = ["label", "pred", *bin_columns(classes)]
    out = {name: [] for name in ["model", *names, "n"]}
    for k, (pred_col, *score_cols) in enumerate(columns):
        pred = _class_indices(batch[pred_col], classes)[keep]
        bins = [score_bins(batch[c].to_numpy(zero_copy_only=False)[keep]) for c in score_cols]
        rows, counts = np.unique(np.stack([y, pred, *bins]), axis=1, return_counts=True)
        out["model"] += [k] * len(counts)
        for name, values in zip(names, rows):
            out[name] += values.tolist()
        out["n"] += counts.tolist()
    return pa.table({name: pa.array(values, pa.int64()) for name, values in out.items()})


def merge_metrics(partials, names: list[str], classes: LabelSet = BINARY) -> dict:
    """Metrics per model from the partial counts of every block (a pandas frame), by infer.metrics' streaming
    accumulators: the local path's own, so both engines give the same numbers."""
    summaries = {}
    for k, name in enumerate(names):
        mine = partials[partials["model"] == k]
        metrics = streaming_metrics(classes.names)
        bins = mine[bin_columns(classes)].to_numpy().astype(np.int64)
        metrics.add(mine["label"].to_numpy().astype(np.int64), mine["pred"].to_numpy().astype(np.int64),
                    bins[:, 0] if classes.binary else bins, mine["n"].to_numpy().astype(np.int64))
        summaries[name] = dict(metrics.summary(), model=name, rows_labelled=metrics.rows)
    return summaries
