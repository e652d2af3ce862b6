//! DPM-Solver++ (2M) against diffusers' DPMSolverMultistepScheduler: timesteps, sigmas and step
//! outputs written by tools/make_sd_fixtures.py from SD 2-base's scheduler config.

mod common;

use candle_core::{Device, Tensor};
use candle_transformers::models::stable_diffusion::schedulers::Scheduler;
use clipsteer::diffusion::dpm_solver::{DpmSolverConfig, DpmSolverMultistep};
use clipsteer::diffusion::schedule::SchedulerFile;
use common::{max_abs, max_abs_diff};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(path: &str) -> PathBuf {
    common::fixture("sd-tiny").join(path)
}

fn reference_json() -> serde_json::Value {
    let text =
        std::fs::read_to_string(fixture("reference/reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json is JSON")
}

fn reference_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("reference/reference.safetensors"), &Device::Cpu)
        .expect("reference.safetensors")
}

fn sd2_base_file() -> SchedulerFile {
    SchedulerFile::load(&fixture("scheduler/scheduler_config.json")).expect("scheduler config")
}

#[test]
fn timesteps_and_sigmas_match_diffusers_for_every_spacing_and_step_count() {
    let reference = reference_json();
    let cases = reference["scheduler"]["timesteps"]
        .as_array()
        .expect("cases");
    assert_eq!(cases.len(), 24, "3 spacings × 8 step counts");
    let mut worst_sigma_error = 0f32;
    for case in cases {
        let spacing = case["spacing"].as_str().expect("spacing");
        let steps = case["steps"].as_u64().expect("steps") as usize;
        let mut file = sd2_base_file();
        file.timestep_spacing = Some(spacing.to_string());
        let scheduler =
            DpmSolverMultistep::new(DpmSolverConfig::from_file(&file).expect("config"), steps)
                .expect("scheduler");
        let expected_t: Vec<usize> = case["timesteps"]
            .as_array()
            .expect("timesteps")
            .iter()
            .map(|t| t.as_u64().expect("int") as usize)
            .collect();
        assert_eq!(
            scheduler.timesteps(),
            expected_t.as_slice(),
            "{spacing} {steps}"
        );
        let expected_sigmas: Vec<f32> = case["sigmas"]
            .as_array()
            .expect("sigmas")
            .iter()
            .map(|s| s.as_f64().expect("float") as f32)
            .collect();
        assert_eq!(scheduler.sigmas().len(), expected_sigmas.len());
        for (ours, theirs) in scheduler.sigmas().iter().zip(&expected_sigmas) {
            let error = (ours - theirs).abs() / theirs.abs().max(1e-6);
            worst_sigma_error = worst_sigma_error.max(error);
        }
    }
    // Both sides compute alphas_cumprod the same way; what remains is an ulp or two of the
    // float32 linspace and square root.
    assert!(
        worst_sigma_error <= 1e-6,
        "worst relative sigma error {worst_sigma_error:e}"
    );
    eprintln!("worst relative sigma error: {worst_sigma_error:e}");
}

#[test]
fn step_outputs_match_diffusers_over_whole_schedules() {
    let reference = reference_json();
    let tensors = reference_tensors();
    let runs = reference["scheduler"]["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3);
    for run in runs {
        let name = run["name"].as_str().expect("name");
        let steps = run["steps"].as_u64().expect("steps") as usize;
        let mut file = sd2_base_file();
        file.prediction_type = Some(run["prediction_type"].as_str().expect("type").to_string());
        let mut scheduler =
            DpmSolverMultistep::new(DpmSolverConfig::from_file(&file).expect("config"), steps)
                .expect("scheduler");
        let mut sample = tensors[&format!("{name}.sample0")].clone();
        let timesteps = scheduler.timesteps().to_vec();
        assert_eq!(timesteps.len(), steps);
        let mut worst = 0f32;
        for (i, &t) in timesteps.iter().enumerate() {
            let model_output = &tensors[&format!("{name}.model_output.{i}")];
            sample = scheduler.step(model_output, t, &sample).expect("step");
            let expected = &tensors[&format!("{name}.sample.{}", i + 1)];
            let relative = max_abs_diff(&sample, expected) / max_abs(expected).max(1e-3);
            worst = worst.max(relative);
        }
        // float32 on both sides with the same formulas; 2e-6 of the sample's magnitude leaves
        // room only for rounding, not for a wrong coefficient or order switch.
        assert!(worst <= 2e-6, "{name}: worst relative step error {worst:e}");
        eprintln!("{name}: worst relative step error {worst:e}");
    }
}

#[test]
fn unsupported_dpm_options_are_refused_with_a_hint() {
    let mut file = sd2_base_file();
    file.use_karras_sigmas = Some(true);
    let error = DpmSolverConfig::from_file(&file).expect_err("karras refused");
    let message = format!("{error:#}");
    assert!(message.contains("use_karras_sigmas"), "{message}");
    assert!(message.contains("--scheduler ddim"), "{message}");
    let mut file = sd2_base_file();
    file.algorithm_type = Some("sde-dpmsolver++".into());
    assert!(DpmSolverConfig::from_file(&file).is_err());
}

#[test]
fn a_step_with_the_wrong_timestep_is_an_error() {
    let file = sd2_base_file();
    let mut scheduler =
        DpmSolverMultistep::new(DpmSolverConfig::from_file(&file).expect("config"), 5)
            .expect("scheduler");
    let sample = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).expect("zeros");
    let wrong = scheduler.timesteps()[1];
    assert!(scheduler.step(&sample, wrong, &sample).is_err());
}
