#!/usr/bin/env python3
"""One batched forward, the same work on both sides: transformers (PyTorch, f32, eager attention)
and clipsteer's config-driven decoder (examples/forward_batch.rs) load the same HF-layout
directory and run the same rows of ids (ROWS rows of LEN tokens: an attack step's
beam width x candidates teacher-forced rows), each with THREADS threads; prints each side's
median seconds, the ratio, and the relative error between their last-position logits.

    cargo build --release --example gguf_to_hf --example forward_batch
    target/release/examples/gguf_to_hf .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2-hf
    /work/venv/bin/python bench/forward_batch.py /tmp/smollm2-hf --rows 32 --len 64
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--len", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bin", default="target/release/examples/forward_batch")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (a.rows, a.len), generator=g)
    times = []
    with torch.inference_mode():
        model(ids[:, :8])  # warm-up
        for _ in range(a.rounds):
            start = time.perf_counter()
            logits = model(ids).logits
            times.append(time.perf_counter() - start)
    ours_dir = tempfile.mkdtemp()
    ids_path, out_path = os.path.join(ours_dir, "ids.json"), os.path.join(ours_dir, "out.safetensors")
    json.dump(ids.tolist(), open(ids_path, "w"))
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    ours = json.loads(subprocess.run([a.bin, a.model, ids_path, out_path, str(a.rounds)],
                                     capture_output=True, text=True, check=True, env=env).stdout)
    want = logits[:, -1].numpy()
    got = load_file(out_path)["last_logits"]
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    theirs = statistics.median(times)
    print(json.dumps({"rows": a.rows, "positions": a.len, "threads": a.threads,
                      "transformers_median_s": round(theirs, 4),
                      "clipsteer_median_s": round(ours["median_seconds"], 4),
                      "ratio": round(theirs / ours["median_seconds"], 2),
                      "last_logits_rel_err": rel,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
