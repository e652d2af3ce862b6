//! The training noise schedule shared by the samplers, read from a diffusers
//! `scheduler/scheduler_config.json`, with the numerics of diffusers (float32 torch tensors).

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// The keys of a diffusers scheduler config that clipsteer reads. A config written for another
/// scheduler class (SD 2-base ships a PNDM one) is read the way diffusers' `from_config` reads
/// it: keys the target scheduler knows are taken, the rest keep the target's defaults.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct SchedulerFile {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<String>,
    pub steps_offset: Option<usize>,
    pub timestep_spacing: Option<String>,
    pub rescale_betas_zero_snr: Option<bool>,
    // DPMSolverMultistepScheduler's own keys.
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub final_sigmas_type: Option<String>,
    pub thresholding: Option<bool>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    pub lambda_min_clipped: Option<f64>,
    pub variance_type: Option<String>,
}

impl SchedulerFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::files::read_regular_to_string(path, &path.display().to_string())
            .with_context(|| {
                format!(
                "cannot read {}: a diffusers model directory needs scheduler/scheduler_config.json",
                path.display()
            )
            })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid scheduler config", path.display()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

impl PredictionType {
    pub fn parse(name: Option<&str>) -> Result<Self> {
        Ok(match name.unwrap_or("epsilon") {
            "epsilon" => Self::Epsilon,
            "v_prediction" => Self::VPrediction,
            "sample" => Self::Sample,
            other => bail!(
                "scheduler config: prediction_type '{other}' is not supported (epsilon, v_prediction, sample)"
            ),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

impl Spacing {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "linspace" => Self::Linspace,
            "leading" => Self::Leading,
            "trailing" => Self::Trailing,
            other => bail!(
                "scheduler config: timestep_spacing '{other}' is not supported (linspace, leading, trailing)"
            ),
        })
    }
}

/// `alphas_cumprod` of the training schedule, computed as diffusers does (a float32
/// `torch.linspace`, squared for `scaled_linear`, then torch's cumulative product).
pub fn alphas_cumprod(file: &SchedulerFile) -> Result<Vec<f32>> {
    if file.rescale_betas_zero_snr == Some(true) {
        bail!("scheduler config: rescale_betas_zero_snr is not supported");
    }
    let steps = file.num_train_timesteps.unwrap_or(1000);
    if steps < 2 {
        bail!("scheduler config: num_train_timesteps must be at least 2, got {steps}");
    }
    let betas: Vec<f32> = if let Some(betas) = &file.trained_betas {
        betas.iter().map(|&b| b as f32).collect()
    } else {
        let start = file.beta_start.unwrap_or(0.0001);
        let end = file.beta_end.unwrap_or(0.02);
        match file.beta_schedule.as_deref().unwrap_or("linear") {
            "linear" => torch_linspace_f32(start as f32, end as f32, steps),
            "scaled_linear" => {
                torch_linspace_f32(start.sqrt() as f32, end.sqrt() as f32, steps)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            "squaredcos_cap_v2" => {
                let alpha_bar =
                    |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..steps)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
            other => bail!(
                "scheduler config: beta_schedule '{other}' is not supported (linear, scaled_linear, squaredcos_cap_v2)"
            ),
        }
    };
    if betas.len() != steps {
        bail!(
            "scheduler config: trained_betas has {} values for num_train_timesteps {steps}",
            betas.len()
        );
    }
    // torch.cumprod on float32 accumulates in float64 and rounds each output; a float32
    // running product drifts by ~6e-5 relative over 1000 steps.
    let mut product = 1.0f64;
    Ok(betas
        .iter()
        .map(|beta| {
            product *= f64::from(1.0 - beta);
            product as f32
        })
        .collect())
}

/// torch.linspace on float32: the first half counts up from `start`, the second half down from
/// `end`, so that both ends are exact.
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// Inference timesteps, highest first, as diffusers' `set_timesteps` spaces them (numpy's
/// round-half-to-even included).
pub fn spaced_timesteps(
    spacing: Spacing,
    inference_steps: usize,
    train_steps: usize,
    steps_offset: usize,
) -> Vec<usize> {
    let n = inference_steps;
    match spacing {
        Spacing::Linspace => {
            // np.linspace(0, train_steps - 1, n + 1): i·step, with the end point exact.
            let last = (train_steps - 1) as f64;
            let step = last / n as f64;
            (1..=n)
                .rev()
                .map(|i| {
                    let value = if i == n { last } else { i as f64 * step };
                    value.round_ties_even() as usize
                })
                .collect()
        }
        Spacing::Leading => {
            let ratio = train_steps / (n + 1);
            (1..=n).rev().map(|i| i * ratio + steps_offset).collect()
        }
        Spacing::Trailing => {
            // np.arange(train_steps, 0, -ratio): ⌈train_steps / ratio⌉ values start − i·ratio.
            let ratio = train_steps as f64 / n as f64;
            let count = (train_steps as f64 / ratio).ceil() as usize;
            (0..count)
                .map(|i| {
                    let value = train_steps as f64 - i as f64 * ratio;
                    (value.round_ties_even() as usize).saturating_sub(1)
                })
                .collect()
        }
    }
}

/// σ(t) = √((1 − ᾱ_t) / ᾱ_t) of the training schedule, float32 as in diffusers.
pub fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}
