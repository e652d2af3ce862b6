//! Stable Diffusion text-to-image on candle-transformers' UNet and VAE, loaded from the diffusers
//! layout (a local directory or a hub id), with diffusers' StableDiffusionPipeline semantics:
//! classifier-free guidance with the negative prompt as the unconditional branch, latents
//! scaled by the VAE's scaling factor before decoding.

pub mod cli;
pub mod config;
pub mod dpm_solver;
pub mod schedule;
pub mod text_encoder;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_transformers::models::stable_diffusion::schedulers::{
    BetaSchedule, PredictionType as CandlePrediction, Scheduler, SchedulerConfig as _,
    TimestepSpacing,
};
use candle_transformers::models::stable_diffusion::{
    ddim, euler_ancestral_discrete, unet_2d::UNet2DConditionModel, vae::AutoEncoderKL,
};
use rand::{Rng, SeedableRng};
use schedule::{PredictionType, SchedulerFile};
use std::path::{Path, PathBuf};
use text_encoder::{PromptTokenizer, TextEncoder};

pub const DEFAULT_MODEL: &str = "stabilityai/stable-diffusion-2-base";

/// The files a diffusers-layout directory must hold for clipsteer to run it, besides the weights
/// of [`WEIGHTS`].
const REQUIRED_FILES: &[&str] = &[
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "scheduler/scheduler_config.json",
];
/// Each weighted component: its folder and how its library names the weight files
/// (safetensors, sharded or not, before PyTorch `.bin`, with the `--variant` when given).
const WEIGHTS: &[(&str, crate::models::WeightNames)] = &[
    ("unet", crate::models::DIFFUSERS_WEIGHTS),
    ("vae", crate::models::DIFFUSERS_WEIGHTS),
    ("text_encoder", crate::models::TRANSFORMERS_WEIGHTS),
];

/// Fetched with the rest when the repository has it.
const OPTIONAL_FILES: &[&str] = &["tokenizer/special_tokens_map.json"];

#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SchedulerKind {
    /// DPM-Solver++ (2M), as diffusers' DPMSolverMultistepScheduler (the original demo's).
    #[cfg_attr(feature = "clap", value(name = "dpm++2m"))]
    #[serde(rename = "dpm++2m")]
    DpmPlusPlus2M,
    /// DDIM (η = 0, deterministic), candle-transformers'.
    #[cfg_attr(feature = "clap", value(name = "ddim"))]
    #[serde(rename = "ddim")]
    Ddim,
    /// Euler ancestral, candle-transformers'.
    #[cfg_attr(feature = "clap", value(name = "euler-a"))]
    #[serde(rename = "euler-a")]
    EulerAncestral,
}

/// The what-to-do sentence of every missing-weights error.
fn fetch_hint(spec: &str) -> String {
    let download = match crate::hub::ModelSpec::parse(spec) {
        Ok(crate::hub::ModelSpec::Hub { id, revision }) => match revision {
            Some(revision) => format!("{id} --revision {revision}"),
            None => id,
        },
        _ => DEFAULT_MODEL.to_string(),
    };
    format!(
        "download it where the hub is reachable (`huggingface-cli download {download}`) or pass --model DIR, a directory in the diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
    )
}

/// Resolves `spec` (a diffusers-layout directory, or a hub id, optionally `ID@REVISION`) to a
/// local directory holding every file in [`REQUIRED_FILES`] and the weights of each component
/// (the `variant`'s, e.g. `fp16`, when given), downloading into the HF cache when allowed.
pub fn resolve(spec: &str, variant: Option<&str>) -> Result<PathBuf> {
    resolve_with(spec, variant, &crate::hub::HubConfig::from_env())
}

/// [`resolve`] with an explicit hub configuration.
pub fn resolve_with(
    spec: &str,
    variant: Option<&str>,
    config: &crate::hub::HubConfig,
) -> Result<PathBuf> {
    match crate::hub::ModelSpec::parse(spec)
        .map_err(|e| anyhow::anyhow!("{e}; {}", fetch_hint(spec)))?
    {
        crate::hub::ModelSpec::Local(path) => {
            let missing: Vec<&str> = REQUIRED_FILES
                .iter()
                .copied()
                .filter(|f| !path.join(f).is_file())
                .collect();
            if !missing.is_empty() {
                bail!("{spec} lacks {}; {}", missing.join(", "), fetch_hint(spec));
            }
            Ok(path)
        }
        crate::hub::ModelSpec::Hub { id, revision } => crate::hub::resolve_pipeline(
            &id,
            revision.as_deref(),
            &crate::hub::PipelineLayout {
                required: REQUIRED_FILES,
                weights: WEIGHTS,
                optional: OPTIONAL_FILES,
            },
            variant,
            spec,
            config,
        )
        .map_err(|e| anyhow::anyhow!("{}; {}", crate::error_line(&e), fetch_hint(spec))),
    }
}

/// Seeded standard-normal noise (ChaCha8 + Box–Muller): the same latents for a seed on every
/// device and platform. Not torch's generator, so seeds do not carry over from diffusers.
pub fn gaussian_noise(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    let count: usize = shape.iter().product();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(count + 1);
    while values.len() < count {
        // 1 − u keeps the logarithm finite: u is drawn from [0, 1).
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        values.push((radius * angle.cos()) as f32);
        values.push((radius * angle.sin()) as f32);
    }
    values.truncate(count);
    Ok(Tensor::from_vec(values, shape, device)?)
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub prompt: String,
    /// The unconditional branch of guidance; "" as diffusers uses without a negative prompt.
    pub negative: String,
    pub steps: usize,
    pub guidance: f64,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub scheduler: SchedulerKind,
}

/// A loaded Stable Diffusion pipeline.
pub struct StableDiffusion {
    tokenizer: PromptTokenizer,
    text_encoder: TextEncoder,
    unet: UNet2DConditionModel,
    vae: AutoEncoderKL,
    vae_spec: config::VaeSpec,
    latent_channels: usize,
    scheduler_file: SchedulerFile,
    device: Device,
}

/// The weights of one component (`unet`, `vae`) in any format and dtype, read as f32.
fn component_vb(
    dir: &Path,
    folder: &str,
    variant: Option<&str>,
    device: &Device,
) -> Result<candle_nn::VarBuilder<'static>> {
    let files =
        crate::models::find_weights(&dir.join(folder), crate::models::DIFFUSERS_WEIGHTS, variant)?;
    crate::models::load_weight_files(&files, device)
}

impl StableDiffusion {
    /// Loads every component from a directory in the diffusers layout (see [`resolve`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_variant(dir, None, device)
    }

    /// [`Self::load`] reading each component's `variant` weights (e.g. `fp16`:
    /// `diffusion_pytorch_model.fp16.safetensors`), as diffusers' `variant=` does. Whatever
    /// their dtype, the weights are converted to f32.
    pub fn load_variant(dir: &Path, variant: Option<&str>, device: &Device) -> Result<Self> {
        for file in REQUIRED_FILES {
            if !dir.join(file).is_file() {
                bail!(
                    "{} lacks {file}; {}",
                    dir.display(),
                    fetch_hint(&dir.display().to_string())
                );
            }
        }
        for (folder, names) in WEIGHTS {
            if crate::models::find_weights(&dir.join(folder), *names, variant).is_err() {
                let wanted: Vec<String> = names
                    .candidates(variant)
                    .iter()
                    .map(|c| format!("{folder}/{c}"))
                    .collect();
                bail!(
                    "{} lacks {folder} weights (one of {}); {}",
                    dir.display(),
                    wanted.join(", "),
                    fetch_hint(&dir.display().to_string())
                );
            }
        }
        let unet_spec = config::read_unet(&dir.join("unet/config.json"))?;
        let vae_spec = config::read_vae(&dir.join("vae/config.json"))?;
        let text_encoder = TextEncoder::load_variant(&dir.join("text_encoder"), variant, device)?;
        let tokenizer =
            PromptTokenizer::load(&dir.join("tokenizer"), text_encoder.max_positions())?;
        let scheduler_file = SchedulerFile::load(&dir.join("scheduler/scheduler_config.json"))?;
        if unet_spec.out_channels != unet_spec.in_channels
            || unet_spec.in_channels != vae_spec.config.latent_channels
        {
            bail!(
                "{}: the UNet maps {} to {} channels but the VAE has {} latent channels; inpainting and other variants are not supported",
                dir.display(),
                unet_spec.in_channels,
                unet_spec.out_channels,
                vae_spec.config.latent_channels
            );
        }
        let unet = UNet2DConditionModel::new(
            component_vb(dir, "unet", variant, device)?,
            unet_spec.in_channels,
            unet_spec.out_channels,
            false,
            unet_spec.config.clone(),
        )
        .with_context(|| format!("cannot build the UNet from {}/unet", dir.display()))?;
        let vae = AutoEncoderKL::new(
            component_vb(dir, "vae", variant, device)?,
            vae_spec.in_channels,
            vae_spec.out_channels,
            vae_spec.config.clone(),
        )
        .with_context(|| format!("cannot build the VAE from {}/vae", dir.display()))?;
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            latent_channels: vae_spec.config.latent_channels,
            vae,
            vae_spec,
            scheduler_file,
            device: device.clone(),
        })
    }

    /// Pixels per latent along each side (8 for SD): image sizes must be multiples of it.
    pub fn downscale(&self) -> usize {
        self.vae_spec.downscale
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The padded token ids the text encoder sees for `text`.
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    /// The text encoder's hidden states [1, len, hidden] for one prompt.
    pub fn encode_prompt(&self, text: &str) -> Result<Tensor> {
        let ids = self.tokenizer.encode_tensor(text, &self.device)?;
        self.text_encoder.forward(&ids)
    }

    /// A fresh scheduler of `kind` for `steps` steps, configured by scheduler_config.json.
    pub fn scheduler(&self, kind: SchedulerKind, steps: usize) -> Result<Box<dyn Scheduler>> {
        build_scheduler(&self.scheduler_file, kind, steps)
    }

    /// Denoises `latents` [1, C, h, w] (already pure noise) with classifier-free guidance.
    /// `on_step(done, total)` runs after every step; an error from it ends the run (a caller
    /// that was interrupted).
    pub fn denoise(
        &self,
        latents: &Tensor,
        prompt: &str,
        negative: &str,
        guidance: f64,
        scheduler: &mut dyn Scheduler,
        mut on_step: impl FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        let guided = guidance > 1.0;
        let conditional = self.encode_prompt(prompt)?;
        let embeddings = if guided {
            Tensor::cat(&[self.encode_prompt(negative)?, conditional], 0)?
        } else {
            conditional
        };
        let mut latents = (latents * scheduler.init_noise_sigma())?;
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if guided {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(input, t)?;
            let noise_pred = self.unet.forward(&input, t as f64, &embeddings)?;
            let noise_pred = if guided {
                let unconditional = noise_pred.narrow(0, 0, 1)?;
                let text = noise_pred.narrow(0, 1, 1)?;
                (&unconditional + ((text - &unconditional)? * guidance)?)?
            } else {
                noise_pred
            };
            latents = scheduler.step(&noise_pred, t, &latents)?;
            on_step(i + 1, timesteps.len())?;
        }
        Ok(latents)
    }

    /// The VAE's decoding of `latents`, in [-1, 1] (unclamped) as [1, 3, H, W].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self
            .vae
            .decode(&(latents / self.vae_spec.scaling_factor)?)?)
    }

    /// Checks a requested image size against the VAE's downscale factor.
    pub fn check_size(&self, width: usize, height: usize) -> Result<()> {
        check_size(width, height, self.downscale())
    }

    /// Text to image: noise from the seed, denoised, decoded.
    pub fn generate(
        &self,
        options: &GenerateOptions,
        on_step: impl FnMut(usize, usize) -> Result<()>,
    ) -> Result<Generated> {
        self.check_size(options.width, options.height)?;
        let factor = self.downscale();
        let noise = gaussian_noise(
            options.seed,
            &[
                1,
                self.latent_channels,
                options.height / factor,
                options.width / factor,
            ],
            &self.device,
        )?;
        let mut scheduler = self.scheduler(options.scheduler, options.steps)?;
        let latents = self.denoise(
            &noise,
            &options.prompt,
            &options.negative,
            options.guidance,
            scheduler.as_mut(),
            on_step,
        )?;
        let decoded = self.decode(&latents)?;
        Ok(Generated {
            image: to_rgb(&decoded)?,
            latents,
        })
    }
}

/// The largest image side `generate` makes. Stable Diffusion 1.x and 2.x are trained at 512 and
/// 768; memory grows with the square of the latent positions in attention, and an allocation
/// that fails aborts the process, so sizes past this are refused up front.
pub const MAX_SIZE: usize = 1024;

pub fn check_size(width: usize, height: usize, factor: usize) -> Result<()> {
    for (what, value) in [("width", width), ("height", height)] {
        if value > MAX_SIZE {
            bail!("image {what} {value} is over the limit of {MAX_SIZE} pixels; Stable Diffusion 1.x/2.x generate at 512 or 768");
        }
        if value == 0 || !value.is_multiple_of(factor) {
            bail!(
                "image {what} {value} is not a positive multiple of {factor}: pick e.g. {} (the VAE works on {factor}×{factor} pixel blocks)",
                (value / factor).max(1) * factor
            );
        }
    }
    Ok(())
}

pub struct Generated {
    pub image: image::RgbImage,
    pub latents: Tensor,
}

/// The VAE output [1, 3, H, W] in [-1, 1] as 8-bit RGB, rounded as diffusers' postprocess does.
pub fn to_rgb(decoded: &Tensor) -> Result<image::RgbImage> {
    let (_, channels, height, width) = decoded.dims4()?;
    if channels != 3 {
        bail!("the VAE produced {channels} channels, expected 3");
    }
    let pixels = ((decoded.get(0)? / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bytes: Vec<u8> = pixels.iter().map(|v| (v * 255.0).round() as u8).collect();
    image::RgbImage::from_raw(width as u32, height as u32, bytes)
        .context("decoded image has the wrong number of pixels")
}

fn candle_prediction(kind: PredictionType) -> CandlePrediction {
    match kind {
        PredictionType::Epsilon => CandlePrediction::Epsilon,
        PredictionType::VPrediction => CandlePrediction::VPrediction,
        PredictionType::Sample => CandlePrediction::Sample,
    }
}

/// candle's schedulers take the beta schedule and spacing as enums; defaults are those of the
/// matching diffusers class (DDIM: leading spacing; Euler ancestral: linspace).
fn build_scheduler(
    file: &SchedulerFile,
    kind: SchedulerKind,
    steps: usize,
) -> Result<Box<dyn Scheduler>> {
    let train_steps = file.num_train_timesteps.unwrap_or(1000);
    if steps == 0 || steps > train_steps {
        bail!("--steps must be between 1 and {train_steps}, got {steps}");
    }
    if kind == SchedulerKind::DpmPlusPlus2M {
        let config = dpm_solver::DpmSolverConfig::from_file(file)?;
        return Ok(Box::new(dpm_solver::DpmSolverMultistep::new(
            config, steps,
        )?));
    }
    if file.trained_betas.is_some() {
        bail!("scheduler config: trained_betas is supported by --scheduler dpm++2m only");
    }
    let beta_schedule = match file.beta_schedule.as_deref().unwrap_or("linear") {
        "linear" => BetaSchedule::Linear,
        "scaled_linear" => BetaSchedule::ScaledLinear,
        "squaredcos_cap_v2" => BetaSchedule::SquaredcosCapV2,
        other => bail!("scheduler config: beta_schedule '{other}' is not supported"),
    };
    let default_spacing = match kind {
        SchedulerKind::Ddim => "leading",
        _ => "linspace",
    };
    let spacing = match schedule::Spacing::parse(
        file.timestep_spacing.as_deref().unwrap_or(default_spacing),
    )? {
        schedule::Spacing::Leading => TimestepSpacing::Leading,
        schedule::Spacing::Linspace => TimestepSpacing::Linspace,
        schedule::Spacing::Trailing => TimestepSpacing::Trailing,
    };
    let prediction_type =
        candle_prediction(PredictionType::parse(file.prediction_type.as_deref())?);
    let beta_start = file.beta_start.unwrap_or(0.0001);
    let beta_end = file.beta_end.unwrap_or(0.02);
    let steps_offset = file.steps_offset.unwrap_or(0);
    Ok(match kind {
        SchedulerKind::Ddim => ddim::DDIMSchedulerConfig {
            beta_start,
            beta_end,
            beta_schedule,
            eta: 0.0,
            steps_offset,
            prediction_type,
            train_timesteps: train_steps,
            timestep_spacing: spacing,
        }
        .build(steps)?,
        _ => euler_ancestral_discrete::EulerAncestralDiscreteSchedulerConfig {
            beta_start,
            beta_end,
            beta_schedule,
            steps_offset,
            prediction_type,
            train_timesteps: train_steps,
            timestep_spacing: spacing,
        }
        .build(steps)?,
    })
}
