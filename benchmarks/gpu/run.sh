#!/usr/bin/env bash
# GPU check of issues 5 and 12: one prepared call on the GPU machine (results: $OUT/gpu.md, $OUT/gpu.json; ~5 min).
#
# The GPU image has torch, transformers, tokenizers, onnx and a CPU onnxruntime but no onnxruntime-gpu, and a call
# carries at most 64 MiB, so onnxruntime-gpu travels in four parts, back to back (the machine stays warm ~30 s
# between calls and keeps what earlier calls carried):
#   here:          bash benchmarks/gpu/prepare_ort.sh                     (.ortgpu/p1..p4)
#                  .venv/bin/python -m benchmarks.gpu.carry_minilm .gpucheck/minilm_fp16
#   call 1:        carry [".gpucheck/minilm_fp16", "data/dev.tsv", "data/test.tsv", ".ortgpu/p4"],
#                  command `bash benchmarks/gpu/train.sh`   (issue 13; leaves the GPU-trained MiniLM for parity)
#   calls 2, 3:    carry [".ortgpu/p1"], then [".ortgpu/p2"], command `ls .ortgpu/*/`
#   call 4:        carry [".ortgpu/p3"], command `bash benchmarks/gpu/run.sh`
# Any extra arguments go to benchmarks/gpu/bench.py (e.g. --rows 400000 --layouts packed).
set -euo pipefail
OUT="${OUT:-benchmarks/results/gpu-run}"
mkdir -p "$OUT"
# (only where there is a GPU: the dry run elsewhere keeps its own onnxruntime)
if command -v nvidia-smi >/dev/null && ls .ortgpu/p*/part.* >/dev/null 2>&1 && [ ! -d /tmp/ort/onnxruntime ]; then
  mkdir -p /tmp/ort && cat .ortgpu/p*/part.* | xz -d | tar -x -C /tmp/ort
fi
if [ -d /tmp/ort/onnxruntime ]; then export PYTHONPATH="/tmp/ort:${PYTHONPATH:-}"; fi
# tsinfer without installing it: the repository's folders as the tsinfer package (as pyproject's package-dir maps)
mkdir -p /tmp/tsinfer-pkg/tsinfer
for d in infer export train; do ln -sfn "$PWD/$d" "/tmp/tsinfer-pkg/tsinfer/$d"; done
export PYTHONPATH="/tmp/tsinfer-pkg:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers(), 'cudnn', torch.backends.cudnn.version())"
# the whole check stays inside the call's time even if something is slow: figures are saved after each contender
timeout 480 python3 -m benchmarks.gpu.bench --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
