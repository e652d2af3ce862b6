#!/usr/bin/env python3
"""Writes the one set of checkpoint files that both sides of bench/compare.sh load: GPT-2 124M and
CLIP (B/32 or H/14) with transformers' random initialisation (seeded), saved with save_pretrained
as safetensors with their tokenizers and image processor, plus one test image. Not part of the
test suite; the files go to a gitignored cache (default .cache/bench).

    python bench/checkpoints.py --out .cache/bench --clip b32

Layout: OUT/gpt2/, OUT/clip-b32/ (or clip-h14/), OUT/image.png. A directory that already exists
is kept (delete it to rewrite); each is written next to its final name and renamed, so an
interrupted run leaves nothing half written.
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from clip_vocab import clip_vocab_and_merges  # noqa: E402

ASSETS = ROOT / "assets" / "tokenizers"

# openai/clip-vit-base-patch32 and laion/CLIP-ViT-H-14-laion2B-s32B-b79K.
CLIP_SHAPES = {
    "b32": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                  hidden_act="quick_gelu", eos_token_id=2),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    patch_size=32, image_size=224, hidden_act="quick_gelu"),
        projection_dim=512,
    ),
    "h14": dict(
        text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  hidden_act="gelu"),
        vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                    patch_size=14, image_size=224, hidden_act="gelu"),
        projection_dim=1024,
    ),
}


def write_atomically(target: Path, write):
    if target.exists():
        return False
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        write(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


def check_vocab(tokenizer, size):
    # A constructor that ignores its vocabulary arguments builds an empty tokenizer silently.
    if len(tokenizer) != size:
        raise SystemExit(f"{type(tokenizer).__name__} built with {len(tokenizer)} tokens, expected {size}")


def write_gpt2(path: Path):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).eval().save_pretrained(path, safe_serialization=True)
    tokenizer = GPT2TokenizerFast(vocab=str(ASSETS / "gpt2" / "encoder.json"), merges=str(ASSETS / "gpt2" / "vocab.bpe"))
    check_vocab(tokenizer, 50257)
    tokenizer.save_pretrained(path)


def write_clip(path: Path, arch: str):
    torch.manual_seed(0)
    shape = CLIP_SHAPES[arch]
    config = CLIPConfig(text_config=shape["text"], vision_config=shape["vision"], projection_dim=shape["projection_dim"])
    CLIPModel(config).eval().save_pretrained(path, safe_serialization=True)
    vocab, merges = clip_vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "vocab.json").write_text(json.dumps(vocab))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        tokenizer = CLIPTokenizerFast(vocab=str(tmp / "vocab.json"), merges=str(tmp / "merges.txt"), model_max_length=77)
        check_vocab(tokenizer, 49408)
        tokenizer.save_pretrained(path)
    # openai/clip-vit-base-patch32's preprocessor_config.json (LAION's H/14 uses the same values).
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(path)


def write_image(path: Path):
    # Smooth gradients plus noise, 320×240: resizing and cropping both have work to do.
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320]
    base = np.stack([x / 320 * 255, y / 240 * 255, (x + y) / 560 * 255], axis=-1)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--clip", choices=sorted(CLIP_SHAPES), action="append",
                        help="CLIP architecture(s) to write (repeatable; default b32)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if write_atomically(args.out / "gpt2", write_gpt2):
        print(f"wrote {args.out / 'gpt2'}", file=sys.stderr)
    for arch in args.clip or ["b32"]:
        if write_atomically(args.out / f"clip-{arch}", lambda p: write_clip(p, arch)):
            print(f"wrote {args.out / f'clip-{arch}'}", file=sys.stderr)
    image = args.out / "image.png"
    if not image.exists():
        tmp = args.out / ".image.png"
        write_image(tmp)
        tmp.rename(image)


if __name__ == "__main__":
    main()
