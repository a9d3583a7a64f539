"""The training and export libraries' own errors: plain exceptions whose message says what went wrong and what to do.

The command line (infer/cli.py, and the `python -m` aliases) prints them as one line; the library never prints.
"""
from __future__ import annotations


class TrainError(Exception):
    """Training cannot go on (a base model that cannot be loaded, a missing file)."""


class DataError(TrainError):
    """The training data cannot be used as given: the message counts and shows the offending rows."""


class ExportError(Exception):
    """A model cannot be exported as asked (not trained yet, no parity data)."""
