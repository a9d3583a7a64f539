"""The engines that run a BERT model file on batches of token ids: onnxruntime, or OpenVINO on the CPU.

Both answer the same call, logits for one batch, on whichever lane is free: a lane is a session (onnxruntime) or
an infer request on its own CPU stream (OpenVINO), so lanes never share one and batches run side by side. The
scorer (infer/models.py) plans the batches; the engine only runs them. Which engine runs is chosen at load time
from what the machine has and the model folder holds (choose_backend), and recorded with the run's metrics.
"""
from __future__ import annotations

import hashlib
import os
import queue
import shutil
from pathlib import Path
from typing import Protocol

import numpy as np

from tsinfer.infer.batching import usable_cores
from tsinfer.infer.cpus import BF16_CPU_FLAGS, read_cpu_flags
from tsinfer.infer.meta import ModelError, ModelMeta

BACKENDS = ("auto", "onnxruntime", "openvino")
CACHE_ENV = "TSINFER_CACHE_DIR"  # where compiled OpenVINO models are kept between processes; set empty: nowhere
CACHED_MODELS = 3  # compiled models kept there (each about its weights' size), the least recently used removed


class EngineError(Exception):
    """An engine cannot run this model here: the message names the fix."""


class Engine(Protocol):
    backend: str            # "onnxruntime" or "openvino"
    file: str               # the model file it runs, inside the model folder
    lanes: int
    int_dtype: type         # the dtype its input_ids want
    batch_tokens: int | None  # the token budget of a batch it runs fastest with; None: the provider's default

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


# onnxruntime's own graph optimizer would fuse Add + LayerNormalization back into SkipLayerNormalization, whose CPU
# kernel measured several times slower than the two standard ops (export/bert.py leaves them unfused for the CPU).
CPU_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def ort_session(path: Path, provider: str, threads: int | None, cuda_options: dict | None = None):
    """An onnxruntime session; cuda_options (from meta.json) are added to the CUDA provider's options."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # never onnxruntime's own default: it counts the host's cores, which a container's CPU quota does not limit
    opts.intra_op_num_threads = threads or usable_cores()
    opts.inter_op_num_threads = 1
    if provider == "cuda":
        # Shapes vary batch to batch: grow the arena only by what is asked, never by doubling.
        # SkipLayerNorm strict mode: fp32 statistics in the fp16 kernel (see export/bert.py).
        # (the strict mode is ignored, and accurate anyway, from onnxruntime 1.28; older releases need it)
        options = {"arena_extend_strategy": "kSameAsRequested", "enable_skip_layer_norm_strict_mode": "1"}
        providers = [("CUDAExecutionProvider", dict(options, **(cuda_options or {}))), "CPUExecutionProvider"]
    elif provider == "tensorrt":
        cache = str(path.parent / "trt_cache")
        providers = [("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                                    "trt_engine_cache_path": cache, "trt_timing_cache_enable": True}),
                     ("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    if provider != "cpu" and hasattr(ort, "preload_dlls"):
        try:  # CUDA/cuDNN from the nvidia-* pip packages (torch's), when the system has none on its library path
            ort.preload_dlls()
        except Exception:
            pass
    disabled = CPU_DISABLED_OPTIMIZERS if provider == "cpu" else None
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers, disabled_optimizers=disabled)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise ModelError(f"cannot load {path}: {str(e).splitlines()[0]} (re-run `make export`)") from e
    if provider != "cpu" and session.get_providers()[0] != providers[0][0]:
        # onnxruntime falls back to the CPU silently when the CUDA libraries do not load: say so instead
        raise ModelError(f"the {provider} provider did not start for {path} (onnxruntime fell back to "
                         f"{session.get_providers()[0]}): check that CUDA 13 and cuDNN 9 libraries are installed "
                         "(pip install onnxruntime-gpu[cuda,cudnn]), or use --provider cpu")
    return session


class _Lanes:
    """A pool of per-lane handles: run() takes a free one and gives it back."""

    def __init__(self, handles: list):
        self.lanes = len(handles)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for handle in handles:
            self._free.put(handle)

    def _with_lane(self, fn):
        handle = self._free.get()
        try:
            return fn(handle)
        finally:
            self._free.put(handle)


class OrtEngine(_Lanes):
    """onnxruntime sessions, one per lane; IO binding on a GPU (logits bound to the device, copied once)."""

    backend = "onnxruntime"
    batch_tokens = None

    def __init__(self, sessions: list, file: str, *, io_binding: bool):
        super().__init__(sessions)
        self.file, self.io_binding = file, io_binding
        kinds = {i.name: i.type for i in sessions[0].get_inputs()}
        self.input_names = list(kinds)
        self.int_dtype = np.int32 if kinds.get("input_ids") == "tensor(int32)" else np.int64

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return self._with_lane(lambda session: self._run(session, feeds))

    def _run(self, session, feeds: dict) -> np.ndarray:
        if not self.io_binding:
            return session.run(["logits"], feeds)[0]
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("logits", "cuda")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def takes_attention_mask(ports) -> bool:
    """Whether an OpenVINO model's inputs (ports) include attention_mask: export/openvino.py writes BERT without
    one, other classifiers with it."""
    return any("attention_mask" in port.get_names() for port in ports)


class OpenVinoEngine(_Lanes):
    """An OpenVINO CPU model compiled with one stream per lane, each lane an infer request (infer() releases the
    interpreter lock, so the scorer's lane threads run side by side as with onnxruntime sessions).

    A model exported without an attention mask (export/openvino.py) sees unpadded rows only: a padded batch is run
    as one batch per row length, each cut to that length, so every row gets the logits it has alone.
    """

    backend = "openvino"
    int_dtype = np.int64
    # larger batches than onnxruntime's lanes want: each OpenVINO call costs more outside its kernels, which a
    # bigger batch shares out (benchmarks/results/cpu.md, token budget group)
    batch_tokens = 4096

    def __init__(self, path: Path, file: str, *, lanes: int, threads: int, inference_precision: str,
                 cache: Path | None = None):
        import openvino as ov

        self.file = file
        core = ov.Core()
        if cache is not None:  # OpenVINO's model cache: a later process imports the compiled model, not recompiles
            core.set_property({"CACHE_DIR": str(cache)})
        try:
            compiled = core.compile_model(str(path), "CPU", {
                "NUM_STREAMS": lanes, "INFERENCE_NUM_THREADS": lanes * threads,
                "INFERENCE_PRECISION_HINT": inference_precision, "ENABLE_HYPER_THREADING": False})
        except RuntimeError as e:
            raise EngineError(f"OpenVINO cannot load {path}: {str(e).splitlines()[0]} (re-run `tsinfer export`, "
                              "or use --backend onnxruntime)") from e
        self.takes_mask = takes_attention_mask(compiled.inputs)
        super().__init__([compiled.create_infer_request() for _ in range(lanes)])

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.takes_mask:
            return self._with_lane(lambda request: self._infer(request, {"input_ids": ids, "attention_mask": mask}))
        lengths = mask.sum(axis=1)
        if (lengths == ids.shape[1]).all():  # the scorer's batches on the CPU: one length, never padded
            return self._with_lane(lambda request: self._infer(request, {"input_ids": ids}))
        return self._with_lane(lambda request: self._run_unpadded(request, ids, mask, lengths))

    def _run_unpadded(self, request, ids: np.ndarray, mask: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if (lengths == 0).any() or (mask != (np.arange(mask.shape[1])[None, :] < lengths[:, None])).any():
            raise EngineError("OpenVINO's unmasked model takes right-padded batches only (each mask row a run of "
                              "ones, then zeros), as pad_batch makes them")
        out = None
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            logits = self._infer(request, {"input_ids": np.ascontiguousarray(ids[rows, :length])})
            if out is None:
                out = np.empty((len(ids), logits.shape[1]), dtype=logits.dtype)
            out[rows] = logits
        return out

    @staticmethod
    def _infer(request, feeds: dict) -> np.ndarray:
        request.infer(feeds, share_inputs=True)
        return request.get_output_tensor(0).data.copy()


def graph_sha256(meta: ModelMeta, name: str) -> list[str] | None:
    """The sha256 meta.json gives each file of one model graph (its .xml and .bin), or None when one has none: what
    keys the graph's compiled form in the cache below."""
    hashes = [meta.sha256.get(part) for part in meta.graph_files(name)]
    return hashes if all(hashes) else None


def openvino_cache_folder(graph_sha256: list[str]) -> Path | None:
    """Where one verified model's compiled OpenVINO form is kept between processes (openvino_cache), without making
    it: None when TSINFER_CACHE_DIR is set empty or there is no home folder. Default: the user's cache folder
    (XDG_CACHE_HOME or ~/.cache)/tsinfer/openvino; the key holds the graph's checked hashes, so a changed file never
    meets a stale compiled form, with OpenVINO's version and this CPU's flags."""
    root = os.environ.get(CACHE_ENV)
    if root == "":
        return None
    try:
        base = (Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "tsinfer") / "openvino"
    except RuntimeError:  # no home folder to be found (Path.home): no cache
        return None
    key = "|".join([*graph_sha256, openvino_version() or "", " ".join(sorted(read_cpu_flags() or ()))])
    return base / hashlib.sha256(key.encode()).hexdigest()[:32]


def openvino_cache(graph_sha256: list[str]) -> Path | None:
    """openvino_cache_folder, made and marked as used now, for OpenVINO's CACHE_DIR (compiling costs each process a
    few tenths of a second); None where it cannot be written. Only verified files may reuse a compiled form
    (graph_sha256: their checked hashes). Beyond CACHED_MODELS the least recently used folders go."""
    folder = openvino_cache_folder(graph_sha256)
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.utime(folder)  # used now: pruning keeps the most recently used
        kept = sorted((p for p in folder.parent.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                      reverse=True)
    except OSError:
        return None
    for old in kept[CACHED_MODELS:]:
        if old != folder:  # a process still reading a removed one recompiles (OpenVINO falls back on a bad blob)
            shutil.rmtree(old, ignore_errors=True)
    return folder


def openvino_version() -> str | None:
    """OpenVINO's version when it is installed (the openvino extra), else None."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


def choose_backend(requested: str, *, provider: str, precision: str, openvino_files: dict) -> str:
    """onnxruntime or openvino for a model: auto takes OpenVINO on the CPU where the folder has an OpenVINO file
    of that precision and the package is installed (measured faster there: benchmarks/results/cpu.md), else
    onnxruntime, which also serves every GPU provider."""
    if requested not in BACKENDS:
        raise EngineError(f"unknown backend {requested!r}: use one of {', '.join(BACKENDS)}")
    has_file = precision in openvino_files
    if requested == "onnxruntime" or (requested == "auto" and (provider != "cpu" or not has_file)):
        return "onnxruntime"
    if provider != "cpu":
        raise EngineError(f"the openvino backend runs on the CPU only, not the {provider} provider: "
                          "use --provider cpu, or --backend onnxruntime")
    if not has_file:
        have = ", ".join(sorted(openvino_files)) or "none"
        raise EngineError(f"this model folder has no OpenVINO {precision} file (it has: {have}): re-export with "
                          "the openvino extra installed (pip install 'tsinfer-sentiment[openvino]'), or use "
                          "--backend onnxruntime")
    if openvino_version() is None:
        if requested == "auto":
            return "onnxruntime"
        raise EngineError("--backend openvino needs the openvino package: pip install 'tsinfer-sentiment[openvino]'")
    return "openvino"


def cpu_inference_precision(flags: set[str] | None = None) -> str:
    """OpenVINO's precision for what NNCF left in floating point: bf16 where the CPU has bf16 units, else f32."""
    flags = read_cpu_flags() if flags is None else flags
    return "bf16" if flags and flags & set(BF16_CPU_FLAGS) else "f32"


def default_cpu_backend(meta: dict) -> str:
    """The engine `--backend auto` gives this model folder's default CPU precision on this machine."""
    precision = meta.get("default_precision", {}).get("cpu", "fp32")
    return choose_backend("auto", provider="cpu", precision=precision,
                          openvino_files=meta.get("openvino_files", {}))
