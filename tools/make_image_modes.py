#!/usr/bin/env python3
"""Writes tests/fixtures/image_modes/: small images of every mode a user can hand in, written with
Pillow (or byte by byte where Pillow cannot write the case), and what transformers makes of each.

    /work/venv/bin/python tools/make_image_modes.py      # torch, transformers, pillow, numpy, safetensors

The reference for an image file is what transformers' CLIPImageProcessor (PIL backend) makes of
`ImageOps.exif_transpose(Image.open(path))`: its `convert_to_rgb` composites any transparency
(alpha channel, palette tRNS, RGB/L colour key) onto white, and the rest (resize, crop, rescale,
normalise) follows. For each image, reference.safetensors holds
  - `rgb/NAME`: uint8 [H, W, 3], transformers' `convert_to_rgb` output (the pixels before resizing);
  - `pixel_values/NAME`: float32 [3, 16, 16], the processor's output;
  - for 16-bit PNGs also `scaled_rgb/NAME` and `scaled_pixel_values/NAME`: the same for the image
    scaled correctly to 8 bits (round(v / 257)), which clipsteer does instead of Pillow's clip at
    255 (I;16) or high byte (RGB16).
manifest.json lists the images with their mode as Pillow opens it and whether they are JPEG.
The processor is the fixture CLIP's (tests/fixtures/clip-tiny-quickgelu) with a 16-pixel size and
crop, to keep the files small; it is written beside the images.
"""
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file
from transformers.image_transforms import convert_to_rgb
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "image_modes"
W, H = 21, 15  # odd sizes: partial JPEG MCUs, odd chroma, a resize in both directions
SIXTEEN_BIT = {}  # the 16-bit samples written, by file name


def pattern(h, w, seed):
    """Colour blocks with sharp chroma edges, a gradient and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.where((x // 4 + y // 3) % 2 == 0, 220.0, 30.0)
    g = 20 + 200 * x / max(w - 1, 1)
    b = 127 + 100 * np.sin(y / 2.0 + seed)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def png_bytes(width, height, bit_depth, colour_type, rows, extra=b""):
    """A PNG written chunk by chunk, for what Pillow cannot write (16-bit RGB, RGB with tRNS)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + row for row in rows)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def trns_chunk(data):
    return struct.pack(">I", len(data)) + b"tRNS" + data + struct.pack(">I", zlib.crc32(b"tRNS" + data))


def gif_blocks(data):
    """Offsets of the logical screen descriptor and of the first image descriptor of a GIF."""
    assert data[:6] in (b"GIF87a", b"GIF89a")
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[pos] == 0x21:  # extensions: skip their sub-blocks
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C, "image descriptor expected"
    return pos


def partial_gif(transparency):
    """A GIF whose first frame (12×8 at (5, 3)) does not cover its 21×15 canvas. Pillow writes the
    frame; the canvas size and frame offset are then patched in. The logical screen's background
    index is set to 3: Pillow does not use it for the first frame, and neither must we."""
    small = Image.fromarray(pattern(8, 12, 11)).convert("P", palette=Image.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    kwargs = {"transparency": transparency} if transparency is not None else {}
    small.save(buf, "GIF", optimize=False, **kwargs)  # optimising would drop the unused entry
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", W, H)
    data[11] = 3
    pos = gif_blocks(data)
    data[pos + 1:pos + 5] = struct.pack("<HH", 5, 3)
    return bytes(data)


def make_images():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    base = pattern(H, W, 1)
    rng = np.random.default_rng(5)
    images = {}

    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    alpha[0, :4] = 0
    alpha[1, :4] = 255
    images["rgba.png"] = lambda p: Image.fromarray(np.dstack([base, alpha])).save(p)
    images["la.png"] = lambda p: Image.fromarray(np.dstack([base[..., 1], alpha])).save(p)
    palette_image = Image.fromarray(base).convert("P", palette=Image.ADAPTIVE, colors=32)
    images["p.png"] = lambda p: palette_image.save(p)
    # tRNS with a fully transparent entry, partial alphas, and opaque entries left implicit.
    images["p_trns.png"] = lambda p: palette_image.save(
        p, transparency=bytes([0, 64, 128, 200] + [255] * 4 + [30]))

    def rgb_key(path):
        img = base.copy()
        img[2:6, 3:9] = (10, 20, 30)  # the transparent colour, and a near miss beside it
        img[7, 3:9] = (10, 20, 31)
        rows = [r.tobytes() for r in img]
        path.write_bytes(png_bytes(W, H, 8, 2, rows, trns_chunk(struct.pack(">HHH", 10, 20, 30))))

    images["rgb_trns.png"] = rgb_key

    def l_key(path):
        img = base[..., 0].copy()
        img[4:8, 2:12] = 77
        path.write_bytes(png_bytes(W, H, 8, 0, [r.tobytes() for r in img], trns_chunk(struct.pack(">H", 77))))

    images["l_trns.png"] = l_key
    images["bilevel.png"] = lambda p: Image.fromarray(base[..., 0] > 127).convert("1").save(p)
    images["l.png"] = lambda p: Image.fromarray(base[..., 1]).save(p)

    grey16 = (np.linspace(0, 65535, H * W).reshape(H, W)).astype(np.uint16)
    rgb16 = (base.astype(np.uint32) * 257 + rng.integers(0, 257, base.shape)).astype(np.uint16)
    images["i16.png"] = lambda p: p.write_bytes(
        png_bytes(W, H, 16, 0, [r.astype(">u2").tobytes() for r in grey16]))
    images["rgb16.png"] = lambda p: p.write_bytes(
        png_bytes(W, H, 16, 2, [r.astype(">u2").tobytes() for r in rgb16]))
    SIXTEEN_BIT["i16.png"], SIXTEEN_BIT["rgb16.png"] = grey16, rgb16

    cmyk = np.dstack([255 - base, (base[..., 0] // 3)[..., None]]).astype(np.uint8)
    cmyk_image = Image.frombytes("CMYK", (W, H), cmyk.tobytes())

    def cmyk_jpeg(path, transform):
        buf = io.BytesIO()
        cmyk_image.save(buf, "JPEG", quality=92)
        data = bytearray(buf.getvalue())
        at = data.find(b"Adobe")
        assert at > 0 and data[at - 4:at - 2] == b"\xff\xee", "libjpeg writes an Adobe marker for CMYK"
        data[at + 11] = transform  # 0: CMYK; 2: YCCK (the same samples read as YCCK)
        path.write_bytes(bytes(data))

    images["cmyk.jpg"] = lambda p: cmyk_jpeg(p, 0)
    images["ycck.jpg"] = lambda p: cmyk_jpeg(p, 2)
    images["baseline444.jpg"] = lambda p: Image.fromarray(base).save(p, quality=90, subsampling=0)
    images["subsampled420.jpg"] = lambda p: Image.fromarray(base).save(p, quality=90, subsampling=2)
    images["progressive.jpg"] = lambda p: Image.fromarray(base).save(p, quality=85, progressive=True)
    images["grey.jpg"] = lambda p: Image.fromarray(base[..., 2]).save(p, quality=90)
    # Strong noise at quality 75, 4:2:0, a height of 44 (not a multiple of the 16-row MCU): where
    # zune-jpeg and libjpeg-turbo differ most, on the bottom row.
    noisy = np.clip(pattern(44, 64, 3).astype(np.int32) + rng.normal(0, 30, (44, 64, 3)), 0, 255).astype(np.uint8)
    images["noisy420.jpg"] = lambda p: Image.fromarray(noisy).save(p, quality=75, subsampling=2)

    frame2 = pattern(H, W, 9)
    images["animated.gif"] = lambda p: Image.fromarray(base).save(
        p, save_all=True, append_images=[Image.fromarray(frame2)], duration=100, loop=0)
    images["partial_transparent.gif"] = lambda p: p.write_bytes(partial_gif(transparency=2))
    images["partial_opaque.gif"] = lambda p: p.write_bytes(partial_gif(transparency=None))
    rgba_frame = np.dstack([base, alpha])
    images["animated.webp"] = lambda p: Image.fromarray(rgba_frame).save(
        p, save_all=True, append_images=[Image.fromarray(frame2)], duration=100, lossless=True)
    images["lossless.webp"] = lambda p: Image.fromarray(rgba_frame).save(p, lossless=True)

    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        raw = exif.tobytes()
        images[f"exif{orientation}.jpg"] = lambda p, raw=raw: Image.fromarray(base).save(
            p, quality=90, exif=raw)
        images[f"exif{orientation}.png"] = lambda p, raw=raw: Image.fromarray(base).save(p, exif=raw)
        images[f"exif{orientation}.webp"] = lambda p, raw=raw: Image.fromarray(base).save(
            p, lossless=True, exif=raw)

    # Every (value, alpha) pair, to pin the compositing arithmetic exhaustively.
    value, alpha_all = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    images["composite_all.png"] = lambda p: Image.fromarray(np.dstack([value, alpha_all])).save(p)
    for name, write in images.items():
        write(OUT / name)
    return list(images)


def processor():
    config = json.loads((FIXTURES / "clip-tiny-quickgelu" / "preprocessor_config.json").read_text())
    config["size"] = 16
    config["crop_size"] = 16
    (OUT / "preprocessor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return CLIPImageProcessorPil.from_pretrained(OUT)


def reference(proc, image):
    rgb = convert_to_rgb(image, return_numpy=True)
    pixels = proc(images=image, return_tensors="np")["pixel_values"][0]
    return torch.from_numpy(np.ascontiguousarray(rgb)), torch.from_numpy(np.ascontiguousarray(pixels))


def main():
    names = make_images()
    proc = processor()
    tensors, manifest = {}, []
    for name in names:
        opened = Image.open(OUT / name)
        mode = opened.mode
        image = ImageOps.exif_transpose(opened)
        assert image.info.get("transparency") == opened.info.get("transparency"), name
        rgb, pixels = reference(proc, image)
        entry = {"name": name, "pillow_mode": mode, "size": list(image.size),
                 "transparency": opened.info.get("transparency") is not None or "A" in opened.getbands()}
        if name == "composite_all.png":
            # Grey in, grey out: one channel holds the whole table.
            assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
            tensors[f"grey/{name}"] = rgb[..., 0].contiguous()
            manifest.append(entry)
            continue
        tensors[f"rgb/{name}"] = rgb
        tensors[f"pixel_values/{name}"] = pixels
        if name in ("i16.png", "rgb16.png"):
            scaled = Image.fromarray(np.round(SIXTEEN_BIT[name] / 257).astype(np.uint8))
            tensors[f"scaled_rgb/{name}"], tensors[f"scaled_pixel_values/{name}"] = reference(proc, scaled)
        manifest.append(entry)
    save_file(tensors, OUT / "reference.safetensors")
    (OUT / "manifest.json").write_text(json.dumps({"images": manifest}, indent=1) + "\n")
    print(f"wrote {len(names)} images to {OUT}")


if __name__ == "__main__":
    main()
