"""`tsinfer export`: a thin command over export/run.py (onnx and optimum are imported inside it only)."""
from __future__ import annotations

from pathlib import Path

import click

from tsinfer.cli.errors import CleanCommand
from tsinfer.cli.options import column_options, progress
from tsinfer.infer.formats import Columns


@click.command("export", cls=CleanCommand)
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path),
              help="Folder with svc/ and bert/ from `tsinfer train`; writes onnx/ and reports/parity.json there.")
@click.option("--only", type=click.Choice(["svc", "bert"]), default=None, help="Export one model only.")
@click.option("--parity-file", type=click.Path(dir_okay=False), default=None,
              help="Labelled file the parity check scores with the model and its ONNX graphs [DATA/test.tsv].")
@column_options(id_column=False)
@click.option("--data", "data_dir", default="data", show_default=True, type=click.Path(path_type=Path),
              help="Folder with the seed's test.tsv (the parity file when --parity-file is not given).")
@click.option("--skip-parity", is_flag=True, help="Do not run the parity check.")
@click.option("--allow-parity-miss", is_flag=True,
              help="Exit 0 even when a graph misses its parity target (otherwise exit 4, after the report).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Parity on the first N rows only.")
def export_command(artifacts, only, parity_file, input_format, text_column, label_column, data_dir, skip_parity,
                   allow_parity_miss, limit):
    """Export the trained SVC and BERT to ONNX folders (meta.json: label mapping, training data) and check parity."""
    from tsinfer.export.run import parity_lines, require_parity, run_export

    report = run_export(artifacts, data_dir, parity=not skip_parity, which=(only,) if only else ("svc", "bert"),
                        limit=limit, parity_file=parity_file, input_format=input_format,
                        columns=Columns(text_column, None, label_column), progress=progress)
    for line in parity_lines(report):
        click.echo(line)
    if not allow_parity_miss:
        require_parity(report)
