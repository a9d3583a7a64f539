"""Dropout for CPU training whose masks come from numpy's PCG64 generator instead of torch's.

torch's CPU dropout draws every element through bernoulli_ on one mt19937 stream: a sixth to a fifth of a bf16
MiniLM training step on 2 cores was spent drawing masks (`torch.profiler`, aten::bernoulli_). numpy's PCG64 draws
16-bit integers several times faster; an element is kept when its draw is at least round(p * 65536), so p is exact
to 1/65536. The mask is the same Bernoulli(1 - p) as torch's, scaled by 1 / (1 - p), and the module is the identity
in eval mode, so the saved weights and every exported model are unchanged. No library offers a faster CPU dropout
for PyTorch modules, hence this small one.

Attention-probability dropout inside torch's fused scaled_dot_product_attention cannot be swapped, so CPU training
loads the model with eager attention (its dropout is an nn.Dropout module like the others): `attention_for_cpu`.
"""
from __future__ import annotations

import numpy as np
import torch

DRAW_LEVELS = 1 << 16  # the 16-bit draws: p is kept to within 1/65536


class FastDropout(torch.nn.Module):
    """nn.Dropout(p) in training mode with a numpy mask; the identity in eval mode (as nn.Dropout)."""

    def __init__(self, p: float, generator: np.random.Generator):
        super().__init__()
        self.p = float(p)
        self.threshold = int(round(self.p * DRAW_LEVELS))
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if self.p >= 1.0:  # everything dropped, as torch's dropout at p = 1
            return x * 0.0
        draws = self.generator.integers(0, DRAW_LEVELS, x.numel(), dtype=np.uint16)
        keep = torch.from_numpy(draws >= self.threshold).view(x.shape)
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: torch.nn.Module, *, seed: int) -> int:
    """Replace every nn.Dropout of `model` by a FastDropout of the same p, all drawing from one generator seeded
    with `seed` (a run's masks are reproducible); returns how many were replaced."""
    generator = np.random.default_rng(seed)
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Dropout:
                setattr(module, name, FastDropout(child.p, generator).train(child.training))
                replaced += 1
    return replaced


def attention_for_cpu() -> dict:
    """from_pretrained's keyword for CPU training: eager attention, whose probability dropout is a module."""
    return {"attn_implementation": "eager"}
