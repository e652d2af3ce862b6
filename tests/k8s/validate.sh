#!/usr/bin/env bash
# Validates examples/k8s/*.yaml against Kubernetes' own OpenAPI schemas, offline, with
# kubernetes-validate (PyPI; it bundles the schemas of each Kubernetes release): strict, so a
# misspelt or misplaced field fails, for the oldest release the example needs (1.29, where
# backoffLimitPerIndex is on by default) and the newest the tool knows. Then checks what no
# schema can see: the shard count in --shard equals `completions`, and models mount read-only.
# Adds about 10 s to CI (a venv and one wheel, cached in target/).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=target/k8s-venv
VERSION=1.37.0
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$VERSION"; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian ships venv apart from python3.
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VERSION"
fi
for file in examples/k8s/*.yaml; do
  for k8s in 1.29.0 1.37.0; do
    "$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$k8s" "$file"
  done
  # The validator must reject a broken copy, or the checks above prove nothing.
  broken=$(mktemp)
  sed 's/readOnlyRootFilesystem:/readOnlyRootFileSystem:/' "$file" >"$broken"
  if "$VENV/bin/kubernetes-validate" --strict --quiet "$broken" >/dev/null 2>&1; then
    rm -f "$broken"
    echo "k8s: the validator accepted a misspelt field in a copy of $file" >&2
    exit 1
  fi
  rm -f "$broken"
  "$VENV/bin/python" - "$file" <<'PY'
import sys, yaml
path = sys.argv[1]
for doc in yaml.safe_load_all(open(path)):
    if not doc or doc.get("kind") != "Job":
        continue
    spec = doc["spec"]
    pod = spec["template"]["spec"]
    assert spec.get("completionMode") == "Indexed", f"{path}: not an Indexed Job"
    for container in pod["containers"]:
        args = container.get("args", [])
        shard = args[args.index("--shard") + 1]
        index, count = shard.split("/")
        assert index == "$(JOB_COMPLETION_INDEX)", f"{path}: --shard {shard}"
        assert int(count) == spec["completions"], f"{path}: --shard {shard} but completions {spec['completions']}"
        out = args[args.index("--out") + 1]
        assert "$(JOB_COMPLETION_INDEX)" in out, f"{path}: every pod needs its own --out, got {out}"
        assert "--resume" in args, f"{path}: pods that are retried need --resume"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("HF_HUB_OFFLINE") == "1", f"{path}: HF_HUB_OFFLINE=1 expected"
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["models"].get("readOnly") is True, f"{path}: models must mount read-only"
    print(f"k8s: {path}: Indexed Job, --shard I/{count} matches completions, models read-only")
PY
done
echo "k8s: 1 passed, 0 failed"
