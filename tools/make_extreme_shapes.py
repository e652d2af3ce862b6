#!/usr/bin/env python3
"""Writes tests/fixtures/extreme_shapes/: strips and other extreme aspect ratios, and what
transformers' CLIPImageProcessor (PIL backend, Pillow 13) makes of each at CLIP's usual 224 pixels.

    python -m venv .venv && .venv/bin/pip install numpy pillow safetensors transformers
    .venv/bin/python tools/make_extreme_shapes.py     # no torch needed

Resizing the shortest side of an 8000×1 strip to 224 makes a 1792000×224 image before the centre
crop keeps 224×224 of it; clipsteer computes only the kept part, and these references pin that it
is the same part. The processor runs with do_rescale and do_normalize off, so its output is the
resized and cropped 8-bit pixels themselves (normalisation is pinned by tests/image_modes.rs):
reference.safetensors holds `pixel_values/NAME`, uint8 [3, 224, 224]. The processor's settings
are written beside the images as preprocessor_config.json.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import save_file
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "extreme_shapes"


def noise(h, w, channels, seed, spread=40):
    """Smooth colour ramps under noise: resampling of both is visible in the output."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = 128 + 100 * np.sin((x + 2 * y) / 37.0 + seed)
    img = ramp[..., None] + rng.normal(0, spread, (h, w, channels))
    return np.clip(img, 0, 255).astype(np.uint8)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    images = {
        # The strips: 103 bytes as a blank PNG, 1.2 GB resized in full.
        "wide_8000x1.png": Image.fromarray(noise(1, 8000, 3, 1)),
        "tall_1x8000.png": Image.fromarray(noise(8000, 1, 3, 2)),
        # Transparency composited onto white, on a strip whose crop reads 3-row windows.
        "wide_rgba_5000x3.png": Image.fromarray(noise(3, 5000, 4, 3)),
        # Grey (read pixel by pixel, not as packed RGB), upscaled 11.2 times along both sides.
        "tall_grey_20x3000.png": Image.fromarray(noise(3000, 20, 1, 4)[..., 0]),
    }
    config = {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": False,
        "do_rescale": False,
        "do_resize": True,
        "image_processor_type": "CLIPImageProcessor",
        "resample": 3,
        "size": {"shortest_edge": 224},
    }
    (OUT / "preprocessor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    processor = CLIPImageProcessorPil.from_pretrained(OUT)
    tensors = {}
    for name, image in images.items():
        image.save(OUT / name)
        opened = Image.open(OUT / name)
        pixels = processor(images=opened, return_tensors="np")["pixel_values"][0]
        assert pixels.shape == (3, 224, 224), (name, pixels.shape)
        exact = np.asarray(pixels)
        assert np.array_equal(exact, np.round(exact)) and exact.min() >= 0 and exact.max() <= 255, name
        tensors[f"pixel_values/{name}"] = np.ascontiguousarray(exact.astype(np.uint8))
    save_file(tensors, OUT / "reference.safetensors")
    (OUT / "reference.safetensors").chmod(0o644)
    print(f"wrote {len(images)} images to {OUT}")
    pass_order()


def pass_order():
    """tests/fixtures/pass_order/: portraits whose height shrinks by more than twice what the
    width does, for which Pillow >= 11.2 runs the vertical pass first (ImagingResampleInner) and
    so rounds between the passes differently, and shapes next to that boundary. Small images at
    a 32-pixel target keep the files small: CLIP's shortest-edge resize and centre crop
    (`shortest/NAME`) and SigLIP's exact resize (`exact/NAME`), uint8 [3, 32, 32]."""
    out = ROOT / "tests" / "fixtures" / "pass_order"
    out.mkdir(parents=True, exist_ok=True)
    images = {
        "portrait_100x300.png": noise(300, 100, 3, 11),
        "portrait_20x36.png": noise(36, 20, 3, 12),
        "strip_2x200.png": noise(200, 2, 3, 13),
        "portrait_rgba_40x130.png": noise(130, 40, 4, 14),
        "landscape_300x100.png": noise(100, 300, 3, 15),
        "boundary_60x120.png": noise(120, 60, 3, 16),
        "boundary_60x121.png": noise(121, 60, 3, 17),
    }
    base = {"do_convert_rgb": True, "do_normalize": False, "do_rescale": False, "do_resize": True, "resample": 3}
    clip = dict(base, image_processor_type="CLIPImageProcessor", do_center_crop=True,
                size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    siglip = dict(base, image_processor_type="SiglipImageProcessor", size={"height": 32, "width": 32})
    tensors = {}
    for kind, config, cls in [("shortest", clip, CLIPImageProcessorPil), ("exact", siglip, SiglipImageProcessorPil)]:
        (out / kind).mkdir(exist_ok=True)
        (out / kind / "preprocessor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        processor = cls.from_pretrained(out / kind)
        for name, pixels in images.items():
            Image.fromarray(pixels).save(out / name)
            pixels = processor(images=Image.open(out / name), return_tensors="np")["pixel_values"][0]
            assert pixels.shape == (3, 32, 32), (name, pixels.shape)
            tensors[f"{kind}/{name}"] = np.ascontiguousarray(np.asarray(pixels).astype(np.uint8))
    save_file(tensors, out / "reference.safetensors")
    (out / "reference.safetensors").chmod(0o644)
    print(f"wrote {len(images)} images to {out}")


if __name__ == "__main__":
    main()
