#!/usr/bin/env bash
# On a lent GPU host with the NVIDIA driver and PyTorch's CUDA 13 wheels but no Rust: unpack a
# CUDA build made elsewhere by bench/cuda-build.sh, put the host's CUDA libraries on the loader's
# path, and run bench/gpu.sh (or the script named as the argument) with it. The binary travels as
# BIN_XZ (default target-cuda/clipsteer.xz); results go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-.}
BIN_XZ=${BIN_XZ:-target-cuda/clipsteer.xz}
python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open('/tmp/clipsteer', 'wb'))" "$BIN_XZ"
chmod +x /tmp/clipsteer
libs=$(find /opt /usr /usr/local -xdev \( -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' \
  -o -name 'libcurand.so.10' -o -name 'libcudart.so.13' -o -name 'libnvrtc.so.13' \) 2>/dev/null \
  | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libs}/usr/local/nvidia/lib64:/usr/local/nvidia/lib:${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee "$OUT/env.txt"
ldd /tmp/clipsteer | tee -a "$OUT/env.txt" | grep -E "not found|cuda|cublas|curand|nvrtc"
# A two-step run first: it shows at once whether the kernels load.
timeout 120 /tmp/clipsteer --device cuda bench --assets assets/tokenizers --clip b32 --top-k 200 \
  --steps 2 2>&1 | tail -n 15 | tee "$OUT/smoke.txt"
# bench/gpu.sh unless another script is named (bench/gpu-compare.sh).
SKIP_BUILD=1 BIN=/tmp/clipsteer timeout "${BENCH_TIMEOUT:-360}" "${@:-bench/gpu.sh}" 2>&1 | tail -n 60
echo "${1:-bench/gpu.sh} rc=${PIPESTATUS[0]}"
