"""Report files shared by the trainers, export and the benchmarks: plain JSON, written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_report(path: str | Path, report: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def split_figures(val_metrics: dict, test_metrics: dict) -> dict:
    """The report keys every trainer writes, from binary_metrics on the validation split and on test.tsv."""
    out = {}
    for split, m in (("val", val_metrics), ("test", test_metrics)):
        out.update({f"{split}_accuracy": m["accuracy"], f"{split}_mcc": m["mcc"], f"{split}_roc_auc": m["roc_auc"]})
    return dict(out, val_metrics=val_metrics, test_metrics=test_metrics)


def io_options(kind: str):
    """The --data/--out/--report options shared by the trainers' commands."""
    import click

    def decorate(fn):
        fn = click.option("--report", "report_path", default=f"artifacts/reports/train_{kind}.json",
                          show_default=True)(fn)
        fn = click.option("--out", "out_dir", default=f"artifacts/{kind}", show_default=True,
                          help="Model folder to write.")(fn)
        return click.option("--data", "data_dir", default="data", show_default=True,
                            help="Folder with dev.tsv and test.tsv.")(fn)
    return decorate
