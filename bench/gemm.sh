#!/usr/bin/env bash
# candle's gemm, clipsteer's kernels and PyTorch's sgemm on the describe loop's matmul shapes,
# side by side in one run (alternating, ROUNDS times; medians of each round's best-of-7).
#   THREADS=2 ROUNDS=3 bench/gemm.sh
# Uses bench/.venv as bench/compare.sh does (VENV=... to use another). Not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}; ROUNDS=${ROUNDS:-3}; VENV=${VENV:-bench/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch transformers safetensors pillow numpy
fi
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q --example gemm_shapes
fi
out=$(mktemp -d)
echo "load: $(uptime)" >&2
for round in $(seq "$ROUNDS"); do
  RAYON_NUM_THREADS=$THREADS target/release/examples/gemm_shapes > "$out/rust-$round.json"
  "$VENV/bin/python" bench/gemm_shapes.py "$THREADS" > "$out/torch-$round.json"
done
python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rust = [json.load(open(f"{out}/rust-{r}.json")) for r in range(1, rounds + 1)]
torch = [json.load(open(f"{out}/torch-{r}.json")) for r in range(1, rounds + 1)]
print(f"torch {torch[0]['torch']} (BLAS {torch[0]['config']}); GFLOP/s, median of {rounds} rounds")
print(f"{'shape':<20} {'m×k×n':>16} {'candle':>8} {'clipsteer':>10} {'torch':>8} {'clipsteer/torch':>16}")
for i, row in enumerate(rust[0]):
    med = lambda runs, key: statistics.median(r[i][key] if isinstance(r, list) else r["rows"][i][key] for r in runs)
    c, o, t = med(rust, "candle_gflops"), med(rust, "clipsteer_gflops"), med(torch, "torch_gflops")
    print(f"{row['shape']:<20} {row['m']:>5}×{row['k']:>4}×{row['n']:>4} {c:8.1f} {o:10.1f} {t:8.1f} {o / t:16.2f}")
PY
