#!/usr/bin/env bash
# The same work on both sides, timed side by side: `clipsteer bench` and bench/seed_loop.py (the
# reference loop in PyTorch + transformers) load one set of checkpoint files (GPT-2 124M and CLIP,
# random init, written once by bench/checkpoints.py into $CACHE), describe the same image from the
# same prompt with the same k and threads, in alternation, ROUNDS times. Fails unless both sides
# choose the same token ids; then prints the ratio per step and per caption at each step count
# in REPORT_AT (from the same runs: every step runs, so the first 12 steps of a 25-step run are a
# 12-step caption).
#
#   CLIP=b32|h14 K=200 STEPS=25 REPORT_AT="12 25" THREADS=2 ROUNDS=3 bench/compare.sh
#
# BEFORE=path/to/older/clipsteer also runs an older build in each round, for a before/after of
# our own code measured in the same run. Installs torch + transformers from PyPI into
# bench/.venv on first use (VENV=... to use another). Not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIP=${CLIP:-b32}; K=${K:-200}; STEPS=${STEPS:-25}; THREADS=${THREADS:-2}; ROUNDS=${ROUNDS:-3}
REPORT_AT=${REPORT_AT:-"12 $STEPS"}
VENV=${VENV:-bench/.venv}
CACHE=${CACHE:-.cache/bench}
EXTRA=${EXTRA:-}   # extra flags for clipsteer bench, e.g. "--prefilter 16" (then tokens may differ)
BIN=${BIN:-target/release/clipsteer}
BEFORE=${BEFORE:-}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch transformers safetensors pillow numpy
fi
"$VENV/bin/python" bench/checkpoints.py --out "$CACHE" --clip "$CLIP"
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q
fi

out=$(mktemp -d)
echo "load before: $(uptime)" >&2
for round in $(seq "$ROUNDS"); do
  # shellcheck disable=SC2086
  "$BIN" --device cpu bench --lm "$CACHE/gpt2" --encoder "$CACHE/clip-$CLIP" --image "$CACHE/image.png" \
    --top-k "$K" --steps "$STEPS" --threads "$THREADS" --json $EXTRA > "$out/rust-$round.json"
  if [ -n "$BEFORE" ]; then
    # shellcheck disable=SC2086
    "$BEFORE" --device cpu bench --lm "$CACHE/gpt2" --encoder "$CACHE/clip-$CLIP" --image "$CACHE/image.png" \
      --top-k "$K" --steps "$STEPS" --threads "$THREADS" --json $EXTRA > "$out/before-$round.json"
  fi
  "$VENV/bin/python" bench/seed_loop.py --lm "$CACHE/gpt2" --encoder "$CACHE/clip-$CLIP" --image "$CACHE/image.png" \
    --top-k "$K" --steps "$STEPS" --threads "$THREADS" --json > "$out/python-$round.json"
  echo "round $round done" >&2
done
echo "load after: $(uptime)" >&2
echo "raw results: $out" >&2

python3 - "$out" "$ROUNDS" "$REPORT_AT" "${EXTRA:+approximate}" "${BEFORE:+before}" <<'PY'
import json, statistics, sys
out, rounds, report_at, approximate, before = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3].split()], sys.argv[4], sys.argv[5]
rust = [json.load(open(f"{out}/rust-{r}.json")) for r in range(1, rounds + 1)]
py = [json.load(open(f"{out}/python-{r}.json")) for r in range(1, rounds + 1)]
older = [json.load(open(f"{out}/before-{r}.json")) for r in range(1, rounds + 1)] if before else []
ids = {tuple(run["token_ids"]) for run in rust + py + older}
if len(ids) != 1 and not approximate:
    print("token ids differ: the two sides did not do the same work", file=sys.stderr)
    for name, runs in (("clipsteer", rust), ("seed_loop.py", py), ("before", older)):
        for run in runs:
            print(f"  {name}: {run['token_ids']}", file=sys.stderr)
    sys.exit(1)
cfg = rust[0]["config"]
print(f"config: CLIP {cfg['clip']}, k={cfg['top_k']}, {cfg['steps']} steps, {cfg['threads']} threads, "
      f"{rounds} rounds (alternating); token ids {'agree' if len(ids) == 1 else 'DIFFER (approximate mode)'}")
print(f"text: {rust[0]['text']!r}")
print(f"clipsteer: scoring {statistics.median(r['median_step']['score_gflops'] for r in rust):.0f} GFLOP/s of a "
      f"{statistics.median(r['matmul_peak_gflops'] for r in rust):.0f} GFLOP/s matmul peak, "
      f"{statistics.median(r['median_step']['positions'] for r in rust):.0f} positions per step, "
      f"peak RSS {max(r['peak_rss_mib'] or 0 for r in rust):.0f} MiB; reference: torch {py[0]['torch']}")
print(f"{'steps':>5} | {'clipsteer step':>14} {'reference step':>14} {'ratio':>6} | "
      f"{'clipsteer caption':>17} {'reference caption':>17} {'ratio':>6} | per-round caption ratios")
sides = [("clipsteer", rust)] + ([("before", older)] if older else [])
for name, runs in sides:
    if len(sides) > 1:
        print(f"-- {name} (median lm {statistics.median(r['median_step']['lm_ms'] for r in runs):.1f} ms, "
              f"score {statistics.median(r['median_step']['score_ms'] for r in runs):.1f} ms, "
              f"{statistics.median(r['median_step']['positions'] for r in runs):.0f} positions per step)")
    for n in report_at:
        rust_steps = [[s["total_ms"] for s in r["steps"][:n]] for r in runs]
        py_steps = [p["step_ms"][:n] for p in py]
        rust_step = statistics.median(statistics.median(s) for s in rust_steps)
        py_step = statistics.median(statistics.median(s) for s in py_steps)
        rust_caption = [sum(s) / 1e3 for s in rust_steps]
        py_caption = [sum(s) / 1e3 for s in py_steps]
        pairs = sorted(p / r for p, r in zip(py_caption, rust_caption))
        print(f"{n:>5} | {rust_step:11.1f} ms {py_step:11.1f} ms {py_step / rust_step:5.1f}x | "
              f"{statistics.median(rust_caption):15.2f} s {statistics.median(py_caption):15.2f} s "
              f"{statistics.median(py_caption) / statistics.median(rust_caption):5.1f}x | "
              + " ".join(f"{p:.1f}" for p in pairs))
PY
