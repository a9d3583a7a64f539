"""The `tsinfer` command line (see cli/app.py)."""
from tsinfer.cli.app import main

__all__ = ["main"]
