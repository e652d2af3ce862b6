#!/usr/bin/env bash
# A CUDA build of clipsteer on a machine with no CUDA toolkit and no GPU driver, for a GPU host
# that has both (bench/gpu-carried.sh runs it there). The toolkit comes from PyPI's CUDA wheels,
# pinned to the host driver's CUDA version (PTX from a newer nvcc is refused by an older driver);
# the driver library is a stub that only satisfies the linker.
#
#   CUDA=13.0 bench/cuda-build.sh       -> target-cuda/clipsteer.xz (stripped, xz-compressed)
#
# Needs python3 with pip, gcc, xz. About 35 minutes on 2 cores, cold.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA=${CUDA:-13.0}
case "$CUDA" in
  13.0) pins="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-nvvm==13.0.88
        nvidia-cuda-crt==13.0.88 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85
        nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14" ;;
  *) echo "bench/cuda-build.sh: no pins for CUDA $CUDA (known: 13.0); add them from 'pip index versions'" >&2; exit 2 ;;
esac
work=${CUDA_WORK:-target-cuda}
root=$work/toolkit/nvidia/cu13
mkdir -p "$work/wheels"
if [ ! -x "$root/bin/nvcc" ]; then
  # shellcheck disable=SC2086
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheels" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 $pins
  for wheel in "$work"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$work/toolkit"; done
  chmod +x "$root"/bin/* "$root"/nvvm/bin/*
  # Unversioned names for the linker, and lib64 as cudarc's build script looks for it.
  (cd "$root/lib" && for f in *.so.*; do [ -e "${f%%.so.*}.so" ] || ln -s "$f" "${f%%.so.*}.so"; done)
  ln -sfn lib "$root/lib64"
fi
# Every driver function cudarc declares, each returning CUDA_ERROR_NO_DEVICE: enough to link.
mkdir -p "$root/lib/stubs"
sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -n1)
grep -oE "^pub unsafe fn cu[A-Za-z0-9_]+" "$sys" | sed 's/pub unsafe fn //' | sort -u \
  | awk '{print "int "$1"(void){return 100;}"}' > "$work/stub.c"
gcc -shared -fPIC -o "$root/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$work/stub.c"

root=$(cd "$root" && pwd)
export CUDA_ROOT=$root CUDA_PATH=$root CUDA_HOME=$root PATH=$root/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} LIBRARY_PATH=$root/lib/stubs:$root/lib
export CARGO_TARGET_DIR=$work/target
export RUSTFLAGS="-L native=$root/lib/stubs -L native=$root/lib"
nvcc --version | tail -n2
nice cargo build --release --locked --features cuda --bin clipsteer
strip -o "$work/clipsteer" "$work/target/release/clipsteer"
xz -T0 -6 -c "$work/clipsteer" > "$work/clipsteer.xz"
ls -l "$work/clipsteer.xz"
