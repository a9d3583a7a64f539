#!/usr/bin/env bash
# GPU check of issue 5: one prepared call on the GPU machine (results: $OUT/gpu.md, $OUT/gpu.json; about 3-4 min).
#
# The GPU image has torch, transformers, tokenizers, onnx and a CPU onnxruntime but no onnxruntime-gpu, and a call
# carries at most 64 MiB, so the CUDA-13 wheel travels in parts (../shared/device/README.md):
#   here:        bash ../shared/device/prepare_ort_gpu.sh       (.ortgpu/p1..p5, .ortgpu/WHEEL_NAME)
#   calls 1..4:  carry [".ortgpu/pK"], command `ls .ortgpu/*/`   (back to back: the machine stays warm ~30 s)
#   last call:   carry [".ortgpu/p5", ".ortgpu/WHEEL_NAME", "data/test.tsv", "artifacts/onnx/bert/tokenizer.json"],
#                command `bash benchmarks/gpu/run.sh`
#   optional, for the fp16 parity of the trained MiniLM: also carry "artifacts/onnx/bert/model_fp16.onnx" and
#                ".gpucheck/fp32_cpu.tsv", made here first with (ignore .gpucheck in .git/info/exclude)
#                `tsinfer score data/test.tsv --model artifacts/onnx/bert --provider cpu --precision fp32
#                 --output .gpucheck/fp32_cpu.tsv`
# Any extra arguments go to benchmarks/gpu/bench.py (e.g. --rows 400000).
set -euo pipefail
OUT="${OUT:-benchmarks/results/gpu-run}"
mkdir -p "$OUT"
if [ -f .ortgpu/WHEEL_NAME ]; then
  whl="$(cat .ortgpu/WHEEL_NAME)"
  cat .ortgpu/p*/chunk.* > "/tmp/$whl"
  python3 -m pip install -q --no-deps --target /tmp/ort "/tmp/$whl"
  export PYTHONPATH="/tmp/ort:${PYTHONPATH:-}"
fi
# tsinfer without installing it: the repository's folders as the tsinfer package (as pyproject's package-dir maps)
mkdir -p /tmp/tsinfer-pkg/tsinfer
for d in infer export train; do ln -sfn "$PWD/$d" "/tmp/tsinfer-pkg/tsinfer/$d"; done
export PYTHONPATH="/tmp/tsinfer-pkg:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
# the whole check stays inside the call's time even if something is slow: figures are saved after each contender
timeout 420 python3 -m benchmarks.gpu.bench --out "$OUT" "$@"
