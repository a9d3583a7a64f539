"""Tokenization and dynamic padding: the HF fast tokenizer, length-sorted batches formed by a token budget."""
from __future__ import annotations

import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from tsinfer.infer.cpus import cpu_budget

# Token budget of one padded batch, by provider (measured: benchmarks/results/cpu.md and gpu.md). On 2 CPU cores
# small batches that stay in cache win. On CUDA the default fp16 graph is packed (export/bert.py GPU_LAYOUTS):
# padding costs it no compute, so the largest batches win.
DEFAULT_BATCH_TOKENS = {"cpu": 512, "cuda": 262144, "tensorrt": 65536}
DEFAULT_MAX_BATCH = {"cpu": 256, "cuda": 8192, "tensorrt": 2048}
# Rows read, tokenized and length-sorted together: on a GPU larger chunks sort better, but the first one delays
# the start and a coarser hand-over between the reader thread and the GPU overlaps worse. On the CPU each chunk's
# batches are of one row length, and every (rows, length) shape OpenVINO has not run yet costs it milliseconds to
# prepare: a chunk's last batch of each length is a new shape almost every chunk, so larger chunks pay that less
# often per row (measured in long streams: README, CPU engine).
CHUNK_ROWS_BY_PROVIDER = {"cpu": 16384, "cuda": 16384, "tensorrt": 16384}
# Sessions running batches side by side on a GPU (on the CPU: one per core; see infer/models.py BertScorer).
DEFAULT_LANES = {"cuda": 2, "tensorrt": 1}
# Tokenizer processes beside a GPU (see TokenizerPool); on the CPU the cores run the model and the reader thread's
# tokenizer already uses all of them.
MAX_TOKENIZER_WORKERS = 8


def usable_cores() -> int:
    """The CPUs this process may use (affinity, container quota or TSINFER_CPUS: infer/cpus.py). Everything that
    sizes itself by the machine asks here, so that one rule holds for all of it."""
    return cpu_budget().count


def default_tokenizer_workers(provider: str) -> int:
    """Worker processes for tokenization: none on the CPU provider; on a GPU, one per two cores (at most 8),
    if the machine has at least 4."""
    if provider == "cpu" or usable_cores() < 4:
        return 0
    return min(MAX_TOKENIZER_WORKERS, usable_cores() // 2)


def load_tokenizer(folder: str | Path, max_length: int):
    """tokenizer.json from a model folder, truncating at max_length and never padding (batches pad themselves)."""
    from tokenizers import Tokenizer

    # the tokenizer's thread pool (Rayon) is sized by RAYON_NUM_THREADS when it starts, else by the host's cores,
    # which under a container's quota only get throttled (a tokenizer process sets its own share before this)
    os.environ.setdefault("RAYON_NUM_THREADS", str(usable_cores()))
    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()
    return tok


@dataclass
class Encoded:
    """Token ids of a list of texts, unpadded, as one flat array with offsets (cheap to slice and pad)."""

    ids: np.ndarray        # all token ids, concatenated
    offsets: np.ndarray    # row i is ids[offsets[i]:offsets[i+1]]
    truncated: int         # rows cut at max_length

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def encode(tokenizer, texts: list[str]) -> Encoded:
    # encode_batch runs on all cores without the GIL; what follows is the per-row Python cost, kept small because
    # on a GPU it bounds the tweets/s (e.ids makes one list per row; Encoding.overflowing is only asked of rows
    # at max_length, the only ones that can have been cut)
    # encode_batch_fast (tokenizers >= 0.20) skips the character offsets, which nothing here uses: same ids
    fast = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encodings = fast(texts, add_special_tokens=True)
    lists = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(offsets[-1]))
    limit = (tokenizer.truncation or {}).get("max_length")
    truncated = 0 if limit is None else sum(1 for k in np.flatnonzero(lengths >= limit) if encodings[k].overflowing)
    return Encoded(ids, offsets, truncated)


def concat_encoded(parts: list[Encoded]) -> Encoded:
    """Encoded pieces of consecutive texts as one (the same arrays as encoding all the texts at once)."""
    if len(parts) == 1:
        return parts[0]
    lengths = np.concatenate([p.lengths for p in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Encoded(np.concatenate([p.ids for p in parts]), offsets, sum(p.truncated for p in parts))


_worker_tokenizer = None


def _start_worker(folder: str, max_length: int, threads: int) -> None:
    import signal

    global _worker_tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no traceback per worker
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # read when the tokenizer's thread pool starts, below
    _worker_tokenizer = load_tokenizer(folder, max_length)


def _encode_in_worker(texts: list[str]) -> Encoded:
    return encode(_worker_tokenizer, texts)


class TokenizerPool:
    """Tokenization in worker processes, each chunk split among them.

    Written by hand because no library does this part: the HF tokenizer's encode_batch runs its Rust part on all
    cores, but turning its Encoding objects into arrays (encode) holds the interpreter lock, and beside a GPU that
    one Python thread bounds the tweets/s. The arrays are the same as encode's on the whole chunk.
    """

    def __init__(self, folder: str | Path, max_length: int, workers: int):
        import multiprocessing

        threads = max(1, usable_cores() // workers)
        # spawn, not fork: the parent has threads and a tokenizer thread pool that a fork would copy half-way
        self.workers = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(str(folder), max_length, threads))

    def submit(self, texts: list[str]) -> "PendingEncoded":
        step = -(-len(texts) // self.workers) or 1
        return PendingEncoded([self._pool.submit(_encode_in_worker, texts[i:i + step])
                               for i in range(0, max(len(texts), 1), step)])

    def warm_up(self) -> None:
        """Start every worker (and load its tokenizer) now rather than on the first chunk."""
        from concurrent.futures.process import BrokenProcessPool

        try:
            self.submit(["warm up"] * self.workers).result()
        except BrokenProcessPool:
            self.close()
            raise RuntimeError("the tokenizer processes did not start: a script that scores with tokenizer_workers "
                               "must run its work under `if __name__ == \"__main__\":` (or pass "
                               "tokenizer_workers=0)") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class PendingEncoded:
    """A chunk being tokenized by a TokenizerPool; result() waits and joins the pieces in order."""

    def __init__(self, futures: list[Future]):
        self.futures = futures

    def result(self) -> Encoded:
        return concat_encoded([f.result() for f in self.futures])


def plan_batches(lengths: np.ndarray, batch_tokens: int = DEFAULT_BATCH_TOKENS["cpu"],
                 max_batch: int = DEFAULT_MAX_BATCH["cpu"], sort: bool = True,
                 same_length: bool = False) -> list[np.ndarray]:
    """Row indices per batch: rows sorted by length, each batch as large as fits batch_tokens once padded.

    same_length: a batch holds rows of one length only, so no row is ever padded and its width is its own: on the
    CPU a row's logits are then the same bits whatever the rows beside it, the chunk size or the engine (one row,
    one answer). With sort=False the rows keep their order (the unbucketed reference used in tests and benchmarks).
    """
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(lengths))
    ordered = np.asarray(lengths, dtype=np.int64)[order]
    batches, start = [], 0
    while start < len(order):
        window = ordered[start:start + max_batch]
        if same_length:
            window = window[:int(np.argmax(window != window[0])) or len(window)]
        # padded size of the first k rows from start: k x the longest of them, which never shrinks as k grows,
        # so the rows that fit are a prefix (found with numpy, not a Python loop per row: on a GPU this runs
        # between batches)
        padded = np.maximum.accumulate(window) * np.arange(1, len(window) + 1)
        end = start + max(1, int(np.count_nonzero(padded <= batch_tokens)))
        batches.append(order[start:end])
        start = end
    return batches


def largest_first(plan: list[np.ndarray], lengths: np.ndarray) -> list[np.ndarray]:
    """The plan's batches, the most padded tokens first (ties in plan order). Lanes take batches from one queue,
    so the last to start are the smallest and the lanes finish together (longest-processing-time-first
    scheduling); each batch's rows and so each row's answer stay as planned."""
    work = [len(rows) * int(lengths[rows].max()) if len(rows) else 0 for rows in plan]
    return [plan[k] for k in sorted(range(len(plan)), key=lambda k: -work[k])]


def pad_batch(enc: Encoded, rows: np.ndarray, dtype=np.int64, pad_to: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask for the given rows, padded (with id 0) to the longest row or to pad_to."""
    lengths = enc.lengths[rows]
    width = pad_to or int(lengths.max())
    if not enc.ids.size:
        return np.zeros((len(rows), width), dtype=dtype), np.zeros((len(rows), width), dtype=dtype)
    cols = np.arange(width)
    mask = cols[None, :] < np.minimum(lengths, width)[:, None]
    ids = enc.ids[np.where(mask, enc.offsets[rows][:, None] + cols[None, :], 0)]  # vectorised: no per-row loop
    ids[~mask] = 0
    return ids.astype(dtype, copy=False), mask.astype(dtype)
