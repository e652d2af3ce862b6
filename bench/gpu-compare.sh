#!/usr/bin/env bash
# clipsteer against the reference loop on one GPU, on the same work: bench/checkpoints.py writes
# one set of random-init checkpoints, and both sides describe the same image from them, f32 (TF32
# off), 25 steps; the script says whether they chose the same token ids and gives the ratios.
# Random weights can pick GPT-2's long junk tokens ("ÃÂÃÂ…"), which push the text past CLIP's 77
# tokens within a few steps; from then on every candidate's CLIP input is the same and clipsteer
# scores one row while the reference still runs k full rows. Such a run is the same work token for
# token but not representative, so for each configuration the first of PROMPTS (separated by |)
# whose steps keep at least half the first step's CLIP positions is the one compared.
# For a GPU host with PyTorch + transformers; run through bench/gpu-carried.sh with a carried
# binary, or directly with BIN=path. Results go to $OUT (default: the current directory).
#   CONFIGS="b32:200 h14:2500" bench/gpu-compare.sh
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/clipsteer}
OUT=${OUT:-.}
CACHE=${CACHE:-/tmp/clipsteer-bench}
STEPS=${STEPS:-25}
CONFIGS=${CONFIGS:-"b32:200 h14:2500"}
PROMPTS=${PROMPTS:-"An image of |A photo of |A picture of |A photograph showing |This image shows "}
clips=$(for c in $CONFIGS; do printf -- '--clip %s ' "${c%%:*}"; done)
# shellcheck disable=SC2086
python3 bench/checkpoints.py --out "$CACHE" $clips
for config in $CONFIGS; do
  clip=${config%%:*}; k=${config##*:}
  IFS='|' read -r -a prompts <<< "$PROMPTS"
  for prompt in "${prompts[@]}"; do
    common=(--lm "$CACHE/gpt2" --encoder "$CACHE/clip-$clip" --image "$CACHE/image.png" --top-k "$k"
      --steps "$STEPS" --prompt "$prompt")
    "$BIN" --device cuda bench "${common[@]}" --json > "$OUT/clipsteer-$clip-k$k.json"
    python3 - "$OUT/clipsteer-$clip-k$k.json" "$prompt" <<'PY' && break
import json, sys
positions = [s["positions"] for s in json.load(open(sys.argv[1]))["steps"]]
full = min(positions) >= positions[0] / 2
print(f"prompt {sys.argv[2]!r}: CLIP positions per step {positions}: {'kept' if full else 'collapsed, next prompt'}")
sys.exit(0 if full else 1)
PY
  done
  PYTHONUNBUFFERED=1 python3 bench/seed_loop.py --device cuda --threads "$(nproc)" "${common[@]}" --json \
    > "$OUT/reference-$clip-k$k.json"
done
python3 - "$OUT" "$CONFIGS" <<'PY'
import json, sys
out, configs = sys.argv[1], sys.argv[2].split()
for config in configs:
    clip, k = config.split(":")
    ours = json.load(open(f"{out}/clipsteer-{clip}-k{k}.json"))
    ref = json.load(open(f"{out}/reference-{clip}-k{k}.json"))
    same = ours["token_ids"] == ref["token_ids"]
    step, ref_step = ours["median_step"]["total_ms"], ref["median_step_ms"]
    print(f"{clip} k={k} prompt {ref['prompt']!r} on {ref['device']}: same token ids: {same}; median step {step:.1f} ms vs "
          f"{ref_step:.1f} ms ({ref_step / step:.1f}x); caption {ours['caption_seconds']:.2f} s vs "
          f"{ref['caption_seconds']:.2f} s ({ref['caption_seconds'] / ours['caption_seconds']:.1f}x); "
          f"torch {ref['torch']}")
    if not same:
        first = next(i for i, (a, b) in enumerate(zip(ours["token_ids"], ref["token_ids"])) if a != b)
        print(f"  first differing step: {first}")
PY
