#!/usr/bin/env python3
"""The reference loop (the original demo's, in PyTorch + transformers) on checkpoint directories,
for side-by-side timing with `clipsteer bench --lm DIR --encoder DIR --image FILE` on the same
files (bench/checkpoints.py writes them). Not part of the test suite.

Each step: GPT-2's top-k next tokens over the whole text (the demo keeps no KV cache);
phrase = decode(ids + [candidate]); a full CLIP text forward of every phrase (one padded batch);
the most similar candidate wins.
"""
import argparse
import json
import statistics
import time

import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizerFast, GPT2LMHeadModel, GPT2TokenizerFast


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", required=True, help="GPT-2 directory (save_pretrained layout)")
    parser.add_argument("--encoder", required=True, help="CLIP directory (save_pretrained layout)")
    parser.add_argument("--image", required=True)
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", default="An image of ")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (f32 throughout; TF32 off)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # Exact f32 on a GPU as on the CPU: no TF32 in matmuls or convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    gpt2_tok = GPT2TokenizerFast.from_pretrained(args.lm)
    gpt2 = GPT2LMHeadModel.from_pretrained(args.lm).eval().to(device)
    clip_tok = CLIPTokenizerFast.from_pretrained(args.encoder)
    processor = CLIPImageProcessor.from_pretrained(args.encoder)
    clip = CLIPModel.from_pretrained(args.encoder).eval().to(device)

    step_ms = []
    with torch.inference_mode():
        pixels = processor(images=Image.open(args.image).convert("RGB"), return_tensors="pt")["pixel_values"].to(device)
        image = clip.get_image_features(pixel_values=pixels)
        image = getattr(image, "pooler_output", image)
        image = image / image.norm(dim=-1, keepdim=True)
        prompt_ids = gpt2_tok(args.prompt)["input_ids"]
        ids = list(prompt_ids)
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            t0 = time.perf_counter()
            logits = gpt2(torch.tensor([ids], device=device)).logits[0, -1]
            candidates = torch.topk(logits, args.top_k).indices.tolist()
            phrases = [gpt2_tok.decode(ids + [c]) for c in candidates]
            inputs = clip_tok(phrases, padding=True, truncation=True, max_length=77, return_tensors="pt").to(device)
            text = clip.get_text_features(**inputs)
            text = getattr(text, "pooler_output", text)
            text = text / text.norm(dim=-1, keepdim=True)
            sims = (text @ image.T)[:, 0]
            ids.append(candidates[int(torch.argmax(sims))])
            sync()
            step_ms.append((time.perf_counter() - t0) * 1e3)
        caption = time.perf_counter() - start
    report = {"prompt": args.prompt, "top_k": args.top_k, "steps": args.steps, "threads": args.threads,
              "median_step_ms": statistics.median(step_ms), "caption_seconds": caption, "step_ms": step_ms,
              "token_ids": ids[len(prompt_ids):], "text": gpt2_tok.decode(ids), "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"reference loop (k={args.top_k}, {args.threads} threads): median step "
              f"{report['median_step_ms']:.0f} ms, caption {caption:.1f} s")


if __name__ == "__main__":
    main()
