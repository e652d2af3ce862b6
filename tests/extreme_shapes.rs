//! Extreme aspect ratios against transformers' CLIPImageProcessor (PIL backend) at 224 pixels:
//! tests/fixtures/extreme_shapes, written by tools/make_extreme_shapes.py. clipsteer resizes only
//! the part of the image that the centre crop keeps (an 8000×1 strip would otherwise become a
//! 1792000×224 intermediate); the pixels must be those Pillow makes by resizing in full.

mod common;

use candle_core::{DType, Device};
use clipsteer::image::{load_image, ClipImageProcessor, DecodeLimits};
use common::fixture;

#[test]
fn strips_preprocess_to_pillows_pixels() {
    let reference = candle_core::safetensors::load(
        fixture("extreme_shapes/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let processor = ClipImageProcessor::load(&fixture("extreme_shapes")).unwrap();
    let mut names: Vec<&String> = reference.keys().collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    for key in names {
        let name = key.strip_prefix("pixel_values/").unwrap();
        let image = load_image(
            &fixture(&format!("extreme_shapes/{name}")),
            DecodeLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let got = processor.preprocess(&image, &Device::Cpu).unwrap();
        let want = reference[key].to_dtype(DType::F32).unwrap();
        assert_eq!(got.dims(), &[3, 224, 224], "{name}");
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing, 0,
            "{name}: {differing} values differ from Pillow's"
        );
        // Not a blank crop: the strips' noise survives the resize.
        let distinct = want
            .iter()
            .map(|v| *v as u8)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert!(
            distinct > 50,
            "{name}: only {distinct} levels in the reference"
        );
    }
}

/// The fixture's processor has rescaling and normalisation off, so its values are 8-bit levels
/// (what the references hold); its normalisation is Pillow's, pinned by tests/image_modes.rs.
#[test]
fn the_fixture_processor_keeps_levels() {
    let processor = ClipImageProcessor::load(&fixture("extreme_shapes")).unwrap();
    let flat = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        300,
        2,
        image::Rgb([255, 128, 0]),
    ));
    let pixels = processor.preprocess(&flat, &Device::Cpu).unwrap();
    let values = pixels.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (c, level) in [255f32, 128.0, 0.0].into_iter().enumerate() {
        let plane = &values[c * 224 * 224..(c + 1) * 224 * 224];
        assert!(plane.iter().all(|&v| v == level), "channel {c}");
    }
}

/// Pillow ≥ 11.2 resizes in the other order (vertical pass first) when the height shrinks by
/// more than twice what the width does, and the 8-bit rounding between the passes then differs:
/// portraits, a strip, and the shapes either side of that boundary, at CLIP's shortest-edge
/// resize with centre crop and at SigLIP's exact resize (tests/fixtures/pass_order, Pillow 13).
#[test]
fn portraits_resize_in_pillows_order_of_passes() {
    let reference =
        candle_core::safetensors::load(fixture("pass_order/reference.safetensors"), &Device::Cpu)
            .unwrap();
    let mut keys: Vec<&String> = reference.keys().collect();
    keys.sort();
    assert_eq!(keys.len(), 14, "{keys:?}");
    for key in keys {
        let (kind, name) = key.split_once('/').unwrap();
        let processor = ClipImageProcessor::load(&fixture(&format!("pass_order/{kind}"))).unwrap();
        let image = load_image(
            &fixture(&format!("pass_order/{name}")),
            DecodeLimits::default(),
        )
        .unwrap();
        let got = processor.preprocess(&image, &Device::Cpu).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = reference[key].to_dtype(DType::F32).unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing, 0,
            "{key}: {differing} values differ from Pillow's"
        );
    }
}
