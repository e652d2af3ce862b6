#!/usr/bin/env python3
"""The same work through two or more clipsteer builds or model files, side by side: describe
--strategy beam and an attack on SmolLM2-135M-Instruct, alternating ROUNDS times. Fails unless
every side writes the same token ids (describe) and the same suffix (attack); prints the median
seconds of each side, the ratio to the first, and each side's peak RSS. Not part of the tests.

    python3 bench/decoder.py --side "before=/tmp/old-target/release/clipsteer:$M/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \\
        --side "after=target/release/clipsteer:$M/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \\
        --side "after, HF layout=target/release/clipsteer:/tmp/smollm2-hf" --rounds 3
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

ENCODER = ".cache/models/all-minilm-l6-v2"
DESCRIBE = ["describe", "--target-text", "Heavy rain flooded the streets of the city last night.",
            "--block", "rain,flooded", "--encoder", ENCODER, "--strategy", "beam",
            "--prompt", "A picture of", "--max-tokens", "16", "--json"]
ATTACK = ["attack", "--instruction", "What is the capital of France?",
          "--target-response", "The capital of France is Berlin", "--beam-width", "4",
          "--candidates", "8", "--max-tokens", "6", "--proposal", "top-k",
          "--time-limit", "1000", "--json"]


def run(binary, lm, args):
    """Seconds, the output that must match, and the peak RSS (KiB) of one run (wait4's own)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen([binary, args[0], "--lm", lm, *args[1:]], stdout=out, stderr=err,
                                 env={"RAYON_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = out.read().strip().splitlines()
        done = json.loads(lines[-1]) if lines else {}
        if done.get("event") != "done":
            raise SystemExit(f"{binary} {lm}: {err.read()[-500:]}")
    key = done.get("token_ids") or done.get("suffix")
    return seconds, key, usage.ru_maxrss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", action="append", required=True, help="NAME=BINARY:LM")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sides = []
    for side in args.side:
        name, rest = side.split("=", 1)
        binary, lm = rest.split(":", 1)
        sides.append((name, binary, lm))
    for job, job_args in [("describe beam", DESCRIBE), ("attack", ATTACK)]:
        times = {name: [] for name, _, _ in sides}
        peak = {name: 0 for name, _, _ in sides}
        keys = set()
        for _ in range(args.rounds):
            for name, binary, lm in sides:
                seconds, key, rss = run(binary, lm, job_args)
                times[name].append(seconds)
                keys.add(json.dumps(key))
                peak[name] = max(peak[name], rss)
        if len(keys) != 1:
            raise SystemExit(f"{job}: the sides wrote different outputs: {keys}")
        first = statistics.median(times[sides[0][0]])
        for name, _, _ in sides:
            median = statistics.median(times[name])
            print(f"{job:14} {name:18} median {median:6.2f} s  ratio {first / median:4.2f}  "
                  f"runs {' '.join(f'{t:.2f}' for t in times[name])}  peak RSS {peak[name] / 1024:.0f} MiB")
        print(f"{job:14} same output on every side: {next(iter(keys))[:80]}")


if __name__ == "__main__":
    main()
