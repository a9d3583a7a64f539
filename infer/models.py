"""Exported model folders and their onnxruntime sessions: one scorer class per model kind.

A folder holds ONNX files, meta.json and (for BERT) the tokenizer. meta.json says which file serves which
provider and precision, and holds the sha256 of every file, checked before anything is loaded.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tsinfer.infer.batching import (DEFAULT_BATCH_TOKENS, DEFAULT_LANES, DEFAULT_MAX_BATCH, Encoded, TokenizerPool,
                                    default_tokenizer_workers, encode, largest_first, load_tokenizer, pad_batch,
                                    plan_batches, usable_cores)
from tsinfer.infer.engines import (Engine, EngineError, OpenVinoEngine, OrtEngine, choose_backend,
                                   cpu_inference_precision, graph_sha256, openvino_cache,
                                   ort_session)
from tsinfer.infer.meta import ModelError, ModelMeta
from tsinfer.infer.preprocess import normalization_for

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
PRECISIONS = ("fp32", "fp16", "int8")


def available_providers() -> list[str]:
    import onnxruntime as ort

    return [name for name, ort_name in PROVIDERS.items() if ort_name in ort.get_available_providers()]


def resolve_provider(requested: str) -> str:
    if requested == "cpu":  # every onnxruntime build has it: no import of onnxruntime for a run that may not use it
        return "cpu"
    available = available_providers()
    if requested == "auto":
        # CUDA over TensorRT: TensorRT builds engines per shape profile for minutes before the first row.
        return "cuda" if "cuda" in available else "cpu"
    if requested not in available:
        raise ModelError(
            f"provider {requested!r} is not available in this onnxruntime (available: {', '.join(available)}). "
            "Install the gpu extra (pip uninstall -y onnxruntime && pip install onnxruntime-gpu) on a machine "
            "with CUDA, or use --provider cpu.")
    return requested


# Each lane holds its own copy of the weights: on many cores, a few lanes of several threads each.
MAX_CPU_LANES = 8
CPU_WARM_UP_TOKENS = 8  # the warm-up batch's width on the CPU: one short row (BertScorer.warm_up)


def cpu_lanes(threads: int | None = None, lanes: int | None = None) -> tuple[int, int]:
    """(lanes, onnxruntime threads per lane) on the CPU provider: lanes up to MAX_CPU_LANES, the cores (threads, or
    the CPUs this process may use) shared out among them."""
    cores = threads or usable_cores()
    lanes = lanes or min(cores, MAX_CPU_LANES)
    return lanes, max(1, cores // lanes)


@dataclass(frozen=True)
class ScorerSettings:
    """How the models run: provider, precision and batching (None = the provider's default, see BertPolicy)."""

    provider: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    verify: bool = True
    batch_tokens: int | None = None
    max_batch: int | None = None
    lanes: int | None = None
    tokenizer_workers: int | None = None
    backend: str = "auto"   # the CPU engine: auto, onnxruntime or openvino (infer/engines.py)


@dataclass(frozen=True)
class BertPolicy:
    """How a BERT model runs on one provider, decided from the settings before any session is built."""

    provider: str
    lanes: int
    threads: int | None       # per lane (None: the CPUs this process may use)
    batch_tokens: int | None  # None: the engine's own budget, else the provider's default
    max_batch: int
    tokenizer_workers: int
    same_length: bool         # batches of one row length only
    io_binding: bool

    @classmethod
    def decide(cls, provider: str, settings: ScorerSettings) -> BertPolicy:
        """provider: a resolved one (resolve_provider), never "auto"."""
        threads, lanes = settings.threads, settings.lanes
        # On the CPU: one single-threaded session per core ("lane"), each running whole batches, instead of one
        # session splitting every operator over the cores: a small BERT's operators on short rows are too small to
        # share out (benchmarks/results/cpu.md). On a GPU each lane is a session with its own CUDA stream, so one
        # lane's host work can overlap another's kernels. Each lane holds its own copy of the weights.
        if provider == "cpu":
            lanes, threads = cpu_lanes(threads, lanes)
        workers = settings.tokenizer_workers
        # On the CPU batches of one length (never padded) and per-token int8 (export/int8.py) make a row's answer
        # the same bits in any batch. On a GPU padding costs the packed graph nothing and fp16 kernels pick their
        # algorithm by shape anyway, so rows of all lengths share batches there.
        return cls(provider=provider, lanes=lanes or DEFAULT_LANES.get(provider, 1), threads=threads,
                   batch_tokens=settings.batch_tokens, max_batch=settings.max_batch or DEFAULT_MAX_BATCH[provider],
                   tokenizer_workers=default_tokenizer_workers(provider) if workers is None else workers,
                   same_length=provider == "cpu", io_binding=provider in ("cuda", "tensorrt"))


def positive_probability(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """P(positive) from two-class logits: a stable softmax in float64 (training reports and scoring alike).

    temperature: the logits are divided by it first (temperature scaling, fitted on the validation split at
    training and named in meta.json); it changes the scores, never which class is the larger.
    """
    z = np.asarray(logits, dtype=np.float64)
    if temperature:
        z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, 1] / e.sum(axis=1)


def class_probabilities(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """(rows, classes) softmax of N-class logits (divided by the temperature first), stable, in float64: row by row,
    so a row's probabilities never depend on the rows beside it."""
    z = np.asarray(logits, dtype=np.float64)
    if temperature:
        z = z / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Scored:
    pred: np.ndarray      # class index: 0/1 for two classes
    score: np.ndarray | None  # two classes: P(class 1), P(positive); None for more (see proba)
    tokens: int = 0       # real tokens seen (BERT)
    padded: int = 0       # tokens after padding (BERT)
    truncated: int = 0    # rows cut at max_length
    decision: np.ndarray | None = None  # the SVC's decision value (parity checks it); per pair for more classes
    proba: np.ndarray | None = None     # more than two classes: (rows, classes) probabilities


class Scorer(Protocol):
    """What both engines ask of a model: prepare a chunk's texts (tokenize, or the spaCy step), score them."""

    kind: str         # "bert" or "svc"
    meta: ModelMeta   # the folder's meta.json (its classes: meta.labels)
    provider: str     # the onnxruntime provider it runs on
    backend: str      # the engine that runs it: onnxruntime or openvino (infer/engines.py)
    precision: str    # the model file's precision
    file: str         # the ONNX file in the model folder
    lanes: int        # batches it runs side by side (sessions or OpenVINO infer requests)

    def prepare(self, texts: list[str]) -> Any: ...

    def prepare_async(self, texts: list[str]) -> Future: ...

    def score(self, prepared: Any, sort: bool = True, on_batch=None) -> Scored: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


def _engine_file(folder: Path, meta: ModelMeta, policy: BertPolicy, *, precision: str, backend: str
                 ) -> tuple[str, str]:
    """(backend, model file) for a BERT folder: OpenVINO's file or onnxruntime's (choose_backend)."""
    try:
        chosen = choose_backend(backend, provider=policy.provider, precision=precision,
                                openvino_files=meta.openvino_files)
    except EngineError as e:
        raise ModelError(f"{folder}: {e}") from e
    return chosen, (meta.openvino_files if chosen == "openvino" else meta.files)[precision]


def _engine(folder: Path, meta: ModelMeta, policy: BertPolicy, *, backend: str, file: str, verified: bool
            ) -> Engine:
    """The engine that runs one model file, with the policy's lanes."""
    if backend == "openvino":
        cache = openvino_cache(graph_sha256(meta, file)) if verified else None  # verified: every part hashed
        try:
            return OpenVinoEngine(folder / file, file, lanes=policy.lanes, threads=policy.threads or 1,
                                  inference_precision=cpu_inference_precision(), cache=cache)
        except EngineError as e:
            raise ModelError(f"{folder}: {e}") from e
    sessions = [ort_session(folder / file, policy.provider, policy.threads, meta.cuda_options)
                for _ in range(policy.lanes)]
    return OrtEngine(sessions, file, io_binding=policy.io_binding)


class BertScorer:
    kind = "bert"

    def __init__(self, folder: Path, meta: ModelMeta, settings: ScorerSettings = ScorerSettings()):
        """The per-provider policy (BertPolicy) decides lanes, threads and batching; the engine runs the batches."""
        provider = resolve_provider(settings.provider)
        self.folder, self.meta, self.provider = folder, meta, provider
        self.precision = choose_precision(meta, provider, settings.precision, folder)
        self.policy = policy = BertPolicy.decide(provider, settings)
        backend, file = _engine_file(folder, meta, policy, precision=self.precision, backend=settings.backend)
        if settings.verify:  # before the engine opens it: the one graph this run reads, and the tokenizer files
            meta.verify(folder, reads=meta.graph_files(file))
        self.engine = _engine(folder, meta, policy, backend=backend, file=file, verified=settings.verify)
        self.file, self.int_dtype, self.backend = self.engine.file, self.engine.int_dtype, self.engine.backend
        self._pool = (ThreadPoolExecutor(policy.lanes, thread_name_prefix="tsinfer-lane")
                      if policy.lanes > 1 else None)
        try:
            self.tokenizer = load_tokenizer(folder, meta.max_length)
        except Exception as e:
            raise ModelError(f"cannot load {folder / 'tokenizer.json'}: {e} (re-run `make export`)") from e
        self.batch_tokens = policy.batch_tokens or self.engine.batch_tokens or DEFAULT_BATCH_TOKENS[provider]
        self.max_batch, self.same_length = policy.max_batch, policy.same_length
        self.tokenizer_workers = policy.tokenizer_workers
        try:  # the text normalisation the model was trained with, and its temperature (None for older folders)
            self.normalize = normalization_for({"text_normalization": meta.text_normalization})
        except ValueError as e:
            raise ModelError(f"{folder / 'meta.json'}: {e}") from e
        self.temperature = meta.temperature
        self.n_classes = len(meta.labels)
        self._tokenizers = (TokenizerPool(folder, meta.max_length, self.tokenizer_workers)
                            if self.tokenizer_workers else None)

    @property
    def lanes(self) -> int:
        return self.engine.lanes

    def prepare(self, texts: list[str]) -> Encoded:
        """CPU-side work for a chunk, in this thread."""
        if self.normalize is not None:
            texts = self.normalize(texts)
        return encode(self.tokenizer, texts)

    def prepare_async(self, texts: list[str]):
        """The same, started now and awaited with .result(): in the tokenizer processes if there are any, else at
        once in this thread (the reader thread, overlapping inference of the previous chunk)."""
        if self._tokenizers is not None:  # normalised here: the tokenizer processes only tokenize
            return self._tokenizers.submit(texts if self.normalize is None else self.normalize(texts))
        return done(self.prepare(texts))

    def run_batch(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Logits of one padded batch, on whichever lane is free."""
        return self.engine.run(ids, mask)

    def score(self, enc: Encoded, sort: bool = True, on_batch=None) -> Scored:
        """on_batch(rows) is called after each batch, for progress. Batches run on the lanes in parallel; each
        writes only its own rows, so the result does not depend on which lane ran which batch or when."""
        n = len(enc)
        binary = self.n_classes == 2
        pred = np.zeros(n, dtype=np.int64)
        prob = np.zeros(n if binary else (n, self.n_classes), dtype=np.float64)
        plan = plan_batches(enc.lengths, self.batch_tokens, self.max_batch, sort=sort, same_length=self.same_length)
        plan = largest_first(plan, enc.lengths) if sort else plan

        def one(rows: np.ndarray) -> int:
            ids, mask = pad_batch(enc, rows, self.int_dtype)
            logits = self.run_batch(ids, mask)
            if binary:
                prob[rows] = positive_probability(logits, self.temperature)
                pred[rows] = (logits[:, 1] > logits[:, 0]).astype(np.int64)
            else:  # the first largest logit, as the softmax's first largest probability
                prob[rows] = class_probabilities(logits, self.temperature)
                pred[rows] = logits.argmax(axis=1)
            if on_batch:
                on_batch(len(rows))
            return ids.size  # padded tokens
        if self._pool is None:
            padded = sum(one(rows) for rows in plan)
        else:
            futures = [self._pool.submit(one, rows) for rows in plan]
            try:
                padded = sum(future.result() for future in futures)  # re-raises a lane's error here
            except BaseException:  # an error or Ctrl-C: the batches not started are dropped, not run
                for future in futures:
                    future.cancel()
                raise
        return Scored(pred, prob if binary else None, tokens=int(enc.lengths.sum()), padded=padded,
                      truncated=enc.truncated, proba=None if binary else prob)

    def warm_up(self) -> None:
        """One run per lane, so that the engine's one-time start-up is not paid inside the first chunk: at the
        largest batch shape on a GPU (its memory arena grows once); on the CPU at a small one, because both CPU
        engines prepare every new batch shape anyway, so running the largest shape there only cost the load its
        compute (benchmarks/results/cpu.md, whole-process group)."""
        width = max(1, min(self.meta.max_length, self.batch_tokens))
        rows = max(1, min(self.max_batch, self.batch_tokens // width))
        if self.provider == "cpu":
            rows, width = 1, min(width, CPU_WARM_UP_TOKENS)
        ones = np.ones((rows, width), dtype=self.int_dtype)
        if self._tokenizers is not None:
            self._tokenizers.warm_up()
        # one run alone first: two lane threads making OpenVINO's first call at once deadlocked (its bindings
        # initialise a static that needs the GIL, which the other thread held while waiting for that static)
        self.run_batch(ones, ones)
        if self._pool is not None:  # then all lanes at once: OpenVINO runs a request on any free stream, so this
            list(self._pool.map(lambda _: self.run_batch(ones, ones), range(self.engine.lanes)))  # warms each

    def close(self) -> None:
        """Stop the tokenizer processes and the lane threads (the sessions go with the object)."""
        if self._tokenizers is not None:
            self._tokenizers.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class SvcScorer:
    kind = "svc"

    def __init__(self, folder: Path, meta: ModelMeta, threads: int | None, batch_rows: int = 64):
        self.folder, self.meta, self.provider = folder, meta, "cpu"  # string ops run on the CPU provider
        self.backend = "onnxruntime"
        self.precision = "fp64"
        if "fp64" not in meta.files:
            raise ModelError(f"{folder / 'meta.json'}: an SVC folder lists its graph as files.fp64 (it lists "
                             f"{', '.join(sorted(meta.files))}): re-run `make export`")
        self.file = meta.files["fp64"]
        # lanes as for BERT on the CPU: the graph's string ops and kernel sum run on one thread whatever its thread
        # count, so batches run side by side, each on one thread of the one session (its run() is thread-safe)
        self.lanes = cpu_lanes(threads)[0]
        self.session = ort_session(folder / self.file, "cpu", 1 if self.lanes > 1 else threads)
        self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="tsinfer-svc") if self.lanes > 1 else None
        self.batch_rows = batch_rows
        self.n_classes = len(meta.labels)

    def prepare(self, texts: list[str]) -> list[str]:
        from tsinfer.infer.preprocess import preprocess

        return preprocess(texts)

    def prepare_async(self, texts: list[str]) -> Future:
        # in the calling (reader) thread: a thread of its own beside a BERT scored in the same run was measured no
        # faster in all on 2 cores (the spaCy step holds the interpreter lock that the BERT lanes need between batches)
        return done(self.prepare(texts))

    def score(self, docs: list[str], sort: bool = True, on_batch=None) -> Scored:
        """Labels, decision values and probabilities from the graph (export/svc.py): P(positive) for two classes,
        (rows, classes) probabilities and (rows, pairs) decisions for more."""
        k = self.n_classes
        pairs = k * (k - 1) // 2
        empty = (np.zeros(0), np.zeros(0)) if k == 2 else (np.zeros((0, pairs)), np.zeros((0, k)))
        preds, decisions, probs = [np.zeros(0, dtype=np.int64)], [empty[0]], [empty[1]]

        def one(start: int):  # the same batches of batch_rows rows whatever the lanes: the same bits per row
            text = np.array(docs[start:start + self.batch_rows], dtype=object).reshape(-1, 1)
            out = self.session.run(["label", "decision", "probability"], {"text": text})
            if on_batch:
                on_batch(len(text))
            return out
        starts = range(0, len(docs), self.batch_rows)
        for label, decision, prob in (map(one, starts) if self._pool is None else self._pool.map(one, starts)):
            preds.append(label)
            decisions.append(decision)
            probs.append(prob.astype(np.float64))
        prob = np.concatenate(probs)
        if k == 2:
            return Scored(np.concatenate(preds), prob, decision=np.concatenate(decisions))
        return Scored(np.concatenate(preds), None, decision=np.concatenate(decisions), proba=prob)

    def warm_up(self) -> None:
        """The spaCy pipeline loads here, with the model, rather than inside the first chunk's preparation."""
        self.score(self.prepare(["warm up"]))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def done(value) -> Future:
    """A finished Future holding value (prepare_async's answer when the work was done in the calling thread)."""
    future: Future = Future()
    future.set_result(value)
    return future


def choose_precision(meta: ModelMeta, provider: str, precision: str, folder: Path) -> str:
    files = meta.files
    if precision == "auto":
        precision = meta.default_precision.get(provider, "fp32")
    if precision not in files:
        raise ModelError(f"{folder} has no {precision} model (it has: {', '.join(sorted(files))})")
    allowed = meta.providers.get(precision)
    if allowed and provider not in allowed:
        raise ModelError(f"the {precision} model in {folder} cannot run on the {provider} provider "
                         f"(it runs on: {', '.join(allowed)}); pick another --precision")
    return precision


def load_scorer(folder: str | Path, settings: ScorerSettings = ScorerSettings()) -> Scorer:
    """The scorer for a model folder. The SVC runs its string ops on the CPU provider in fixed batches, so the
    provider and batching settings are BERT's alone."""
    folder = Path(folder)
    meta = ModelMeta.read(folder, verify=False)  # verified by the scorer, once it knows which graph it reads
    settings = replace(settings, provider=resolve_provider(settings.provider))
    if meta.kind != "bert":
        if settings.verify:
            meta.verify(folder)
        return SvcScorer(folder, meta, settings.threads)
    return BertScorer(folder, meta, settings)
