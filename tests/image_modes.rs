//! Every image mode a user can hand in, against transformers' CLIPImageProcessor (PIL backend) on
//! `ImageOps.exif_transpose(Image.open(path))`: tests/fixtures/image_modes, written by
//! tools/make_image_modes.py. The rule: the RGB pixels equal those transformers' `convert_to_rgb`
//! makes (transparency composited onto white), and the pixel values equal the processor's, with
//! two named exceptions: 16-bit PNGs (scaled correctly where Pillow clips or truncates) and JPEGs
//! (zune-jpeg, within `JPEG_TOLERANCE` levels of libjpeg-turbo).

mod common;

use candle_core::{Device, Tensor};
use clipsteer::image::{
    load_image, to_rgb, ClipImageProcessor, DecodeLimits, JPEG_EDGE_TOLERANCE, JPEG_TOLERANCE,
};
use common::fixture;
use image::{DynamicImage, RgbImage};
use std::collections::HashMap;

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("image_modes/reference.safetensors"), &Device::Cpu)
        .unwrap()
}

fn names() -> Vec<String> {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("image_modes/manifest.json")).unwrap(),
    )
    .unwrap();
    manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

fn open(name: &str) -> DynamicImage {
    load_image(
        &fixture(&format!("image_modes/{name}")),
        DecodeLimits::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// A [H, W, 3] uint8 reference as an image.
fn rgb_of(t: &Tensor) -> RgbImage {
    let (h, w, c) = t.dims3().unwrap();
    assert_eq!(c, 3);
    let data = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    RgbImage::from_raw(w as u32, h as u32, data).unwrap()
}

/// The largest per-channel difference, in levels.
fn max_level_diff(a: &RgbImage, b: &RgbImage, what: &str) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions(), "{what}: sizes differ");
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// The largest difference inside the image and on its border, in levels. The bottom row of a
/// 4:2:0 JPEG may differ more (`JPEG_EDGE_TOLERANCE`); after an EXIF rotation that row can be any
/// of the four borders.
fn jpeg_diff(a: &RgbImage, b: &RgbImage, what: &str) -> (u8, u8) {
    assert_eq!(a.dimensions(), b.dimensions(), "{what}: sizes differ");
    let (w, h) = a.dimensions();
    let (mut inside, mut border) = (0u8, 0u8);
    for (x, y, p) in a.enumerate_pixels() {
        let q = b.get_pixel(x, y);
        let d = (0..3).map(|c| p[c].abs_diff(q[c])).max().unwrap_or(0);
        if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
            border = border.max(d);
        } else {
            inside = inside.max(d);
        }
    }
    (inside, border)
}

fn assert_jpeg_close(got: &RgbImage, want: &RgbImage, name: &str) -> u8 {
    let (inside, border) = jpeg_diff(got, want, name);
    eprintln!("{name}: {inside} levels from libjpeg-turbo inside, {border} on the border");
    assert!(
        inside <= JPEG_TOLERANCE && border <= JPEG_EDGE_TOLERANCE,
        "{name}: {inside} levels inside, {border} on the border, from libjpeg-turbo's pixels"
    );
    inside.max(border)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn processor() -> ClipImageProcessor {
    ClipImageProcessor::load(&fixture("image_modes")).unwrap()
}

fn pixels(processor: &ClipImageProcessor, image: &DynamicImage) -> Tensor {
    processor.preprocess(image, &Device::Cpu).unwrap()
}

#[test]
fn every_mode_gives_transformers_pixels() {
    let reference = reference();
    let processor = processor();
    let names = names();
    assert!(names.len() >= 45, "{} images", names.len());
    let mut jpeg_worst = 0u8;
    for name in names
        .iter()
        .filter(|n| !n.starts_with("composite_all") && !n.contains("16."))
    {
        let image = open(name);
        let want_rgb = rgb_of(&reference[&format!("rgb/{name}")]);
        let want_pixels = &reference[&format!("pixel_values/{name}")];
        let got_rgb = to_rgb(&image);
        if name.ends_with(".jpg") {
            jpeg_worst = jpeg_worst.max(assert_jpeg_close(&got_rgb, &want_rgb, name));
            // Everything after decoding is exact: Pillow's pixels through our processor give
            // transformers' pixel values.
            let from_pillow = pixels(&processor, &DynamicImage::ImageRgb8(want_rgb));
            assert!(max_abs(&from_pillow, want_pixels) <= 1e-6, "{name}");
        } else {
            let diff = max_level_diff(&got_rgb, &want_rgb, name);
            assert_eq!(diff, 0, "{name}: RGB pixels differ from Pillow's");
            let got = pixels(&processor, &image);
            assert!(
                max_abs(&got, want_pixels) <= 1e-6,
                "{name}: pixel values differ"
            );
        }
    }
    // The tolerance is tight: the fixtures do reach part of it, and a decoder change that grows
    // the difference fails above.
    assert!(jpeg_worst > 0, "the JPEG fixtures no longer differ at all");
}

#[test]
fn transparency_is_composited_onto_white() {
    let reference = reference();
    // Every (value, alpha) pair through Pillow's alpha_composite arithmetic.
    let table = open("composite_all.png");
    let want = reference["grey/composite_all.png"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let got = to_rgb(&table);
    for (i, (p, w)) in got.pixels().zip(&want).enumerate() {
        assert_eq!(
            p.0,
            [*w; 3],
            "value {} alpha {}: Pillow gives {w}",
            i % 256,
            i / 256
        );
    }
    // The cases the issue measured: fully transparent areas are white, not the hidden colour.
    for (name, x, y) in [
        ("rgba.png", 0, 0),
        ("p_trns.png", 0, 0),
        ("rgb_trns.png", 3, 2),
        ("l_trns.png", 2, 4),
    ] {
        let rgb = to_rgb(&open(name));
        if name != "p_trns.png" {
            assert_eq!(rgb.get_pixel(x, y).0, [255; 3], "{name}");
        }
        assert_eq!(rgb, rgb_of(&reference[&format!("rgb/{name}")]), "{name}");
    }
    // A near miss of the colour key stays opaque.
    let keyed = to_rgb(&open("rgb_trns.png"));
    assert_eq!(keyed.get_pixel(3, 7).0, [10, 20, 31]);
}

#[test]
fn a_partial_first_gif_frame_is_filled_as_pillow_fills_it() {
    let reference = reference();
    for name in ["partial_transparent.gif", "partial_opaque.gif"] {
        let rgb = to_rgb(&open(name));
        assert_eq!(rgb.dimensions(), (21, 15), "{name}: the logical screen");
        assert_eq!(rgb, rgb_of(&reference[&format!("rgb/{name}")]), "{name}");
    }
    // Outside the frame: the transparent index, composited to white...
    assert_eq!(
        to_rgb(&open("partial_transparent.gif")).get_pixel(0, 0).0,
        [255; 3]
    );
    // ...or, with no transparent index, palette entry 0 (not the background index, 3).
    let opaque = to_rgb(&open("partial_opaque.gif"));
    assert_ne!(opaque.get_pixel(0, 0).0, [255; 3]);
}

/// The named exception: 16-bit PNGs are scaled to 8 bits as round(v / 257), where Pillow clips
/// 16-bit grey at 255 and keeps the high byte of 16-bit RGB. Both values are held: ours against
/// transformers on the correctly scaled image, and Pillow's against its own rule.
#[test]
fn sixteen_bit_pngs_are_scaled_where_pillow_clips_or_truncates() {
    let reference = reference();
    let processor = processor();
    for name in ["i16.png", "rgb16.png"] {
        let image = open(name);
        let got = to_rgb(&image);
        assert_eq!(
            got,
            rgb_of(&reference[&format!("scaled_rgb/{name}")]),
            "{name}: round(v / 257)"
        );
        assert!(
            max_abs(
                &pixels(&processor, &image),
                &reference[&format!("scaled_pixel_values/{name}")]
            ) <= 1e-6,
            "{name}"
        );
        // What Pillow does instead, recomputed from the 16-bit samples.
        let wide = image.to_rgb16();
        let pillow = rgb_of(&reference[&format!("rgb/{name}")]);
        for (p16, p8) in wide.pixels().zip(pillow.pixels()) {
            let expected = p16.0.map(|v| {
                if name == "i16.png" {
                    v.min(255) as u8
                } else {
                    (v >> 8) as u8
                }
            });
            assert_eq!(p8.0, expected, "{name}: Pillow's rule");
        }
        assert_ne!(got, pillow, "{name}: the divergence is real on this image");
    }
}

#[test]
fn exif_orientations_match_pillow_in_jpeg_png_and_webp() {
    let reference = reference();
    for orientation in 1..=8 {
        for ext in ["jpg", "png", "webp"] {
            let name = format!("exif{orientation}.{ext}");
            let image = open(&name);
            let want = rgb_of(&reference[&format!("rgb/{name}")]);
            assert_eq!((image.width(), image.height()), want.dimensions(), "{name}");
            if ext == "jpg" {
                assert_jpeg_close(&to_rgb(&image), &want, &name);
            } else {
                assert_eq!(max_level_diff(&to_rgb(&image), &want, &name), 0, "{name}");
            }
        }
    }
}

#[test]
fn decoding_keeps_its_limits_on_the_new_paths() {
    let small = DecodeLimits {
        max_width: 16,
        max_height: 16,
        max_alloc_bytes: 1 << 20,
    };
    for name in ["partial_opaque.gif", "cmyk.jpg", "ycck.jpg", "rgba.png"] {
        let err = load_image(&fixture(&format!("image_modes/{name}")), small)
            .err()
            .unwrap_or_else(|| panic!("{name} is 21 px wide, over a 16 px limit"));
        let line = clipsteer::error_line(&err);
        assert!(
            line.contains("limit") && !line.contains('\n'),
            "{name}: {line}"
        );
    }
}

/// A file cut short (an interrupted download or copy) is refused where Pillow refuses it, with
/// one line naming the file; where Pillow decodes it, so does clipsteer. Pillow's verdicts
/// (`Image.open(…).convert("RGB")`, `LOAD_TRUNCATED_IMAGES` off, its default) on these fixtures:
/// every file cut to half its bytes fails; a JPEG or WebP without its last one or two bytes fails
/// (a JPEG's end-of-image marker; fewer bytes than a WebP's RIFF header says); a PNG or GIF
/// without them decodes (the IEND chunk's checksum, the GIF trailer).
#[test]
fn truncated_files_are_refused_where_pillow_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = Vec::new();
    for name in names() {
        let bytes = std::fs::read(fixture(&format!("image_modes/{name}"))).unwrap();
        let strict = name.ends_with(".jpg") || name.ends_with(".webp");
        for (cut, keep, pillow_refuses) in [
            ("half", bytes.len() / 2, true),
            ("less 1", bytes.len() - 1, strict),
            ("less 2", bytes.len() - 2, strict),
        ] {
            let path = dir.path().join(format!("cut-{name}"));
            std::fs::write(&path, &bytes[..keep]).unwrap();
            match load_image(&path, DecodeLimits::default()) {
                Ok(_) if pillow_refuses => wrong.push(format!("{name} ({cut}) decoded")),
                Ok(_) => {}
                Err(e) => {
                    let line = clipsteer::error_line(&e);
                    if !pillow_refuses {
                        wrong.push(format!("{name} ({cut}): {line}"));
                    }
                    assert!(
                        line.contains(&format!("cut-{name}")) && !line.contains('\n'),
                        "{name} ({cut}): {line}"
                    );
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "where Pillow decides otherwise: {wrong:#?}"
    );
    // Bytes after the end-of-image marker are not a truncation (Pillow reads past them too).
    let bytes = std::fs::read(fixture("image_modes/baseline444.jpg")).unwrap();
    let path = dir.path().join("appended.jpg");
    std::fs::write(
        &path,
        [bytes.as_slice(), b"\x00\xff\xda appended video"].concat(),
    )
    .unwrap();
    load_image(&path, DecodeLimits::default()).unwrap();
}
