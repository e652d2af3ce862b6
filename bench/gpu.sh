#!/usr/bin/env bash
# The original demo's configuration on a GPU: CLIP H/14, k = 2500, 25 steps, through
# `clipsteer bench` (random weights, no download). One prepared script for a lent GPU machine.
#
#   bench/gpu.sh                 build with CUDA here, then run
#   SKIP_BUILD=1 BIN=path bench/gpu.sh   run a binary built elsewhere (e.g. carried to the GPU host)
#
# Building needs nvcc (CUDA 12 or newer) on PATH and CUDA_COMPUTE_CAP (e.g. 90 for H100/H200;
# read from nvidia-smi when unset). Results go to $OUT (default: the current directory).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/clipsteer}
OUT=${OUT:-.}
STEPS=${STEPS:-25}
# The tokenizer files travel with the checkout; a binary built elsewhere would look for them under
# the path it was built in.
ASSETS=${ASSETS:-$PWD/assets/tokenizers}
if [ -z "${SKIP_BUILD:-}" ]; then
  if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
    CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d .)
    export CUDA_COMPUTE_CAP
  fi
  cargo build --release --features cuda
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/gpu-info.txt"
"$BIN" --device cuda bench --assets "$ASSETS" --clip h14 --top-k 2500 --steps "$STEPS" | tee "$OUT/gpu-bench-h14-k2500.txt"
"$BIN" --device cuda bench --assets "$ASSETS" --clip b32 --top-k 200 --steps "$STEPS" | tee "$OUT/gpu-bench-b32-k200.txt"
"$BIN" --device cuda bench --assets "$ASSETS" --clip h14 --top-k 2500 --steps "$STEPS" --json > "$OUT/gpu-bench-h14-k2500.json"
