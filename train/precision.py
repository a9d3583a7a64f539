"""The training precision: bf16 autocast where the hardware computes in bf16, fp32 (CPU) or fp16 (older GPUs)
otherwise; `tsinfer train bert --precision` overrides the choice.

Autocast keeps the weights, the gradients and AdamW's state in fp32 and runs the matmuls in bf16, so the saved
model is fp32 either way. On the CPU, "has bf16" means bf16 units (Intel AMX, AMD Zen 4 and later's avx512_bf16);
a CPU without them can still run bf16 (PyTorch converts to and from fp32), but usually slower than fp32, so auto keeps
fp32 there and an explicit --precision bf16 runs with a warning rather than being refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer

from tsinfer.infer.cpus import BF16_CPU_FLAGS, read_cpu_flags
from tsinfer.train.errors import TrainError
from tsinfer.train.recipe import PRECISIONS



@dataclass(frozen=True)
class Precision:
    name: str  # "fp32", "bf16" or "fp16"
    source: str  # why: "auto (cpu has avx512_bf16)", "--precision", ...
    warning: str | None = None  # a line to show before training, when the choice will be slow


def cpu_bf16(flags: set[str] | None) -> str | None:
    """Why this CPU counts as having bf16 units, or None. Without a flag list (not Linux x86), what PyTorch's
    oneDNN reports instead: it also says yes for AVX-512 CPUs that convert rather than compute in bf16."""
    if flags is not None:
        found = [flag for flag in BF16_CPU_FLAGS if flag in flags]
        return f"cpu has {'+'.join(found)}" if found else None
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return "torch reports cpu bf16" if check is not None and check() else None
    except RuntimeError:  # a build without oneDNN
        return None


def training_precision(requested: str = "auto", *, cuda: bool, cuda_bf16: bool = False,
                       cpu_flags: set[str] | None = None) -> Precision:
    """The precision to train in. `cpu_flags`: the CPU's flags (read from /proc/cpuinfo when None); `cuda_bf16`:
    torch.cuda.is_bf16_supported(). On CUDA, auto is bf16 where the GPU has it and fp16 with loss scaling
    otherwise; on the CPU, bf16 where it has bf16 units and fp32 otherwise. fp16 on the CPU and bf16 on a GPU
    without it are refused (the Trainer cannot run them)."""
    if requested not in PRECISIONS:
        raise TrainError(f"unknown precision {requested!r}: one of {', '.join(PRECISIONS)}")
    if cuda:
        if requested == "auto":
            return Precision("bf16" if cuda_bf16 else "fp16", f"auto (gpu has {'' if cuda_bf16 else 'no '}bf16)")
        if requested == "bf16" and not cuda_bf16:
            raise TrainError("--precision bf16: this GPU has no bf16; use fp16 or fp32")
        return Precision(requested, "--precision")
    if requested == "fp16":
        raise TrainError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32")
    reason = cpu_bf16(read_cpu_flags() if cpu_flags is None else cpu_flags)
    if requested == "auto":
        return Precision("bf16", f"auto ({reason})") if reason else Precision("fp32", "auto (cpu has no bf16 units)")
    warning = None if requested == "fp32" or reason else (
        f"--precision bf16: this CPU has no bf16 units ({' or '.join(BF16_CPU_FLAGS)}); PyTorch emulates bf16 "
        "there, usually slower than fp32")
    return Precision(requested, "--precision", warning)


class CpuBf16Trainer(Trainer):
    """The Trainer with bf16 autocast around the training steps' forward pass only, on the CPU.

    Not the Trainer's own bf16=True: on the CPU that autocasts evaluation and prediction as well (its autocast
    context, and accelerate's wrapper around model.forward), and it leaves ACCELERATE_MIXED_PRECISION=bf16 in
    the process's environment, which turns later fp32 runs in the same process into bf16 ones. Evaluation stays
    fp32 here because the exported ONNX model runs fp32 (or int8 quantized from fp32): the epoch and the weight
    average kept, the fitted temperature and the reported figures are those of the model as it will be scored.
    The backward pass runs outside autocast, as PyTorch recommends; its ops follow the forward's dtypes.
    """

    def compute_loss(self, model, inputs, *args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.training):
            return super().compute_loss(model, inputs, *args, **kwargs)
