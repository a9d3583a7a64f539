#!/usr/bin/env bash
# GPU training check of issue 13: one prepared call on the GPU machine (results: $OUT/gpu_train.{md,json}).
#
# The GPU image has torch, transformers and accelerate but not this project's install, and no model hub: the
# offline MiniLM checkpoint travels as an fp16 copy (45 MB, one call's carry), made here with
#   .venv/bin/python -m benchmarks.gpu.carry_minilm .gpucheck/minilm_fp16      (.gpucheck ignored by git)
# then one call carries [".gpucheck/minilm_fp16", "data/dev.tsv", "data/test.tsv"] and runs
#   bash benchmarks/gpu/train.sh
# The GPU-trained MiniLM stays at /tmp/tsinfer-gpu/minilm_gpu while the machine is warm (run.sh's parity step).
set -euo pipefail
OUT="${OUT:-benchmarks/results/gpu-train-run}"
mkdir -p "$OUT"
mkdir -p /tmp/tsinfer-pkg/tsinfer
for d in infer export train; do ln -sfn "$PWD/$d" "/tmp/tsinfer-pkg/tsinfer/$d"; done
export PYTHONPATH="/tmp/tsinfer-pkg:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 python3 -m benchmarks.gpu.train --data data --base-model .gpucheck/minilm_fp16 --out "$OUT" "$@" \
  2>&1 | grep -v -E '^\s*[0-9]+%\||it/s\]$' | tee "$OUT/train.log"
