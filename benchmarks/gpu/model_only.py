"""Model-only timing of one ONNX file on the CUDA provider over saved padded batches (one process per variant).

Each variant runs in its own process because onnxruntime reads its attention-kernel environment variables once
per process, and so that the kernel report (ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO, printed by C++ on stdout)
belongs to one variant. Prints one JSON line prefixed with RESULT.

    python -m benchmarks.gpu.model_only --model FILE --batches NPZ [--options JSON] [--passes 2]
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np


def load_batches(path: str) -> list[tuple[np.ndarray, np.ndarray]]:
    z = np.load(path)
    return [(z[f"ids{i}"], z[f"mask{i}"]) for i in range(int(z["n"]))]


@click.command()
@click.option("--model", required=True)
@click.option("--batches", required=True)
@click.option("--options", default="{}", help="CUDA provider options, JSON.")
@click.option("--passes", default=2, show_default=True, help="Timed passes after one warm-up pass; best is kept.")
@click.option("--provider", default="cuda", show_default=True, help="cpu: the dry run without a GPU.")
def main(model, batches, options, passes, provider):
    import onnxruntime as ort

    from tsinfer.infer.engines import ort_session as _session

    data = load_batches(batches)
    t = time.perf_counter()
    session = _session(Path(model), provider, None, json.loads(options))
    load_s = time.perf_counter() - t
    names = [i.name for i in session.get_inputs()]

    def one_pass():
        start = time.perf_counter()
        for ids, mask in data:
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            if provider == "cpu":
                session.run(["logits"], feeds)
                continue
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            binding.bind_output("logits", "cuda")
            session.run_with_iobinding(binding)
            binding.copy_outputs_to_cpu()
        return time.perf_counter() - start

    one_pass()  # warm-up: kernel and cuBLAS algorithm selection per shape
    times = [one_pass() for _ in range(passes)]
    rows = sum(len(ids) for ids, _ in data)
    print("RESULT " + json.dumps({"model": model, "options": options, "onnxruntime": ort.__version__,
                                  "rows": rows, "load_s": round(load_s, 2), "pass_s": [round(x, 3) for x in times],
                                  "tweets_per_s": rows / min(times)}), flush=True)


if __name__ == "__main__":
    main()
