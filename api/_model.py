"""tsinfer.load and Model: an exported model folder scoring texts, lists or data frames in this process."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np

from tsinfer.infer.meta import ModelError
from tsinfer.infer.models import Scorer, ScorerSettings, load_scorer
from tsinfer.infer.pipeline import default_chunk_rows
from tsinfer.infer.rows import InputError


class Scores(NamedTuple):
    """What a model says about each text, in input order."""

    pred: np.ndarray   # int64 class index: 0 = negative, 1 = positive for a binary model; model.labels[p] names it
    score: np.ndarray  # float64: P(positive) (P(class 1)), unrounded (`tsinfer score` rounds it to 6 decimals);
    #                    for more than two classes, the highest probability
    proba: np.ndarray | None = None  # more than two classes: (n, classes) float64, the p_CLASS columns


def load(model_dir: str | Path, *, provider: str = "auto", precision: str = "auto", backend: str = "auto",
         threads: int | None = None, verify: bool = True) -> Model:
    """Load an exported model folder (BERT or SVC), as `tsinfer score --model DIR` does.

    provider: "auto" (cuda where onnxruntime has it, else cpu), "cpu", "cuda" or "tensorrt".
    precision: "auto" (what meta.json names for the provider: int8 on the CPU, fp16 on a GPU), "fp32", "fp16",
    "int8". backend: the BERT engine on the CPU, "auto", "onnxruntime" or "openvino". threads: CPU lanes (default:
    the CPUs this process may use). verify: check the files the model reads (its graph for this provider,
    precision and backend, the tokenizer and config) against meta.json's sha256 first.

    Raises ModelError when the folder cannot be used (the message names the file and the fix).

    Example::

        with tsinfer.load("artifacts/onnx/bert", provider="cpu") as model:
            pred = model.predict(["what a lovely day", "worst service ever"])  # e.g. array([1, 0])
    """
    folder = Path(model_dir)
    scorer = load_scorer(folder, ScorerSettings(provider=provider, precision=precision, backend=backend,
                                                threads=threads, verify=verify))
    return Model(scorer, folder)


class Model:
    """A loaded model folder: sklearn-style `predict` / `predict_proba` on lists of texts, and `score_frame` on a
    pandas DataFrame or a pyarrow Table. Made by `tsinfer.load`; `close()` it, or use it as a context manager.

    Every text is prepared as the model was trained (its text normalisation and temperature are the folder's own),
    so a row gets the same P(positive) as in `tsinfer score`: the same bits on the CPU. A text that `tsinfer score`
    would reject (missing, not a string, empty or whitespace only) raises InputError: drop or fill those first.
    """

    labels: tuple[str, ...]  # labels[pred]: the name of a prediction (meta.json's classes, in output order)
    classes_: np.ndarray     # sklearn's name for the columns of predict_proba: 0..classes-1

    def __init__(self, scorer: Scorer, path: Path):
        self.path = path
        self._scorer: Scorer | None = scorer
        self.labels = tuple(scorer.meta.labels)
        self.classes_ = np.arange(len(self.labels))
        self.kind, self.provider = scorer.kind, scorer.provider
        self.precision, self.backend, self.file = scorer.precision, scorer.backend, scorer.file

    def score(self, texts: Iterable[str]) -> Scores:
        """Prediction (0/1) and P(positive) of each text; for more than two classes, the class index, its
        probability and every class's (proba)."""
        scorer = self._open_scorer()
        items = _texts(texts)
        step = default_chunk_rows(scorer.provider)  # the chunks `tsinfer score` reads, so memory stays bounded
        k = len(self.labels)
        preds, scores = [np.zeros(0, dtype=np.int64)], [np.zeros(0 if k == 2 else (0, k), dtype=np.float64)]
        for i in range(0, len(items), step):
            scored = scorer.score(scorer.prepare(items[i:i + step]))
            preds.append(np.asarray(scored.pred, dtype=np.int64))
            scores.append(np.asarray(scored.score if k == 2 else scored.proba, dtype=np.float64))
        pred, score = np.concatenate(preds), np.concatenate(scores)
        if k == 2:
            return Scores(pred, score)
        return Scores(pred, score.max(axis=1, initial=0.0), score)

    def predict(self, texts: Iterable[str]) -> np.ndarray:
        """The class index per text, an int64 array (0 = negative, 1 = positive for a binary model);
        `model.labels[p]` names it."""
        return self.score(texts).pred

    def predict_proba(self, texts: Iterable[str]) -> np.ndarray:
        """(n, classes) float64, columns in `model.labels` order: [P(negative), P(positive)] for a binary model
        (P(negative) is 1 - P(positive))."""
        scores = self.score(texts)
        if scores.proba is not None:
            return scores.proba
        return np.column_stack([1.0 - scores.score, scores.score])

    def score_frame(self, frame: Any, text_column: str = "text", *, prefix: str = "") -> Any:
        """A new frame: `frame` with the columns `{prefix}pred` (0/1) and `{prefix}score` (P(positive)) added or
        replaced; for more than two classes `{prefix}pred` (the class name) and `{prefix}p_CLASS` per class, as
        `tsinfer score` writes them. A pandas DataFrame gives a DataFrame, a pyarrow Table a Table; neither library
        is needed otherwise."""
        texts = _frame_column(frame, text_column)
        scores = self.score(texts)
        if scores.proba is None:
            columns = {f"{prefix}pred": scores.pred, f"{prefix}score": scores.score}
        else:
            columns = {f"{prefix}pred": np.asarray(self.labels, dtype=object)[scores.pred],
                       **{f"{prefix}p_{name}": scores.proba[:, c] for c, name in enumerate(self.labels)}}
        if _is_arrow(frame):
            import pyarrow as pa

            for name, values in columns.items():
                at = frame.column_names.index(name) if name in frame.column_names else -1
                frame = (frame.set_column(at, name, pa.array(values)) if at >= 0
                         else frame.append_column(name, pa.array(values)))
            return frame
        return frame.assign(**columns)

    def close(self) -> None:
        """Stop the model's threads and processes; later calls raise ModelError."""
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "" if self._scorer is not None else ", closed"
        return (f"tsinfer.Model({str(self.path)!r}, kind={self.kind!r}, provider={self.provider!r}, "
                f"precision={self.precision!r}, backend={self.backend!r}{state})")

    def _open_scorer(self) -> Scorer:
        if self._scorer is None:
            raise ModelError(f"the model {self.path} is closed: load it again with tsinfer.load")
        return self._scorer


def _texts(texts: Iterable[str]) -> list[str]:
    """The texts as a list, each one `tsinfer score` would accept; else one InputError naming the first bad one."""
    if isinstance(texts, (str, bytes)):
        raise InputError("give a list of texts, not one string: wrap it as [text]")
    items = texts.tolist() if hasattr(texts, "tolist") else list(texts)
    bad = [i for i, t in enumerate(items) if not (isinstance(t, str) and t and not t.isspace())]
    if bad:
        raise InputError(f"{len(bad)} of {len(items)} texts are missing, not strings or empty (the first at position "
                         f"{bad[0]}: {items[bad[0]]!r}): drop or fill them first, as `tsinfer score` rejects them")
    return items


def _is_arrow(frame: Any) -> bool:
    return type(frame).__module__.startswith("pyarrow") and hasattr(frame, "column_names")


def _frame_column(frame: Any, name: str) -> list:
    """One column of a pandas DataFrame or pyarrow Table as a list; an InputError for anything else."""
    if _is_arrow(frame):
        columns = list(frame.column_names)
    elif type(frame).__module__.startswith("pandas") and hasattr(frame, "assign"):
        columns = [str(c) for c in frame.columns]
    else:
        raise InputError(f"score_frame takes a pandas DataFrame or a pyarrow Table, not {type(frame).__name__}: "
                         "for a list of texts use model.score(texts)")
    if name not in columns:
        raise InputError(f"the frame has no column {name!r} (its columns: {', '.join(columns)}): pass "
                         "text_column=")
    return frame.column(name).to_pylist() if _is_arrow(frame) else frame[name].tolist()
