"""Options more than one command takes, defined once."""
from __future__ import annotations

import click

from tsinfer.infer.engines import BACKENDS

DEFAULT_MODEL = "artifacts/onnx/bert"
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
MODEL_PRECISIONS = ("auto", "fp32", "fp16", "int8")
INPUT_FORMATS = ("auto", "tsv", "jsonl", "csv", "parquet")


def progress(message: str) -> None:
    """The libraries' progress lines, on stderr."""
    click.echo(message, err=True)


def stack(*options):
    """One decorator applying `options` in the order listed (the first is the first in --help)."""
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def engine_options(fn):
    """--provider, --precision and --backend: where the model runs, which of its files, and which engine."""
    return stack(
        click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
                     help="onnxruntime execution provider; auto = cuda when available, else cpu."),
        click.option("--precision", type=click.Choice(MODEL_PRECISIONS), default="auto", show_default=True,
                     help="BERT model file; auto = int8 on cpu, fp16 on cuda/tensorrt (as meta.json says)."),
        click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                     help="BERT engine on the CPU; auto = OpenVINO where installed and the folder has its file, "
                          "else onnxruntime (which also runs every GPU provider)."),
    )(fn)


def column_options(*, id_column: bool):
    """--input-format and the column options, read as infer/formats.py reads them (id: scoring only)."""
    options = [
        click.option("--input-format", type=click.Choice(INPUT_FORMATS), default="auto", show_default=True,
                     help="auto: by suffix (.jsonl/.ndjson/.json, .csv, .parquet; else TSV), under any compression "
                          "suffix."),
        click.option("--text-column", default=None,
                     help="CSV/JSONL/Parquet: the text column [text, full_text, tweet, ...]."),
    ]
    if id_column:
        options.append(click.option("--id-column", default=None,
                                    help="CSV/JSONL/Parquet: the id column [id_str, id, ...; else the row]."))
    options.append(click.option("--label-column", default=None,
                                help="CSV/JSONL/Parquet: the label column [label, sentiment, ...]; labels 0/1, 0/4 "
                                     "or negative/positive, or the classes of the model (training: of the data)."))
    return stack(*options)
