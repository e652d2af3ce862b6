#!/usr/bin/env python3
"""The reference loop (the original demo's, in PyTorch + transformers) on full-size random-init
architectures, for side-by-side timing with `clipsteer bench`. Not part of the test suite.

Each step: GPT-2's top-k next tokens; phrase = decode(ids + [candidate]); a full CLIP text forward
of every phrase (padded batch); the most similar candidate wins.
"""
import argparse
import json
import sys
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from clip_vocab import clip_vocab_and_merges  # noqa: E402

ASSETS = ROOT / "assets" / "tokenizers"

CLIP_SHAPES = {
    "b32": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, hidden_act="quick_gelu", eos_token_id=2),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=32, image_size=224, hidden_act="quick_gelu"),
        projection_dim=512,
    ),
    "h14": dict(
        text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, hidden_act="gelu"),
        vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14, image_size=224, hidden_act="gelu"),
        projection_dim=1024,
    ),
}


def clip_tokenizer():
    vocab, merges = clip_vocab_and_merges()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizerFast(vocab=str(tmp / "vocab.json"), merges=str(tmp / "merges.txt"))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clip", choices=sorted(CLIP_SHAPES), default="b32")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", default="An image of ")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    gpt2_tok = GPT2TokenizerFast(vocab=str(ASSETS / "gpt2" / "encoder.json"), merges=str(ASSETS / "gpt2" / "vocab.bpe"))
    clip_tok = clip_tokenizer()
    gpt2 = GPT2LMHeadModel(GPT2Config()).eval()
    shape = CLIP_SHAPES[args.clip]
    clip = CLIPModel(CLIPConfig(text_config=shape["text"], vision_config=shape["vision"], projection_dim=shape["projection_dim"])).eval()

    step_ms = []
    with torch.inference_mode():
        pixels = torch.randn(1, 3, 224, 224)
        image = clip.get_image_features(pixel_values=pixels).pooler_output
        image = image / image.norm(dim=-1, keepdim=True)
        ids = gpt2_tok(args.prompt)["input_ids"]
        start = time.perf_counter()
        for _ in range(args.steps):
            t0 = time.perf_counter()
            logits = gpt2(torch.tensor([ids])).logits[0, -1]
            candidates = torch.topk(logits, args.top_k).indices.tolist()
            phrases = [gpt2_tok.decode(ids + [c]) for c in candidates]
            inputs = clip_tok(phrases, padding=True, truncation=True, max_length=77, return_tensors="pt")
            text = clip.get_text_features(**inputs).pooler_output
            text = text / text.norm(dim=-1, keepdim=True)
            sims = (text @ image.T)[:, 0]
            ids.append(candidates[int(torch.argmax(sims))])
            step_ms.append((time.perf_counter() - t0) * 1e3)
        caption = time.perf_counter() - start
    report = {"clip": args.clip, "top_k": args.top_k, "steps": args.steps, "threads": args.threads,
              "median_step_ms": statistics.median(step_ms), "caption_seconds": caption, "step_ms": step_ms,
              "torch": torch.__version__}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"reference loop ({args.clip}, k={args.top_k}, {args.threads} threads): median step "
              f"{report['median_step_ms']:.0f} ms, caption {caption:.1f} s")


if __name__ == "__main__":
    main()
