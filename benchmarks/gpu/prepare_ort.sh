#!/usr/bin/env bash
# onnxruntime-gpu for the GPU machine, in parts small enough for one device call's carry each.
# The wheel (~255 MB) is unpacked and re-compressed with xz (~205 MB: four parts of at most 60 MB instead of five),
# so the last part leaves room in its call for the data. Run from the project root:
#   bash benchmarks/gpu/prepare_ort.sh [VERSION]       -> .ortgpu/p1 .. .ortgpu/p4 (ignored by git)
set -euo pipefail
ver="${1:-1.31.1}"
work="$(mktemp -d)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$work" "onnxruntime-gpu==${ver}"
mkdir "$work/tree" && (cd "$work/tree" && unzip -q "$work"/*.whl)
tar -C "$work/tree" -cf - . | xz -T0 -6 > "$work/ort.tar.xz"
rm -rf .ortgpu && mkdir -p .ortgpu
split -b 60M -d -a 1 "$work/ort.tar.xz" .ortgpu/part.
i=1; for c in .ortgpu/part.*; do mkdir -p ".ortgpu/p$i"; mv "$c" ".ortgpu/p$i/"; i=$((i+1)); done
rm -rf "$work"
echo "parts: $(ls -d .ortgpu/p* | tr '\n' ' ')"
