#!/usr/bin/env python3
"""Writes the tiny random-init llama GGUF fixture and transformers' outputs on it.

    scripts/fetch-small-models.sh        # the real SmolLM2 GGUF lends its tokenizer metadata
    .venv/bin/python tools/make_gguf_fixture.py

Outputs (deterministic; rerunning gives byte-identical files):
    tests/fixtures/llama-tiny.gguf
    tests/fixtures/reference/llama-tiny.safetensors
    tests/fixtures/reference/llama-tiny.json

The checkpoint is written the way llama.cpp's convert_hf_to_gguf.py writes one (q/k rows permuted
for rotation of interleaved pairs, matrices as (out, in), tied head = no output.weight), with its
matrices spread over every GGML type candle and transformers can both read, so that one fixture
checks each dequantiser. transformers then loads the file itself (gguf-py dequantises, undoes the
q/k permutation) and its logits are the reference.
"""
import json
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
NAME = "llama-tiny.gguf"
SMOLLM2 = ROOT / ".cache" / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

HIDDEN = 64
LAYERS = 3
HEADS = 4
KV_HEADS = 2
# 256 so that ffn_down's rows (length = intermediate) can hold the 256-wide super-blocks of the
# k-quants; every other matrix has rows of 64 and takes the 32-wide formats.
INTERMEDIATE = 256
CONTEXT = 128
ROPE_THETA = 50_000.0
RMS_EPS = 1e-5

# One GGML type per matrix, so that a wrong dequantiser shows up as a wrong layer. The token
# embedding (and tied head) is Q4_0: at 49152 x 64 it is most of the file.
FORMATS = [
    {"attn_q": Q.Q8_0, "attn_k": Q.Q4_0, "attn_v": Q.Q4_1, "attn_output": Q.F16,
     "ffn_gate": Q.Q5_0, "ffn_up": Q.Q5_1, "ffn_down": Q.Q6_K},
    {"attn_q": Q.F16, "attn_k": Q.Q8_0, "attn_v": Q.F32, "attn_output": Q.BF16,
     "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_0, "ffn_down": Q.Q4_K},
    {"attn_q": Q.Q5_1, "attn_k": Q.Q5_0, "attn_v": Q.Q8_0, "attn_output": Q.Q4_1,
     "ffn_gate": Q.BF16, "ffn_up": Q.F16, "ffn_down": Q.Q5_K},
]
EMBEDDING_FORMAT = Q.Q4_0

# Copied verbatim from the real file so the vocabulary, merges and special tokens are SmolLM2's.
TOKENIZER_KEYS = [
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix",
]

TOKENIZER_STRINGS = [
    "An image of a cat sitting on",
    "Numbers 12345 and 3.14",
    "Émile's café — naïve 日本語 🐱",
    "<|im_start|>user\nHello<|im_end|>",
]


def permute(w, n_head):
    """llama.cpp's q/k row order: each head's two rotary halves interleaved (convert_hf_to_gguf)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_k_quant(rng, qtype, rows, cols, std):
    """Random k-quant blocks (gguf-py cannot quantise to these): random bytes, with each block's
    f16 super-scales overwritten by one constant chosen so the weights have about `std`."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    # Byte offsets of d (and dmin) within each block, from ggml-common.h.
    d_at, dmin_at = {Q.Q6_K: (208, None), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2)}[qtype]

    def with_scales(d):
        out = raw.copy()
        out[:, d_at:d_at + 2] = np.full((n_blocks, 1), d, np.float16).view(np.uint8)
        if dmin_at is not None:
            # dmin * min centres d * scale * q (both 6-bit scales, q in 0..15 or 0..31).
            centre = 7.5 if qtype == Q.Q4_K else 15.5
            out[:, dmin_at:dmin_at + 2] = np.full((n_blocks, 1), d * centre, np.float16).view(np.uint8)
        return out

    unit = gguf.dequantize(with_scales(1.0), qtype)
    data = with_scales(std / float(unit.std()))
    return data.reshape(rows, -1)


def encode(w, qtype):
    """(bytes or array to write, the dequantised float32 matrix a reader must see)."""
    if qtype == Q.F32:
        return w.astype(np.float32), w.astype(np.float32)
    if qtype == Q.F16:
        data = w.astype(np.float16)
        return data, data.astype(np.float32)
    data = gguf.quantize(w.astype(np.float32), qtype)
    return data, gguf.dequantize(data, qtype).reshape(w.shape)


def build_weights(rng):
    """Float weights in the Hugging Face layout, and the tensors to write in the GGUF layout."""
    def normal(shape, std):
        return rng.normal(0.0, std, shape).astype(np.float32)

    def norm():
        # Random norm weights so a swapped or ignored norm cannot go unnoticed.
        return (1.0 + 0.2 * rng.standard_normal(HIDDEN)).astype(np.float32)

    head_dim = HIDDEN // HEADS
    tensors = {}  # gguf name -> (data, raw_dtype or None)
    expected = {}  # hf name -> float32 weights transformers should load
    embedding = normal((49152, HIDDEN), 0.5)
    data, deq = encode(embedding, EMBEDDING_FORMAT)
    tensors["token_embd.weight"] = (data, EMBEDDING_FORMAT)
    expected["model.embed_tokens.weight"] = deq
    for i, formats in enumerate(FORMATS):
        hf = f"model.layers.{i}"
        shapes = {
            "attn_q": (HEADS * head_dim, HIDDEN, f"{hf}.self_attn.q_proj"),
            "attn_k": (KV_HEADS * head_dim, HIDDEN, f"{hf}.self_attn.k_proj"),
            "attn_v": (KV_HEADS * head_dim, HIDDEN, f"{hf}.self_attn.v_proj"),
            "attn_output": (HIDDEN, HEADS * head_dim, f"{hf}.self_attn.o_proj"),
            "ffn_gate": (INTERMEDIATE, HIDDEN, f"{hf}.mlp.gate_proj"),
            "ffn_up": (INTERMEDIATE, HIDDEN, f"{hf}.mlp.up_proj"),
            "ffn_down": (HIDDEN, INTERMEDIATE, f"{hf}.mlp.down_proj"),
        }
        for name in ["attn_norm", "ffn_norm"]:
            w = norm()
            tensors[f"blk.{i}.{name}.weight"] = (w, None)
            expected[f"{hf}.{'input_layernorm' if name == 'attn_norm' else 'post_attention_layernorm'}.weight"] = w
        for name, (rows, cols, hf_name) in shapes.items():
            qtype = formats[name]
            # Weights of about unit gain, and q/k large enough that attention is far from uniform
            # (a wrong rotation or mask then moves the logits a lot).
            std = (2.0 if name in ("attn_q", "attn_k") else 1.0) / np.sqrt(cols)
            if qtype in (Q.Q6_K, Q.Q4_K, Q.Q5_K):
                data = random_k_quant(rng, qtype, rows, cols, std)
                deq = gguf.dequantize(data, qtype).reshape(rows, cols)
            else:
                w = normal((rows, cols), std)
                if name in ("attn_q", "attn_k"):
                    w_gguf = permute(w, HEADS if name == "attn_q" else KV_HEADS)
                else:
                    w_gguf = w
                data, deq = encode(w_gguf, qtype)
                if name in ("attn_q", "attn_k"):
                    # Undo the permutation: transformers hands back Hugging Face row order.
                    n = HEADS if name == "attn_q" else KV_HEADS
                    deq = deq.reshape(n, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
                    # The loaded q/k must be the original (unpermuted) weights up to quantisation.
                    assert np.linalg.norm(deq - w) / np.linalg.norm(w) < 0.12, (i, name)
            tensors[f"blk.{i}.{name}.weight"] = (data, None if qtype in (Q.F32, Q.F16) else qtype)
            expected[f"{hf_name}.weight"] = deq
    w = norm()
    tensors["output_norm.weight"] = (w, None)
    expected["model.norm.weight"] = w
    return tensors, expected


def write_gguf(path, tensors):
    source = gguf.GGUFReader(SMOLLM2)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("llama-tiny (random init, clipsteer test fixture)")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(49152)
    for key in TOKENIZER_KEYS:
        field = source.fields[key]
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub)
    for name, (data, raw_dtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if not SMOLLM2.exists():
        raise SystemExit("run scripts/fetch-small-models.sh first: the fixture borrows SmolLM2's tokenizer metadata")
    rng = np.random.default_rng(20241128)
    tensors, expected = build_weights(rng)
    (FIXTURES / "reference").mkdir(parents=True, exist_ok=True)
    write_gguf(FIXTURES / NAME, tensors)

    model = AutoModelForCausalLM.from_pretrained(FIXTURES, gguf_file=NAME, dtype=torch.float32).eval()
    config = model.config
    assert config.tie_word_embeddings, "no output.weight: the head must be tied"
    assert (config.num_key_value_heads, config.num_attention_heads) == (KV_HEADS, HEADS)
    assert config.rms_norm_eps == float(np.float32(RMS_EPS)), config.rms_norm_eps  # stored as f32
    theta = config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None) else config.rope_theta
    assert theta == ROPE_THETA, theta
    # transformers must read back exactly the dequantised weights written (q/k in HF order).
    state = model.state_dict()
    for name, w in expected.items():
        assert torch.equal(state[name], torch.from_numpy(np.ascontiguousarray(w))), name
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])

    tokenizer = AutoTokenizer.from_pretrained(FIXTURES, gguf_file=NAME)
    cases = [{"text": t, "ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in TOKENIZER_STRINGS]

    generator = torch.Generator().manual_seed(12)
    vocab = config.vocab_size
    # A fixed column subset keeps the reference small; each sequence also keeps one full row.
    columns = torch.sort(torch.randperm(vocab, generator=generator)[:1024]).values
    seq_0 = torch.tensor([cases[0]["ids"]])
    # The whole context, so the last positions' rotary angles and the context bound are covered.
    seq_1 = torch.randint(0, vocab, (1, CONTEXT), generator=generator)
    batched = torch.randint(0, vocab, (2, 9), generator=generator)
    ref = {"columns": columns}
    with torch.no_grad():
        for i, ids in enumerate([seq_0, seq_1]):
            logits = model(ids).logits[0]
            ref[f"seq_{i}_ids"] = ids[0]
            ref[f"seq_{i}_logits"] = logits[:, columns]
            ref[f"seq_{i}_last_full"] = logits[-1]
        ref["batched_ids"] = batched
        ref["batched_logits"] = model(batched).logits[..., columns]
        # transformers' own cache agrees with its full forward: a check on the reference itself.
        past = model(seq_1[:, :5], use_cache=True).cache
        step = model(seq_1[:, 5:6], cache=past, use_cache=True).logits[0, -1]
        full = model(seq_1[:, :6]).logits[0, -1]
        assert torch.allclose(step, full, atol=1e-4), (step - full).abs().max()
    save_file({k: v.contiguous().to(torch.int64 if not v.is_floating_point() else torch.float32) for k, v in ref.items()},
              str(FIXTURES / "reference" / "llama-tiny.safetensors"))
    meta = {
        "config": {"vocab_size": vocab, "hidden": HIDDEN, "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS,
                   "intermediate": INTERMEDIATE, "context": CONTEXT, "rope_theta": ROPE_THETA, "rms_eps": RMS_EPS,
                   "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id},
        "formats": {"token_embd": EMBEDDING_FORMAT.name,
                    **{f"blk.{i}.{k}": v.name for i, f in enumerate(FORMATS) for k, v in f.items()}},
        "tokenizer": cases,
    }
    (FIXTURES / "reference" / "llama-tiny.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    print("wrote", FIXTURES / NAME, f"({(FIXTURES / NAME).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
