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
