"""`tsinfer score --engine ray`: the local path's reader, scorers and metrics on Ray Data, for many shards and
machines (optional extra `dist`).

The unit of work is one chunk of one shard, cut exactly as the local path cuts it (the same reader, `chunk_rows`
accepted rows), so every chunk is tokenized, length-sorted and batched as locally and the predictions are the same
numbers:

    read_binary_files(shards)            one row per shard; Ray's paths: files, folders, s3://, gs://, ...
    -> map_batches(parse_shards)         one row per chunk: its lines, ids, labels, texts and rejected rows
    -> map_batches(ChunkScorer, actors)  one onnxruntime session per model per actor -> one row per tweet
                                         (these steps: infer/ray_steps.py; this module is the driver)
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
import logging
import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from tsinfer.infer.cpus import CpuBudget, cpu_budget
from tsinfer.infer.labels import BINARY, LabelSet
from tsinfer.infer.meta import ModelError, ModelMeta
from tsinfer.infer.models import ScorerSettings, load_scorer
from tsinfer.infer.pipeline import (default_chunk_rows, estimate_total, metrics_report, model_names,
                                    prediction_columns, progress_bar, run_classes, write_json)
from tsinfer.infer.ray_steps import (ChunkScorer, ProgressCounter, bin_columns, count_partials, explode_rejects,
                                     merge_metrics, parse_shards)
from tsinfer.infer.request import RAY_FORMATS, RequestError, ScoreRequest
from tsinfer.infer.rows import InputError

IO_TASK = {"num_cpus": 0}  # the read and write tasks' Ray resources (see _run_dataset)


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


@dataclass
class RayRun:
    """What a finished Ray run resolved and counted, for its metrics JSON."""

    summaries: dict
    rows_scored: int
    rows_rejected: int
    actors: int
    provider: str
    chunk_rows: int
    scoring_s: float


def score_with_ray(request: ScoreRequest, *, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Score shards on Ray Data; returns the metrics dict (also written to OUTPUT/metrics.json).

    request.options.progress draws a bar on stderr; on_progress(rows_read, bytes_read) is called from a driver
    thread as chunks are scored. The shards are written beside OUTPUT and moved there only once the run has
    succeeded.
    """
    require_ray()
    import ray

    if request.engine != "ray":
        raise RequestError("score_with_ray runs a request made with engine='ray'")
    paths, out, classes = _check_job(request)
    start = time.perf_counter()
    started_here = not ray.is_initialized()
    opts = request.ray
    cpus = connect(opts.address, num_cpus=opts.num_cpus, timeout_s=opts.connect_timeout_s) if started_here else None
    try:
        run = _run(request, paths, out, start=start, on_progress=on_progress, classes=classes)
    finally:
        if started_here:
            ray.shutdown()
    head = {"engine": {"name": "ray", "ray": ray.__version__, "address": opts.address or "local",
                       "actors": run.actors, "cpus_per_actor": opts.cpus_per_actor,
                       "gpus_per_actor": opts.gpus_per_actor, "provider": run.provider, "shards": len(paths),
                       "chunk_rows": run.chunk_rows},
            "output": {"predictions": str(out / "predictions"), "rejects": str(out / "rejects"),
                       "format": request.output.fmt},
            "rows_read": run.rows_scored + run.rows_rejected, "rows_scored": run.rows_scored,
            "rows_rejected": run.rows_rejected, "wall_s": round(time.perf_counter() - start, 3),
            "scoring_wall_s": round(run.scoring_s, 3),
            "tweets_per_s": run.rows_scored / run.scoring_s if run.scoring_s else None}
    if cpus is not None:  # a local Ray's CPUs, and why (a cluster's are its own nodes')
        head["cpus"] = cpus.as_dict()
    metrics = metrics_report(run.summaries, head)
    write_json(out / "metrics.json", metrics)
    if request.output.metrics:
        write_json(request.output.metrics, metrics)
    return metrics


def _run(request: ScoreRequest, paths: list[str], out: Path, *, start: float,
         on_progress: Callable[[int, int], None] | None, classes: LabelSet = BINARY) -> RayRun:
    """The dataset run into a staging folder beside OUTPUT, its metrics collected, the folder published; Ray's
    errors turned into one line each."""
    import ray

    opts, fmt = request.ray, request.output.fmt
    provider = "cuda" if opts.gpus_per_actor else "cpu"
    # tokenization in each actor's own thread: Ray's actors are the parallelism here
    settings = replace(request.settings, provider=provider, threads=max(1, round(opts.cpus_per_actor)),
                       tokenizer_workers=0)
    chunk_rows = request.options.chunk_rows or default_chunk_rows(provider)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        _quiet_ray_data()
        actors = opts.actors or _default_actors(opts.gpus_per_actor, opts.cpus_per_actor)
        with _watch_progress(paths, show=request.options.progress, on_progress=on_progress) as counter:
            _run_dataset(request, paths, staging, settings=settings, chunk_rows=chunk_rows, actors=actors,
                         progress=counter, classes=classes)
        scoring_s = time.perf_counter() - start
        summaries, rows_scored, rows_rejected = _collect_metrics(staging, fmt, model_names(list(request.models)),
                                                                 classes)
        _publish(staging, out)
    except AttributeError as e:
        if not ray.util.client.ray.is_connected():
            raise
        # Ray Data's streaming executor needs a driver of its own (core_worker), which a Ray Client session is not
        raise InputError(f"Ray Data {ray.__version__} cannot run through Ray Client ({opts.address}: {e}): run "
                         "tsinfer on the cluster (ray job submit, or --address HOST:PORT / auto from a node)") from None
    except ray.exceptions.RayError as e:  # an actor or task failed: its own one-line reason, not Ray's traceback
        reason = next((line.strip() for line in reversed(str(e).splitlines())
                       if "Error" in line and ":" in line), str(e).splitlines()[0])
        raise ModelError(f"the Ray run failed: {reason}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a failed run leaves nothing half-written
    return RayRun(summaries, rows_scored, rows_rejected, actors, provider, chunk_rows, scoring_s)


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


def _check_job(request: ScoreRequest) -> tuple[list[str], Path, LabelSet]:
    """Everything that can be checked on the driver, with one line each, before any actor starts; returns the
    shards, the output folder and the models' classes."""
    if request.output.fmt not in RAY_FORMATS:  # the request checks it too; a library caller may build its own
        raise InputError(f"--engine ray writes {' or '.join(RAY_FORMATS)} shards, not {request.output.fmt}")
    settings, metas = request.settings, []
    for folder in request.models:
        if request.ray.gpus_per_actor:
            metas.append(ModelMeta.read(folder, verify=settings.verify))
        else:
            scorer = load_scorer(folder, ScorerSettings(provider="cpu", precision=settings.precision, threads=1,
                                                        verify=settings.verify, backend=settings.backend))
            metas.append(scorer.meta)
            scorer.close()
    classes = run_classes(metas, list(request.models))
    paths = expand_inputs(list(request.inputs))
    out = Path(request.output.path)
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


def _run_dataset(request: ScoreRequest, paths: list[str], out: Path, *, settings, chunk_rows: int, actors: int,
                 progress=None, classes: LabelSet = BINARY) -> None:
    """shards -> chunks -> scored rows -> OUTPUT/predictions; the chunks' rejected rows -> OUTPUT/rejects."""
    import ray.data

    fmt, opts = request.output.fmt, request.ray
    # Reading and writing hold no CPU: when a node is lost, Ray restarts its actors on the nodes left, and actors
    # that hold every CPU there would starve the reads they wait for and the writes that wait for them (a hang).
    chunks = ray.data.read_binary_files(paths, include_paths=True, **IO_TASK).map_batches(
        parse_shards, fn_kwargs={"chunk_rows": chunk_rows, "labels": classes}, batch_size=1, batch_format="pyarrow")
    scored = chunks.map_batches(
        ChunkScorer, fn_constructor_kwargs={"models": [str(Path(m).resolve()) for m in request.models],
                                            "settings": settings, "fmt": fmt, "progress": progress},
        batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=opts.cpus_per_actor, num_gpus=opts.gpus_per_actor or None)
    _write(scored, str(out / "predictions"), fmt)
    # the shards are parsed again for the rejects (cheap next to scoring; keeps memory flat)
    _write(chunks.map_batches(explode_rejects, batch_format="pyarrow"), str(out / "rejects"), fmt)


def _write(ds, path: str, fmt: str) -> None:
    if fmt == "parquet":
        ds.write_parquet(path, ray_remote_args=IO_TASK)
    else:
        import pyarrow.csv as pacsv
        from ray.data.datasource import FilenameProvider

        ds.write_csv(path, filename_provider=FilenameProvider(file_format="tsv"), ray_remote_args=IO_TASK,
                     arrow_csv_args_fn=lambda: {"write_options": pacsv.WriteOptions(delimiter="\t",
                                                                                    quoting_style="needed")})


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
                else pd.DataFrame(columns=["model", "label", "pred", *bin_columns(classes), "n"]))
    return merge_metrics(partials, names, classes), rows_scored, rows_rejected
