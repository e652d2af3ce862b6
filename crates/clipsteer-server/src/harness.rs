//! The functions the fuzz targets (fuzz/) call, here so that the test suite runs the very same
//! code over its corpus of hostile inputs. Neither may panic on any input.

use super::jobs::check_proportions;
use super::params::{parse_params, resolve, ParamLimits};
use candle_core::Device;
use clipsteer::image::{decode_image_bytes, ClipImageProcessor, DecodeLimits};

/// Small limits keep each fuzz execution fast; the code paths are those of `serve`'s limits.
pub const FUZZ_DECODE_LIMITS: DecodeLimits = DecodeLimits {
    max_width: 1024,
    max_height: 1024,
    max_alloc_bytes: 16 << 20,
};

/// Decodes bytes as an upload would be and, when they are an image, preprocesses it for CLIP.
/// Returns the pixel tensor's shape, or None when the bytes are refused.
pub fn decode_and_preprocess(bytes: &[u8]) -> Option<Vec<usize>> {
    let image = decode_image_bytes(bytes, FUZZ_DECODE_LIMITS).ok()?;
    check_proportions(image.width(), image.height()).ok()?;
    let processor = ClipImageProcessor::openai(32);
    let pixels = processor.preprocess(&image, &Device::Cpu).ok()?;
    Some(pixels.dims().to_vec())
}

/// Parses bytes as the `params` field, and turns what parses into describe options.
pub fn params(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let params = parse_params(text, &ParamLimits::default())?;
    resolve(&params).map(|_| ()).map_err(|e| e.message)
}
