"""An fp16 copy of a MiniLM checkpoint, small enough for one device call's carry (see train.sh and run.sh).

    .venv/bin/python -m benchmarks.gpu.carry_minilm .gpucheck/minilm_fp16                 (the offline base model)
    .venv/bin/python -m benchmarks.gpu.carry_minilm .gpucheck/minilm_ft artifacts/bert    (the fine-tuned one)
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tsinfer.train.bert import resolve_base_model


def main(dst: str, src: str | None = None) -> None:
    src, out = Path(src or resolve_base_model(None)), Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / name, out / name)
    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v
               for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    print(f"{out}: {sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main(*sys.argv[1:3])
