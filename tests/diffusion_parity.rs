//! The Rust Stable Diffusion pipeline against diffusers' StableDiffusionPipeline on the tiny
//! random-init SD 2-style model in tests/fixtures/sd-tiny (tools/make_sd_fixtures.py): the same
//! initial noise, prompt, negative prompt, guidance 7.5 and DPM-Solver++ (2M) for 2 steps.

mod common;

use candle_core::{Device, Tensor};
use clipsteer::diffusion::{to_rgb, SchedulerKind, StableDiffusion};
use common::{max_abs, max_abs_diff};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(path: &str) -> PathBuf {
    common::fixture("sd-tiny").join(path)
}

fn reference() -> (serde_json::Value, HashMap<String, Tensor>) {
    let text = std::fs::read_to_string(fixture("reference/reference.json")).expect("json");
    let tensors =
        candle_core::safetensors::load(fixture("reference/reference.safetensors"), &Device::Cpu)
            .expect("safetensors");
    (serde_json::from_str(&text).expect("json"), tensors)
}

#[test]
fn two_dpm_steps_and_the_decoded_image_match_diffusers() {
    let (meta, tensors) = reference();
    let prompt = meta["prompt"].as_str().expect("prompt");
    let negative = meta["negative_prompt"].as_str().expect("negative");
    let guidance = meta["guidance_scale"].as_f64().expect("guidance");
    let steps = meta["steps"].as_u64().expect("steps") as usize;
    let pipeline = StableDiffusion::load(&fixture(""), &Device::Cpu).expect("load sd-tiny");

    // Tokens: exact. SD 2 pads with "!", which the pipeline must take from the tokenizer config.
    let ids: Vec<u32> = pipeline.prompt_ids(prompt).expect("ids");
    let expected_ids: Vec<i64> = tensors["input_ids"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(
        ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        expected_ids
    );
    let expected_negative: Vec<i64> = tensors["negative_input_ids"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let negative_ids: Vec<i64> = pipeline
        .prompt_ids(negative)
        .unwrap()
        .iter()
        .map(|&i| i as i64)
        .collect();
    assert_eq!(negative_ids, expected_negative);

    let embeds = pipeline.encode_prompt(prompt).expect("encode");
    let embed_error = max_abs_diff(&embeds, &tensors["prompt_embeds"]);
    eprintln!("text encoder: max abs error {embed_error:e}");
    assert!(
        embed_error <= 1e-5,
        "text encoder: max abs error {embed_error:e}"
    );

    let mut scheduler = pipeline
        .scheduler(SchedulerKind::DpmPlusPlus2M, steps)
        .expect("scheduler");
    let expected_timesteps: Vec<usize> = meta["pipeline_timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(scheduler.timesteps(), expected_timesteps.as_slice());
    let mut progress = Vec::new();
    let latents = pipeline
        .denoise(
            &tensors["noise"],
            prompt,
            negative,
            guidance,
            scheduler.as_mut(),
            |done, total| {
                progress.push((done, total));
                Ok(())
            },
        )
        .expect("denoise");
    assert_eq!(progress, vec![(1, 2), (2, 2)]);
    let expected_latents = &tensors["latents"];
    let latent_error = max_abs_diff(&latents, expected_latents) / max_abs(expected_latents);
    eprintln!(
        "latents after {steps} steps: max abs error {:e} (max |ref| {})",
        max_abs_diff(&latents, expected_latents),
        max_abs(expected_latents)
    );
    assert!(
        latent_error <= 2e-4,
        "latents: relative error {latent_error:e}"
    );

    let decoded = pipeline.decode(&latents).expect("decode");
    let expected_decoded = &tensors["decoded"];
    let decoded_error = max_abs_diff(&decoded, expected_decoded);
    eprintln!("decoded image: max abs error {decoded_error:e} (range [-1, 1])");
    assert!(
        decoded_error <= 1e-3,
        "decoded: max abs error {decoded_error:e}"
    );

    let image = to_rgb(&decoded).expect("rgb");
    let expected_png = image::open(fixture("reference/image.png"))
        .expect("png")
        .to_rgb8();
    assert_eq!(image.dimensions(), expected_png.dimensions());
    let worst_level = image
        .as_raw()
        .iter()
        .zip(expected_png.as_raw())
        .map(|(a, b)| (*a as i16 - *b as i16).abs())
        .max()
        .unwrap_or(0);
    eprintln!("8-bit image: worst channel difference {worst_level}");
    assert!(
        worst_level <= 1,
        "8-bit image differs by {worst_level} levels"
    );
}
