#!/usr/bin/env bash
# Side-by-side timing: `clipsteer bench` against bench/seed_loop.py (the reference loop in
# PyTorch + transformers) on the same shapes, k, steps and threads, run in alternation.
#   CLIP=b32|h14 K=200 STEPS=25 THREADS=2 ROUNDS=3 bench/compare.sh
# Installs torch + transformers from PyPI into bench/.venv on first use. Not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIP=${CLIP:-b32}; K=${K:-200}; STEPS=${STEPS:-25}; THREADS=${THREADS:-2}; ROUNDS=${ROUNDS:-3}
VENV=${VENV:-bench/.venv}
EXTRA=${EXTRA:-}   # extra flags for clipsteer bench, e.g. "--prefilter 16"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch transformers
fi
cargo build --release -q

out=$(mktemp -d)
for round in $(seq "$ROUNDS"); do
  # shellcheck disable=SC2086
  target/release/clipsteer --device cpu bench --clip "$CLIP" --top-k "$K" --steps "$STEPS" --threads "$THREADS" --json $EXTRA \
    > "$out/rust-$round.json"
  "$VENV/bin/python" bench/seed_loop.py --clip "$CLIP" --top-k "$K" --steps "$STEPS" --threads "$THREADS" --json \
    > "$out/python-$round.json"
  echo "round $round done" >&2
done

python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rust = [json.load(open(f"{out}/rust-{r}.json")) for r in range(1, rounds + 1)]
py = [json.load(open(f"{out}/python-{r}.json")) for r in range(1, rounds + 1)]
rust_step = statistics.median(r["median_step"]["total_ms"] for r in rust)
py_step = statistics.median(p["median_step_ms"] for p in py)
rust_caption = statistics.median(r["caption_seconds"] for r in rust)
py_caption = statistics.median(p["caption_seconds"] for p in py)
cfg = rust[0]["config"]
print(f"config: CLIP {cfg['clip']}, k={cfg['top_k']}, {cfg['steps']} steps, {cfg['threads']} threads, {rounds} rounds (alternating)")
print(f"clipsteer:   median step {rust_step:8.1f} ms, caption {rust_caption:7.2f} s, "
      f"scoring {statistics.median(r['median_step']['score_gflops'] for r in rust):.0f} GFLOP/s of a "
      f"{statistics.median(r['matmul_peak_gflops'] for r in rust):.0f} peak, peak RSS {max(r['peak_rss_mib'] or 0 for r in rust):.0f} MiB")
print(f"seed_loop.py: median step {py_step:8.1f} ms, caption {py_caption:7.2f} s (torch {py[0]['torch']})")
print(f"ratio (reference / clipsteer): step {py_step / rust_step:.1f}x, caption {py_caption / rust_caption:.1f}x")
PY
