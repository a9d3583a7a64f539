"""`tsinfer score`, `tsinfer predict` and `tsinfer info`: thin commands over the library. `score` builds one
ScoreRequest (infer/request.py, which checks it) for the local engine (infer.score) or Ray's (infer.ray_engine);
`predict` uses the Python API's `tsinfer.load`; `info` reads infer.meta."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

import tsinfer
from tsinfer.cli.errors import CleanCommand, on_sigterm
from tsinfer.cli.options import DEFAULT_MODEL, column_options, engine_options
from tsinfer.infer.cpus import cpu_budget
from tsinfer.infer.engines import (CACHE_ENV, default_cpu_backend, graph_sha256, openvino_cache_folder,
                                   openvino_version)
from tsinfer.infer.meta import ModelMeta
from tsinfer.infer.models import available_providers
from tsinfer.infer.models import ScorerSettings
from tsinfer.infer.request import OutputSpec, RayOptions, RunOptions, ScoreRequest, rejects_beside
from tsinfer.infer.rows import Columns


@click.command(cls=CleanCommand)
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", "models", multiple=True, default=[DEFAULT_MODEL], show_default=True,
              help="Exported model folder; repeat to score several models on the same rows in one pass.")
@engine_options
@click.option("--batch-tokens", type=click.IntRange(min=1), default=None,
              help="Token budget of one padded batch (rows x longest row) [cpu 512, cuda 262144, tensorrt 65536].")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Rows per batch at most [cpu 256, cuda 8192, tensorrt 2048].")
@column_options(id_column=True)
@click.option("--output", "-o", default="-", show_default=True, help="Predictions file, or - for stdout.")
@click.option("--format", "fmt", type=click.Choice(["tsv", "jsonl", "parquet"]), default=None,
              help="Predictions format [tsv; parquet or tsv shards with --engine ray, default parquet].")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False), default=None,
              help="Write metrics and throughput as JSON here.")
@click.option("--roc", "roc_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG with every model's ROC curve (labelled input only).")
@click.option("--rejects", "rejects_path", type=click.Path(dir_okay=False), default=None,
              help="Rows that could not be read, with line and reason [default: OUTPUT.rejects.tsv, or "
                   "rejects.tsv when writing to stdout].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU: lanes, each a single-threaded onnxruntime session running whole batches [the CPUs this "
                   "process may use: affinity, container quota or TSINFER_CPUS].")
@click.option("--tokenizer-workers", type=click.IntRange(min=0), default=None,
              help="Processes tokenizing beside the model, 0 for none [cuda: one per two cores, at most 8; cpu: 0].")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
              help="Rows read, prepared and sorted together [16384 on every provider].")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [when stderr is a terminal].")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check the model files the run reads against meta.json's sha256.")
@click.option("--strict", is_flag=True, help="Stop with exit code 3 at the first row that cannot be read.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from its last completed chunk (same command, --output FILE).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data over many shards and machines (extra `dist`).")
@click.option("--address", default=None, help="[ray] Join this Ray cluster: HOST:PORT, ray://HOST:PORT (Ray "
                                               "Client) or auto (default: a local Ray with this machine's cores).")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=15.0, show_default=True,
              help="[ray] Seconds to wait for --address before giving up.")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="[ray] Scoring actors, each holding one onnxruntime session per model [GPUs / gpus-per-actor, "
                   "or CPUs - 1].")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="[ray] GPUs per actor; above 0 the actors use the CUDA provider.")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="[ray] CPUs per actor (also its onnxruntime threads).")
def score(inputs, models, provider, precision, backend, batch_tokens, max_batch, input_format, text_column, id_column,
          label_column, output, fmt, metrics_path, roc_path, rejects_path, threads, tokenizer_workers, chunk_rows,
          progress, verify, strict, resume, engine, address, connect_timeout, actors, gpus_per_actor, cpus_per_actor):
    """Score INPUT TSV files (or - for stdin) and print a comparison of the models.

    Input layouts: the seed's dev.tsv/test.tsv, `id<TAB>label<TAB>text`, `id<TAB>text`, or one text a line.
    Output columns: id, label, pred, score (score = P(positive)); with several models, pred_NAME and score_NAME.
    Models of more than two classes: label and pred as class names, p_CLASS per class in place of score.
    With --engine ray, INPUTS may be files, folders, globs or URIs Ray reads (s3://...), and --output is a folder
    of prediction shards (columns shard and line first), rejects shards and metrics.json.
    """
    from tsinfer.infer.report import comparison_table
    from tsinfer.infer.score import score_files

    fmt = fmt or ("parquet" if engine == "ray" else "tsv")
    if rejects_path is None and engine == "local":
        rejects_path = rejects_beside(output)
    request = ScoreRequest(
        inputs, models, OutputSpec(output, fmt, rejects=rejects_path, metrics=metrics_path, roc=roc_path),
        ScorerSettings(provider=provider, precision=precision, backend=backend, threads=threads, verify=verify,
                       batch_tokens=batch_tokens, max_batch=max_batch, tokenizer_workers=tokenizer_workers),
        RunOptions(chunk_rows=chunk_rows, input_format=input_format,
                   columns=Columns(text_column, id_column, label_column), strict=strict, resume=resume,
                   progress=sys.stderr.isatty() if progress is None else progress),
        engine=engine, ray=RayOptions(address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                                      cpus_per_actor=cpus_per_actor, connect_timeout_s=connect_timeout))
    if engine == "ray":
        return _score_ray(request)
    signal.signal(signal.SIGTERM, on_sigterm)
    result = score_files(request)
    click.echo(comparison_table(result), err=True)
    if result.rows_rejected:
        click.echo(f"{result.rows_rejected:,} rows rejected: see {request.output.rejects}", err=True)


def _score_ray(request: ScoreRequest) -> None:
    from tsinfer.infer.ray_engine import score_with_ray

    m = score_with_ray(request)
    output = request.output.path
    for name, s in (m["models"].items() if "models" in m else [(m.get("model", "model"), m)]):
        if s.get("accuracy") is not None:
            macro = f"macro-F1 {s['macro_f1']:.4f}  macro-recall {s['macro_recall']:.4f}  " if "macro_f1" in s else ""
            click.echo(f"{name}: accuracy {s['accuracy']:.4f}  {macro}MCC {s['mcc']:.4f}  ROC-AUC "
                       f"{s['roc_auc'] or 0:.4f}  ({s['rows_labelled']:,} labelled rows)", err=True)
    click.echo(f"rows read {m['rows_read']:,}, scored {m['rows_scored']:,}, rejected {m['rows_rejected']:,}; "
               f"{m['engine']['actors']} actors, {m['tweets_per_s'] or 0:,.0f} tweets/s; wrote {output}/predictions, "
               f"{output}/rejects and {output}/metrics.json", err=True)


@click.command(cls=CleanCommand)
@click.argument("texts", nargs=-1)
@click.option("--model", "model_dir", default=DEFAULT_MODEL, show_default=True, help="Exported model folder.")
@engine_options
def predict(texts, model_dir, provider, precision, backend):
    """Print label and P(positive) for each TEXT (or each line of stdin when no TEXT is given); for a model of
    more than two classes, the label and its probability."""
    if not texts:
        texts = tuple(line.rstrip("\n") for line in sys.stdin if line.strip())
    if not texts:
        raise click.UsageError("give one or more TEXT arguments, or lines on stdin")
    with tsinfer.load(model_dir, provider=provider, precision=precision, backend=backend) as model:
        out = model.score(list(texts))
    for text, pred, s in zip(texts, out.pred, out.score):
        click.echo(f"{model.labels[int(pred)]}\t{s:.4f}\t{text}")


@click.command(cls=CleanCommand)
@click.argument("model_dir", type=click.Path(path_type=Path))
def info(model_dir):
    """Show a model folder's meta.json, its files, the providers this machine offers and the CPUs this process may
    use (TSINFER_CPUS overrides the count)."""
    meta = ModelMeta.read(model_dir, verify=False)
    click.echo(f"model folder: {model_dir}  kind: {meta.kind}")
    classes = meta.label_set()
    other = [f"{value}={name}" for value, name in classes.mapping().items() if value != name.lower()]
    click.echo(f"classes ({len(classes)}, in output order): {', '.join(classes.names)}"
               + (f"; labels also read: {', '.join(other)}" if other else ""))
    for precision, name in meta.files.items():
        size = (model_dir / name).stat().st_size if (model_dir / name).exists() else 0
        runs_on = ", ".join(meta.providers.get(precision, ["cpu"]))
        click.echo(f"  {precision:5s} {name:20s} {size / 1e6:8.2f} MB  providers: {runs_on}")
    unhashed = meta.unhashed()
    if unhashed:  # a folder from elsewhere: nothing proves its files are the ones exported
        click.echo(f"WARNING: meta.json has no sha256 for {', '.join(unhashed)}: --verify refuses this folder; "
                   "re-export it, or pass --no-verify if you trust where it came from")
    if meta.extra.get("training_report"):
        click.echo("training report: " + json.dumps(meta.extra["training_report"]))
    click.echo(f"providers on this machine: {', '.join(available_providers())}")
    cpus = cpu_budget()
    click.echo(f"CPUs this process may use: {cpus.count} ({cpus.source})")
    click.echo(f"default precision by provider: {json.dumps(meta.default_precision)}")
    for precision, name in meta.openvino_files.items():
        click.echo(f"  {precision:5s} {name:20s} OpenVINO (the CPU engine): "
                   f"{openvino_version() or 'not installed here, so the CPU runs onnxruntime'}")
        _cache_line(meta, name)
    click.echo(f"CPU engine by default (--backend auto): {default_cpu_backend(meta.to_dict())}")


def _cache_line(meta: ModelMeta, name: str) -> None:
    """Where the OpenVINO file's compiled form is kept between runs (infer/engines.openvino_cache), and its size."""
    hashes = graph_sha256(meta, name)
    folder = openvino_cache_folder(hashes) if openvino_version() and hashes else None
    if folder is None:
        click.echo("        compiled-model cache: off (TSINFER_CACHE_DIR empty, unhashed files or no OpenVINO)")
        return
    blobs = list(folder.glob("*.blob")) if folder.is_dir() else []
    size = sum(b.stat().st_size for b in blobs) / 1e6
    click.echo(f"        compiled-model cache: {folder} ({len(blobs)} compiled form(s), {size:.0f} MB; "
               f"{CACHE_ENV}= turns it off)")
