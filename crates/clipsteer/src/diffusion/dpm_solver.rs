//! DPM-Solver++ (2M): the multistep second-order solver of Lu et al. 2022
//! (<https://arxiv.org/abs/2211.01095>), with the schedule, order switching and float32 numerics
//! of diffusers' `DPMSolverMultistepScheduler` (algorithm_type "dpmsolver++", deterministic).
//!
//! In the exponential-integrator form the solver works on λ = log(α/σ): each step moves the sample
//! from σ_s to σ_t along the data prediction x̂₀, first order on the first step (and on the last,
//! where σ reaches zero), second order in between from the last two x̂₀.

use super::schedule::{self, PredictionType, SchedulerFile, Spacing};
use anyhow::{bail, Result};
use candle_core::Tensor;
use candle_transformers::models::stable_diffusion::schedulers::Scheduler;

/// What diffusers' DPMSolverMultistepScheduler lets a config choose that clipsteer supports.
#[derive(Debug, Clone)]
pub struct DpmSolverConfig {
    pub alphas_cumprod: Vec<f32>,
    pub prediction_type: PredictionType,
    pub spacing: Spacing,
    pub steps_offset: usize,
    /// 1 or 2.
    pub solver_order: usize,
    /// Second-order update variant: midpoint (diffusers' default) or heun.
    pub heun: bool,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    /// Last σ: zero (the default) or the smallest training σ.
    pub final_sigma_zero: bool,
}

impl DpmSolverConfig {
    /// Reads a scheduler config as `DPMSolverMultistepScheduler.from_config(config)` would,
    /// refusing options whose numerics clipsteer does not implement.
    pub fn from_file(file: &SchedulerFile) -> Result<Self> {
        let unsupported = |what: &str| -> Result<Self> {
            bail!("scheduler config: {what} is not supported by clipsteer's DPM-Solver++ (2M); use --scheduler ddim or euler-a, or remove it from scheduler_config.json")
        };
        match file.algorithm_type.as_deref().unwrap_or("dpmsolver++") {
            // diffusers maps the deprecated "deis" to dpmsolver++ too.
            "dpmsolver++" | "deis" => {}
            other => return unsupported(&format!("algorithm_type '{other}'")),
        }
        let heun = match file.solver_type.as_deref().unwrap_or("midpoint") {
            "midpoint" | "logrho" | "bh1" | "bh2" => false,
            "heun" => true,
            other => return unsupported(&format!("solver_type '{other}'")),
        };
        let solver_order = file.solver_order.unwrap_or(2);
        if !(1..=2).contains(&solver_order) {
            return unsupported(&format!("solver_order {solver_order}"));
        }
        for (flag, name) in [
            (file.thresholding, "thresholding"),
            (file.use_karras_sigmas, "use_karras_sigmas"),
            (file.use_exponential_sigmas, "use_exponential_sigmas"),
            (file.use_beta_sigmas, "use_beta_sigmas"),
            (file.use_lu_lambdas, "use_lu_lambdas"),
            (file.use_flow_sigmas, "use_flow_sigmas"),
        ] {
            if flag == Some(true) {
                return unsupported(name);
            }
        }
        if file.lambda_min_clipped.is_some_and(|l| l.is_finite()) {
            return unsupported("a finite lambda_min_clipped");
        }
        if matches!(
            file.variance_type.as_deref(),
            Some("learned") | Some("learned_range")
        ) {
            return unsupported("a learned variance_type");
        }
        let final_sigma_zero = match file.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => true,
            "sigma_min" => false,
            other => return unsupported(&format!("final_sigmas_type '{other}'")),
        };
        Ok(Self {
            alphas_cumprod: schedule::alphas_cumprod(file)?,
            prediction_type: PredictionType::parse(file.prediction_type.as_deref())?,
            spacing: Spacing::parse(file.timestep_spacing.as_deref().unwrap_or("linspace"))?,
            steps_offset: file.steps_offset.unwrap_or(0),
            solver_order,
            heun,
            lower_order_final: file.lower_order_final.unwrap_or(true),
            euler_at_final: file.euler_at_final.unwrap_or(false),
            final_sigma_zero,
        })
    }
}

/// α_t and σ_t of the VP process at noise level σ (float32, as diffusers computes them).
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

#[derive(Debug, Clone)]
pub struct DpmSolverMultistep {
    config: DpmSolverConfig,
    timesteps: Vec<usize>,
    /// One per timestep, then the final σ.
    sigmas: Vec<f32>,
    /// x̂₀ of the previous step, for the second-order update.
    previous_x0: Option<Tensor>,
    step_index: usize,
}

impl DpmSolverMultistep {
    pub fn new(config: DpmSolverConfig, inference_steps: usize) -> Result<Self> {
        let train_steps = config.alphas_cumprod.len();
        if inference_steps == 0 || inference_steps > train_steps {
            bail!("--steps must be between 1 and {train_steps}, got {inference_steps}");
        }
        let timesteps = schedule::spaced_timesteps(
            config.spacing,
            inference_steps,
            train_steps,
            config.steps_offset,
        );
        let train_sigmas = schedule::train_sigmas(&config.alphas_cumprod);
        let mut sigmas = Vec::with_capacity(timesteps.len() + 1);
        for &t in &timesteps {
            let Some(&sigma) = train_sigmas.get(t) else {
                bail!("timestep {t} is past the {train_steps} training steps: lower steps_offset in scheduler_config.json");
            };
            sigmas.push(sigma);
        }
        sigmas.push(if config.final_sigma_zero {
            0.0
        } else {
            train_sigmas[0]
        });
        Ok(Self {
            config,
            timesteps,
            sigmas,
            previous_x0: None,
            step_index: 0,
        })
    }

    /// σ at each timestep, then the final σ (what diffusers' `scheduler.sigmas` holds).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The data prediction x̂₀ from the model's output at the current σ.
    fn predicted_x0(&self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[self.step_index]);
        Ok(match self.config.prediction_type {
            PredictionType::Epsilon => {
                ((sample - (model_output * sigma_t as f64)?)? / alpha_t as f64)?
            }
            PredictionType::VPrediction => {
                ((sample * alpha_t as f64)? - (model_output * sigma_t as f64)?)?
            }
            PredictionType::Sample => model_output.clone(),
        })
    }

    fn first_order(&self, x0: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let i = self.step_index;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
        let sample_coef = sigma_t / sigma_s;
        let x0_coef = -(alpha_t * ((-h).exp() - 1.0));
        Ok(((sample * sample_coef as f64)? + (x0 * x0_coef as f64)?)?)
    }

    fn second_order(&self, x0: &Tensor, previous_x0: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let i = self.step_index;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let h = lambda_t - lambda_s0;
        let r0 = (lambda_s0 - lambda_s1) / h;
        // D1 = (x̂₀ − x̂₀_prev) / r0: the finite-difference slope of the data prediction.
        let d1 = ((x0 - previous_x0)? * (1.0 / r0) as f64)?;
        let phi = alpha_t * ((-h).exp() - 1.0);
        let d1_coef = if self.config.heun {
            alpha_t * (((-h).exp() - 1.0) / h + 1.0)
        } else {
            -0.5 * phi
        };
        let out = ((sample * (sigma_t / sigma_s0) as f64)? + (x0 * -phi as f64)?)?;
        Ok((out + (d1 * d1_coef as f64)?)?)
    }

    /// One solver step; `step` in the trait below wraps this with candle's error type.
    pub fn advance(
        &mut self,
        model_output: &Tensor,
        timestep: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        let Some(&expected) = self.timesteps.get(self.step_index) else {
            bail!("the DPM-Solver++ schedule is already complete");
        };
        if timestep != expected {
            bail!(
                "DPM-Solver++ step {} expected timestep {expected}, got {timestep}",
                self.step_index
            );
        }
        let steps = self.timesteps.len();
        let last = self.step_index == steps - 1;
        let lower_order_final = last
            && (self.config.euler_at_final
                || (self.config.lower_order_final && steps < 15)
                || self.config.final_sigma_zero);
        let x0 = self.predicted_x0(model_output, sample)?;
        let prev_sample = match (&self.previous_x0, self.config.solver_order) {
            (Some(previous), 2) if !lower_order_final => {
                self.second_order(&x0, previous, sample)?
            }
            _ => self.first_order(&x0, sample)?,
        };
        self.previous_x0 = Some(x0);
        self.step_index += 1;
        Ok(prev_sample)
    }
}

impl Scheduler for DpmSolverMultistep {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: Tensor,
        timestep: usize,
    ) -> candle_core::Result<Tensor> {
        let Some(index) = self.timesteps.iter().position(|&t| t == timestep) else {
            candle_core::bail!("timestep {timestep} is not in this DPM-Solver++ schedule");
        };
        let (alpha, sigma) = alpha_sigma(self.sigmas[index]);
        (original * alpha as f64)? + (noise * sigma as f64)?
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor, _timestep: usize) -> candle_core::Result<Tensor> {
        Ok(sample)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: usize,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        self.advance(model_output, timestep, sample)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }
}
