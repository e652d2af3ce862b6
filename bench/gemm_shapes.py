#!/usr/bin/env python3
"""GFLOP/s of PyTorch's CPU sgemm (x @ w + bias, torch.addmm) on the shapes of
examples/gemm_shapes.rs, best of several runs; bench/gemm.sh runs the two side by side."""
import json
import sys
import time

import torch

SHAPES = [("clip qkv", 543, 512, 1536), ("clip out", 543, 512, 512), ("clip fc1", 543, 512, 2048),
          ("clip fc2", 543, 2048, 512), ("gpt2 c_attn, 1 row", 1, 768, 2304), ("gpt2 c_fc, 1 row", 1, 768, 3072),
          ("square 2048", 2048, 2048, 2048)]


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    rows = []
    with torch.inference_mode():
        for name, m, k, n in SHAPES:
            x, w, bias = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
            torch.addmm(bias, x, w)
            best = float("inf")
            for _ in range(7):
                start = time.perf_counter()
                torch.addmm(bias, x, w)
                best = min(best, time.perf_counter() - start)
            rows.append({"shape": name, "torch_gflops": 2 * m * k * n / best / 1e9})
    print(json.dumps({"torch": torch.__version__, "config": torch.__config__.show().split("BLAS_INFO=")[-1].split(",")[0],
                      "rows": rows}))


if __name__ == "__main__":
    main()
