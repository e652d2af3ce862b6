#!/usr/bin/env python3
"""Writes the tiny random-init Gemma 3 GGUF fixture and transformers' outputs on it.

    /work/venv/bin/python tools/make_gemma3_fixture.py     # torch, transformers, gguf

Outputs (deterministic; rerunning gives byte-identical files):
    tests/fixtures/gemma3-tiny.gguf
    tests/fixtures/reference/gemma3-tiny.safetensors
    tests/fixtures/reference/gemma3-tiny.json
and, when scripts/fetch-small-models.sh has fetched the real gemma-3-270m Q4_K_M GGUF, transformers'
ids and logits on it (tests/real_models.rs):
    tests/fixtures/reference/gemma3-270m-tokenizer.json
    tests/fixtures/reference/gemma3-270m.safetensors

The checkpoint is laid out as llama.cpp's convert_hf_to_gguf.py writes Gemma 3: matrices as
(out, in), no q/k permutation (Gemma rotates halves), RMSNorm weights stored as 1 + w, the head
tied to the embeddings, `gemma3.*` metadata. Six layers, so that layer 5 is the global one of
Gemma 3's 5:1 pattern, and a sliding window of 8 in a context of 64, so that the window bites.

The vocabulary is our own, not Gemma's (its terms would then travel with this repository): the
special and control tokens Gemma's tokenizer has, its 256 byte tokens, tokens of spaces stored as
spaces, and pieces learned by a small BPE on a few English sentences, in merge order, with no
merges in the file, as a Gemma GGUF has. transformers builds the tokenizer from the file itself
(GemmaTokenizer, merges recovered from the vocabulary) and loads the model (Gemma3ForCausalLM);
its ids and logits are the reference.

GGUF has no `query_pre_attn_scalar`; llama.cpp scales attention by 1/sqrt(head_dim), which equals
transformers' default of 256 only when head_dim is 256. The fixture's head_dim is 32, so transformers
is given query_pre_attn_scalar = 32 (the real gemma-3-270m has head_dim 256 and 256).
"""
import json
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
NAME = "gemma3-tiny.gguf"

HIDDEN = 64
LAYERS = 6
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 32  # not HIDDEN / HEADS (16): the file's key_length must be used
INTERMEDIATE = 128
CONTEXT = 64
WINDOW = 8
ROPE_THETA = 1_000_000.0
RMS_EPS = 1e-6

# The matrices' GGML types: a few formats, Q8_0 for the embeddings as in the real file.
FORMATS = {"attn_q": Q.Q8_0, "attn_k": Q.F16, "attn_v": Q.F32, "attn_output": Q.Q8_0,
           "ffn_gate": Q.F16, "ffn_up": Q.Q8_0, "ffn_down": Q.Q8_0}
EMBEDDING_FORMAT = Q.Q8_0

CORPUS = """A lighthouse stands on a rocky cliff above the stormy sea.
A quiet library with tall wooden shelves full of old books.
The old man is reading a newspaper on a bench in the park.
Children are building a sandcastle on the beach, and the dog is playing with a red ball.
A bowl of hot soup with green onions, served in a busy restaurant kitchen.
Heavy rain flooded the streets of the city last night, and the wind was cold.
An image of a cat sitting on the windowsill in the sun.
Write one sentence describing a scene. The picture shows people walking in the snow."""

# Control tokens (3), user-defined (4), normal (1), bytes (6), as Gemma's file has them.
SPECIALS = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 3), ("<mask>", 3), ("[multimodal]", 4),
            ("<start_of_turn>", 3), ("<end_of_turn>", 3), ("\n", 4), ("\n\n", 4), ("\t\t", 4),
            ("  ", 1), ("   ", 1), ("<b>", 4)]

TOKENIZER_STRINGS = [
    "A lighthouse stands on a rocky cliff.",
    "Two  spaces,   three, and\n\nnew lines\n",
    "Émile's café — naïve 日本語 🐱 42",
    "<start_of_turn>user\nWrite one sentence.<end_of_turn>\n<start_of_turn>model\n",
    " leading space and <b>bold</b> text",
]


def learn_pieces(corpus, merges):
    """A plain BPE on the corpus's words ("▁" for the space before a word): the learned pieces in
    merge order, then the single characters."""
    words = Counter("\u2581" + w for line in corpus.splitlines() for w in line.split(" ") if w)
    seqs = {w: list(w) for w in words}
    pieces = []
    for _ in range(merges):
        pairs = Counter()
        for w, n in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        pieces.append(a + b)
        for w in words:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    chars = sorted({c for w in words for c in w})
    return pieces + [c for c in chars if c not in pieces]


def vocabulary():
    tokens, types, scores = [], [], []
    for t, kind in SPECIALS:
        tokens.append(t), types.append(kind), scores.append(-1000.0)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>"), types.append(6), scores.append(0.0)
    for i, piece in enumerate(learn_pieces(CORPUS, 300)):
        if piece in tokens:
            continue
        tokens.append(piece), types.append(1), scores.append(-float(i))
    return tokens, types, scores


def build_weights(rng, vocab):
    def normal(shape, std):
        return rng.normal(0.0, std, shape).astype(np.float32)

    def norm(n):
        # Stored as 1 + w (llama.cpp's Gemma converter); random so a missed norm shows.
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    tensors = {}  # gguf name -> (data, raw_dtype or None)
    data = gguf.quantize(normal((vocab, HIDDEN), 1.0), EMBEDDING_FORMAT)
    tensors["token_embd.weight"] = (data, EMBEDDING_FORMAT)
    for i in range(LAYERS):
        shapes = {
            "attn_q": (HEADS * HEAD_DIM, HIDDEN),
            "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
            "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN),
            "attn_output": (HIDDEN, HEADS * HEAD_DIM),
            "ffn_gate": (INTERMEDIATE, HIDDEN),
            "ffn_up": (INTERMEDIATE, HIDDEN),
            "ffn_down": (HIDDEN, INTERMEDIATE),
        }
        for name in ["attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"]:
            tensors[f"blk.{i}.{name}.weight"] = (norm(HIDDEN), None)
        for name in ["attn_q_norm", "attn_k_norm"]:
            tensors[f"blk.{i}.{name}.weight"] = (norm(HEAD_DIM), None)
        for name, (rows, cols) in shapes.items():
            w = normal((rows, cols), 1.0 / np.sqrt(cols))
            qtype = FORMATS[name]
            if qtype == Q.F32:
                tensors[f"blk.{i}.{name}.weight"] = (w, None)
            elif qtype == Q.F16:
                tensors[f"blk.{i}.{name}.weight"] = (w.astype(np.float16), None)
            else:
                tensors[f"blk.{i}.{name}.weight"] = (gguf.quantize(w, qtype), qtype)
    tensors["output_norm.weight"] = (norm(HIDDEN), None)
    return tensors


def write_gguf(path, tensors, tokens, types, scores):
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("gemma3-tiny (random init, clipsteer test fixture)")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_sliding_window(WINDOW)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    for name, (data, raw_dtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(20261129)
    tokens, types, scores = vocabulary()
    tensors = build_weights(rng, len(tokens))
    (FIXTURES / "reference").mkdir(parents=True, exist_ok=True)
    write_gguf(FIXTURES / NAME, tensors, tokens, types, scores)

    model = AutoModelForCausalLM.from_pretrained(
        FIXTURES, gguf_file=NAME, dtype=torch.float32, query_pre_attn_scalar=HEAD_DIM).eval()
    config = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM", type(model)
    assert config.head_dim == HEAD_DIM and config.sliding_window == WINDOW, config
    assert config.layer_types == ["sliding_attention"] * 5 + ["full_attention"], config.layer_types
    assert config.query_pre_attn_scalar == HEAD_DIM
    assert config.final_logit_softcapping is None and config.attn_logit_softcapping is None
    assert model.model.embed_tokens.embed_scale.item() == np.float32(np.sqrt(HIDDEN))
    # transformers reads back 1 + w - 1: the (1 + weight) norms see the written values.
    w = model.state_dict()["model.layers.0.input_layernorm.weight"]
    assert torch.allclose(1 + w, torch.from_numpy(tensors["blk.0.attn_norm.weight"][0]), atol=1e-6)
    assert torch.equal(model.state_dict()["lm_head.weight"], model.state_dict()["model.embed_tokens.weight"])

    tokenizer = AutoTokenizer.from_pretrained(FIXTURES, gguf_file=NAME)
    cases = [{"text": t, "ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in TOKENIZER_STRINGS]
    for case in cases:
        assert tokenizer.decode(case["ids"]) == case["text"], case

    generator = torch.Generator().manual_seed(12)
    vocab = config.vocab_size
    assert vocab == len(tokens)
    bos = config.bos_token_id
    seq_0 = torch.tensor([[bos] + cases[0]["ids"]])
    # The whole context: eight times the window, so sliding layers mask most keys.
    seq_1 = torch.cat([torch.tensor([bos]), torch.randint(0, vocab, (CONTEXT - 1,), generator=generator)])[None]
    batched = torch.randint(0, vocab, (2, 11), generator=generator)
    ref = {}
    with torch.no_grad():
        for i, ids in enumerate([seq_0, seq_1]):
            logits = model(ids).logits[0]
            ref[f"seq_{i}_ids"] = ids[0]
            ref[f"seq_{i}_logits"] = logits
        ref["batched_ids"] = batched
        ref["batched_logits"] = model(batched).logits
        # transformers' own cache agrees with its full forward past the window: a check on the
        # reference itself.
        out = model(seq_1[:, :20], use_cache=True)
        step = model(seq_1[:, 20:21], past_key_values=out.past_key_values, use_cache=True).logits[0, -1]
        full = model(seq_1[:, :21]).logits[0, -1]
        assert torch.allclose(step, full, atol=1e-4), (step - full).abs().max()
    save_file({k: v.contiguous().to(torch.int64 if not v.is_floating_point() else torch.float32) for k, v in ref.items()},
              str(FIXTURES / "reference" / "gemma3-tiny.safetensors"))
    meta = {
        "config": {"vocab_size": vocab, "hidden": HIDDEN, "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS,
                   "head_dim": HEAD_DIM, "intermediate": INTERMEDIATE, "context": CONTEXT, "sliding_window": WINDOW,
                   "rope_theta": ROPE_THETA, "rope_local_theta": config.rope_parameters["sliding_attention"]["rope_theta"]
                   if getattr(config, "rope_parameters", None) else config.rope_local_base_freq,
                   "rms_eps": RMS_EPS, "bos_token_id": bos, "eos_token_id": config.eos_token_id},
        "tokenizer": cases,
    }
    (FIXTURES / "reference" / "gemma3-tiny.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    print("wrote", FIXTURES / NAME, f"({(FIXTURES / NAME).stat().st_size} bytes)", "vocab", vocab)


REAL = ROOT / ".cache" / "models" / "gemma3"
REAL_NAME = "gemma-3-270m-q4_k_m.gguf"
REAL_STRINGS = [
    "An image of a cat",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers 12345 and 3.14 and 2024-11-28",
    "  leading spaces and\ttabs\nnewlines\n\n",
    "Émile's café — naïve ünïcödé 日本語 🐱",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "CamelCaseWords and snake_case_words <div>html</div>",
    "",
]


def make_real_reference():
    """gemma-3-270m from its Q4_K_M GGUF as transformers loads it: tokenizer ids, and logits of the
    dequantised model in float32 on a column subset (the vocabulary is 262 144 wide)."""
    if not (REAL / REAL_NAME).exists():
        print("no", REAL / REAL_NAME, "- skipping the real-model reference (run scripts/fetch-small-models.sh)")
        return
    tokenizer = AutoTokenizer.from_pretrained(REAL, gguf_file=REAL_NAME)
    model = AutoModelForCausalLM.from_pretrained(REAL, gguf_file=REAL_NAME, dtype=torch.float32).eval()
    assert model.config.query_pre_attn_scalar == model.config.head_dim == 256
    cases = [{"text": t, "ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in REAL_STRINGS]
    (FIXTURES / "reference" / "gemma3-270m-tokenizer.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")
    generator = torch.Generator().manual_seed(11)
    columns = torch.sort(torch.randperm(model.config.vocab_size, generator=generator)[:2048]).values
    ref = {"columns": columns.to(torch.int64)}
    with torch.no_grad():
        for i, text in enumerate(["A picture of a cat sitting on", "The quick brown fox jumps over the lazy dog."]):
            # As transformers tokenizes a prompt for Gemma: <bos> first.
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            assert ids[0, 0] == model.config.bos_token_id
            logits = model(ids).logits
            ref[f"seq_{i}_ids"] = ids[0].to(torch.int64)
            ref[f"seq_{i}_logits"] = logits[0][:, columns]
    save_file({k: v.contiguous() for k, v in ref.items()}, str(FIXTURES / "reference" / "gemma3-270m.safetensors"))


if __name__ == "__main__":
    main()
    make_real_reference()
