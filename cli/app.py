"""The `tsinfer` group: scoring, training and export commands over the infer, train and export libraries.

This package sits on top: the libraries never import it, and every entry point (`tsinfer`, `python -m tsinfer.cli`,
`torchrun -m tsinfer.cli train bert`) comes through here.
"""
from __future__ import annotations

import click

from tsinfer.cli.base_model import base_model_group
from tsinfer.cli.errors import CleanGroup
from tsinfer.cli.export import export_command
from tsinfer.cli.score import info, predict, score
from tsinfer.cli.train import train_group


@click.group(cls=CleanGroup)
@click.version_option(package_name="tsinfer-sentiment")
def main():
    """Score tweet sentiment with exported ONNX models (BERT or TF-IDF SVC); train and export them."""


for command in (score, predict, info, train_group, export_command, base_model_group):
    main.add_command(command)
