#!/usr/bin/env bash
# Seconds per caption of the fluent strategies (magic, beam) on the real small models, two builds
# side by side in one run: SmolLM2-135M-Instruct proposes, all-MiniLM-L6-v2 scores, toward text
# targets from eval/targets.jsonl (tuning half), each with its blocked words. Rounds alternate the
# builds; the script prints each build's median seconds per caption and whether both wrote the
# same text (the same work) for every case.
#
#   BEFORE=path/to/old/clipsteer AFTER=target/release/clipsteer ROUNDS=2 CASES=3 bench/fluent.sh
# PROMPT (default "A picture of") is the plain prompt both builds continue; PROMPT= (empty) runs the
# default route instead (STRATEGIES="beam" times beam alone): the LM's chat template with --instruction's default.
# AFTER_ARGS adds flags to the newer build's runs only, to turn off a behaviour the older build
# lacks so that both do the same work (e.g. AFTER_ARGS="--beam-close-within 0").
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${BEFORE:?give BEFORE=path/to/older/clipsteer}
AFTER=${AFTER:-target/release/clipsteer}
ROUNDS=${ROUNDS:-2}; CASES=${CASES:-3}
LM=${LM:-.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
ENCODER=${ENCODER:-.cache/models/all-minilm-l6-v2}
read -r -a after_args <<< "${AFTER_ARGS:-}"
PROMPT=${PROMPT-A picture of}
prompt_args=(); [ -n "$PROMPT" ] && prompt_args=(--prompt "$PROMPT")
out=$(mktemp -d)
python3 - "$CASES" > "$out/cases.tsv" <<'PY'
import json, sys
rows = [json.loads(l) for l in open("eval/targets.jsonl") if l.strip()]
for row in [r for r in rows if r["id"] % 2 == 0][: int(sys.argv[1])]:
    print(row["id"], row["target"], ",".join(row["block"]), sep="\t")
PY
echo "load before: $(uptime)"
for round in $(seq "$ROUNDS"); do
  while IFS=$'\t' read -r id target block; do
    for strategy in ${STRATEGIES:-magic beam}; do
      for side in before after; do
        bin=$BEFORE; extra=()
        [ "$side" = after ] && { bin=$AFTER; extra=("${after_args[@]}"); }
        # Peak RSS (KiB) of the whole process, model loading included, beside the run's line.
        /usr/bin/time -f %M -o "$out/$side-$strategy-$id-$round.rss" \
          "$bin" --device cpu describe --lm "$LM" --encoder "$ENCODER" --target-text "$target" \
          --block "$block" --strategy "$strategy" "${prompt_args[@]}" --json "${extra[@]}" \
          | tail -1 > "$out/$side-$strategy-$id-$round.json"
      done
    done
  done < "$out/cases.tsv"
done
echo "load after: $(uptime)"
python3 - "$out" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
runs = {}
for path in glob.glob(f"{out}/*-*-*-*.json"):
    side, strategy, case, rnd = os.path.basename(path)[:-5].split("-")
    runs[(side, strategy, case, rnd)] = json.load(open(path))
    runs[(side, strategy, case, rnd)]["rss_mib"] = int(open(path[:-5] + ".rss").read().split()[-1]) / 1024
for strategy in sorted({k[1] for k in runs}):
    med = {s: statistics.median(r["seconds"] for k, r in runs.items() if k[0] == s and k[1] == strategy) for s in ("before", "after")}
    same = all(runs[("before", strategy, c, r)]["token_ids"] == runs[("after", strategy, c, r)]["token_ids"]
               for (_, st, c, r) in runs if st == strategy)
    rss = {s: max(r["rss_mib"] for k, r in runs.items() if k[0] == s and k[1] == strategy) for s in ("before", "after")}
    print(f"{strategy}: peak RSS before {rss['before']:.0f} MiB, after {rss['after']:.0f} MiB")
    print(f"{strategy}: median seconds per caption before {med['before']:.2f}, after {med['after']:.2f}, "
          f"after/before {med['after'] / med['before']:.2f}; same text in every case: {same}")
    for (side, st, c, r), run in sorted(runs.items()):
        if st == strategy and r == "1":
            print(f"  {side:6} case {c}: {run['seconds']:.2f} s {run['text']!r}")
PY
