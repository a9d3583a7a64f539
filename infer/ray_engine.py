"""`tsinfer score --engine ray`: the local path's reader, scorers and metrics on Ray Data, for many shards and
machines (optional extra `dist`).

The unit of work is one chunk of one shard, cut exactly as the local path cuts it (the same reader, `chunk_rows`
accepted rows), so every chunk is tokenized, length-sorted and batched as locally and the predictions are the same
numbers:

    read_binary_files(shards)            one row per shard; Ray's paths: files, folders, s3://, gs://, ...
    -> map_batches(parse_shards)         one row per chunk: its lines, ids, labels, texts and rejected rows
    -> map_batches(ChunkScorer, actors)  one onnxruntime session per model per actor -> one row per tweet
    -> OUTPUT/predictions/  (Parquet or TSV shards; every row keyed by shard and line)
    OUTPUT/rejects/         the rows that could not be read, with shard, line, reason and the raw text
    OUTPUT/metrics.json     accuracy/P/R/F1/MCC from the merged confusion matrix, ROC-AUC from merged score counts

Every model folder and input must be readable from every node (a shared file system or object store).

A lost node: Ray Data restarts its actors elsewhere (max_restarts=-1) and retries their chunks and the lost read,
parse and write tasks; a retried write task rewrites its own file names, so no row is written twice. All of it is
written beside OUTPUT first and moved to OUTPUT only when the run has succeeded.
"""
from __future__ import annotations

import glob
import io
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import replace
import threading
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from tsinfer.infer.cpus import CpuBudget, cpu_budget
from tsinfer.infer.labels import BINARY, LabelSet
from tsinfer.infer.metrics import score_bins, streaming_metrics
from tsinfer.infer.meta import ModelError, ModelMeta
from tsinfer.infer.models import load_scorer
from tsinfer.infer.pipeline import (ScorerSettings, close_scorers, default_chunk_rows, estimate_total,
                                    load_scorers, metrics_report, model_names, prediction_columns, progress_bar,
                                    run_classes, score_chunk, write_json, written_labels, written_preds,
                                    written_scores)
from tsinfer.infer.reader import DEFAULT_CHUNK_ROWS, parse_chunks
from tsinfer.infer.rows import InputError
from tsinfer.infer.textio import TEXT_DECODING

FORMATS = ("parquet", "tsv")


def require_ray():
    import importlib

    try:
        importlib.import_module("ray.data")
    except ImportError as e:
        raise InputError("--engine ray needs Ray Data: pip install 'tsinfer-sentiment[dist]' "
                         f"(or pip install 'ray[data]'); import failed: {e}") from e


def expand_inputs(inputs: list[str]) -> list[str]:
    """Local globs are expanded here (sorted); folders and URIs (s3://...) go to Ray's reader as they are."""
    paths = []
    for item in inputs:
        if item == "-":
            raise InputError("--engine ray reads shards from paths, not stdin")
        if "://" in item:
            paths.append(item)
        elif any(c in item for c in "*?["):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise InputError(f"no input file matches {item!r}")
            paths += [os.path.abspath(p) for p in found]
        elif os.path.exists(item):
            paths.append(os.path.abspath(item))
        else:
            raise InputError(f"input not found: {item}")
    return paths


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
                table[score_col] = pa.array(written_scores(bins[:, c], self.fmt),
                                            pa.float64() if self.fmt == "parquet" else pa.string())
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


def _bin_columns(classes: LabelSet) -> list[str]:
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
    names = ["label", "pred", *_bin_columns(classes)]
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
        bins = mine[_bin_columns(classes)].to_numpy().astype(np.int64)
        metrics.add(mine["label"].to_numpy().astype(np.int64), mine["pred"].to_numpy().astype(np.int64),
                    bins[:, 0] if classes.binary else bins, mine["n"].to_numpy().astype(np.int64))
        summaries[name] = dict(metrics.summary(), model=name, rows_labelled=metrics.rows)
    return summaries


def _write(ds, path: str, fmt: str) -> None:
    if fmt == "parquet":
        ds.write_parquet(path)
    else:
        import pyarrow.csv as pacsv
        from ray.data.datasource import FilenameProvider

        ds.write_csv(path, filename_provider=FilenameProvider(file_format="tsv"), arrow_csv_args_fn=lambda: {
            "write_options": pacsv.WriteOptions(delimiter="\t", quoting_style="needed")})


def _read(path: str, fmt: str, columns: list[str] | None = None, text_columns: tuple[str, ...] = ()):
    """The written shards; text_columns (class names) are read as strings from TSV."""
    import ray.data

    if not Path(path).exists() or not any(Path(path).iterdir()):
        return None
    if fmt == "parquet":
        ds = ray.data.read_parquet(path)
        return ds.select_columns(columns) if columns else ds
    import pyarrow.csv as pacsv

    ds = ray.data.read_csv(path, file_extensions=["tsv"], parse_options=pacsv.ParseOptions(delimiter="\t"),
                           convert_options=pacsv.ConvertOptions(
                               column_types={"id": "string", "label": "int8", **{c: "string" for c in text_columns}},
                               include_columns=columns))
    return ds


def connect(address: str | None, *, num_cpus: int | None, timeout_s: float) -> CpuBudget | None:
    """ray.init, with a cluster that cannot be reached turned into one InputError within timeout_s.

    Ray itself retries an unreachable address for minutes; a TCP connection to HOST:PORT (also for ray://) is tried
    first, within the wait the user chose. 'auto' and no address are left to Ray. Returns the CPUs a local Ray was
    given (num_cpus, else the CPUs this process may use: infer/cpus.py), None for a cluster.
    """
    import socket

    import ray

    if address and address != "auto":
        hostport = address.removeprefix("ray://")
        host, _, port = hostport.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
        except (OSError, ValueError) as e:
            raise InputError(f"cannot reach the Ray cluster at {address} within {timeout_s:g} s ({e}): start it "
                             "(ray start --head), check the address (HOST:PORT, ray://HOST:PORT or auto) or raise "
                             "--connect-timeout") from None
    cpus = None
    if address is None:
        cpus = CpuBudget(num_cpus, "num_cpus argument") if num_cpus else cpu_budget()
    try:
        # no address: a Ray of this machine's own ("local"), never a cluster that a `ray start` left on record
        ray.init(address=address or "local", num_cpus=cpus.count if cpus else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(f"cannot join the Ray cluster at {address or 'local'}: {str(e).splitlines()[0]} (a cluster "
                         "with token authentication, the default of `ray start` where ~/.ray/auth_token exists, also "
                         "needs RAY_AUTH_MODE=token here and its token: ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or "
                         "RAY_AUTH_TOKEN)") from None
    return cpus


def score_with_ray(inputs: list[str], models: list[str], *, output: str,
                   settings: ScorerSettings = ScorerSettings(), fmt: str = "parquet", address: str | None = None,
                   actors: int | None = None, gpus_per_actor: float = 0.0, cpus_per_actor: float = 1.0,
                   chunk_rows: int | None = None, metrics_path: str | None = None, progress: bool = False,
                   num_cpus: int | None = None, connect_timeout_s: float = 15.0,
                   on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Score shards on Ray Data; returns the metrics dict (also written to OUTPUT/metrics.json).

    progress draws a bar on stderr; on_progress(rows_read, bytes_read) is called from a driver thread as chunks are
    scored. The shards are written beside OUTPUT and moved there only once the run has succeeded.
    """
    require_ray()
    import ray

    paths, out, classes = _check_job(inputs, models, output=output, fmt=fmt, settings=settings, gpus=gpus_per_actor)
    start = time.perf_counter()
    started_here = not ray.is_initialized()
    cpus = connect(address, num_cpus=num_cpus, timeout_s=connect_timeout_s) if started_here else None
    provider = "cuda" if gpus_per_actor else "cpu"
    # tokenization in each actor's own thread: Ray's actors are the parallelism here
    settings = replace(settings, provider=provider, threads=max(1, round(cpus_per_actor)), tokenizer_workers=0)
    chunk_rows = chunk_rows or default_chunk_rows(provider)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        _quiet_ray_data()
        actors = actors or _default_actors(gpus_per_actor, cpus_per_actor)
        with _watch_progress(paths, show=progress, on_progress=on_progress) as counter:
            _run_dataset(paths, models, staging, fmt=fmt, settings=settings, chunk_rows=chunk_rows, actors=actors,
                         cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, progress=counter,
                         classes=classes)
        scoring_s = time.perf_counter() - start
        summaries, rows_scored, rows_rejected = _collect_metrics(staging, fmt, model_names(models), classes)
        _publish(staging, out)
    except AttributeError as e:
        if not ray.util.client.ray.is_connected():
            raise
        # Ray Data's streaming executor needs a driver of its own (core_worker), which a Ray Client session is not
        raise InputError(f"Ray Data {ray.__version__} cannot run through Ray Client ({address}: {e}): run tsinfer "
                         "on the cluster (ray job submit, or --address HOST:PORT / auto from a node)") from None
    except ray.exceptions.RayError as e:  # an actor or task failed: its own one-line reason, not Ray's traceback
        reason = next((line.strip() for line in reversed(str(e).splitlines())
                       if "Error" in line and ":" in line), str(e).splitlines()[0])
        raise ModelError(f"the Ray run failed: {reason}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a failed run leaves nothing half-written
        if started_here:
            ray.shutdown()
    head = {"engine": {"name": "ray", "ray": ray.__version__, "address": address or "local", "actors": actors,
                       "cpus_per_actor": cpus_per_actor, "gpus_per_actor": gpus_per_actor, "provider": provider,
                       "shards": len(paths), "chunk_rows": chunk_rows},
            "output": {"predictions": str(out / "predictions"), "rejects": str(out / "rejects"), "format": fmt},
            "rows_read": rows_scored + rows_rejected, "rows_scored": rows_scored, "rows_rejected": rows_rejected,
            "wall_s": round(time.perf_counter() - start, 3), "scoring_wall_s": round(scoring_s, 3),
            "tweets_per_s": rows_scored / scoring_s if scoring_s else None}
    if cpus is not None:  # a local Ray's CPUs, and why (a cluster's are its own nodes')
        head["cpus"] = cpus.as_dict()
    metrics = metrics_report(summaries, head)
    write_json(out / "metrics.json", metrics)
    if metrics_path:
        write_json(metrics_path, metrics)
    return metrics


def _publish(staging: Path, out: Path) -> None:
    """The finished shards under OUTPUT's own name (an empty OUTPUT folder is replaced): one rename."""
    if out.exists():
        out.rmdir()
    staging.rename(out)


@contextmanager
def _watch_progress(paths: list[str], *, show: bool, on_progress: Callable[[int, int], None] | None,
                    every_s: float = 0.5):
    """A ProgressCounter for the actors to report to (None when nobody watches), polled by a driver thread that
    draws the local engine's bar and calls on_progress; a last poll once the run is over."""
    if not (show or on_progress):
        yield None
        return
    import ray

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # on the driver's own node: a worker node lost mid-run must not take the counts with it
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    counter = ray.remote(num_cpus=0, scheduling_strategy=here)(ProgressCounter).remote()
    bar = progress_bar(show, paths)
    stop = threading.Event()

    def poll() -> None:
        rows, nbytes = ray.get(counter.totals.remote())
        estimate_total(bar, rows, nbytes)
        bar.n = rows
        bar.refresh()
        if on_progress:
            on_progress(rows, nbytes)

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                poll()
            except ray.exceptions.RayError:  # the counter's node is the driver's: only a dying driver loses it
                return

    watcher = threading.Thread(target=loop, name="tsinfer-ray-progress", daemon=True)
    watcher.start()
    try:
        yield counter
    finally:
        stop.set()
        watcher.join()
        try:
            poll()  # the final count
        except ray.exceptions.RayError:
            pass  # the run's own error, if any, is the one to report
        finally:
            bar.close()
            ray.kill(counter)


def _check_job(inputs: list[str], models: list[str], *, output: str, fmt: str, settings: ScorerSettings,
               gpus: float) -> tuple[list[str], Path, LabelSet]:
    """Everything that can be checked on the driver, with one line each, before any actor starts; returns the
    shards, the output folder and the models' classes."""
    if fmt not in FORMATS:
        raise InputError(f"--engine ray writes {' or '.join(FORMATS)} shards, not {fmt}")
    metas = []
    for folder in models:
        if gpus:
            metas.append(ModelMeta.read(folder, verify=settings.verify))
        else:
            scorer = load_scorer(folder, "cpu", settings.precision, 1, settings.verify, backend=settings.backend)
            metas.append(scorer.meta)
            scorer.close()
    classes = run_classes(metas, models)
    paths = expand_inputs(inputs)
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty: --engine ray writes a folder of shards; give a new or empty folder")
    return paths, out, classes


def _quiet_ray_data() -> None:
    """Ray Data's own bars and logs off: the engine draws one bar of rows (progress) like the local engine's."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _default_actors(gpus_per_actor: float, cpus_per_actor: float) -> int:
    import ray

    gpus, cpus = ray.cluster_resources().get("GPU", 0), ray.cluster_resources().get("CPU", 1)
    # one CPU stays free for reading, parsing and writing
    return max(1, int(gpus // gpus_per_actor) if gpus_per_actor else int((cpus - 1) // cpus_per_actor))


def _run_dataset(paths: list[str], models: list[str], out: Path, *, fmt: str, settings: ScorerSettings,
                 chunk_rows: int, actors: int, cpus_per_actor: float, gpus_per_actor: float, progress=None,
                 classes: LabelSet = BINARY) -> None:
    """shards -> chunks -> scored rows -> OUTPUT/predictions; the chunks' rejected rows -> OUTPUT/rejects."""
    import ray.data

    chunks = ray.data.read_binary_files(paths, include_paths=True).map_batches(
        parse_shards, fn_kwargs={"chunk_rows": chunk_rows, "labels": classes}, batch_size=1, batch_format="pyarrow")
    scored = chunks.map_batches(
        ChunkScorer, fn_constructor_kwargs={"models": [str(Path(m).resolve()) for m in models],
                                            "settings": settings, "fmt": fmt, "progress": progress},
        batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None)
    _write(scored, str(out / "predictions"), fmt)
    # the shards are parsed again for the rejects (cheap next to scoring; keeps memory flat)
    _write(chunks.map_batches(explode_rejects, batch_format="pyarrow"), str(out / "rejects"), fmt)


def _collect_metrics(out: Path, fmt: str, names: list[str], classes: LabelSet = BINARY) -> tuple[dict, int, int]:
    """Per model metrics from the written predictions (so they are the files' own), and the row counts."""
    import pandas as pd

    columns = prediction_columns(names, classes)
    text = () if classes.binary else ("label", *(model[0] for model in columns))  # class names, as strings
    written = _read(str(out / "predictions"), fmt, ["label"] + [c for model in columns for c in model], text)
    rejected = _read(str(out / "rejects"), fmt)
    rows_scored = written.count() if written is not None else 0
    rows_rejected = rejected.count() if rejected is not None else 0
    partials = (written.map_batches(count_partials, fn_kwargs={"columns": columns, "classes": classes},
                                    batch_format="pyarrow").to_pandas() if written is not None
                else pd.DataFrame(columns=["model", "label", "pred", *_bin_columns(classes), "n"]))
    return merge_metrics(partials, names, classes), rows_scored, rows_rejected
