//! CLIP image preprocessing, equal to transformers' CLIPImageProcessor (PIL backend) as read from
//! preprocessor_config.json, on the image Pillow opens: RGB conversion with any transparency
//! composited onto white (transformers' `convert_to_rgb`), shortest-edge resize with PIL's
//! antialiased filters (bit for bit: same fixed-point coefficients and the same 8-bit
//! intermediate), centre crop, rescale and mean/std normalisation.
//!
//! The decoded pixels are Pillow's, with two named exceptions: 16-bit PNGs are scaled to 8 bits
//! (round(v / 257)) where Pillow clips grey at 255 and keeps the high byte of RGB, and JPEGs are
//! decoded by zune-jpeg, which differs from libjpeg-turbo by a few levels at chroma edges
//! ([`JPEG_TOLERANCE`], and [`JPEG_EDGE_TOLERANCE`] on the bottom row of some 4:2:0 files). GIFs (their first frame, filled outside it as Pillow fills it) and
//! CMYK/YCCK JPEGs (Pillow's inverted-Adobe CMYK to RGB) are decoded here to match Pillow.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage, RgbaImage};
use serde_json::Value;
use std::path::Path;

/// How far a JPEG's decoded pixels may be from Pillow's (libjpeg-turbo), in 8-bit levels per
/// channel: zune-jpeg's IDCT and chroma upsampling round differently at sharp chroma edges. The
/// largest difference measured over tests/fixtures/image_modes (baseline, progressive, 4:2:0,
/// CMYK, YCCK, EXIF-rotated) and a noisy 400×300 photo is 4.
pub const JPEG_TOLERANCE: u8 = 4;

/// The same on the bottom pixel row of a 4:2:0 JPEG whose height is not a multiple of 16: there
/// zune-jpeg interpolates chroma toward the encoder's padding rows of the last MCU, where
/// libjpeg-turbo replicates the last real row. Measured: 16 levels on the noisy fixture, 19 on a
/// noisy 400×300 photo at quality 75.
pub const JPEG_EDGE_TOLERANCE: u8 = 32;

/// Decoding limits: a decompression bomb or a corrupt header is refused before any large
/// allocation.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_width: 16_384,
            max_height: 16_384,
            max_alloc_bytes: 1 << 30,
        }
    }
}

impl DecodeLimits {
    fn check(&self, width: u64, height: u64, bytes_per_pixel: u64) -> Result<()> {
        if width > self.max_width as u64 || height > self.max_height as u64 {
            bail!(
                "image is {width}×{height}, over the limit of {}×{}; resize it first",
                self.max_width,
                self.max_height
            );
        }
        if width * height * bytes_per_pixel > self.max_alloc_bytes {
            bail!(
                "image exceeds the decode limits ({}×{} pixels, {} MiB); resize it first",
                self.max_width,
                self.max_height,
                self.max_alloc_bytes >> 20
            );
        }
        Ok(())
    }
}

/// The file an image error is about: load_image's errors carry it as their outermost context, so
/// that a caller can tell (by `anyhow::Error::downcast_ref`) that the message already names it.
#[derive(Debug, Clone)]
pub struct ImageFile(pub std::path::PathBuf);

impl std::fmt::Display for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

/// Decodes an image file (PNG, JPEG, WebP, GIF, BMP) under `limits`, applying its EXIF
/// orientation as `ImageOps.exif_transpose` does. The format is told by content, not name.
/// Every error names the file once, as its [`ImageFile`] context.
pub fn load_image(path: &Path, limits: DecodeLimits) -> Result<DynamicImage> {
    read_and_decode(path, limits).with_context(|| ImageFile(path.to_path_buf()))
}

fn read_and_decode(path: &Path, limits: DecodeLimits) -> Result<DynamicImage> {
    // Opened without blocking and checked to be a regular file: a FIFO or device among the
    // inputs must fail at once, not hang the batch.
    let file = crate::files::open_regular(path, "it")?;
    let size = file.metadata().context("cannot open image")?.len();
    if size > limits.max_alloc_bytes {
        bail!(
            "the file is {} MiB, over the limit of {} MiB",
            size >> 20,
            limits.max_alloc_bytes >> 20
        );
    }
    let mut bytes = Vec::with_capacity(size as usize);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, limits.max_alloc_bytes),
        &mut bytes,
    )
    .context("cannot read image")?;
    decode_image_bytes(&bytes, limits)
}

/// Decodes image bytes (an upload, say) under `limits`. The result may keep an alpha channel;
/// [`to_rgb`] turns it into the RGB pixels transformers sees.
pub fn decode_image_bytes(bytes: &[u8], limits: DecodeLimits) -> Result<DynamicImage> {
    let format = image::guess_format(bytes).ok().filter(|f| {
        use image::ImageFormat::*;
        matches!(f, Png | Jpeg | WebP | Gif | Bmp)
    });
    let Some(format) = format else {
        bail!("not an image clipsteer can read (supported: PNG, JPEG, WebP, GIF, BMP)");
    };
    match format {
        image::ImageFormat::Gif => gif_first_frame(bytes, limits).context("cannot decode image"),
        image::ImageFormat::Jpeg if !jpeg_is_complete(bytes) => bail!(
            "the JPEG is truncated (it ends before its end-of-image marker); copy or download it again"
        ),
        image::ImageFormat::WebP if !webp_is_complete(bytes) => bail!(
            "the WebP is truncated (shorter than its RIFF header says); copy or download it again"
        ),
        image::ImageFormat::Jpeg => match four_channel_jpeg(bytes, limits) {
            Ok(Some(image)) => Ok(image),
            Ok(None) => decode(
                ImageReader::with_format(std::io::Cursor::new(bytes), format),
                limits,
            )
            .context("cannot decode image"),
            Err(e) => Err(e.context("cannot decode image")),
        },
        _ => decode(
            ImageReader::with_format(std::io::Cursor::new(bytes), format),
            limits,
        )
        .context("cannot decode image"),
    }
}

/// Whether a JPEG holds its end-of-image marker (0xFF 0xD9) after its first scan begins.
/// Pillow refuses one that does not ("image file is truncated", as `LOAD_TRUNCATED_IMAGES` is off
/// by default), while zune-jpeg decodes what there is and fills the rest with grey: a cut-off
/// download would be described as a picture nobody has. The marker segments are walked to the
/// first start-of-scan (0xFF 0xDA), so that an EXIF thumbnail's own end marker does not count;
/// inside scan data every 0xFF byte is stuffed or a restart marker, so 0xFF 0xD9 there is the
/// end. Bytes after the end (a phone's appended video) are allowed, as Pillow allows them.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let has_end = |from: usize| {
        bytes[from.min(bytes.len())..]
            .windows(2)
            .any(|w| w == [0xFF, 0xD9])
    };
    // After the start-of-image marker.
    let mut at = 2;
    while at + 1 < bytes.len() {
        if bytes[at] != 0xFF {
            // Not a segment where one should be: leave the verdict to the end marker alone.
            return has_end(at);
        }
        match bytes[at + 1] {
            // Fill bytes before a marker.
            0xFF => at += 1,
            0xDA => return has_end(at + 2),
            // Markers without a length.
            0x01 | 0xD0..=0xD8 => at += 2,
            _ => {
                let Some(length) = bytes.get(at + 2..at + 4) else {
                    return false;
                };
                at += 2 + u16::from_be_bytes([length[0], length[1]]) as usize;
            }
        }
    }
    false
}

/// Whether a WebP holds all the bytes its RIFF header announces. libwebp, under Pillow, refuses
/// one that is shorter; image-webp decodes it when only the last chunk's padding or its final
/// bytes are missing.
fn webp_is_complete(bytes: &[u8]) -> bool {
    match bytes.get(4..8) {
        Some(size) => {
            let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as u64;
            bytes.len() as u64 >= 8 + size
        }
        None => false,
    }
}

fn decode<R: std::io::BufRead + std::io::Seek>(
    mut reader: ImageReader<R>,
    limits: DecodeLimits,
) -> Result<DynamicImage> {
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(image_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(describe_image_error(limits))?;
    let (width, height) = decoder.dimensions();
    limits.check(width as u64, height as u64, 0)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut decoded = DynamicImage::from_decoder(decoder).map_err(describe_image_error(limits))?;
    decoded.apply_orientation(orientation);
    Ok(decoded)
}

fn describe_image_error(limits: DecodeLimits) -> impl Fn(image::ImageError) -> anyhow::Error {
    move |e| match e {
        image::ImageError::Limits(_) => anyhow::anyhow!(
            "image exceeds the decode limits ({}×{} pixels, {} MiB); resize it first",
            limits.max_width,
            limits.max_height,
            limits.max_alloc_bytes >> 20
        ),
        other => anyhow::anyhow!("{other}"),
    }
}

/// The first frame of a GIF as Pillow opens it: the canvas is the logical screen (grown to hold
/// the frame if the frame overhangs it); outside the frame it holds the frame's transparent index
/// when it has one, else palette entry 0 (Pillow ignores the background index for frame 0).
/// Transparent pixels come back with alpha 0 for [`to_rgb`] to composite; indices past the
/// palette's end are black, as in Pillow's zero-filled palette.
fn gif_first_frame(bytes: &[u8], limits: DecodeLimits) -> Result<DynamicImage> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    if let Some(limit) = std::num::NonZeroU64::new(limits.max_alloc_bytes) {
        options.set_memory_limit(gif::MemoryLimit::Bytes(limit));
    }
    let mut decoder = options.read_info(std::io::Cursor::new(bytes))?;
    let (screen_w, screen_h) = (decoder.width() as u64, decoder.height() as u64);
    let global = decoder.global_palette().map(<[u8]>::to_vec);
    limits.check(screen_w, screen_h, 4)?;
    let Some(frame) = decoder.next_frame_info()? else {
        bail!("the GIF has no frame");
    };
    let (left, top) = (frame.left as u64, frame.top as u64);
    let (frame_w, frame_h) = (frame.width as u64, frame.height as u64);
    let (width, height) = (screen_w.max(left + frame_w), screen_h.max(top + frame_h));
    limits.check(width, height, 5)?; // the RGBA canvas and the frame's indices
    let transparent = frame.transparent;
    let palette = frame.palette.clone().or(global);
    let mut indices = vec![0u8; decoder.buffer_size()];
    decoder.read_into_buffer(&mut indices)?;
    let colour = |index: u8| -> [u8; 4] {
        if Some(index) == transparent {
            return [0, 0, 0, 0];
        }
        match &palette {
            Some(p) => {
                let at = index as usize * 3;
                match p.get(at..at + 3) {
                    Some(rgb) => [rgb[0], rgb[1], rgb[2], 255],
                    None => [0, 0, 0, 255],
                }
            }
            None => [index, index, index, 255], // no palette: Pillow reads the indices as grey
        }
    };
    let fill = colour(transparent.unwrap_or(0));
    let mut canvas = RgbaImage::from_pixel(width as u32, height as u32, image::Rgba(fill));
    for (i, &index) in indices.iter().enumerate() {
        let (x, y) = (left + (i as u64 % frame_w), top + (i as u64 / frame_w));
        canvas.put_pixel(x as u32, y as u32, image::Rgba(colour(index)));
    }
    Ok(if transparent.is_some() {
        DynamicImage::ImageRgba8(canvas)
    } else {
        DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(canvas).to_rgb8())
    })
}

/// CMYK and YCCK JPEGs as Pillow reads them: libjpeg turns YCCK into CMYK, Pillow takes the samples
/// as Adobe's inverted CMYK ("CMYK;I", always) and converts with its `cmyk2rgb`. `None` for every
/// other JPEG, which the image crate decodes.
fn four_channel_jpeg(bytes: &[u8], limits: DecodeLimits) -> Result<Option<DynamicImage>> {
    use zune_core::colorspace::ColorSpace;
    // As the image crate configures zune-jpeg; the size is checked against `limits` below.
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(bytes),
        options,
    );
    if decoder.decode_headers().is_err() {
        return Ok(None); // the image crate reports the error in its words
    }
    let Some(space @ (ColorSpace::CMYK | ColorSpace::YCCK)) = decoder.input_colorspace() else {
        return Ok(None);
    };
    let Some((width, height)) = decoder.dimensions() else {
        return Ok(None);
    };
    limits.check(width as u64, height as u64, 7)?;
    let orientation = decoder
        .exif()
        .and_then(|exif| image::metadata::Orientation::from_exif_chunk(exif))
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let raw = decoder.options().jpeg_set_out_colorspace(space);
    decoder.set_options(raw);
    let samples = decoder.decode().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if samples.len() != width * height * 4 {
        bail!(
            "the JPEG decoder returned {} bytes for a {width}×{height} CMYK image",
            samples.len()
        );
    }
    let ycc = YccTables::new();
    let mut rgb = RgbImage::new(width as u32, height as u32);
    for (pixel, s) in rgb.pixels_mut().zip(samples.chunks_exact(4)) {
        let cmyk = match space {
            ColorSpace::YCCK => ycc.ycck_to_cmyk([s[0], s[1], s[2], s[3]]),
            _ => [s[0], s[1], s[2], s[3]],
        };
        *pixel = image::Rgb(pillow_inverted_cmyk_to_rgb(cmyk));
    }
    let mut image = DynamicImage::ImageRgb8(rgb);
    image.apply_orientation(orientation);
    Ok(Some(image))
}

/// libjpeg's YCC→RGB tables (jdcolor.c `build_ycc_rgb_table`, 16-bit fixed point).
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

impl YccTables {
    const SCALEBITS: i32 = 16;
    const ONE_HALF: i32 = 1 << (Self::SCALEBITS - 1);

    fn fix(x: f64) -> i32 {
        (x * (1i64 << Self::SCALEBITS) as f64 + 0.5) as i32
    }

    fn new() -> Self {
        let mut t = Self {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i32 - 128;
            t.cr_r[i] = (Self::fix(1.40200) * x + Self::ONE_HALF) >> Self::SCALEBITS;
            t.cb_b[i] = (Self::fix(1.77200) * x + Self::ONE_HALF) >> Self::SCALEBITS;
            t.cr_g[i] = -Self::fix(0.71414) * x;
            t.cb_g[i] = -Self::fix(0.34414) * x + Self::ONE_HALF;
        }
        t
    }

    /// jdcolor.c `ycck_cmyk_convert`: YCC to RGB, inverted to CMY; K passes through.
    fn ycck_to_cmyk(&self, [y, cb, cr, k]: [u8; 4]) -> [u8; 4] {
        let (y, cb, cr) = (y as i32, cb as usize, cr as usize);
        let limit = |v: i32| (255 - v).clamp(0, 255) as u8;
        [
            limit(y + self.cr_r[cr]),
            limit(y + ((self.cb_g[cb] + self.cr_g[cr]) >> Self::SCALEBITS)),
            limit(y + self.cb_b[cb]),
            k,
        ]
    }
}

/// Pillow's unpacking of "CMYK;I" (inverted) followed by its `cmyk2rgb` (Convert.c):
/// with nk = 255 − K, each channel is nk − C·nk/255, the division rounded as MULDIV255.
fn pillow_inverted_cmyk_to_rgb(stored: [u8; 4]) -> [u8; 3] {
    let nk = stored[3] as u32; // 255 − (255 − stored K)
    let channel = |stored_c: u8| {
        let c = 255 - stored_c as u32;
        let t = c * nk + 128;
        let product = ((t >> 8) + t) >> 8;
        (nk - product.min(nk)) as u8
    };
    [channel(stored[0]), channel(stored[1]), channel(stored[2])]
}

/// The RGB pixels transformers' `convert_to_rgb` (transformers 5.x) makes of an image Pillow
/// opened: any transparency composited onto opaque white with Pillow's `alpha_composite`
/// arithmetic, grey replicated. Palette and colour-key transparency (PNG tRNS, GIF) arrive here as
/// an alpha channel, since the decoders expand them as Pillow's `convert("RGBA")` does. 16-bit
/// samples are first scaled to 8 bits with rounding (where Pillow clips or truncates; see the
/// module documentation).
pub fn to_rgb(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (out, p) in rgb.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        *out = image::Rgb([0, 1, 2].map(|c| composite_on_white(p[c], a)));
    }
    rgb
}

/// Pillow's `ImagingAlphaComposite` (AlphaComposite.c) of one channel over an opaque white
/// background: 7 extra bits of precision, divisions by 255 rounded with the shift trick.
fn composite_on_white(value: u8, alpha: u32) -> u8 {
    const PRECISION_BITS: u32 = 7;
    if alpha == 0 {
        return 255;
    }
    let blend = 255 * (255 - alpha);
    let out_a255 = alpha * 255 + blend;
    let coef1 = alpha * 255 * 255 * (1 << PRECISION_BITS) / out_a255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = value as u32 * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    ((((tmp >> 8) + tmp) >> 8) >> PRECISION_BITS) as u8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Bilinear,
    Bicubic,
}

impl Resample {
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    /// PIL's filters (Resample.c): triangle, and cubic convolution with a = -0.5.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// OpenAI CLIP's normalisation, as transformers writes it (rounded to f32 when used).
const OPENAI_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// What `CLIPImageProcessor` does, as configured by preprocessor_config.json.
#[derive(Debug, Clone)]
pub struct ClipImageProcessor {
    do_resize: bool,
    resize: ResizeTarget,
    resample: Resample,
    do_center_crop: bool,
    crop: (usize, usize),
    do_rescale: bool,
    rescale_factor: f64,
    do_normalize: bool,
    mean: [f32; 3],
    std: [f32; 3],
}

#[derive(Debug, Clone, Copy)]
enum ResizeTarget {
    ShortestEdge(usize),
    Exact { height: usize, width: usize },
}

impl ClipImageProcessor {
    /// Reads `preprocessor_config.json` from a CLIP model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: a CLIP model directory needs its preprocessor_config.json",
                path.display()
            )
        })?;
        let config: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_config(&config).with_context(|| format!("in {}", path.display()))
    }

    /// Defaults of transformers' CLIPImageProcessor for a square `image_size` (OpenAI's mean/std).
    pub fn openai(image_size: usize) -> Self {
        Self {
            do_resize: true,
            resize: ResizeTarget::ShortestEdge(image_size),
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop: (image_size, image_size),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            mean: OPENAI_MEAN.map(|v| v as f32),
            std: OPENAI_STD.map(|v| v as f32),
        }
    }

    pub fn from_config(config: &Value) -> Result<Self> {
        let flag = |name: &str| config.get(name).and_then(Value::as_bool).unwrap_or(true);
        let triple = |name: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match config.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => {
                    let v = n.as_f64().unwrap_or(0.0) as f32;
                    Ok([v; 3])
                }
                Some(Value::Array(values)) if values.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (slot, v) in out.iter_mut().zip(values) {
                        *slot = v
                            .as_f64()
                            .with_context(|| format!("{name} must hold numbers"))?
                            as f32;
                    }
                    Ok(out)
                }
                Some(_) => bail!("{name} must be a number or a list of 3 numbers"),
            }
        };
        let defaults = Self::openai(224);
        let size_of = |value: Option<&Value>, what: &str| -> Result<Option<Value>> {
            Ok(match value {
                None | Some(Value::Null) => None,
                Some(v @ (Value::Number(_) | Value::Object(_))) => Some(v.clone()),
                Some(_) => bail!("{what} must be a number or an object"),
            })
        };
        let resize = match size_of(config.get("size"), "size")? {
            None => defaults.resize,
            Some(Value::Number(n)) => ResizeTarget::ShortestEdge(
                n.as_u64().context("size must be a positive integer")? as usize,
            ),
            Some(obj) => {
                let get = |k: &str| obj.get(k).and_then(Value::as_u64).map(|v| v as usize);
                match (get("shortest_edge"), get("height"), get("width")) {
                    (Some(edge), _, _) => ResizeTarget::ShortestEdge(edge),
                    (None, Some(height), Some(width)) => ResizeTarget::Exact { height, width },
                    _ => bail!("size needs shortest_edge, or height and width"),
                }
            }
        };
        let crop = match size_of(config.get("crop_size"), "crop_size")? {
            None => match resize {
                ResizeTarget::ShortestEdge(edge) => (edge, edge),
                ResizeTarget::Exact { height, width } => (height, width),
            },
            Some(Value::Number(n)) => {
                let edge = n.as_u64().context("crop_size must be a positive integer")? as usize;
                (edge, edge)
            }
            Some(obj) => {
                let get = |k: &str| obj.get(k).and_then(Value::as_u64).map(|v| v as usize);
                (
                    get("height").context("crop_size needs height")?,
                    get("width").context("crop_size needs width")?,
                )
            }
        };
        let resample = match config.get("resample").and_then(Value::as_u64).unwrap_or(3) {
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            other => bail!("resample {other} is not supported (2 = bilinear, 3 = bicubic)"),
        };
        if crop.0 == 0 || crop.1 == 0 || matches!(resize, ResizeTarget::ShortestEdge(0)) {
            bail!("image sizes must be positive");
        }
        Ok(Self {
            do_resize: flag("do_resize"),
            resize,
            resample,
            do_center_crop: flag("do_center_crop"),
            crop,
            do_rescale: flag("do_rescale"),
            rescale_factor: config
                .get("rescale_factor")
                .and_then(Value::as_f64)
                .unwrap_or(1.0 / 255.0),
            do_normalize: flag("do_normalize"),
            mean: triple("image_mean", defaults.mean)?,
            std: triple("image_std", defaults.std)?,
        })
    }

    /// The (height, width) of the pixels this processor produces.
    pub fn output_size(&self) -> (usize, usize) {
        self.crop
    }

    /// Pixel values [3, height, width], as `CLIPImageProcessor(...)["pixel_values"][0]`.
    pub fn preprocess(&self, image: &DynamicImage, device: &Device) -> Result<Tensor> {
        let mut rgb = to_rgb(image);
        if self.do_resize {
            let (width, height) = (rgb.width() as usize, rgb.height() as usize);
            let (new_height, new_width) = match self.resize {
                ResizeTarget::ShortestEdge(edge) => {
                    let (short, long) = if width <= height {
                        (width, height)
                    } else {
                        (height, width)
                    };
                    // transformers: int(size * long / short), in floating point.
                    let new_long = (edge as f64 * long as f64 / short as f64) as usize;
                    if width <= height {
                        (new_long, edge)
                    } else {
                        (edge, new_long)
                    }
                }
                ResizeTarget::Exact { height, width } => (height, width),
            };
            rgb = resize_like_pil(&rgb, new_width.max(1), new_height.max(1), self.resample);
        }
        let (height, width) = (rgb.height() as usize, rgb.width() as usize);
        let (crop_h, crop_w) = if self.do_center_crop {
            self.crop
        } else {
            (height, width)
        };
        let pixel = |y: isize, x: isize, c: usize| -> u8 {
            if y < 0 || x < 0 || y >= height as isize || x >= width as isize {
                0 // transformers pads a too-small image with zeros before cropping
            } else {
                rgb.get_pixel(x as u32, y as u32)[c]
            }
        };
        // transformers' center_crop: top = (h - crop_h) // 2, with ceil-padding when smaller.
        let offset = |size: usize, crop: usize| -> isize {
            if crop <= size {
                ((size - crop) / 2) as isize
            } else {
                -(((crop - size) as f64 / 2.0).ceil() as isize)
            }
        };
        let (top, left) = (offset(height, crop_h), offset(width, crop_w));
        let mut data = Vec::with_capacity(3 * crop_h * crop_w);
        for c in 0..3 {
            for y in 0..crop_h {
                for x in 0..crop_w {
                    let raw = pixel(top + y as isize, left + x as isize, c);
                    // numpy: float64 multiply, stored as float32; then float32 normalise.
                    let mut value = if self.do_rescale {
                        (raw as f64 * self.rescale_factor) as f32
                    } else {
                        raw as f32
                    };
                    if self.do_normalize {
                        value = (value - self.mean[c]) / self.std[c];
                    }
                    data.push(value);
                }
            }
        }
        Ok(Tensor::from_vec(data, (3, crop_h, crop_w), device)?)
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs` followed by `normalize_coeffs_8bpc`: for each output pixel, the first
/// input index, the number of taps and fixed-point weights.
fn pil_coefficients(
    in_size: usize,
    out_size: usize,
    filter: Resample,
) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut taps = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let inv = 1.0 / filter_scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut total = 0.0;
        for (x, tap) in taps.iter_mut().enumerate().take(count) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * inv);
            *tap = w;
            total += w;
        }
        for x in 0..count {
            let w = if total != 0.0 {
                taps[x] / total
            } else {
                taps[x]
            };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, count));
    }
    (bounds, weights, ksize)
}

fn clip8(sum: i64) -> u8 {
    if sum >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if sum <= 0 {
        0
    } else {
        (sum >> PRECISION_BITS) as u8
    }
}

/// `Image.resize((width, height), resample)` of PIL on an RGB image: a horizontal pass into an
/// 8-bit intermediate, then a vertical pass, each skipped when that dimension is unchanged.
pub fn resize_like_pil(
    input: &RgbImage,
    width: usize,
    height: usize,
    filter: Resample,
) -> RgbImage {
    let (in_w, in_h) = (input.width() as usize, input.height() as usize);
    let mut current = input.clone();
    if width != in_w {
        let (bounds, weights, ksize) = pil_coefficients(in_w, width, filter);
        let mut out = RgbImage::new(width as u32, in_h as u32);
        for y in 0..in_h {
            for (xx, &(xmin, count)) in bounds.iter().enumerate() {
                let k = &weights[xx * ksize..xx * ksize + count];
                let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
                for (x, &w) in k.iter().enumerate() {
                    let p = current.get_pixel((xmin + x) as u32, y as u32);
                    for c in 0..3 {
                        sums[c] += p[c] as i64 * w as i64;
                    }
                }
                out.put_pixel(
                    xx as u32,
                    y as u32,
                    image::Rgb([clip8(sums[0]), clip8(sums[1]), clip8(sums[2])]),
                );
            }
        }
        current = out;
    }
    if height != in_h {
        let (bounds, weights, ksize) = pil_coefficients(in_h, height, filter);
        let cur_w = current.width() as usize;
        let mut out = RgbImage::new(cur_w as u32, height as u32);
        for (yy, &(ymin, count)) in bounds.iter().enumerate() {
            let k = &weights[yy * ksize..yy * ksize + count];
            for x in 0..cur_w {
                let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
                for (y, &w) in k.iter().enumerate() {
                    let p = current.get_pixel(x as u32, (ymin + y) as u32);
                    for c in 0..3 {
                        sums[c] += p[c] as i64 * w as i64;
                    }
                }
                out.put_pixel(
                    x as u32,
                    yy as u32,
                    image::Rgb([clip8(sums[0]), clip8(sums[1]), clip8(sums[2])]),
                );
            }
        }
        current = out;
    }
    current
}
