"""The scoring steps both engines share: the local one (infer/score.py) and Ray (infer/ray_engine.py).

Loading and warming up the scorers, the per-provider chunk size, scoring one chunk into the columns written, the
written form of a score, and the metrics report (one atomic JSON writer, also used for the training reports).
Whatever engine scores a row, it goes through these functions, so its prediction and written score are the same.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsinfer.infer.batching import CHUNK_ROWS_BY_PROVIDER
from tsinfer.infer.labels import BINARY, LabelSet
from tsinfer.infer.meta import ModelError, ModelMeta
from tsinfer.infer.metrics import SCORE_BINS, format_score_bins, score_bins
from tsinfer.infer.models import Scorer, ScorerSettings, done, load_scorer
from tsinfer.infer.rows import NO_LABEL
from tsinfer.infer.reader import DEFAULT_CHUNK_ROWS
from tsinfer.infer.textio import input_size


def load_scorers(models: list[str], settings: ScorerSettings) -> list[Scorer]:
    """One scorer per model folder, warmed up (so that no first batch pays for allocation); closed on failure."""
    scorers: list[Scorer] = []
    try:
        for folder in models:
            scorers.append(load_scorer(folder, settings))
        for scorer in scorers:
            scorer.warm_up()
    except BaseException:
        close_scorers(scorers)
        raise
    return scorers


def close_scorers(scorers: list[Scorer]) -> None:
    for scorer in scorers:
        scorer.close()


def default_chunk_rows(provider: str) -> int:
    return CHUNK_ROWS_BY_PROVIDER.get(provider, DEFAULT_CHUNK_ROWS)


def model_names(models: list[str]) -> list[str]:
    """One name per model folder (its folder name, made unique): the suffix of its output columns."""
    names: list[str] = []
    for folder in models:
        name = Path(folder).name or "model"
        while name in names:
            name += "_"
        names.append(name)
    return names


def run_classes(metas: list[ModelMeta], models: list[str]) -> LabelSet:
    """The classes every model of a run shares (from each folder's meta.json): the input's labels are read with
    them and each model's metrics count them. Models of other classes are a ModelError (their rows could not be
    compared)."""
    sets = [meta.label_set() for meta in metas]
    for folder, classes in zip(models[1:], sets[1:]):
        if classes.names != sets[0].names:
            raise ModelError(f"{models[0]} predicts {', '.join(sets[0].names)} but {folder} predicts "
                             f"{', '.join(classes.names)}: score models of the same classes together")
    return sets[0] if sets else BINARY


def prediction_columns(names: list[str], classes: LabelSet = BINARY) -> list[tuple[str, ...]]:
    """The columns of each model: (pred, score) for two classes, pred/score for one model and pred_NAME/score_NAME
    for several; for more classes, pred and one probability per class, p_CLASS (pred_NAME and p_CLASS_NAME)."""
    if classes.binary:
        return [("pred", "score")] if len(names) == 1 else [(f"pred_{n}", f"score_{n}") for n in names]
    return [(f"pred{suffix}", *(f"p_{c}{suffix}" for c in classes.names))
            for suffix in ([""] if len(names) == 1 else [f"_{n}" for n in names])]


def written_preds(pred: np.ndarray, classes: LabelSet) -> list:
    """A pred column's values: the class index for two classes (0/1, as always), the class name for more."""
    if classes.binary:
        return pred.tolist()
    return [classes.names[p] for p in pred.tolist()]


def written_labels(labels: list[int], classes: LabelSet) -> list:
    """The label column's values, None where the row has none: the class index for two classes, else its name."""
    if classes.binary:
        return [None if lab == NO_LABEL else lab for lab in labels]
    return [None if lab == NO_LABEL else classes.names[lab] for lab in labels]


@dataclass
class ChunkScores:
    """One model's answers for one chunk, as written: the prediction and the score's bin (see written_scores)."""

    pred: np.ndarray      # int8, the class index (0/1 for two classes)
    bins: np.ndarray      # int64: the written score is bins / SCORE_BINS; (rows, classes) for more than two
    tokens: int = 0
    padded: int = 0
    truncated: int = 0
    wait_s: float = 0.0   # waiting for the chunk's preparation (tokenizer processes)
    infer_s: float = 0.0


def score_chunk(scorers: list[Scorer], texts: list[str], *, prepared: list | None = None, sort: bool = True,
                on_batch=None) -> list[ChunkScores]:
    """Every model on one chunk of texts. prepared: each scorer's prepare_async(texts), started earlier (the local
    engine's reader thread does that); without it the texts are prepared here."""
    out = []
    for k, scorer in enumerate(scorers):
        t = time.perf_counter()
        prep = (prepared[k] if prepared is not None else done(scorer.prepare(texts))).result()
        wait = time.perf_counter() - t
        scored = scorer.score(prep, sort=sort, on_batch=on_batch)
        probabilities = scored.score if scored.proba is None else scored.proba
        out.append(ChunkScores(scored.pred.astype(np.int8), score_bins(probabilities), scored.tokens, scored.padded,
                               scored.truncated, wait, time.perf_counter() - t - wait))
    return out


def written_scores(bins: np.ndarray, fmt: str):
    """A score column as the output holds it: text formats (tsv, jsonl) '0.264187', Parquet the float64 of the
    same six decimals. Reading either back and taking score_bins gives the bins again, so the metrics are the
    file's own."""
    if fmt == "parquet":
        return np.asarray(bins, dtype=np.float64) / SCORE_BINS
    return format_score_bins(np.asarray(bins))


def metrics_report(summaries: dict, head: dict) -> dict:
    """The metrics JSON of a run: one model's figures flat beside the run's head, several under "models"."""
    if len(summaries) == 1:
        return dict(next(iter(summaries.values())), **head)
    return dict(head, models=summaries)


def write_json(path: str | Path, data: dict) -> None:
    """Written to a temporary name beside it and renamed: a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def progress_bar(enabled: bool, inputs: list[str]):
    """Both engines' bar on stderr: rows done, their rate, and a total estimated from the inputs' sizes (when all
    are local files) by estimate_total."""
    from tqdm import tqdm

    sizes = [input_size(p) for p in inputs]
    total_bytes = sum(s for s in sizes if s) if all(sizes) else None
    bar = tqdm(total=None, unit="rows", unit_scale=True, disable=not enabled, file=sys.stderr,
               dynamic_ncols=True, desc="scoring")
    bar.total_bytes = total_bytes
    return bar


def estimate_total(bar, rows: int, bytes_read: int) -> None:
    """The bar's total (for its ETA): the rows seen so far scaled by the share of the inputs' bytes they came from."""
    if bar.total_bytes and bytes_read:
        bar.total = max(rows, int(rows * bar.total_bytes / bytes_read))
