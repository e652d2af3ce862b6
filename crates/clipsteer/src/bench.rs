//! `clipsteer bench`: the describe loop on full-size architectures, with a per-step time split, the
//! CLIP positions computed, achieved GFLOP/s against a matmul peak measured in the same run, and
//! peak RSS. The models are random weights built in memory (no download), or checkpoint
//! directories (`--lm`, `--encoder`, `--image`): bench/compare.sh times the reference loop on the
//! same files.

use crate::models::clip::{ClipConfig, ClipModel, ClipTextConfig, ClipVisionConfig};
use crate::models::gpt2::{Gpt2, Gpt2Config};
use crate::steer::describe::{describe, DescribeOptions, Strategy};
use crate::steer::{normalize, CausalLm, ClipScorer, Gpt2Lm};
use crate::tokenize::{clip_from_bpe_gz, gpt2_from_files, ClipTokenizer};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use serde_json::{json, Value};
use std::path::Path;

#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipArch {
    /// ViT-B/32 (openai/clip-vit-base-patch32).
    B32,
    /// ViT-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
    H14,
}

pub fn gpt2_124m() -> Gpt2Config {
    serde_json::from_value(json!({"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}))
        .expect("static config")
}

pub fn clip_config(arch: ClipArch) -> ClipConfig {
    match arch {
        ClipArch::B32 => ClipConfig {
            text: ClipTextConfig {
                eos_token_id: 2,
                ..ClipTextConfig::default()
            },
            vision: ClipVisionConfig::default(),
            projection_dim: 512,
        },
        ClipArch::H14 => ClipConfig {
            text: ClipTextConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                hidden_act: "gelu".into(),
                ..ClipTextConfig::default()
            },
            vision: ClipVisionConfig {
                hidden_size: 1280,
                intermediate_size: 5120,
                num_hidden_layers: 32,
                num_attention_heads: 16,
                patch_size: 14,
                hidden_act: "gelu".into(),
                ..ClipVisionConfig::default()
            },
            projection_dim: 1024,
        },
    }
}

/// Random weights on demand, the same on every run (seeded by tensor name, so that runs generate
/// the same tokens and are comparable): layer-norm scales at one, everything else uniform with
/// standard deviation 0.02.
struct RandomWeights;

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        use rand::{Rng, SeedableRng};
        if let candle_nn::Init::Const(v) = h {
            if v != 0.0 {
                return Tensor::ones(s, dtype, dev)?.affine(v, 0.0);
            }
        }
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let half_width = 0.02f32 * 3f32.sqrt();
        let values: Vec<f32> = (0..s.elem_count())
            .map(|_| rng.random_range(-half_width..half_width))
            .collect();
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights have no tensor {name} without a shape")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

fn random_vb(device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, device.clone())
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub arch: ClipArch,
    pub top_k: usize,
    pub steps: usize,
    pub prompt: String,
    pub assets: std::path::PathBuf,
    pub json: bool,
    pub prefilter: Option<usize>,
    pub check_agreement: bool,
    pub strategy: Strategy,
    /// Checkpoint directories and an image instead of random weights and random pixels.
    pub checkpoints: Option<BenchCheckpoints>,
}

/// What `--lm`, `--encoder` and `--image` name.
#[derive(Debug, Clone)]
pub struct BenchCheckpoints {
    /// A GPT-2 directory (HF layout) or a llama-family .gguf file.
    pub lm: std::path::PathBuf,
    /// A CLIP directory (HF layout).
    pub encoder: std::path::PathBuf,
    pub image: std::path::PathBuf,
}

/// Dense FLOPs of one text position through CLIP's text tower (projections and MLP; attention
/// scores are a few percent at these lengths and left out, so the rate is an underestimate).
pub fn text_flops_per_position(config: &ClipTextConfig) -> f64 {
    let h = config.hidden_size as f64;
    let inter = config.intermediate_size as f64;
    config.num_hidden_layers as f64 * 2.0 * (4.0 * h * h + 2.0 * h * inter)
}

/// GFLOP/s of a 2048³ f32 matmul, best of three.
pub fn matmul_peak(device: &Device) -> Result<f64> {
    let n = 2048;
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?;
    a.matmul(&b)?; // warm-up
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        drop(c);
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

/// Peak resident set size in MiB (VmHWM), where /proc is available.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub fn run(options: &BenchOptions, device: &Device) -> Result<()> {
    // The loop's own check would name describe's --max-tokens, which bench does not have.
    if options.steps == 0 {
        anyhow::bail!("--steps must be at least 1");
    }
    if options.check_agreement && options.strategy != Strategy::Seed {
        anyhow::bail!(
            "--check-agreement measures the seed loop's choices: use it with --strategy seed"
        );
    }
    if let Some(files) = &options.checkpoints {
        return run_checkpoints(options, files, device);
    }
    let assets = &options.assets;
    let gpt2_dir = assets.join("gpt2");
    let gpt2_tokenizer =
        gpt2_from_files(&gpt2_dir.join("encoder.json"), &gpt2_dir.join("vocab.bpe")).with_context(
            || {
                format!(
                    "bench needs the vendored tokenizers; pass --assets (looked in {})",
                    assets.display()
                )
            },
        )?;
    let clip_tokenizer =
        clip_from_bpe_gz(&assets.join("clip").join("bpe_simple_vocab_16e6.txt.gz"))?;

    let build_start = std::time::Instant::now();
    let lm = Gpt2Lm {
        model: Gpt2::from_varbuilder(gpt2_124m(), random_vb(device))?,
        tokenizer: gpt2_tokenizer,
    };
    let config = clip_config(options.arch);
    let image_size = config.vision.image_size;
    let model = ClipModel::from_varbuilder(config, random_vb(device))?;
    let scorer = ClipScorer {
        tokenizer: ClipTokenizer::new(clip_tokenizer, model.config().text.max_position_embeddings)?,
        processor: crate::image::ClipImageProcessor::openai(image_size),
        model,
    };
    let build_seconds = build_start.elapsed().as_secs_f64();

    let image_start = std::time::Instant::now();
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, image_size, image_size), device)?;
    let target = normalize(
        &scorer
            .model
            .image_features(&pixels)?
            .flatten_all()?
            .to_vec1::<f32>()?,
    );
    let models = Models {
        lm: "gpt2-124M (random)".into(),
        clip: format!("{:?} (random)", options.arch),
        build_seconds,
        image_seconds: image_start.elapsed().as_secs_f64(),
    };
    time_loop(&lm, &scorer, &target, &models, options, device)
}

/// `clipsteer bench --lm DIR --encoder DIR --image FILE`: the same loop on checkpoint files.
fn run_checkpoints(
    options: &BenchOptions,
    files: &BenchCheckpoints,
    device: &Device,
) -> Result<()> {
    for (flag, path) in [("--lm", &files.lm), ("--encoder", &files.encoder)] {
        if !path.exists() {
            anyhow::bail!(
                "{flag} {}: no such file or directory (bench/checkpoints.py writes the benchmark's checkpoints)",
                path.display()
            );
        }
    }
    let build_start = std::time::Instant::now();
    let lm_spec = files
        .lm
        .to_str()
        .with_context(|| format!("--lm {}: the path is not UTF-8", files.lm.display()))?;
    let lm = crate::load::load_lm(lm_spec, device)?;
    let scorer = ClipScorer::load(&files.encoder, device)
        .with_context(|| format!("cannot load CLIP model {}", files.encoder.display()))?;
    let build_seconds = build_start.elapsed().as_secs_f64();
    let image_start = std::time::Instant::now();
    let target = crate::steer::scorer::image_target(
        &scorer,
        &files.image,
        crate::image::DecodeLimits::default(),
    )?;
    let models = Models {
        lm: files.lm.display().to_string(),
        clip: files.encoder.display().to_string(),
        build_seconds,
        image_seconds: image_start.elapsed().as_secs_f64(),
    };
    time_loop(&lm, &scorer, &target, &models, options, device)
}

/// What the report says about the models and what building them cost.
struct Models {
    lm: String,
    clip: String,
    build_seconds: f64,
    image_seconds: f64,
}

/// Runs and reports the timed loop.
fn time_loop<L: CausalLm>(
    lm: &L,
    scorer: &ClipScorer,
    target: &[f32],
    models: &Models,
    options: &BenchOptions,
    device: &Device,
) -> Result<()> {
    let peak = matmul_peak(device)?;
    let text_config = scorer.model.config().text.clone();
    let (build_seconds, image_seconds) = (models.build_seconds, models.image_seconds);
    // Every step runs: a timing needs the same number of steps whatever the text says.
    let describe_options = DescribeOptions {
        top_k: options.top_k,
        max_tokens: options.steps,
        prefilter: options.prefilter.filter(|_| !options.check_agreement),
        stop_at_sentence_end: false,
        ..DescribeOptions::for_strategy(&options.prompt, options.strategy)
    };
    let flops_per_position = text_flops_per_position(&text_config);
    let mut rows = Vec::new();
    let mut agreement = options
        .prefilter
        .filter(|_| options.check_agreement)
        .map(|keep| {
            (
                crate::steer::describe::TokenPrefilter::new(keep),
                0usize,
                0usize,
            )
        });
    let mut last = std::time::Instant::now();
    let caption_start = last;
    let result = describe(lm, scorer, target, &describe_options, |event| {
        let now = std::time::Instant::now();
        let total = (now - last).as_secs_f64();
        last = now;
        if let Some((prefilter, agreed, steps)) = agreement.as_mut() {
            let candidates: Vec<u32> = event.scored.iter().map(|(id, _)| *id).collect();
            let kept = prefilter.select(
                lm,
                &crate::steer::Embedding::new(scorer, target),
                &candidates,
            )?;
            let sims: Vec<f32> = kept.iter().map(|&i| event.scored[i].1).collect();
            let choice = kept[crate::steer::describe::argmax_first(&sims)];
            *agreed += usize::from(candidates[choice] == event.token_id);
            *steps += 1;
        }
        let gflops =
            event.positions_computed as f64 * flops_per_position / event.score_seconds / 1e9;
        rows.push(json!({
            "step": event.step,
            "lm_ms": event.lm_seconds * 1e3,
            "score_ms": event.score_seconds * 1e3,
            "rest_ms": (total - event.lm_seconds - event.score_seconds).max(0.0) * 1e3,
            "total_ms": total * 1e3,
            "positions": event.positions_computed,
            "score_gflops": gflops,
        }));
        Ok(())
    })?;
    let caption_seconds = caption_start.elapsed().as_secs_f64();
    let column = |key: &str| -> Vec<f64> {
        rows.iter()
            .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let summary = json!({
        "lm_ms": median(&mut column("lm_ms")),
        "score_ms": median(&mut column("score_ms")),
        "rest_ms": median(&mut column("rest_ms")),
        "total_ms": median(&mut column("total_ms")),
        "positions": median(&mut column("positions")),
        "score_gflops": median(&mut column("score_gflops")),
    });
    let score_share = summary["score_gflops"].as_f64().unwrap_or(0.0) / peak;
    let report = json!({
        "config": {
            "lm": models.lm,
            "clip": models.clip,
            "strategy": format!("{:?}", options.strategy).to_lowercase(),
            "top_k": options.top_k,
            "steps": options.steps,
            "threads": candle_core::utils::get_num_threads(),
            "device": format!("{device:?}"),
        },
        "build_seconds": build_seconds,
        "image_seconds": image_seconds,
        "matmul_peak_gflops": peak,
        "steps": rows,
        "median_step": summary,
        "score_share_of_peak": score_share,
        "caption_seconds": caption_seconds,
        "token_ids": result.token_ids,
        "text": result.text,
        "peak_rss_mib": peak_rss_mib(),
        "prefilter": options.prefilter,
        "prefilter_agreement": agreement.as_ref().map(|(_, agreed, total)| json!({"agreed": agreed, "steps": total})),
    });
    if options.json {
        outln!("{report}");
    } else {
        print_report(&report, options);
    }
    Ok(())
}

/// `report` as a table of steps with its medians, for a terminal.
fn print_report(report: &Value, options: &BenchOptions) {
    let number = |value: &Value| value.as_f64().unwrap_or(0.0);
    let config = &report["config"];
    outln!(
        "clipsteer bench: {} + CLIP {}, {}, top-k {}, {} steps, {} threads, {}",
        config["lm"].as_str().unwrap_or_default(),
        config["clip"].as_str().unwrap_or_default(),
        config["strategy"].as_str().unwrap_or_default(),
        options.top_k,
        options.steps,
        config["threads"],
        config["device"].as_str().unwrap_or_default()
    );
    let peak = number(&report["matmul_peak_gflops"]);
    outln!(
        "matmul peak (2048³ f32): {peak:.1} GFLOP/s; models built in {:.1} s; image tower {:.0} ms",
        number(&report["build_seconds"]),
        number(&report["image_seconds"]) * 1e3
    );
    outln!(
        "{:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "step",
        "lm ms",
        "score ms",
        "rest ms",
        "total ms",
        "positions",
        "GFLOP/s"
    );
    for row in report["steps"].as_array().into_iter().flatten() {
        outln!(
            "{:>4} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>10.1}",
            row["step"].as_u64().unwrap_or(0),
            number(&row["lm_ms"]),
            number(&row["score_ms"]),
            number(&row["rest_ms"]),
            number(&row["total_ms"]),
            row["positions"].as_u64().unwrap_or(0),
            number(&row["score_gflops"])
        );
    }
    let s = &report["median_step"];
    outln!(
        "median step: {:.1} ms (lm {:.1}, score {:.1}, rest {:.1}); {} positions; scoring {:.1} GFLOP/s = {:.0}% of peak",
        number(&s["total_ms"]), number(&s["lm_ms"]), number(&s["score_ms"]),
        number(&s["rest_ms"]), s["positions"], number(&s["score_gflops"]),
        number(&report["score_share_of_peak"]) * 100.0
    );
    let agreement = &report["prefilter_agreement"];
    if let (Some(agreed), Some(total)) = (agreement["agreed"].as_u64(), agreement["steps"].as_u64())
    {
        outln!(
            "prefilter {}: top-1 agreement with exact mode {agreed}/{total} steps ({:.1}%)",
            options.prefilter.unwrap_or(0),
            100.0 * agreed as f64 / total.max(1) as f64
        );
    } else if let Some(keep) = options.prefilter {
        outln!(
            "mode: APPROXIMATE --prefilter {keep} (only {keep} of {} candidates scored in context)",
            options.top_k
        );
    }
    outln!(
        "caption: {:.2} s for {} steps; peak RSS {}",
        number(&report["caption_seconds"]),
        options.steps,
        report["peak_rss_mib"]
            .as_f64()
            .map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "unknown".into())
    );
}

/// The vendored tokenizer files of the checkout (assets/tokenizers at the workspace's root), for
/// running from a checkout.
pub fn default_assets() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets")
        .join("tokenizers")
}
