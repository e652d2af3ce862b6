#!/usr/bin/env bash
# The real-browser test of `clipsteer serve`: installs what it needs (Debian's chromium, Node and
# playwright-core from the committed package-lock.json), builds the binary and runs
# serve.e2e.mjs, which leaves screenshots in target/e2e/.
set -euo pipefail
cd "$(dirname "$0")"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

npm ci --no-audit --no-fund --loglevel=error
(cd ../.. && cargo build --locked --quiet)
node serve.e2e.mjs
