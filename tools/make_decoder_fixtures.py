#!/usr/bin/env python3
"""Writes tiny random-init checkpoints of Hugging Face decoder-only families and transformers'
outputs on them, for the Rust decoder parity tests.

    /work/venv/bin/python tools/make_decoder_fixtures.py     # torch, transformers, tokenizers, safetensors

Outputs (deterministic; rerunning gives byte-identical files):
    tests/fixtures/tokenizers/tiny-bpe-tokenizer.json        one byte-level BPE, 512 tokens, shared
    tests/fixtures/decoders/<family>/                        config.json, generation_config.json,
                                                             weights, tokenizer.json (a symlink)
    tests/fixtures/reference/decoders/<family>.safetensors   ids, logits, hidden, greedy (+ long_*)
    tests/fixtures/reference/decoders/manifest.json          versions and each family's settings

Families: llama (llama3 rope scaling, f32), llama-linear (linear rope scaling, tied, bf16 in
shards), llama-dynamic (dynamic NTK rope), mistral (sliding window, f16 pytorch_model.bin), qwen2
(q/k/v biases, tied), qwen3 (q/k norms, head_dim != hidden/heads), gemma2 (softcaps, alternating
sliding layers, query_pre_attn_scalar), gemma3_text (layers sliding, sliding, full with a separate
rope base for the sliding ones) and phi3 (fused qkv and gate_up projections). Each reference file
holds ids [2, 24], logits [2, 24, 512], hidden [2, 24, 64] and greedy [12]; llama-dynamic's also
long_ids [1, 40], long_logits [1, 40, 512] (past its original length of 32, so transformers'
dynamic NTK rescales every position), long_cached_logits [1, 10, 512] (the last 10 positions fed one at
a time after a prefill of 30 with a cache, as generation runs) and long_prefix_logits [1, 24, 512] (long_ids[:, :24] run
alone: no rescaling). manifest.json says how that rescaling behaves, with and without a KV cache.

Every config is built in code (nothing comes from the Hugging Face hub) and written by
`save_pretrained`, so config.json carries the field names today's transformers writes. Weights are
random, larger than transformers' default init (initializer_range 0.2), with random norm weights
and biases: an identity norm, a zero (1 + w) Gemma norm or a zero bias would let a missing or
misplaced term pass a parity test. The reference is always computed from the files as written
(reloaded in float32, eager attention), so bf16 and f16 checkpoints are compared with what a
loader reading them must get.
"""
import json
import math
import os
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TOKENIZER = FIXTURES / "tokenizers" / "tiny-bpe-tokenizer.json"
DECODERS = FIXTURES / "decoders"
REFERENCE = FIXTURES / "reference" / "decoders"

VOCAB = 512
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
CONTEXT = 64
INIT = 0.2  # transformers' default of 0.02 leaves the logits of a tiny model all nearly equal
SEQ = 24  # reference length: three times the sliding windows of 8, so the windows bite
PROMPT = 8  # greedy decoding starts from ids[0, :PROMPT] ...
GREEDY = 12  # ... and appends this many tokens
LONG = 40  # llama-dynamic's long run: past its original length of 32, so the NTK update triggers

# The special tokens the families' real tokenizers use; one shared vocabulary has them all, so
# each family's bos/eos/pad ids are ids of its own tokens.
SPECIALS = [
    "<|endoftext|>", "<s>", "</s>", "<bos>", "<eos>", "<pad>",
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>",
    "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "[INST]", "[/INST]",
]

CORPUS = """A small brown dog is running across a green field in the morning.
The picture shows a red bicycle leaning against a yellow wall.
Two cats are sleeping on a blue sofa next to the window.
A tall lighthouse stands on the rocks above the grey sea.
The city at night is full of bright lights and busy streets.
An old man is feeding pigeons in a quiet square in Paris.
A photo of a white horse standing in the snow near a wooden fence.
The painting has deep blue skies, orange clouds and a purple mountain.
Children are flying a kite on the beach while the waves roll in.
A black and white photograph of a train station in London.
The elephant is drinking water from a muddy river in the afternoon.
Green parrots sit on a branch of a tree in the rain forest.
A woman in a red coat walks her dog along the river in Berlin.
The market in Tokyo sells fresh fish, fruit and colourful flowers.
A close-up picture of a sunflower with a bee on its petals.
The mountains are covered with snow and the lake below is calm.
A bowl of soup, a loaf of bread and a glass of milk on a table.
Three sheep are grazing on a hill under a cloudy sky.
A boy in a yellow raincoat jumps into a puddle on the street.
The bridge in New York is lit in gold and silver at sunset.
An owl with big orange eyes sits on a fence post at night.
The colours of the autumn leaves are red, brown, gold and orange.
A fox runs through the tall grass at the edge of the forest.
A picture of a crowded harbour with fishing boats and seagulls.
The zebra and the giraffe walk side by side across the dry plain.
A girl is drawing a pink house with a crayon on white paper.
Tall buildings of glass and steel reflect the blue sky in Chicago.
The little rabbit hides under a bush in the garden.
A whale jumps out of the dark water near the ship.
The room has a green carpet, a brown desk and a lamp with a white shade.
People are dancing in the square of an old town in Spain.
A tiger rests in the shade of a tree on a hot day.
The photo shows a street in Rome with cafes and small shops.
A grey wolf howls at the full moon above the snowy hills.
The sky over the desert turns violet and pink after the sun sets.
A penguin slides on the ice while others watch from the shore.
An image of a cat sitting on a windowsill in the sun.
Describe the picture: a man rides a black horse through a field of poppies.
The colours in this photo are mostly green, teal and a little bit of red.
Bright umbrellas fill the rainy streets of a city in the evening."""


# ---------------------------------------------------------------------------------------------
# The tokenizer


def train_tokenizer():
    """A byte-level BPE of exactly VOCAB tokens: SPECIALS first (ids 0..20, special=True), then
    the 256 byte characters, then merges learned on CORPUS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return tokenizer


def write_tokenizer():
    tokenizer = train_tokenizer()
    text = tokenizer.to_str(pretty=True)
    # The trainer counts words in a hash map; a second training in this process must give the
    # same file (the second run of the script checks across processes).
    assert train_tokenizer().to_str(pretty=True) == text, "BPE training is not deterministic"
    assert tokenizer.get_vocab_size(with_added_tokens=True) == VOCAB, tokenizer.get_vocab_size()
    for i, token in enumerate(SPECIALS):
        assert tokenizer.token_to_id(token) == i, (token, tokenizer.token_to_id(token))
    added = json.loads(text)["added_tokens"]
    assert [t["content"] for t in added] == SPECIALS and all(t["special"] for t in added)
    sample = "A picture of a cat on a red sofa. Émile's café 🐱<|im_end|>"
    assert tokenizer.decode(tokenizer.encode(sample).ids, skip_special_tokens=False) == sample
    TOKENIZER.parent.mkdir(parents=True, exist_ok=True)
    TOKENIZER.write_text(text + "\n")
    return tokenizer


# ---------------------------------------------------------------------------------------------
# The families


def tok(name):
    return SPECIALS.index(name)


def common(**overrides):
    kw = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
              num_key_value_heads=KV_HEADS, intermediate_size=INTERMEDIATE, max_position_embeddings=CONTEXT,
              rms_norm_eps=1e-6, initializer_range=INIT)
    kw.update(overrides)
    return kw


# Llama 3's rope scaling with a 32-token "original" context. The brief's 16 cannot give all three
# bands: every rope wavelength is >= 2*pi (the fastest frequency is 1), and with high_freq_factor 4
# the high band is wavelength < 16 / 4 = 4, so it would be empty. With 32 the bands are < 8
# (unchanged), > 32 (divided by factor) and 8..32 (interpolated); head_dim 16 has wavelengths
# 6.3, 19.9, 62.8, ... so each band gets at least one.
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}

FAMILIES = [
    {
        "name": "llama", "seed": 101, "weights": "f32",
        "config": lambda: LlamaConfig(**common(
            rope_parameters=dict(LLAMA3_ROPE), tie_word_embeddings=False,
            bos_token_id=tok("<|begin_of_text|>"), eos_token_id=tok("<|end_of_text|>"))),
        # Llama 3 stops on either: the base model's end of text or the chat turn's end.
        "generation_eos": ["<|end_of_text|>", "<|eot_id|>"],
    },
    {
        "name": "llama-linear", "seed": 102, "weights": "bf16-sharded",
        "config": lambda: LlamaConfig(**common(
            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
            tie_word_embeddings=True, bos_token_id=tok("<s>"), eos_token_id=tok("</s>"))),
        "generation_eos": ["</s>"],
    },
    {
        # transformers' dynamic NTK takes its "original" length from max_position_embeddings: an
        # `original_max_position_embeddings` key in rope_parameters is not read for "dynamic"
        # (validation warns it is unrecognized), so the original length of 32 is max_position_embeddings.
        "name": "llama-dynamic", "seed": 103, "weights": "f32",
        "config": lambda: LlamaConfig(**common(
            max_position_embeddings=32,
            rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
            tie_word_embeddings=False, bos_token_id=tok("<s>"), eos_token_id=tok("</s>"))),
        "generation_eos": ["</s>"],
    },
    {
        "name": "mistral", "seed": 104, "weights": "f16-bin",
        "config": lambda: MistralConfig(**common(
            sliding_window=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False, bos_token_id=tok("<s>"), eos_token_id=tok("</s>"))),
        "generation_eos": ["</s>"],
    },
    {
        # Qwen2.5-Instruct's ids: bos <|endoftext|>, eos <|im_end|>; generation stops on either.
        "name": "qwen2", "seed": 105, "weights": "f32",
        "config": lambda: Qwen2Config(**common(
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True,
            use_sliding_window=False, bos_token_id=tok("<|endoftext|>"), eos_token_id=tok("<|im_end|>"))),
        "generation_eos": ["<|im_end|>", "<|endoftext|>"],
        "generation_pad": "<|endoftext|>",
    },
    {
        "name": "qwen3", "seed": 106, "weights": "f32",
        "config": lambda: Qwen3Config(**common(
            head_dim=32,  # not HIDDEN / HEADS = 16: q/o projections are 128 wide
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False,
            use_sliding_window=False, bos_token_id=tok("<|endoftext|>"), eos_token_id=tok("<|im_end|>"))),
        "generation_eos": ["<|im_end|>", "<|endoftext|>"],
        "generation_pad": "<|endoftext|>",
    },
    {
        "name": "gemma2", "seed": 107, "weights": "f32", "gemma": True,
        "config": lambda: Gemma2Config(**common(
            head_dim=32, query_pre_attn_scalar=24,  # scale 24**-0.5, not head_dim**-0.5
            attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=8,
            hidden_activation="gelu_pytorch_tanh", rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=True, bos_token_id=tok("<bos>"), eos_token_id=tok("<eos>"),
            pad_token_id=tok("<pad>"))),
        "generation_eos": ["<eos>", "<end_of_turn>"],
        "generation_pad": "<pad>",
        # Attention scores of O(1) hardly feel a cap of 50: larger q/k projections give scores of
        # tens, where tanh bends (checked below against the same weights with the caps removed).
        "qk_scale": 3.0,
    },
    {
        "name": "gemma3_text", "seed": 108, "weights": "f32", "gemma": True,
        "config": lambda: Gemma3TextConfig(**common(
            num_hidden_layers=3, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            head_dim=32, query_pre_attn_scalar=24, sliding_window=8, hidden_activation="gelu_pytorch_tanh",
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            tie_word_embeddings=True, bos_token_id=tok("<bos>"), eos_token_id=tok("<eos>"),
            pad_token_id=tok("<pad>"))),
        "generation_eos": ["<eos>", "<end_of_turn>"],
        "generation_pad": "<pad>",
    },
    {
        # Phi-3-mini's ids: bos <s>, eos = pad = <|endoftext|>; generation also stops on <|end|>.
        "name": "phi3", "seed": 109, "weights": "f32",
        "config": lambda: Phi3Config(**common(
            original_max_position_embeddings=CONTEXT, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
            bos_token_id=tok("<s>"), eos_token_id=tok("<|endoftext|>"), pad_token_id=tok("<|endoftext|>"))),
        "generation_eos": ["<|endoftext|>", "<|end|>"],
        "generation_pad": "<|endoftext|>",
    },
]


def randomize(model, family):
    """Norm weights and biases away from their identity init (see the docstring), from a generator
    of the family's own so that the values do not depend on how much transformers' init drew."""
    g = torch.Generator().manual_seed(family["seed"] + 5000)
    with torch.no_grad():
        for name, module in model.named_modules():
            if "RMSNorm" in type(module).__name__:
                w = module.weight
                noise = torch.randn(w.shape, generator=g)
                # Gemma's norms multiply by (1 + w) and init w to 0.
                w.copy_(0.5 * noise if family.get("gemma") else 1.0 + 0.3 * noise)
            elif isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
        if "qk_scale" in family:
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(family["qk_scale"])
                layer.self_attn.k_proj.weight.mul_(family["qk_scale"])


def save(model, family, out):
    kind = family["weights"]
    if kind == "f32":
        model.save_pretrained(out)
    elif kind == "bf16-sharded":
        # ~180 KB of bf16 weights in 100 KB shards: several model-0000k-of-0000n.safetensors files
        # and model.safetensors.index.json.
        model.to(torch.bfloat16).save_pretrained(out, max_shard_size="100KB")
    elif kind == "f16-bin":
        # transformers 5 no longer writes pytorch_model.bin (save_pretrained has no
        # safe_serialization), but loads it. The state dict it writes as safetensors (tied weights
        # already dropped) is re-saved with torch.save, as transformers 4 did.
        model.to(torch.float16).save_pretrained(out)
        state = load_file(str(out / "model.safetensors"))
        (out / "model.safetensors").unlink()
        torch.save({k: state[k] for k in sorted(state)}, out / "pytorch_model.bin")
    else:
        raise ValueError(kind)


def weight_files(out):
    return sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json"))


def greedy(model, prompt):
    """The argmax loop without a cache: a full forward on the whole sequence for each new token.
    Also the smallest gap between the best and second-best logit: a gap far above the logits'
    tolerance means equal greedy tokens are a fair demand of a loader."""
    seq, margin = prompt, math.inf
    for _ in range(GREEDY):
        last = model(seq).logits[:, -1]
        top = last.topk(2, dim=-1).values
        margin = min(margin, (top[:, 0] - top[:, 1]).min().item())
        seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    return seq[0, prompt.shape[1]:], margin


def rebuilt(out, **config_changes):
    """The saved model in float32 with some config fields changed (transformers reads some of them
    at construction, e.g. Gemma 2's attention softcap, so the model is built anew)."""
    config = transformers.AutoConfig.from_pretrained(out)
    for k, v in config_changes.items():
        setattr(config, k, v)
    model = AutoModelForCausalLM.from_pretrained(out, config=config, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    return model


def check_llama3_bands(model):
    rope = model.config.rope_parameters
    head_dim = model.config.head_dim
    inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    wavelen = 2 * math.pi / inv_freq
    high = rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    low = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    bands = {"unchanged (wavelength < %g)" % high: int((wavelen < high).sum()),
             "interpolated": int(((wavelen >= high) & (wavelen <= low)).sum()),
             "divided by factor (wavelength > %g)" % low: int((wavelen > low).sum())}
    assert all(n > 0 for n in bands.values()), bands
    return {"wavelengths": [round(float(w), 4) for w in wavelen], "frequencies_per_band": bands}


def dynamic_rope_notes(model, long_ids, ref):
    """What transformers' dynamic NTK does past the original length, measured on this model."""
    config = model.config
    original = config.max_position_embeddings
    dim = config.head_dim
    factor = config.rope_parameters["factor"]
    base = config.rope_parameters["rope_theta"]
    scaled_base = base * ((factor * LONG / original) - (factor - 1)) ** (dim / (dim - 2))
    rotary = model.model.rotary_emb
    with torch.no_grad():
        # A forward of LONG tokens recomputes inv_freq for seq_len = LONG and applies it to every
        # position, the first 24 too: they differ from the length-24 run's.
        prefix_diff = (ref["long_logits"][:, :SEQ] - ref["long_prefix_logits"]).abs().max().item()
        assert prefix_diff > 1e-3, prefix_diff
        expected = 1.0 / (scaled_base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        model(long_ids)
        assert torch.allclose(rotary.inv_freq, expected, rtol=1e-5), (rotary.inv_freq, expected)
        # A run of exactly `original` tokens after it keeps the scaled frequencies: the reset
        # needs seq_len < original (strict), so the result depends on the previous call.
        model(long_ids[:, :original])
        stale = bool(not torch.allclose(rotary.inv_freq, rotary.original_inv_freq))
        model(long_ids[:, :SEQ])  # shorter than original: back to the unscaled frequencies
        assert torch.equal(rotary.inv_freq, rotary.original_inv_freq)
        # With a KV cache: prefill 30, then one token at a time to LONG. Each step past the
        # original length recomputes inv_freq for max(position)+1 and rotates only the new
        # token's q/k with it; cached keys keep the rotation they were stored with.
        prefill = 30
        out = model(long_ids[:, :prefill], use_cache=True)
        cache, steps = out.cache, []
        for t in range(prefill, LONG):
            out = model(long_ids[:, t:t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits[0, -1])
        # What generation with a cache computes, position by position: clipsteer's semantics.
        ref["long_cached_logits"] = torch.stack(steps).unsqueeze(0)
        cached_last = steps[-1]
        full_last = ref["long_logits"][0, -1]
        cache_diff = (cached_last - full_last).abs().max().item()
        model(long_ids[:, :SEQ])  # leave the module in its initial state
    return {
        "original_length": original,
        "original_length_field": "max_position_embeddings (dynamic reads no original_max_position_embeddings)",
        "rule": "each forward takes seq_len = max(position_ids) + 1; if seq_len > the longest seen so far "
                "(initially max_position_embeddings) it recomputes inv_freq with base' = rope_theta * "
                "(factor * seq_len / max_position_embeddings - (factor - 1)) ** (head_dim / (head_dim - 2)) "
                "and uses it for ALL positions of that forward; if seq_len < max_position_embeddings after a "
                "longer sequence it resets to the unscaled inv_freq. The state lives in the rotary module "
                "between calls.",
        "scaled_base_at_40": scaled_base,
        "long_logits_prefix_vs_length_24_run_max_abs_diff": prefix_diff,
        "exactly_original_length_after_longer_run_keeps_scaled_freqs": stale,
        "kv_cache": "no recomputation of cached keys: prefill of 30 then single-token steps to 40 rotate each "
                    "new token with inv_freq for its own max position + 1 (33, 34, ... 40), while keys "
                    "cached earlier keep their older rotation, so cached decoding differs from a full "
                    "forward past the original length",
        "kv_cache_last_logits_vs_full_forward_max_abs_diff": cache_diff,
    }


def make_family(family):
    name = family["name"]
    out = DECODERS / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    torch.manual_seed(family["seed"])
    config = family["config"]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    randomize(model, family)
    gen = {"bos_token_id": config.bos_token_id, "eos_token_id": [tok(t) for t in family["generation_eos"]]}
    if family.get("generation_pad"):
        gen["pad_token_id"] = tok(family["generation_pad"])
    if len(gen["eos_token_id"]) == 1:
        gen["eos_token_id"] = gen["eos_token_id"][0]
    model.generation_config = GenerationConfig(**gen)
    save(model, family, out)
    os.symlink("../../tokenizers/tiny-bpe-tokenizer.json", out / "tokenizer.json")

    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager",
                                                       output_loading_info=True)
    model.eval()
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    config = model.config
    assert config.vocab_size == VOCAB and config.hidden_size == HIDDEN

    g = torch.Generator().manual_seed(family["seed"] + 1000)
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    ids[0, 0] = config.bos_token_id
    ref = {"ids": ids}
    extra = {}
    with torch.no_grad():
        ref["logits"] = model(ids).logits
        ref["hidden"] = model.model(ids).last_hidden_state
        ref["greedy"], margin = greedy(model, ids[:1, :PROMPT])
        assert margin > 5e-3, f"{name}: greedy step with a near tie ({margin})"
        spread = (ref["logits"].amax(-1) - ref["logits"].amin(-1)).min().item()
        assert spread > 4.0, f"{name}: logits too flat ({spread})"
        if name != "llama-dynamic":
            # transformers' cache agrees with its full forward: a check on the reference itself.
            pre = model(ids[:, :16], use_cache=True)
            step = model(ids[:, 16:17], cache=pre.cache, use_cache=True).logits[:, -1]
            assert torch.allclose(step, ref["logits"][:, 16], atol=1e-4), (step - ref["logits"][:, 16]).abs().max()
        if name == "llama":
            extra["llama3_rope"] = check_llama3_bands(model)
        if name == "llama-dynamic":
            long_ids = torch.randint(0, VOCAB, (1, LONG), generator=g)
            long_ids[0, 0] = config.bos_token_id
            ref["long_ids"] = long_ids
            ref["long_logits"] = model(long_ids).logits
            ref["long_prefix_logits"] = model(long_ids[:, :SEQ]).logits
            extra["dynamic_rope"] = dynamic_rope_notes(model, long_ids, ref)
        if name == "gemma2":
            # Each softcap must matter, or a loader that skips it would still pass.
            for field in ("attn_logit_softcapping", "final_logit_softcapping"):
                uncapped = rebuilt(out, **{field: None})(ids).logits
                diff = (uncapped - ref["logits"]).abs().max().item()
                assert diff > 1e-2, (field, diff)
                extra[f"logits_max_abs_diff_without_{field}"] = diff
    tensors = {k: v.contiguous().to(torch.float32 if v.is_floating_point() else torch.int64) for k, v in ref.items()}
    save_file(tensors, str(REFERENCE / f"{name}.safetensors"))

    saved = json.loads((out / "config.json").read_text())
    layers = config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layer_types = getattr(config, "layer_types", None)
    sliding = getattr(config, "sliding_window", None)
    sliding_layers = ([i for i, t in enumerate(layer_types) if t == "sliding_attention"] if layer_types
                      else list(range(layers)) if sliding is not None else [])
    first = next(iter(sorted(p for p in out.iterdir() if p.suffix in (".safetensors", ".bin"))))
    dtype = (next(iter(load_file(str(first)).values())).dtype if first.suffix == ".safetensors"
             else next(iter(torch.load(first, weights_only=True).values())).dtype)
    entry = {
        "model_type": config.model_type,
        "architectures": saved.get("architectures"),
        "dir": str(out.relative_to(ROOT)),
        "reference": str((REFERENCE / f"{name}.safetensors").relative_to(ROOT)),
        "weight_files": weight_files(out),
        "weight_dtype": str(dtype).removeprefix("torch."),
        "config_dtype_field": saved.get("dtype", saved.get("torch_dtype")),
        "seed": family["seed"],
        "num_hidden_layers": layers,
        # Qwen2Config has no head_dim field; the models use hidden_size // num_attention_heads.
        "head_dim": head_dim,
        "attention_scale": (config.query_pre_attn_scalar ** -0.5 if hasattr(config, "query_pre_attn_scalar")
                            else head_dim ** -0.5),
        "rope_parameters": saved.get("rope_parameters"),
        "layer_types": layer_types,
        "sliding_window": sliding,
        # transformers' sliding mask keeps key k for query q when q - window < k <= q: the token
        # itself and the window - 1 before it.
        "sliding_window_keys_including_self": sliding,
        "sliding_layers": sliding_layers,
        "attn_logit_softcapping": getattr(config, "attn_logit_softcapping", None),
        "final_logit_softcapping": getattr(config, "final_logit_softcapping", None),
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "config_eos_token_id": config.eos_token_id,
        "eos_token_ids": [tok(t) for t in family["generation_eos"]],
        "pad_token_id": getattr(config, "pad_token_id", None),
        # transformers' init zeroes the embedding row of pad_token_id (nn.Embedding padding_idx).
        "zero_embedding_row": getattr(config, "pad_token_id", None),
        "reference_tensors": {k: list(v.shape) for k, v in tensors.items()},
        "greedy_min_top2_margin": margin,
        **extra,
    }
    print(f"{name}: {entry['weight_files']} {entry['weight_dtype']} logits spread >= {spread:.2f}")
    return entry


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    print("transformers", transformers.__version__, "torch", torch.__version__)
    write_tokenizer()
    REFERENCE.mkdir(parents=True, exist_ok=True)
    families = {f["name"]: make_family(f) for f in FAMILIES}
    manifest = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizer": str(TOKENIZER.relative_to(ROOT)),
        "vocab_size": VOCAB,
        "ids": f"[2, {SEQ}] random in [0, {VOCAB}), row 0 starts with bos; fed as is (no bos added)",
        "logits": "model(ids).logits in float32, eval, attn_implementation='eager', weights reloaded as float32",
        "hidden": "model.model(ids).last_hidden_state (after the final norm)",
        "greedy": f"{GREEDY} argmax tokens appended to ids[0, :{PROMPT}], a full forward per step, no eos stop",
        "families": families,
    }
    (REFERENCE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for d in (DECODERS, REFERENCE) for p in d.rglob("*") if p.is_file() and not p.is_symlink())
    total += TOKENIZER.stat().st_size
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
