"""The training and export libraries' own errors: plain exceptions whose message says what went wrong and what to do.

The command line (tsinfer.cli, cli/errors.py) prints them as one line with an exit code; the library never prints.
"""
from __future__ import annotations


class TrainError(Exception):
    """Training cannot go on (a base model that cannot be loaded, a missing file)."""


class DataError(TrainError):
    """The training data cannot be used as given: the message counts and shows the offending rows."""


class ExportError(Exception):
    """A model cannot be exported as asked (not trained yet, no parity data)."""


class ParityError(ExportError):
    """The ONNX graphs were written but some miss their parity targets (parity.json has the figures)."""

    def __init__(self, misses: list[str]):
        which = "1 exported graph misses its" if len(misses) == 1 else f"{len(misses)} exported graphs miss their"
        super().__init__(f"{which} parity target ({', '.join(misses)}): see reports/parity.json, or pass "
                         "--allow-parity-miss to accept them")
        self.misses = misses
