#!/usr/bin/env python3
"""Writes tests/fixtures/reference/clipscore.json: CLIPScore on the fixture CLIP by the two published
conventions, computed with transformers (and, for torchmetrics' convention, with torchmetrics
itself when it is importable).

    /work/venv/bin/python tools/make_clipscore_reference.py
    # optional: PYTHONPATH=/tmp/tm after `pip install --target /tmp/tm torchmetrics lightning-utilities --no-deps`

- Hessel et al. 2021 (github.com/jmhessel/clipscore, clipscore.py): the caption is encoded as
  "A photo depicts " + caption (a space is added to a prefix that lacks one), features are
  L2-normalised, and CLIP-S = 2.5 * max(cos, 0). The bare form (prefix "") is written too.
- torchmetrics (functional/multimodal/clip_score.py): 100 * max(cos, 0) on the bare caption.

Images are read as clipsteer's reference reads every image: ImageOps.exif_transpose(Image.open(p))
through CLIPImageProcessor (PIL backend), so transparency is composited onto white.
"""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import CLIPModel, CLIPTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CLIP = FIXTURES / "clip-tiny-gelu"
IMAGES = ["crop32.png", "rgba_50x50.png"]
CAPTIONS = ["a cat sitting on a mat", "gear", "zapp starfish gear", "", "Two dogs play in the snow."]
PREFIXES = ["A photo depicts ", "", "a picture of"]


def text_for(prefix, caption):
    if not prefix:
        return caption
    return (prefix if prefix.endswith(" ") else prefix + " ") + caption


def main():
    model = CLIPModel.from_pretrained(CLIP).eval()
    tokenizer = CLIPTokenizerFast.from_pretrained(CLIP)
    processor = CLIPImageProcessorPil.from_pretrained(CLIP)

    def text_features(text):
        ids = tokenizer(text, truncation=True, max_length=77, return_tensors="pt")["input_ids"]
        f = model.get_text_features(input_ids=ids).pooler_output[0].double()
        return f / f.norm()

    cases = []
    with torch.no_grad():
        for name in IMAGES:
            image = ImageOps.exif_transpose(Image.open(FIXTURES / "images" / name))
            pixels = processor(images=image, return_tensors="pt")["pixel_values"]
            img = model.get_image_features(pixel_values=pixels).pooler_output[0].double()
            img = img / img.norm()
            for prefix in PREFIXES:
                for caption in CAPTIONS:
                    cos = float(text_features(text_for(prefix, caption)) @ img)
                    cases.append({"image": name, "convention": "hessel", "prefix": prefix,
                                  "caption": caption, "encoded": text_for(prefix, caption),
                                  "cosine": cos, "clipscore": 2.5 * max(cos, 0.0)})
            for caption in CAPTIONS:
                cos = float(text_features(caption) @ img)
                cases.append({"image": name, "convention": "torchmetrics", "prefix": "",
                              "caption": caption, "encoded": caption, "cosine": cos,
                              "clipscore": 100 * max(cos, 0.0)})
    checked = check_with_torchmetrics(model, tokenizer, cases)
    out = {"clip": CLIP.name, "torchmetrics_checked": checked, "cases": cases}
    (FIXTURES / "reference" / "clipscore.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(cases)} cases; torchmetrics cross-check: {checked}")


def check_with_torchmetrics(model, tokenizer, cases):
    """torchmetrics' own clip_score on the same model, processor and pixels, where it imports."""
    try:
        from torchmetrics.functional.multimodal import clip_score
        from transformers import CLIPProcessor
    except ImportError:
        return False
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil.from_pretrained(CLIP), tokenizer=tokenizer)

    class Features(torch.nn.Module):
        """transformers 5 returns model outputs from get_*_features; torchmetrics 1.9 expects the
        pooled tensor."""

        def __init__(self):
            super().__init__()
            self.model, self.config = model, model.config

        def get_image_features(self, *args, **kwargs):
            return model.get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args, **kwargs):
            return model.get_text_features(*args, **kwargs).pooler_output

    shim = Features()
    for case in cases:
        if case["convention"] != "torchmetrics" or not case["caption"]:
            continue
        image = ImageOps.exif_transpose(Image.open(FIXTURES / "images" / case["image"]))
        # Composite as transformers does, then hand torchmetrics the uint8 CHW tensor it expects.
        from transformers.image_transforms import convert_to_rgb
        rgb = convert_to_rgb(image, return_numpy=True)
        tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        with torch.no_grad():
            score = float(clip_score(tensor, case["caption"], model_name_or_path=lambda: (shim, processor)))
        assert abs(score - case["clipscore"]) < 1e-3, (case, score)
    return True


if __name__ == "__main__":
    main()
