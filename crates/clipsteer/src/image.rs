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
        let bytes = width * height * bytes_per_pixel;
        if bytes > self.max_alloc_bytes {
            bail!(
                "image is {width}×{height}, {:.1} MiB decoded, over the limit of {} MiB; resize it first",
                bytes as f64 / (1u64 << 20) as f64,
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
    // The decoded pixels are one allocation of this size; the decoders' own limits are not
    // all applied to it.
    let bytes_per_pixel = decoder.color_type().bytes_per_pixel() as u64;
    limits.check(width as u64, height as u64, bytes_per_pixel)?;
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
        if !crate::files::model_file_present(&path)? {
            crate::usage_bail!(
                "{} has no preprocessor_config.json, which an image-text encoder's directory needs: copy it from the model's hub repository",
                dir.display()
            );
        }
        let text = crate::files::read_regular_to_string(&path, &path.display().to_string())?;
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

    /// The (height, width) the resize produces, before the crop.
    fn resized_size(&self, width: usize, height: usize) -> (usize, usize) {
        if !self.do_resize {
            return (height, width);
        }
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
        (new_height.max(1), new_width.max(1))
    }

    /// Pixel values [3, height, width], as `CLIPImageProcessor(...)["pixel_values"][0]`.
    ///
    /// Only the part of the resized image that the centre crop keeps is computed (PIL's resize is
    /// separable and each output pixel reads a fixed window of source pixels, so the kept pixels
    /// are the same): memory beyond the decoded image is bounded by the crop, whatever the
    /// image's shape. Resizing an 8000×1 strip in full would make a 1792000×224 intermediate.
    pub fn preprocess(&self, image: &DynamicImage, device: &Device) -> Result<Tensor> {
        let source = RgbRows::new(image);
        let (height, width) = self.resized_size(source.width, source.height);
        let (crop_h, crop_w) = if self.do_center_crop {
            self.crop
        } else {
            (height, width)
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
        let kept = |start: isize, crop: usize, size: usize| {
            let first = start.max(0) as usize;
            first..((start + crop as isize).max(0) as usize).min(size)
        };
        let (rows, columns) = (kept(top, crop_h, height), kept(left, crop_w, width));
        let region = resize_region(
            &source,
            width,
            height,
            columns.clone(),
            rows.clone(),
            self.resample,
        );
        let region_w = columns.len();
        let pixel = |y: isize, x: isize, c: usize| -> u8 {
            let (y, x) = (y + top, x + left);
            if y < rows.start as isize
                || x < columns.start as isize
                || y >= rows.end as isize
                || x >= columns.end as isize
            {
                0 // transformers pads a too-small image with zeros before cropping
            } else {
                let (y, x) = (y as usize - rows.start, x as usize - columns.start);
                region[(y * region_w + x) * 3 + c]
            }
        };
        let mut data = Vec::with_capacity(3 * crop_h * crop_w);
        for c in 0..3 {
            for y in 0..crop_h {
                for x in 0..crop_w {
                    let raw = pixel(y as isize, x as isize, c);
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

/// The rows of an image as the RGB pixels [`to_rgb`] makes, one row at a time, so that
/// preprocessing holds no converted copy of the whole image next to the decoded one.
struct RgbRows<'a> {
    pixels: Pixels<'a>,
    width: usize,
    height: usize,
}

enum Pixels<'a> {
    /// Packed RGB rows, read in place.
    Rgb(&'a [u8]),
    Rgba(&'a [u8]),
    /// Any other layout (grey, 16-bit), read pixel by pixel.
    Other(&'a DynamicImage),
}

impl<'a> RgbRows<'a> {
    fn new(image: &'a DynamicImage) -> Self {
        let pixels = match image {
            DynamicImage::ImageRgb8(rgb) => Pixels::Rgb(rgb.as_raw()),
            DynamicImage::ImageRgba8(rgba) => Pixels::Rgba(rgba.as_raw()),
            other => Pixels::Other(other),
        };
        Self {
            pixels,
            width: image.width() as usize,
            height: image.height() as usize,
        }
    }

    fn rgb(image: &'a RgbImage) -> Self {
        Self {
            pixels: Pixels::Rgb(image.as_raw()),
            width: image.width() as usize,
            height: image.height() as usize,
        }
    }

    /// Row `y` as packed RGB bytes: borrowed from an RGB image, else converted into `scratch`.
    fn row<'s>(&'s self, y: usize, scratch: &'s mut Vec<u8>) -> &'s [u8] {
        let w = self.width;
        scratch.clear();
        match self.pixels {
            Pixels::Rgb(raw) => return &raw[y * w * 3..(y + 1) * w * 3],
            Pixels::Rgba(raw) => {
                for p in raw[y * w * 4..(y + 1) * w * 4].chunks_exact(4) {
                    let a = p[3] as u32;
                    scratch.extend([0, 1, 2].map(|c| composite_on_white(p[c], a)));
                }
            }
            Pixels::Other(image) => {
                // `get_pixel` converts samples to 8 bits as `to_rgb8`/`to_rgba8` do (the
                // image_modes fixtures and a unit test below pin the equality).
                use image::GenericImageView;
                let has_alpha = image.color().has_alpha();
                for x in 0..w {
                    let p = image.get_pixel(x as u32, y as u32).0;
                    if has_alpha {
                        let a = p[3] as u32;
                        scratch.extend([0, 1, 2].map(|c| composite_on_white(p[c], a)));
                    } else {
                        scratch.extend([p[0], p[1], p[2]]);
                    }
                }
            }
        }
        scratch
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the output pixels in
/// `kept` of a resize from `in_size` to `out_size`: each one's weights depend on its own index
/// alone, so a cropped resize computes only those it keeps.
struct Coefficients {
    /// Per kept output pixel: its first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` fixed-point weights per kept output pixel, the first `count` of them used.
    weights: Vec<i32>,
    ksize: usize,
}

impl Coefficients {
    fn new(
        in_size: usize,
        out_size: usize,
        kept: std::ops::Range<usize>,
        filter: Resample,
    ) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(kept.len());
        let mut weights = vec![0i32; kept.len() * ksize];
        let mut taps = vec![0f64; ksize];
        for (i, xx) in kept.enumerate() {
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
                weights[i * ksize + x] = if w < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            bounds.push((xmin, count));
        }
        Self {
            bounds,
            weights,
            ksize,
        }
    }

    /// The kept output pixel `i`'s first input index and weights.
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (first, count) = self.bounds[i];
        (first, &self.weights[i * self.ksize..i * self.ksize + count])
    }

    /// The input indices any kept output pixel reads.
    fn span(&self) -> std::ops::Range<usize> {
        let first = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let end = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(first);
        first..end.max(first)
    }
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

/// Pixels `columns` × `rows` of PIL's `Image.resize((width, height), resample)` of `source`, as
/// packed RGB rows: a horizontal pass into an 8-bit intermediate, then a vertical pass, each
/// skipped when that dimension is unchanged, as in PIL. The horizontal pass runs over the source
/// rows the kept output rows read, and only for the kept columns (PIL's `ImagingResampleInner`
/// limits itself to the rows its box needs in the same way), so the intermediate holds at most
/// `columns.len()` × the source's height pixels.
fn resize_region(
    source: &RgbRows,
    width: usize,
    height: usize,
    columns: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
    filter: Resample,
) -> Vec<u8> {
    let (in_w, in_h) = (source.width, source.height);
    let horizontal =
        (width != in_w).then(|| Coefficients::new(in_w, width, columns.clone(), filter));
    let vertical = (height != in_h).then(|| Coefficients::new(in_h, height, rows.clone(), filter));
    // Pillow ≥ 11.2 (ImagingResampleInner) runs the vertical pass first when the height shrinks
    // by more than twice what the width does; the 8-bit rounding between the passes then differs.
    let shrink_h = in_h as i64 - height as i64;
    let shrink_w = in_w as i64 - width as i64;
    if let (Some(vertical), true) = (&vertical, shrink_h > 0 && shrink_h > 2 * shrink_w) {
        return resize_vertical_first(source, vertical, horizontal.as_ref(), columns, rows);
    }
    let read_rows = match &vertical {
        Some(v) => v.span(),
        None => rows.clone(),
    };
    let line = columns.len() * 3;
    let mut middle = vec![0u8; read_rows.len() * line];
    let mut scratch = Vec::new();
    for (y, out) in read_rows.clone().zip(middle.chunks_exact_mut(line.max(1))) {
        let row = source.row(y, &mut scratch);
        match &horizontal {
            None => out.copy_from_slice(&row[columns.start * 3..columns.end * 3]),
            Some(h) => {
                for (i, pixel) in out.chunks_exact_mut(3).enumerate() {
                    let (first, k) = h.taps(i);
                    let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
                    for (x, &w) in k.iter().enumerate() {
                        let p = &row[(first + x) * 3..(first + x) * 3 + 3];
                        for c in 0..3 {
                            sums[c] += p[c] as i64 * w as i64;
                        }
                    }
                    pixel.copy_from_slice(&sums.map(clip8));
                }
            }
        }
    }
    let Some(vertical) = vertical else {
        return middle;
    };
    let mut out = vec![0u8; rows.len() * line];
    let mut sums = vec![0i64; line];
    for (i, out_row) in out.chunks_exact_mut(line.max(1)).enumerate() {
        let (first, k) = vertical.taps(i);
        sums.fill(1i64 << (PRECISION_BITS - 1));
        for (y, &w) in k.iter().enumerate() {
            let at = (first + y - read_rows.start) * line;
            for (sum, &p) in sums.iter_mut().zip(&middle[at..at + line]) {
                *sum += p as i64 * w as i64;
            }
        }
        for (o, &sum) in out_row.iter_mut().zip(&sums) {
            *o = clip8(sum);
        }
    }
    out
}

/// [`resize_region`] in Pillow's other order: the vertical pass into an 8-bit intermediate over
/// the source columns the kept output columns read, then the horizontal pass. The intermediate
/// is kept rows × read columns; a source row is read again for each output row whose window
/// holds it (about four for bicubic), which keeps memory at one line of sums.
fn resize_vertical_first(
    source: &RgbRows,
    vertical: &Coefficients,
    horizontal: Option<&Coefficients>,
    columns: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) -> Vec<u8> {
    let read_columns = horizontal.map_or(columns.clone(), Coefficients::span);
    let middle_line = read_columns.len() * 3;
    let mut middle = vec![0u8; rows.len() * middle_line];
    let mut sums = vec![0i64; middle_line];
    let mut scratch = Vec::new();
    for (i, middle_row) in middle.chunks_exact_mut(middle_line.max(1)).enumerate() {
        let (first, k) = vertical.taps(i);
        sums.fill(1i64 << (PRECISION_BITS - 1));
        for (y, &w) in k.iter().enumerate() {
            let row = source.row(first + y, &mut scratch);
            let row = &row[read_columns.start * 3..read_columns.end * 3];
            for (sum, &p) in sums.iter_mut().zip(row) {
                *sum += p as i64 * w as i64;
            }
        }
        for (m, &sum) in middle_row.iter_mut().zip(&sums) {
            *m = clip8(sum);
        }
    }
    let Some(horizontal) = horizontal else {
        return middle;
    };
    let line = columns.len() * 3;
    let mut out = vec![0u8; rows.len() * line];
    for (middle_row, out_row) in middle
        .chunks_exact(middle_line.max(1))
        .zip(out.chunks_exact_mut(line.max(1)))
    {
        for (i, pixel) in out_row.chunks_exact_mut(3).enumerate() {
            let (first, k) = horizontal.taps(i);
            let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
            for (x, &w) in k.iter().enumerate() {
                let at = (first + x - read_columns.start) * 3;
                for c in 0..3 {
                    sums[c] += middle_row[at + c] as i64 * w as i64;
                }
            }
            pixel.copy_from_slice(&sums.map(clip8));
        }
    }
    out
}

/// `Image.resize((width, height), resample)` of PIL on an RGB image: a horizontal pass into an
/// 8-bit intermediate, then a vertical pass, each skipped when that dimension is unchanged.
pub fn resize_like_pil(
    input: &RgbImage,
    width: usize,
    height: usize,
    filter: Resample,
) -> RgbImage {
    let pixels = resize_region(
        &RgbRows::rgb(input),
        width,
        height,
        0..width,
        0..height,
        filter,
    );
    RgbImage::from_raw(width as u32, height as u32, pixels)
        .expect("resize_region returns width × height RGB pixels")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so that no test depends on a seed's crate.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn noisy_rgb(width: u32, height: u32, seed: u64) -> RgbImage {
        RgbImage::from_raw(width, height, noise((width * height * 3) as usize, seed)).unwrap()
    }

    /// The resize as it was before the cropped resize: PIL's two passes over the whole image,
    /// then transformers' centre crop with zero padding. Kept here as the reference the cropped
    /// resize must equal pixel for pixel (this version passed the Pillow parity fixtures).
    fn resize_then_crop(
        input: &RgbImage,
        width: usize,
        height: usize,
        crop: (usize, usize),
        filter: Resample,
    ) -> Vec<u8> {
        let full = |in_size: usize, out_size: usize| {
            let c = Coefficients::new(in_size, out_size, 0..out_size, filter);
            (c.bounds, c.weights, c.ksize)
        };
        let (in_w, in_h) = (input.width() as usize, input.height() as usize);
        let horizontal = |current: &RgbImage| -> RgbImage {
            let rows = current.height();
            let (bounds, weights, ksize) = full(in_w, width);
            let mut out = RgbImage::new(width as u32, rows);
            for y in 0..rows {
                for (xx, &(xmin, count)) in bounds.iter().enumerate() {
                    let k = &weights[xx * ksize..xx * ksize + count];
                    let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
                    for (x, &w) in k.iter().enumerate() {
                        let p = current.get_pixel((xmin + x) as u32, y);
                        for c in 0..3 {
                            sums[c] += p[c] as i64 * w as i64;
                        }
                    }
                    out.put_pixel(xx as u32, y, image::Rgb(sums.map(clip8)));
                }
            }
            out
        };
        let vertical = |current: &RgbImage| -> RgbImage {
            let columns = current.width();
            let (bounds, weights, ksize) = full(in_h, height);
            let mut out = RgbImage::new(columns, height as u32);
            for (yy, &(ymin, count)) in bounds.iter().enumerate() {
                let k = &weights[yy * ksize..yy * ksize + count];
                for x in 0..columns {
                    let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
                    for (y, &w) in k.iter().enumerate() {
                        let p = current.get_pixel(x, (ymin + y) as u32);
                        for c in 0..3 {
                            sums[c] += p[c] as i64 * w as i64;
                        }
                    }
                    out.put_pixel(x, yy as u32, image::Rgb(sums.map(clip8)));
                }
            }
            out
        };
        // Pillow 13's order of passes (ImagingResampleInner).
        let shrink_h = in_h as i64 - height as i64;
        let vertical_first = shrink_h > 0 && shrink_h > 2 * (in_w as i64 - width as i64);
        let mut current = input.clone();
        if vertical_first {
            current = vertical(&current);
            if width != in_w {
                current = horizontal(&current);
            }
        } else {
            if width != in_w {
                current = horizontal(&current);
            }
            if height != in_h {
                current = vertical(&current);
            }
        }
        let (crop_h, crop_w) = crop;
        let offset = |size: usize, crop: usize| -> isize {
            if crop <= size {
                ((size - crop) / 2) as isize
            } else {
                -(((crop - size) as f64 / 2.0).ceil() as isize)
            }
        };
        let (top, left) = (offset(height, crop_h), offset(width, crop_w));
        let mut out = Vec::with_capacity(crop_h * crop_w * 3);
        for y in 0..crop_h as isize {
            for x in 0..crop_w as isize {
                let (y, x) = (y + top, x + left);
                if y < 0 || x < 0 || y >= height as isize || x >= width as isize {
                    out.extend([0, 0, 0]);
                } else {
                    out.extend(current.get_pixel(x as u32, y as u32).0);
                }
            }
        }
        out
    }

    /// The processor's output as 8-bit HWC pixels (no rescale or normalisation).
    fn raw_pixels(processor: &ClipImageProcessor, image: &RgbImage) -> Vec<u8> {
        let mut processor = processor.clone();
        processor.do_rescale = false;
        processor.do_normalize = false;
        let t = processor
            .preprocess(&DynamicImage::ImageRgb8(image.clone()), &Device::Cpu)
            .unwrap();
        let (_, h, w) = t.dims3().unwrap();
        let chw = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut hwc = vec![0u8; chw.len()];
        for c in 0..3 {
            for i in 0..h * w {
                hwc[i * 3 + c] = chw[c * h * w + i] as u8;
            }
        }
        hwc
    }

    #[test]
    fn cropped_resize_equals_resize_then_crop() {
        // Shapes: downscale and upscale on either axis, the strips, a side equal to the
        // target (one pass skipped), odd crops off-centre by one, crops larger than the image.
        let shapes = [
            (300, 7),
            (7, 300),
            (2000, 1),
            (1, 2000),
            (37, 23),
            (16, 80),
            (80, 16),
            (5, 5),
            (640, 480),
        ];
        let configs = [
            (ResizeTarget::ShortestEdge(16), (16, 16)),
            (ResizeTarget::ShortestEdge(17), (13, 15)),
            (ResizeTarget::ShortestEdge(8), (12, 20)),
            (
                ResizeTarget::Exact {
                    height: 9,
                    width: 31,
                },
                (9, 8),
            ),
        ];
        for (seed, &(w, h)) in shapes.iter().enumerate() {
            let image = noisy_rgb(w, h, seed as u64);
            for filter in [Resample::Bicubic, Resample::Bilinear] {
                for &(resize, crop) in &configs {
                    let mut processor = ClipImageProcessor::openai(16);
                    processor.resize = resize;
                    processor.crop = crop;
                    processor.resample = filter;
                    let (new_h, new_w) = processor.resized_size(w as usize, h as usize);
                    let want = resize_then_crop(&image, new_w, new_h, crop, filter);
                    let got = raw_pixels(&processor, &image);
                    assert!(
                        got == want,
                        "{w}×{h} → {new_w}×{new_h}, crop {crop:?}, {filter:?}: pixels differ"
                    );
                }
            }
        }
    }

    #[test]
    fn strips_resize_only_what_the_crop_keeps() {
        // An 8000×1 strip against a 224 processor: in full the resize is 1792000×224 pixels
        // (1.2 GB); the kept part is 224×224, and each kept column reads at most 3 source pixels.
        let strip = noisy_rgb(8000, 1, 7);
        let rows = DynamicImage::ImageRgb8(strip.clone());
        let processor = ClipImageProcessor::openai(224);
        let (h, w) = processor.resized_size(8000, 1);
        assert_eq!((h, w), (224, 1_792_000));
        let columns = (w - 224) / 2..(w - 224) / 2 + 224;
        let kept = Coefficients::new(8000, w, columns.clone(), Resample::Bicubic);
        assert_eq!(kept.bounds.len(), 224);
        assert!(kept.span().len() <= 4, "{:?}", kept.span());
        let region = resize_region(
            &RgbRows::new(&rows),
            w,
            h,
            columns.clone(),
            0..224,
            Resample::Bicubic,
        );
        assert_eq!(region.len(), 224 * 224 * 3);
        // A one-row source is constant down each column: every row equals the first.
        assert!(region
            .chunks_exact(224 * 3)
            .all(|r| r == &region[..224 * 3]));
        // And equals the middle of the full horizontal pass, checked on the full-width row.
        let full = resize_region(&RgbRows::new(&rows), w, 1, 0..w, 0..1, Resample::Bicubic);
        assert_eq!(
            &region[..224 * 3],
            &full[columns.start * 3..columns.end * 3]
        );
    }

    #[test]
    fn rows_are_to_rgb_for_every_layout() {
        use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};
        let (w, h) = (9u32, 4u32);
        let bytes = |n: u32, seed| noise((w * h * n) as usize, seed);
        let words = |n: u32, seed| -> Vec<u16> {
            bytes(2 * n, seed)
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect()
        };
        let floats = |n: u32, seed| -> Vec<f32> {
            // Past 0..1 on both sides, to cover the clamping.
            bytes(n, seed)
                .iter()
                .map(|&b| b as f32 / 200.0 - 0.1)
                .collect()
        };
        let mut alpha_bytes = bytes(4, 9);
        alpha_bytes[3] = 0;
        alpha_bytes[7] = 255;
        let images = [
            DynamicImage::ImageLuma8(
                ImageBuffer::<Luma<u8>, _>::from_raw(w, h, bytes(1, 1)).unwrap(),
            ),
            DynamicImage::ImageLumaA8(
                ImageBuffer::<LumaA<u8>, _>::from_raw(w, h, bytes(2, 2)).unwrap(),
            ),
            DynamicImage::ImageRgb8(
                ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, bytes(3, 3)).unwrap(),
            ),
            DynamicImage::ImageRgba8(
                ImageBuffer::<Rgba<u8>, _>::from_raw(w, h, alpha_bytes).unwrap(),
            ),
            DynamicImage::ImageLuma16(
                ImageBuffer::<Luma<u16>, _>::from_raw(w, h, words(1, 5)).unwrap(),
            ),
            DynamicImage::ImageLumaA16(
                ImageBuffer::<LumaA<u16>, _>::from_raw(w, h, words(2, 6)).unwrap(),
            ),
            DynamicImage::ImageRgb16(
                ImageBuffer::<Rgb<u16>, _>::from_raw(w, h, words(3, 7)).unwrap(),
            ),
            DynamicImage::ImageRgba16(
                ImageBuffer::<Rgba<u16>, _>::from_raw(w, h, words(4, 8)).unwrap(),
            ),
            DynamicImage::ImageRgb32F(
                ImageBuffer::<Rgb<f32>, _>::from_raw(w, h, floats(3, 10)).unwrap(),
            ),
            DynamicImage::ImageRgba32F(
                ImageBuffer::<Rgba<f32>, _>::from_raw(w, h, floats(4, 11)).unwrap(),
            ),
        ];
        for image in &images {
            let want = to_rgb(image);
            let rows = RgbRows::new(image);
            let mut scratch = Vec::new();
            for y in 0..h {
                let got = rows.row(y as usize, &mut scratch).to_vec();
                let want_row = &want.as_raw()[(y * w * 3) as usize..((y + 1) * w * 3) as usize];
                assert_eq!(got, want_row, "{:?}, row {y}", image.color());
            }
        }
    }

    #[test]
    fn decoded_size_is_checked_before_allocating() {
        // 1000×1000 RGB is 3,000,000 bytes; a 2 MiB budget refuses it by its header.
        let mut png = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::new(1000, 1000))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let limits = DecodeLimits {
            max_width: 4096,
            max_height: 4096,
            max_alloc_bytes: 2 << 20,
        };
        let err = decode_image_bytes(&png, limits).unwrap_err();
        assert_eq!(
            crate::error_line(&err),
            "cannot decode image: image is 1000×1000, 2.9 MiB decoded, over the limit of 2 MiB; resize it first"
        );
        let roomy = DecodeLimits {
            max_alloc_bytes: 3_000_000,
            ..limits
        };
        assert_eq!(decode_image_bytes(&png, roomy).unwrap().width(), 1000);
    }
}
