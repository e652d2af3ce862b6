#!/usr/bin/env python3
"""Writes tests/fixtures/extreme_shapes/: strips and other extreme aspect ratios, and what
transformers' CLIPImageProcessor (PIL backend) makes of each at CLIP's usual 224 pixels.

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

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "extreme_shapes"


def noise(h, w, channels, seed):
    """Smooth colour ramps under noise: resampling of both is visible in the output."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = 128 + 100 * np.sin((x + 2 * y) / 37.0 + seed)
    img = ramp[..., None] + rng.normal(0, 40, (h, w, channels))
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


if __name__ == "__main__":
    main()
