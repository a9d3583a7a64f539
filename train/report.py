"""Report files shared by the trainers, export and the benchmarks: plain JSON, written atomically."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from tsinfer.infer.pipeline import write_json

TRAINING_DATA_FILE = "training_data.json"  # in each trained model folder: data files, checks, label mapping


write_report = write_json  # the scoring engines' atomic JSON writer: one for every report


def split_figures(val_metrics: dict, test_metrics: dict | None) -> dict:
    """The report keys every trainer writes, from binary_metrics on the validation split and on the test file
    (None without a test file)."""
    out = {}
    # macro-F1 and macro-recall (SemEval's measure) where there are more than two classes
    keys = ("accuracy", "mcc", "roc_auc") + (("macro_f1", "macro_recall") if "macro_f1" in val_metrics else ())
    for split, m in (("val", val_metrics), ("test", test_metrics or {})):
        out.update({f"{split}_{key}": m.get(key) for key in keys})
    return dict(out, val_metrics=val_metrics, test_metrics=test_metrics)


Progress = Callable[[str], None]


def log_progress(message: str) -> None:
    """The default progress sink of the library: logging (the command line passes its own, to stderr)."""
    logging.getLogger("tsinfer.train").info(message)


def record_training_data(out_dir: str | Path, data_report: dict) -> None:
    """The model folder keeps where its rows came from and its label mapping: export copies both into meta.json."""
    write_report(Path(out_dir) / TRAINING_DATA_FILE, data_report)
