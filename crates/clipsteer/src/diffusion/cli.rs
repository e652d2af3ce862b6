//! `clipsteer generate`, and the output helpers `evade` shares with it.

use super::{GenerateOptions, SchedulerKind, StableDiffusion};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// The Stable Diffusion options of `generate` and `evade`.
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[derive(Debug, Clone)]
pub struct DiffusionArgs {
    /// Stable Diffusion model: a directory in the diffusers layout or a hub id (ID@REVISION for a
    /// branch, tag or commit).
    #[cfg_attr(feature = "clap", arg(long, default_value = super::DEFAULT_MODEL))]
    pub model: String,
    /// Weights variant to read, as diffusers' `variant=`: `fp16` reads
    /// `diffusion_pytorch_model.fp16.safetensors` and `model.fp16.safetensors`.
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME"))]
    pub variant: Option<String>,
    /// Denoising steps.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 25))]
    pub steps: usize,
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = SchedulerKind::DpmPlusPlus2M))]
    pub scheduler: SchedulerKind,
    /// Classifier-free guidance scale (1 or less turns guidance off).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 7.5))]
    pub guidance: f64,
    /// Image width and height in pixels: a multiple of 8.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 512))]
    pub size: usize,
    /// Seed of the initial noise (clipsteer's own generator: seeds do not carry over from
    /// diffusers).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Negative prompt: what guidance steers away from.
    #[cfg_attr(feature = "clap", arg(long, default_value = ""))]
    pub negative: String,
}

impl DiffusionArgs {
    pub fn options(&self, prompt: &str) -> GenerateOptions {
        GenerateOptions {
            prompt: prompt.to_string(),
            negative: self.negative.clone(),
            steps: self.steps,
            guidance: self.guidance,
            width: self.size,
            height: self.size,
            seed: self.seed,
            scheduler: self.scheduler,
        }
    }

    /// Checks what can be checked before any model is loaded.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            crate::usage_bail!("--steps must be at least 1");
        }
        if !self.guidance.is_finite() {
            crate::usage_bail!("--guidance must be a finite number");
        }
        // Every SD VAE works on 8×8 pixel blocks; the loaded model is checked again.
        super::check_size(self.size, self.size, 8).map_err(|e| anyhow::anyhow!("--size: {e}"))
    }

    /// Resolves and loads the model, checking the size against its VAE.
    pub fn load(&self, device: &Device) -> Result<StableDiffusion> {
        let dir = super::resolve(&self.model, self.variant.as_deref())?;
        let pipeline = StableDiffusion::load_variant(&dir, self.variant.as_deref(), device)
            .with_context(|| format!("cannot load Stable Diffusion model '{}'", self.model))?;
        pipeline
            .check_size(self.size, self.size)
            .map_err(|e| anyhow::anyhow!("--size: {e}"))?;
        Ok(pipeline)
    }
}

#[cfg_attr(feature = "clap", derive(clap::Args))]
#[derive(Debug)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: String,
    /// Output image (.png, .jpg or .webp).
    #[cfg_attr(feature = "clap", arg(short, long))]
    pub output: PathBuf,
    #[cfg_attr(feature = "clap", command(flatten))]
    pub diffusion: DiffusionArgs,
}

/// A progress bar over denoising steps on stderr (drawn only on a terminal).
pub fn step_bar(label: &str) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} {bar:30} {pos}/{len} steps · {elapsed} elapsed · ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// Runs `generate` on a loaded pipeline with a progress bar.
pub fn generate_with_progress(
    pipeline: &StableDiffusion,
    options: &GenerateOptions,
    label: &str,
) -> Result<image::RgbImage> {
    let bar = step_bar(label);
    let generated = pipeline.generate(options, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        Ok(())
    });
    bar.finish_and_clear();
    Ok(generated?.image)
}

/// The image format an output path asks for, by extension.
pub fn output_format(path: &Path) -> Result<image::ImageFormat> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("png") => Ok(image::ImageFormat::Png),
        Some("jpg") | Some("jpeg") => Ok(image::ImageFormat::Jpeg),
        Some("webp") => Ok(image::ImageFormat::WebP),
        _ => bail!(
            "cannot tell the image format of {}: end the name in .png, .jpg or .webp",
            path.display()
        ),
    }
}

pub fn encode_image(image: &image::RgbImage, format: image::ImageFormat) -> Result<Vec<u8>> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, format)
        .context("cannot encode the image")?;
    Ok(bytes.into_inner())
}

/// Fails early, before minutes of work, when `path` cannot be written: its folder is missing,
/// or it is a directory, FIFO, device or dangling link ([`crate::files::destination`]).
pub fn check_output_dir(path: &Path) -> Result<()> {
    crate::files::destination(path, &path.display().to_string()).map(|_| ())
}

/// Writes `bytes` over `path` atomically, as [`crate::files::write_replacing`] does: a link is
/// written through, a replaced file keeps its mode, a new one follows the umask.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::files::write_bytes_replacing(path, &path.display().to_string(), bytes).map(|_| ())
}

pub fn run_generate(args: GenerateArgs, device: &Device) -> Result<i32> {
    args.diffusion.validate()?;
    let format = output_format(&args.output)?;
    check_output_dir(&args.output)?;
    let pipeline = args.diffusion.load(device)?;
    let started = std::time::Instant::now();
    let image = generate_with_progress(
        &pipeline,
        &args.diffusion.options(&args.prompt),
        "denoising",
    )?;
    write_atomically(&args.output, &encode_image(&image, format)?)?;
    // Where the model came from (id@revision, commit), so that the image can be made again.
    let model = match crate::hub::origin(&args.diffusion.model) {
        Some(crate::hub::ModelOrigin::Hub {
            id,
            revision,
            commit,
            ..
        }) => format!("{id}@{revision}, commit {commit}"),
        Some(crate::hub::ModelOrigin::Local { path }) => path,
        None => args.diffusion.model.clone(),
    };
    errln!(
        "wrote {} ({}×{}, {} steps of {}, seed {}, {:.1}s, model {model})",
        args.output.display(),
        image.width(),
        image.height(),
        args.diffusion.steps,
        serde_json::to_value(args.diffusion.scheduler)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        args.diffusion.seed,
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}
