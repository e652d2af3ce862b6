#!/usr/bin/env python3
"""Writes the PyTorch-format checkpoints that clipsteer's loader and stand-in hub tests serve,
derived from the committed tiny safetensors fixtures, with transformers' reference outputs on
the float16- and bfloat16-rounded weights.

    /work/venv/bin/python tools/make_torch_fixtures.py   (torch, transformers, safetensors)

Only files that must be written by real torch are committed (tests/fixtures/torch/); the f16,
bf16 and sharded safetensors variants are written at test time from the f32 files, since a
dtype cast rounds to nearest-even in candle exactly as in torch.

Files (all `torch.save` zip format unless named legacy):
  minilm-f32.bin, minilm-f16.bin, minilm-bf16.bin   the BERT sentence encoder in each dtype
  minilm-sharded/pytorch_model-0000{1,2}-of-00002.bin + pytorch_model.bin.index.json
  minilm-legacy.bin                                   torch's pre-1.6 (non-zip) format
  clip-gelu-f16.bin                                   CLIP, as openai/clip-* ship it (f16 to stay small)
  sd-vae.bin, sd-text-encoder.bin                     diffusers components as .bin
  reference.json + reference.safetensors              sentence embeddings on the rounded weights
"""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import BertModel

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "torch"


def state(path):
    return {k: v.contiguous() for k, v in load_file(str(path)).items()}


def cast(tensors, dtype):
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    minilm = state(FIXTURES / "minilm-tiny" / "model.safetensors")
    for name, dtype in [("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)]:
        torch.save(cast(minilm, dtype), OUT / f"minilm-{name}.bin")
    torch.save(minilm, OUT / "minilm-legacy.bin", _use_new_zipfile_serialization=False)

    # Two shards and an index, named and laid out as transformers' save_pretrained writes them.
    sharded = OUT / "minilm-sharded"
    sharded.mkdir(exist_ok=True)
    names = sorted(minilm)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, half in enumerate(halves):
        shard = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({k: minilm[k] for k in half}, sharded / shard)
        weight_map.update({k: shard for k in half})
    total = sum(v.numel() * v.element_size() for v in minilm.values())
    (sharded / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")

    clip = state(FIXTURES / "clip-tiny-gelu" / "model.safetensors")
    torch.save(cast(clip, torch.float16), OUT / "clip-gelu-f16.bin")
    torch.save(state(FIXTURES / "sd-tiny" / "vae" / "diffusion_pytorch_model.safetensors"), OUT / "sd-vae.bin")
    torch.save(state(FIXTURES / "sd-tiny" / "text_encoder" / "model.safetensors"), OUT / "sd-text-encoder.bin")

    # transformers' sentence embeddings with the weights rounded to each dtype and computed in
    # f32, as clipsteer computes them on the CPU.
    cases = json.loads((FIXTURES / "reference" / "sentence.json").read_text())
    ref = {}
    for name, dtype in [("f16", torch.float16), ("bf16", torch.bfloat16)]:
        model = BertModel.from_pretrained(FIXTURES / "minilm-tiny", add_pooling_layer=False).eval()
        with torch.no_grad():
            for p in model.state_dict().values():
                if p.is_floating_point():
                    p.copy_(p.to(dtype).to(torch.float32))
            for i, case in enumerate(cases):
                ids = torch.tensor([case["ids"]])
                hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
                pooled = hidden.mean(1)
                ref[f"{name}_sentence_{i}_embedding"] = torch.nn.functional.normalize(pooled, dim=-1)[0]
    save_file({k: v.contiguous() for k, v in ref.items()}, str(OUT / "reference.safetensors"))
    print("wrote", sorted(p.name for p in OUT.rglob("*")))


if __name__ == "__main__":
    main()
