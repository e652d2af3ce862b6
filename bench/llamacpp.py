#!/usr/bin/env python3
"""clipsteer's LM forward beside llama.cpp's, on the same GGUF file, with the same thread count.

Two kinds of work, the two an attack is made of:

  batched  ROWS rows of LEN tokens, each row its own sequence, logits at every position, one
           forward (llama.cpp: one llama_decode with n_batch = n_ubatch >= ROWS*LEN and
           n_seq_max >= ROWS; clipsteer: examples/forward_batch.rs). The attack's shapes are
           50x16 and 50x64 (beam width 5 x 10 candidates); 32x64 matches bench/forward_batch.py.
           Same ids on both sides (windows of a tokenised text by default, or --ids random).
           Reported: median seconds over --rounds, tokens (ROWS*LEN) a second, and how the
           last-position logits agree (max abs diff, max abs diff / max |logit|, argmax agreement).
  decode   a chat-templated question (16 tokens; or --prompt-ids FILE), prefill, then greedy
           one-token decoding of --n-decode tokens with the KV cache, EOS ignored (llama.cpp:
           llama_decode of one token a step, numpy argmax; clipsteer: examples/decode_speed.rs).
           Reported: median decode seconds over --decode-rounds, tokens a second, and whether the
           greedy ids agree.

llama.cpp's timings are of llama_decode (+ llama_synchronize) only: the model is loaded, the
context made and a warm-up decode run before the clock starts, and the KV cache is cleared
(llama_memory_clear) before every round. clipsteer's are the examples' own timings, which also
exclude loading. clipsteer dequantises every GGUF to f32 at load (to match transformers), so with
--f32-gguf (an F32 GGUF of the same weights) both sides do f32 arithmetic; on the quantised file
llama.cpp runs its quantised kernels (Q4_1 weights x activations quantised to Q8_1; the tied
Q8_0 embedding x Q8_0 for the logits), which is what a user with that file gets from llama.cpp,
and the logits differ accordingly (argmax mostly equal; greedy decoding parts after a few dozen
tokens). Written against llama-cpp-python 0.3.36 (its low-level ctypes API).

KV cache type and flash attention: --kv-type auto and --flash default (the defaults) give the
quantised file llama.cpp's own defaults (F16 KV cache; flash attention auto, which on CPU means
on), what a user gets, and the F32 file an F32 KV cache without flash attention, the same
arithmetic as clipsteer (llama.cpp's CPU flash attention rounds through F16: last-logit rel err
~5e-4 against clipsteer with it, ~1e-6 without). --kv-type / --flash auto|on|off override both.

Each measurement also records `foreign_cpu`: the machine's busy CPU (from /proc/stat) during the
measurement less the measuring process's own CPU time, in cores. On a shared 2-core machine a
value well above 0 means something else ran at the same time and the number is suspect (llama.cpp
with --threads = all cores suffers most: its threads spin at a barrier after every op, so one
descheduled thread stalls the rest; one busy core slowed its F32 decoding ~40x here). So each
measurement waits for a quiet second first and is taken again (--retries) while others used more
than --quiet cores; the table's last column shows what others used during the kept one.

Setup (llama-cpp-python compiles llama.cpp from source; ~12 min on 2 cores):

    python3 -m venv /work/llama-venv
    /work/llama-venv/bin/pip install llama-cpp-python numpy
    cargo build --release --example forward_batch --example decode_speed

Optional F32 GGUF of the same model (convert_hf_to_gguf.py and gguf-py ship in the
llama-cpp-python sdist under vendor/llama.cpp; it needs torch + transformers, e.g. /work/venv;
the HF dir from `gguf_to_hf` lacks "architectures", so give a copy of config.json
"architectures": ["LlamaForCausalLM"]):

    target/release/examples/gguf_to_hf .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2-hf
    PYTHONPATH=LLAMA_CPP/gguf-py:LLAMA_CPP /work/venv/bin/python LLAMA_CPP/convert_hf_to_gguf.py \\
        HF_DIR_WITH_ARCHITECTURES --outtype f32 --outfile /tmp/smollm2-f32.gguf

Run:

    /work/llama-venv/bin/python bench/llamacpp.py \\
        --gguf .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --f32-gguf /tmp/smollm2-f32.gguf --threads 2 --json bench/results/llamacpp.json
"""
import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads: idle here, keep them out
import numpy as np  # noqa: E402

import llama_cpp as L  # noqa: E402

TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a lamp "
    "and a small notebook in which he recorded the weather, the ships that passed, and the birds "
    "that rested on the railing. Over forty years the notebook had become a history of the coast: "
    "storms that tore roofs from the village, summers so calm the sea looked like glass, and one "
    "winter when the harbour froze and children skated between the fishing boats. Scientists from "
    "the university later asked to borrow his records, because no instrument had measured the "
    "changes in the tides and the arrival of migrating species as patiently as he had. "
)
QUESTION = "What is the capital of France?"


# ----------------------------------------------------------------------------- machine load
def _busy_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return v[0] + v[1] + v[2] + v[5] + v[6]


class ForeignCpu:
    """Busy CPU of the whole machine during the block, less this process's (and its waited-for
    children's) CPU time: what others used, in cores."""

    def __enter__(self):
        self.hz = os.sysconf("SC_CLK_TCK")
        self.t0, self.b0 = time.perf_counter(), _busy_jiffies()
        self.own0 = self._own()
        return self

    @staticmethod
    def _own():
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        busy = (_busy_jiffies() - self.b0) / self.hz
        own = self._own() - self.own0
        self.cores = max(0.0, (busy - own) / wall) if wall > 0 else 0.0
        return False


def wait_quiet(threshold, max_wait):
    """Waits, up to max_wait seconds, for a second in which other processes use <= threshold
    cores; returns the last second's figure."""
    deadline = time.perf_counter() + max_wait
    while True:
        with ForeignCpu() as probe:
            time.sleep(1.0)
        if probe.cores <= threshold or time.perf_counter() > deadline:
            return probe.cores


def quietly(fn, a, what):
    """fn() returns a tuple whose last item is its measurement's foreign_cpu; runs it after a
    quiet second, again (up to a.retries times) while others used more than a.quiet cores."""
    for attempt in range(1, a.retries + 2):
        wait_quiet(a.quiet, a.quiet_wait)
        out = fn()
        if out[-1] <= a.quiet or attempt > a.retries:
            return out, attempt
        print(f"  {what}: other processes used {out[-1]:.2f} cores meanwhile; measuring again",
              file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- llama.cpp
_LOGS = []


@L.llama_log_callback
def _log_cb(level, text, user):
    _LOGS.append(text.decode(errors="replace"))


class LlamaCpp:
    def __init__(self, path, threads, kv_type, flash, verbose=False):
        if not verbose:
            L.llama_log_set(_log_cb, None)
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = L.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise SystemExit(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        buf = ctypes.create_string_buffer(256)
        L.llama_model_desc(self.model, buf, len(buf))
        self.desc = buf.value.decode()  # e.g. "llama ?B Q4_1", "llama ?B all F32"
        self.threads, self.kv_type, self.flash = threads, kv_type, flash

    def context(self, n_ctx, n_batch, n_seq):
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, n_seq
        cp.n_outputs_max = 0  # = n_batch
        cp.n_outputs_max_per_seq = 0  # default 1: one output a sequence
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.type_k = cp.type_v = {"f32": 0, "f16": 1}[self.kv_type]
        cp.flash_attn_type = {"auto": -1, "off": 0, "on": 1}[self.flash]
        cp.kv_unified = False  # one KV stream a sequence: attention within a row only
        ctx = L.llama_init_from_model(self.model, cp)
        if not ctx:
            raise SystemExit("llama.cpp could not make a context")
        return ctx

    def tokenize(self, text, special=True):
        buf = (L.llama_token * (len(text) * 2 + 16))()
        n = L.llama_tokenize(self.vocab, text.encode(), len(text.encode()), buf, len(buf),
                             False, special)
        if n < 0:
            raise RuntimeError("tokenize")
        return list(buf[:n])

    @staticmethod
    def _batch(rows, all_logits):
        n = sum(len(r) for r in rows)
        b = L.llama_batch_init(n, 0, 1)
        b.n_tokens = n
        i = 0
        for s, row in enumerate(rows):
            for j, t in enumerate(row):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = int(t), j, 1, int(
                    all_logits or j == len(row) - 1)
                b.seq_id[i][0] = s
                i += 1
        return b

    def _decode(self, ctx, batch):
        rc = L.llama_decode(ctx, batch)
        L.llama_synchronize(ctx)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _logits(self, ctx, i):
        return np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(self.n_vocab,))

    def batched(self, ids, rounds):
        rows, length = ids.shape
        n = rows * length
        ctx = self.context(rows * max(256, -(-length // 256) * 256), n, rows)
        mem = L.llama_get_memory(ctx)
        batch = self._batch(ids.tolist(), all_logits=True)
        self._decode(ctx, batch)  # warm-up: graph and buffers
        times = []
        with ForeignCpu() as load:
            for _ in range(rounds):
                L.llama_memory_clear(mem, True)
                start = time.perf_counter()
                self._decode(ctx, batch)
                times.append(time.perf_counter() - start)
        last = np.stack([self._logits(ctx, r * length + length - 1).copy() for r in range(rows)])
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        return times, last, load.cores

    def decode(self, prompt, n, rounds):
        ctx = self.context(max(256, -(-(len(prompt) + n + 1) // 256) * 256), 512, 1)
        mem = L.llama_get_memory(ctx)
        pre = self._batch([prompt], all_logits=False)
        one = L.llama_batch_init(1, 0, 1)
        one.n_tokens, one.n_seq_id[0], one.seq_id[0][0], one.logits[0] = 1, 1, 0, 1
        prefill, decode, generated = [], [], []

        def run():
            L.llama_memory_clear(mem, True)
            start = time.perf_counter()
            self._decode(ctx, pre)
            logits = self._logits(ctx, -1)
            t_pre = time.perf_counter() - start
            out = []
            start = time.perf_counter()
            for k in range(n):
                nxt = int(np.argmax(logits))
                out.append(nxt)
                one.token[0], one.pos[0] = nxt, len(prompt) + k
                self._decode(ctx, one)
                logits = self._logits(ctx, -1)
            return t_pre, time.perf_counter() - start, out

        run()  # warm-up
        with ForeignCpu() as load:
            for _ in range(rounds):
                p, d, generated = run()
                prefill.append(p)
                decode.append(d)
        L.llama_batch_free(pre)
        L.llama_batch_free(one)
        L.llama_free(ctx)
        return prefill, decode, generated, load.cores


# ----------------------------------------------------------------------------- clipsteer
def clipsteer_batched(binary, gguf, ids, rounds, threads, tmp):
    ids_path, out_path = os.path.join(tmp, "ids.json"), os.path.join(tmp, "out.safetensors")
    with open(ids_path, "w") as f:
        json.dump(ids.tolist(), f)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    with ForeignCpu() as load:
        out = subprocess.run([binary, gguf, ids_path, out_path, str(rounds)], capture_output=True,
                             text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{binary} failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res, _load_last_logits(out_path), load.cores


def _load_last_logits(path):
    # A safetensors file with one f32 tensor "last_logits": 8-byte header size, JSON header, data.
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        meta = header["last_logits"]
        assert meta["dtype"] == "F32", meta
        data = f.read()
    a, b = meta["data_offsets"]
    return np.frombuffer(data[a:b], dtype=np.float32).reshape(meta["shape"])


def clipsteer_decode(binary, gguf, prompt, n, rounds, threads, tmp):
    path = os.path.join(tmp, "prompt.json")
    with open(path, "w") as f:
        json.dump(prompt, f)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    with ForeignCpu() as load:
        out = subprocess.run([binary, gguf, path, str(n), str(rounds)], capture_output=True,
                             text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{binary} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1]), load.cores


# ----------------------------------------------------------------------------- driver
def make_ids(llm, rows, length, kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.integers(0, llm.n_vocab, (rows, length), dtype=np.int64)
    toks = llm.tokenize(TEXT * 8, special=False)
    starts = rng.integers(0, len(toks) - length, rows)
    return np.array([toks[s:s + length] for s in starts], dtype=np.int64)


def compare(ref, got):
    diff = np.abs(ref - got)
    return {
        "max_abs_diff": float(diff.max()),
        "rel_err": float(diff.max() / np.abs(ref).max()),
        "argmax_agree": float(np.mean(ref.argmax(-1) == got.argmax(-1))),
    }


def bench_file(label, gguf, a, tmp):
    llm = LlamaCpp(gguf, a.threads, a.kv_type, a.flash, a.verbose)
    f32 = llm.desc.endswith("F32")
    label = f"{label} ({llm.desc.split(' ')[-1]})"
    kv = llm.kv_type = a.kv_type if a.kv_type != "auto" else ("f32" if f32 else "f16")
    flash = llm.flash = a.flash if a.flash != "default" else ("off" if f32 else "auto")
    results = []
    for shape in filter(None, a.shapes.split(",")):
        rows, length = (int(x) for x in shape.lower().split("x"))
        ids = make_ids(llm, rows, length, a.ids)
        what = f"{label} {rows}x{length}"
        (lt, llast, lload), ltries = quietly(lambda: llm.batched(ids, a.rounds), a,
                                             f"llama.cpp {what}")
        (ours, olast, oload), otries = quietly(
            lambda: clipsteer_batched(a.forward_bin, gguf, ids, a.rounds, a.threads, tmp), a,
            f"clipsteer {what}")
        lmed, omed = statistics.median(lt), ours["median_seconds"]
        r = {"file": label, "work": f"batched {rows}x{length}", "tokens": rows * length,
             "llamacpp_s": lmed, "clipsteer_s": omed,
             "llamacpp_tok_s": rows * length / lmed, "clipsteer_tok_s": rows * length / omed,
             "clipsteer_over_llamacpp": omed / lmed,
             "llamacpp_runs": lt, "clipsteer_runs": ours["runs"],
             "foreign_cpu": {"llamacpp": lload, "clipsteer": oload},
             "attempts": {"llamacpp": ltries, "clipsteer": otries},
             "last_logits": compare(olast, llast), "kv_type": kv, "flash_attn": flash}
        results.append(r)
        _progress(r)
    if a.n_decode <= 0:
        return results
    prompt = (json.load(open(a.prompt_ids)) if a.prompt_ids else llm.tokenize(
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"))
    (lp, ld, lgen, lload), ltries = quietly(
        lambda: llm.decode(prompt, a.n_decode, a.decode_rounds), a, f"llama.cpp {label} decode")
    (ours, oload), otries = quietly(
        lambda: clipsteer_decode(a.decode_bin, gguf, prompt, a.n_decode, a.decode_rounds,
                                 a.threads, tmp), a, f"clipsteer {label} decode")
    lmed = statistics.median(ld)
    ogen = ours["generated"]
    agree = next((i for i, (x, y) in enumerate(zip(lgen, ogen)) if x != y), len(lgen))
    r = {"file": label, "work": f"decode {len(prompt)}+{a.n_decode}", "tokens": a.n_decode,
         "llamacpp_s": lmed, "clipsteer_s": ours["decode_seconds"],
         "llamacpp_tok_s": a.n_decode / lmed, "clipsteer_tok_s": ours["decode_tokens_per_second"],
         "clipsteer_over_llamacpp": ours["decode_seconds"] / lmed,
         "llamacpp_prefill_s": statistics.median(lp), "clipsteer_prefill_s": ours["prefill_seconds"],
         "llamacpp_runs": ld, "prompt": prompt, "llamacpp_ids": lgen, "clipsteer_ids": ogen,
         "foreign_cpu": {"llamacpp": lload, "clipsteer": oload},
         "attempts": {"llamacpp": ltries, "clipsteer": otries},
         "greedy_ids_agree": lgen == ogen, "greedy_common_prefix": agree, "kv_type": kv,
         "flash_attn": flash}
    results.append(r)
    _progress(r)
    return results


def _progress(r):
    print(f"  done: {r['file']} {r['work']}", file=sys.stderr, flush=True)


def table(results, quiet):
    head = ("file", "llama.cpp kv/fa", "work", "llama.cpp s", "clipsteer s", "llama tok/s", "clip tok/s",
            "clip/llama", "agreement", "foreign cpu")
    lines = []
    for r in results:
        if "last_logits" in r:
            c = r["last_logits"]
            agree = f"argmax {c['argmax_agree']:.0%} rel {c['rel_err']:.1e} abs {c['max_abs_diff']:.2g}"
        else:
            agree = ("greedy ids equal" if r["greedy_ids_agree"]
                     else f"greedy ids equal for {r['greedy_common_prefix']}")
        f = r["foreign_cpu"]
        lines.append((r["file"], f"{r['kv_type']}/{r['flash_attn']}", r["work"], f"{r['llamacpp_s']:.4f}", f"{r['clipsteer_s']:.4f}",
                      f"{r['llamacpp_tok_s']:.0f}", f"{r['clipsteer_tok_s']:.0f}",
                      f"{r['clipsteer_over_llamacpp']:.2f}x", agree,
                      f"{f['llamacpp']:.2f}/{f['clipsteer']:.2f}"
                      + (" !" if max(f.values()) > quiet else "")))
    w = [max(len(str(x[i])) for x in [head] + lines) for i in range(len(head))]
    out = ["  ".join(str(x[i]).ljust(w[i]) for i in range(len(head))) for x in [head] + lines]
    out.insert(1, "  ".join("-" * n for n in w))
    return "\n".join(out)


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gguf", required=True, help="a GGUF file (e.g. the Q4_1 one)")
    p.add_argument("--f32-gguf", help="an F32 GGUF of the same weights, benchmarked too")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shapes", default="50x16,50x64,32x64", help="ROWSxLEN,... ('' for none)")
    p.add_argument("--rounds", type=int, default=3, help="batched rounds (median)")
    p.add_argument("--n-decode", type=int, default=64, help="0: no decode benchmark")
    p.add_argument("--decode-rounds", type=int, default=3)
    p.add_argument("--prompt-ids", help="JSON list of prompt ids for decode (default: a chat "
                   "templated question tokenised by llama.cpp)")
    p.add_argument("--ids", choices=["text", "random"], default="text",
                   help="batched rows: windows of a tokenised text, or uniform random ids")
    p.add_argument("--kv-type", choices=["auto", "f16", "f32"], default="auto")
    p.add_argument("--flash", choices=["default", "auto", "on", "off"], default="default")
    p.add_argument("--quiet", type=float, default=0.15,
                   help="a measurement during which other processes used more cores than this "
                   "is taken again (see --retries); each waits first for a quiet second")
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--quiet-wait", type=float, default=60,
                   help="longest wait, in seconds, for a quiet second before a measurement")
    p.add_argument("--forward-bin", default="target/release/examples/forward_batch")
    p.add_argument("--decode-bin", default="target/release/examples/decode_speed")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--verbose", action="store_true", help="llama.cpp's log to stderr")
    a = p.parse_args()
    for b in (a.forward_bin, a.decode_bin):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} missing: cargo build --release --example forward_batch "
                             "--example decode_speed")
    env = {"cpu": cpu_model(), "threads": a.threads, "loadavg_before": os.getloadavg(),
           "llama_cpp_python": L.__version__,
           "llama_system_info": L.llama_print_system_info().decode().strip(),
           "ids": a.ids}
    print(json.dumps(env), file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        files = [(os.path.basename(f), f) for f in (a.gguf, a.f32_gguf) if f]
        for label, path in files:
            results += bench_file(label, path, a, tmp)
    print(table(results, a.quiet))
    print(f"(threads {a.threads}; clip/llama = clipsteer seconds / llama.cpp seconds; agreement "
          f"of batched = last-position logits, clipsteer vs llama.cpp; foreign cpu = cores used by "
          f"other processes during llama.cpp/clipsteer's measurement, ! = over --quiet even after "
          f"--retries: suspect; loadavg before "
          f"{env['loadavg_before'][0]:.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
