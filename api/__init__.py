"""tsinfer from Python: score tweet sentiment with an exported model folder in a notebook or a pipeline step.

    import tsinfer

    with tsinfer.load("artifacts/onnx/bert", provider="cpu") as model:
        pred = model.predict(["what a lovely day", "worst service ever"])   # int64 0/1: model.labels[p] names it
        proba = model.predict_proba(["what a lovely day"])                   # (n, 2): [P(negative), P(positive)]
        scored = model.score_frame(df, text_column="text")                   # adds pred and score columns

    result = tsinfer.score_file("tweets.jsonl", "artifacts/onnx/bert", "predictions.tsv", metrics="m.json")

The same rows get the same answers as `tsinfer score` (the same bits on the CPU; the file rounds the score to six
decimals). Errors, each with a one-line message that names the fix:

- ModelError: a model folder cannot be used (missing, damaged, a file outside the folder, no such precision).
- InputError: the input cannot be read, or a text is missing, not a string or empty.
- StrictError: score_file(strict=True) met a row it could not read.
- Interrupted: score_file was stopped by Ctrl-C or SIGTERM; no output was left under its final name.
- CpuBudgetError: TSINFER_CPUS is not a positive integer.

Nothing here prints, and `import tsinfer` loads no model runtime: each name is imported on first use.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tsinfer._files import ScoreResult, score_file
    from tsinfer._model import Model, Scores, load
    from tsinfer.infer.cpus import CpuBudgetError
    from tsinfer.infer.meta import ModelError
    from tsinfer.infer.rows import InputError
    from tsinfer.infer.score import Interrupted, StrictError

# name -> the module that defines it, imported when the name is first used (so that `import tsinfer` stays light)
_WHERE = {
    "load": "tsinfer._model", "Model": "tsinfer._model", "Scores": "tsinfer._model",
    "score_file": "tsinfer._files", "ScoreResult": "tsinfer._files",
    "ModelError": "tsinfer.infer.meta", "InputError": "tsinfer.infer.rows", "StrictError": "tsinfer.infer.score",
    "Interrupted": "tsinfer.infer.score", "CpuBudgetError": "tsinfer.infer.cpus",
}
__all__ = ["load", "Model", "Scores", "score_file", "ScoreResult", "ModelError", "InputError", "StrictError",
           "Interrupted", "CpuBudgetError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("tsinfer-sentiment")
    if name not in _WHERE:
        raise AttributeError(f"module 'tsinfer' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
