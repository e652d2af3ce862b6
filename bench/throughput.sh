#!/usr/bin/env bash
# docs/SCALE.md's throughput: CPU seconds per image (user + system of whole processes, so they hold
# on a shared machine) at the default settings and at --preset seed's, on the checkpoints that
# bench/checkpoints.py writes (random init, the real shapes). --preset seed's candidates come from
# the real SmolLM2-135M (scripts/fetch-small-models.sh): random GPT-2 writes text that CLIP
# truncates, which makes H/14 scoring unrealistically cheap (docs/SCALE.md).
#
#   BIN=target/release/clipsteer bench/throughput.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/clipsteer}
CACHE=${CACHE:-.cache/bench}
SMOLLM2=${SMOLLM2:-.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
out=$(mktemp -d)
cpu() { grep -E "User time|System time|Elapsed|Maximum resident" "$1"; }

echo "== default: GPT-2 + CLIP B/32, k = 200, 25 tokens; $(uptime)"
/usr/bin/time -v "$BIN" --device cpu describe "$CACHE/image.png" --lm "$CACHE/gpt2" \
  --encoder "$CACHE/clip-b32" --top-k 200 --max-tokens 25 --json > "$out/default.jsonl" 2> "$out/default.time"
cpu "$out/default.time"

echo "== --preset seed's work: SmolLM2 proposes, CLIP H/14 scores, k = 2500, 25 steps; $(uptime)"
/usr/bin/time -v "$BIN" --device cpu bench --lm "$SMOLLM2" --encoder "$CACHE/clip-h14" \
  --image "$CACHE/image.png" --top-k 2500 --steps 25 --threads 2 --json > "$out/seed.json" 2> "$out/seed.time"
cpu "$out/seed.time"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('median positions per step', d['median_step']['positions'], '; caption', round(d['caption_seconds'], 1), 's')" "$out/seed.json"
echo "load after: $(uptime); raw results: $out"
