#!/usr/bin/env bash
# Clean release build times of the command line and of the Python wheel's extension module, for
# two commits side by side on this machine (docs/BENCHMARKS.md, "Build times"):
#
#   bench/build-times.sh BEFORE AFTER
#
# Each build starts from an empty target directory with the crates already downloaded (the
# cargo registry), as a user's second `cargo install` or `pip install .` would. The wheel is
# timed as the cargo build maturin runs for it (`-p clipsteer-python`, release); maturin's own
# packaging adds about a second. Builds alternate between the commits (CLI before, CLI after,
# wheel before, wheel after) so that a drift in the machine's speed touches both sides alike.
set -euo pipefail
before=$1
after=$2
out=${BUILD_TIMES_DIR:-/tmp/clipsteer-build-times}
mkdir -p "$out"
root=$(git rev-parse --show-toplevel)
for rev in "$before" "$after"; do
  [ -d "$out/src-$rev" ] || git -C "$root" worktree add --detach "$out/src-$rev" "$rev" >/dev/null
done
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
echo "what	commit	seconds	crates compiled"
for what in cli wheel; do
  for rev in "$before" "$after"; do
    case $what in
      cli) args=(--bin clipsteer) ;;
      wheel) args=(-p clipsteer-python) ;;
    esac
    target=$out/target-$what-$rev
    rm -rf "$target"
    start=$(date +%s.%N)
    (cd "$out/src-$rev" && CARGO_TARGET_DIR=$target cargo build --release --locked "${args[@]}") \
      >"$out/log-$what-$rev" 2>&1
    end=$(date +%s.%N)
    crates=$(grep -c '^ *Compiling ' "$out/log-$what-$rev" || true)
    printf '%s\t%s\t%.0f\t%s\n' "$what" "$rev" "$(echo "$end - $start" | bc)" "$crates"
    rm -rf "$target"
  done
done
