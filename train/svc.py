"""The seed's baseline: spaCy step -> TF-IDF -> RBF SVC, fitted on the training split, saved without pickle.

    tsinfer train svc --train my_tweets.csv --out artifacts/svc [--tune]     (or --data DIR: the seed's files)

The model folder holds config.json (hyperparameters, gamma, intercept, calibration, class names), vocabulary.json
(the terms in column order) and arrays.npz (idf, the sparse support vectors as CSR arrays, dual coefficients):
everything export needs to build the ONNX graph, and nothing ever unpickles.

More than two classes are sklearn's SVC as it is: one-vs-one, a decision value per pair of classes (i, j), i < j,
and the label by majority vote (a tie goes to the lower class index: libsvm's rule, so the labels are
`SVC.predict`'s). The probabilities are a multinomial logistic regression on the pairs' decision values, fitted on
the validation split: Platt scaling's multi-class form (for two classes it is the binary model's Platt sigmoid).
sklearn's own `probability=True` would fit libsvm's pairwise coupling by 5-fold cross-validation on the training
rows (five more fits) and solve an iterative system per row; the label stays the vote either way, so, as in sklearn,
a row's label and its highest probability can disagree.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from tsinfer.infer.labels import BINARY
from tsinfer.infer.metrics import metrics_for
from tsinfer.infer.preprocess import preprocess
from tsinfer.train.data import SPLIT_SEED, TrainingData, prepared
from tsinfer.train.errors import TrainError
from tsinfer.train.report import Progress, log_progress, record_training_data, split_figures, write_report

SEED_PARAMS = {"C": 1.0, "gamma": "scale", "ngram_range": [1, 1], "sublinear_tf": False, "min_df": 1}
TUNE_GRID = {
    "svc__C": [1.0, 3.0],
    "tfidf__ngram_range": [(1, 1), (1, 2)],
    "tfidf__sublinear_tf": [False, True],
}


def make_vectorizer(ngram_range=(1, 1), sublinear_tf=False, min_df=1) -> TfidfVectorizer:
    # Texts arrive lower-cased and tokenized by the spaCy step; lowercase=False keeps skl2onnx from adding a
    # StringNormalizer, which fails to load in onnxruntime without the en_US.UTF-8 locale.
    return TfidfVectorizer(
        token_pattern=r"\S+", lowercase=False, ngram_range=tuple(ngram_range), sublinear_tf=sublinear_tf,
        min_df=min_df,
    )


class SvcModel:
    """TF-IDF + RBF SVC over preprocessed texts, with fit / decision_function / predict / save / load."""

    def __init__(self, params: dict | None = None):
        self.params = dict(SEED_PARAMS, **(params or {}))
        self.vectorizer: TfidfVectorizer | None = None
        self.support_vectors: sp.csr_matrix | None = None
        self.dual_coef: np.ndarray | None = None
        self.intercept = 0.0
        self.gamma = 0.0
        self.platt = (1.0, 0.0)  # P(positive) = sigmoid(a * decision + b), fitted on validation
        self.labels: tuple[str, ...] = BINARY.names
        # more classes: support vectors per class, an intercept per pair, calibration (coef (classes x pairs), b)
        self.n_support = self.intercepts = self.calibration = None
        self.sklearn_model: SVC | None = None

    @property
    def multiclass(self) -> bool:
        return len(self.labels) > 2

    def fit(self, docs: list[str], labels: list[int], names: tuple[str, ...] = BINARY.names) -> "SvcModel":
        """Fit on class indices into `names` (every class must have rows)."""
        p = self.params
        self.labels = tuple(names)
        self.vectorizer = make_vectorizer(p["ngram_range"], p["sublinear_tf"], p["min_df"])
        x = self.vectorizer.fit_transform(docs)
        svc = SVC(kernel="rbf", C=p["C"], gamma=p["gamma"], random_state=SPLIT_SEED).fit(x, labels)
        if list(svc.classes_) != list(range(len(names))):
            raise ValueError(f"training labels must hold every class 0..{len(names) - 1}, got {list(svc.classes_)}")
        self.support_vectors = sp.csr_matrix(svc.support_vectors_, dtype=np.float64)
        self.support_vectors.sort_indices()
        dual = np.asarray(svc.dual_coef_.toarray() if sp.issparse(svc.dual_coef_) else svc.dual_coef_,
                          dtype=np.float64)  # sparse after a sparse fit
        if self.multiclass:
            self.dual_coef, self.intercepts = dual, np.asarray(svc.intercept_, dtype=np.float64)
            self.n_support = np.asarray(svc.n_support_, dtype=np.int64)
        else:
            self.dual_coef, self.intercept = dual.ravel(), float(svc.intercept_[0])
        self.gamma = float(svc._gamma)
        svc.decision_function_shape = "ovo"  # the per-pair values this model computes (predict is unaffected)
        self.sklearn_model = svc  # sklearn's own SVC, to compare with (never saved)
        return self

    def transform(self, docs: list[str]) -> sp.csr_matrix:
        return self.vectorizer.transform(docs)

    def decision_function(self, docs: list[str], batch: int = 2048) -> np.ndarray:
        """The SVC decision value in float64, by sklearn's own formula: sum_i a_i exp(-g |x - s_i|^2) + b; with more
        than two classes, (rows, pairs): one per one-vs-one pair (sklearn's decision_function_shape='ovo')."""
        s = self.support_vectors
        s_sq = np.asarray(s.multiply(s).sum(axis=1)).ravel()
        coef, intercept = ((pair_coefficients(self.dual_coef, self.n_support), self.intercepts) if self.multiclass
                           else (self.dual_coef, self.intercept))
        out = []
        for i in range(0, len(docs), batch):  # the kernel matrix is dense: bound its memory
            x = self.transform(docs[i:i + batch]).astype(np.float64)
            sq = np.asarray(x.multiply(x).sum(axis=1)).ravel()[:, None] + s_sq[None, :] - 2.0 * (x @ s.T).toarray()
            out.append(np.exp(-self.gamma * np.maximum(sq, 0.0)) @ coef + intercept)
        return np.concatenate(out) if out else np.zeros((0, len(intercept)) if self.multiclass else 0)

    def predict(self, decision: np.ndarray) -> np.ndarray:
        """Class indices from decision values: the sign for two classes, the one-vs-one vote for more."""
        return ovo_vote(decision, len(self.labels)) if self.multiclass else (decision > 0).astype(np.int64)

    def probability(self, decision: np.ndarray) -> np.ndarray:
        """P(positive) for two classes; (rows, classes) probabilities for more."""
        if self.multiclass:
            coef, intercept = self.calibration
            return softmax_rows(decision @ coef.T + intercept)
        a, b = self.platt
        return 1.0 / (1.0 + np.exp(-(a * decision + b)))

    def calibrate(self, decision: np.ndarray, labels: list[int]) -> None:
        """Platt scaling on held-out decision values, so that `score` is a probability (multinomial logistic
        regression on the pairs' decision values for more than two classes)."""
        if self.multiclass:
            self.calibration = softmax_calibration(decision, labels, len(self.labels))
            return
        lr = LogisticRegression(C=1e6).fit(decision.reshape(-1, 1), labels)
        self.platt = (float(lr.coef_[0, 0]), float(lr.intercept_[0]))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        (folder / "vocabulary.json").write_text(json.dumps(vocab, ensure_ascii=False))
        s = self.support_vectors
        more = ({"n_support": self.n_support, "intercepts": self.intercepts, "calibration_coef": self.calibration[0],
                 "calibration_intercept": self.calibration[1]} if self.multiclass else {})
        np.savez_compressed(
            folder / "arrays.npz", idf=self.vectorizer.idf_, sv_data=s.data, sv_indices=s.indices,
            sv_indptr=s.indptr, sv_shape=np.asarray(s.shape), dual_coef=self.dual_coef, **more,
        )
        config = {"kind": "svc", "params": self.params, "gamma": self.gamma, "intercept": self.intercept,
                  "platt": list(self.platt), "labels": list(self.labels)}
        (folder / "config.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "SvcModel":
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        vocab = json.loads((folder / "vocabulary.json").read_text())
        with np.load(folder / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        model = cls(config["params"])
        p = model.params
        model.vectorizer = make_vectorizer(p["ngram_range"], p["sublinear_tf"], p["min_df"])
        model.vectorizer.vocabulary_ = {term: i for i, term in enumerate(vocab)}
        model.vectorizer.idf_ = arrays["idf"]
        model.support_vectors = sp.csr_matrix(
            (arrays["sv_data"], arrays["sv_indices"], arrays["sv_indptr"]), shape=tuple(arrays["sv_shape"])
        )
        model.dual_coef = arrays["dual_coef"]
        model.gamma, model.intercept = config["gamma"], config["intercept"]
        model.platt = tuple(config["platt"])
        model.labels = tuple(config.get("labels", BINARY.names))
        if model.multiclass:
            model.n_support, model.intercepts = arrays["n_support"], arrays["intercepts"]
            model.calibration = (arrays["calibration_coef"], arrays["calibration_intercept"])
        return model


def ovo_pairs(k: int) -> list[tuple[int, int]]:
    """The one-vs-one pairs (i, j), i < j, in libsvm's order: the columns of the multi-class decision."""
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def pair_coefficients(dual_coef: np.ndarray, n_support: np.ndarray) -> np.ndarray:
    """(support vectors, pairs): the decision of pair (i, j) is kernel @ this + intercepts, where the column holds
    dual_coef[j - 1] on class i's support vectors and dual_coef[i] on class j's (libsvm's layout)."""
    start = np.r_[0, np.cumsum(n_support)]
    pairs = ovo_pairs(len(n_support))
    coef = np.zeros((dual_coef.shape[1], len(pairs)))
    for p, (i, j) in enumerate(pairs):
        coef[start[i]:start[i + 1], p] = dual_coef[j - 1, start[i]:start[i + 1]]
        coef[start[j]:start[j + 1], p] = dual_coef[i, start[j]:start[j + 1]]
    return coef


def vote_matrices(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, classes) 0/1 matrices: a pair's win votes for its first class, a loss for its second."""
    pairs = ovo_pairs(k)
    first, second = np.zeros((len(pairs), k)), np.zeros((len(pairs), k))
    for p, (i, j) in enumerate(pairs):
        first[p, i] = second[p, j] = 1.0
    return first, second


def ovo_vote(decision: np.ndarray, k: int) -> np.ndarray:
    """The class with the most one-vs-one wins (a positive decision wins for the pair's first class), the lower
    index on a tie: libsvm's rule, so sklearn's SVC.predict."""
    first, second = vote_matrices(k)
    wins = (decision > 0).astype(np.float64)
    return (wins @ first + (1.0 - wins) @ second).argmax(axis=1).astype(np.int64)


def softmax_calibration(decision: np.ndarray, labels: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients (classes, pairs), intercepts): a multinomial logistic regression on held-out one-vs-one
    decision values, nearly unregularised as the binary Platt fit. ValueError when a class has no row there."""
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(decision, labels)
    if len(lr.classes_) != k:
        raise ValueError(f"the validation rows hold {len(lr.classes_)} of the {k} classes: the probabilities need "
                         "every class there (a larger --val-fraction, or a --validation file with each class)")
    return np.asarray(lr.coef_, dtype=np.float64), np.asarray(lr.intercept_, dtype=np.float64)


def softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def tune(docs: list[str], labels: list[int], grid: dict = TUNE_GRID, folds: int = 3) -> tuple[dict, list[dict]]:
    """Grid search with cross-validation on the training part only; returns the best params and every row."""
    pipe = Pipeline([("tfidf", make_vectorizer()), ("svc", SVC(kernel="rbf", gamma="scale", random_state=SPLIT_SEED))])
    search = GridSearchCV(pipe, grid, cv=folds, scoring="accuracy", n_jobs=-1, verbose=2)
    search.fit(docs, labels)
    rows = [{"params": {k.split("__")[1]: v for k, v in p.items()}, "cv_accuracy": float(m)}
            for p, m in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"])]
    best = {k.split("__")[1]: (list(v) if isinstance(v, tuple) else v) for k, v in search.best_params_.items()}
    return best, rows


def train_svc(data: TrainingData | str | Path, out_dir: str | Path, report_path: str | Path, *, do_tune: bool = False,
              limit: int | None = None, params: dict | None = None, progress: Progress = log_progress) -> dict:
    """Fit (optionally tune), calibrate on validation, score the test file once (when there is one), save the model,
    its data record and the report. `data`: load_training_data's result, or a folder with the seed's files."""
    start = time.perf_counter()
    data = prepared(data, limit, progress)
    train, val = data.train, data.val
    progress(f"svc: spaCy step over {len(train.texts) + len(val.texts):,} texts")
    train_docs, val_docs = preprocess(train.texts), preprocess(val.texts)
    tuning = None
    if do_tune:
        best, rows = tune(train_docs, train.labels)
        params = dict(params or {}, **best)
        tuning = {"grid": {k: [list(v) if isinstance(v, tuple) else v for v in vs] for k, vs in TUNE_GRID.items()},
                  "folds": 3, "results": rows}
    progress(f"svc: fitting SVC on {len(train_docs):,} rows")
    model = SvcModel(params).fit(train_docs, train.labels, data.labels.names)
    val_dec = model.decision_function(val_docs)
    # the saved float64 formula is what export checks the ONNX graph against: record how far it is from sklearn
    formula_gap = float(np.max(np.abs(val_dec - model.sklearn_model.decision_function(model.transform(val_docs)))))
    try:
        model.calibrate(val_dec, val.labels)
    except ValueError as e:
        raise TrainError(f"svc: {e}") from e
    train_seconds = time.perf_counter() - start
    model.save(out_dir)
    record_training_data(out_dir, data.report())

    val_m = _figures(model, val_dec, val.labels)
    test_m = None
    if data.test is not None:
        progress(f"svc: scoring the test file's {len(data.test.texts):,} rows")
        test_m = _figures(model, model.decision_function(preprocess(data.test.texts)), data.test.labels)
    report = {
        "model": "svc",
        "base_model": "tfidf+svc-rbf",
        **split_figures(val_m, test_m),
        "train_seconds": round(train_seconds, 2),
        "n_train": len(train_docs), "n_val": len(val_docs), "n_test": len(data.test.texts) if data.test else 0,
        "hyperparameters": model.params,
        "n_support_vectors": int(model.support_vectors.shape[0]),
        "vocabulary_size": int(model.support_vectors.shape[1]),
        "labels": list(model.labels),
        **({"calibration": "multinomial logistic regression on the one-vs-one decision values (validation)"}
           if model.multiclass else {"platt": list(model.platt)}),
        "formula_vs_sklearn_max_abs_diff": formula_gap,
        "tuning": tuning,
        "data": data.report(),
    }
    write_report(report_path, report)
    return report


def _figures(model: SvcModel, decision: np.ndarray, labels: list[int]) -> dict:
    """The report's figures: ROC-AUC from the decision value for two classes (as always), from the calibrated
    probabilities (one-vs-rest) for more."""
    scores = model.probability(decision) if model.multiclass else decision
    return metrics_for(labels, model.predict(decision), scores, model.labels)
