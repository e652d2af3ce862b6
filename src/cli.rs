//! The `clipsteer` command line.

use crate::events::{done_json, error_json, step_json};
use crate::image::DecodeLimits;
use crate::load::{load_clip, load_encoder, load_lm};
use crate::merge::merge;
use crate::parts::PartWriter;
use crate::settings::{RunSettings, TargetSettings};
use crate::sidecar::CaptionFiles;
use crate::steer::constraints::Blocklist;
use crate::steer::describe::{
    describe, BeamParams, DescribeOptions, MagicParams, Sampling, ScoredText, StepEvent, Strategy,
};
use crate::steer::scorer::Encoder;
use crate::steer::target::{combine, TargetPart};
use crate::steer::{CausalLm, Scorer};
use anyhow::{bail, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const DEFAULT_LM: &str = "openai-community/gpt2";
pub const DEFAULT_CLIP: &str = "openai/clip-vit-base-patch32";
/// The original demo's configuration (`--preset seed`).
pub const SEED_CLIP: &str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K";
pub const SEED_TOP_K: usize = 2500;

#[derive(Parser, Debug)]
#[command(
    name = "clipsteer",
    version,
    about = "Steer a language model toward a target embedding: describe an image with GPT-2 guided by CLIP"
)]
pub struct Cli {
    /// Where models run: auto picks CUDA when this build has it and a GPU is present.
    #[arg(long, global = true, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Describe images: GPT-2 proposes tokens, CLIP picks the one closest to the image.
    Describe(Box<DescribeArgs>),
    /// Print a CLIP embedding as JSON: {"embedding":[...]} (projected, unnormalised).
    Embed(EmbedArgs),
    /// Time the describe loop on full-size architectures with random weights (no download).
    Bench(BenchArgs),
    /// CLIPScore of captions for an image: 2.5 · max(cos, 0) with "A photo depicts " before each
    /// caption (Hessel et al. 2021), or torchmetrics' 100 · max(cos, 0) with --torchmetrics.
    Score(ScoreArgs),
    /// Text to image with Stable Diffusion (diffusers layout: SD 1.x/2.x).
    Generate(Box<crate::diffusion::cli::GenerateArgs>),
    /// Filter evasion: describe an image without blocked words, regenerate it from the
    /// description, and report how much of the image survived (JSON + HTML).
    Evade(Box<crate::evade::EvadeArgs>),
    /// Serve a web page and an API that describe uploaded images live.
    Serve(Box<crate::server::ServeArgs>),
    /// Join the part files of a sharded `describe --out` run into one file, in input order, and
    /// report images missing, described twice or failed (exit 1 if any).
    Merge(MergeArgs),
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Part files written by `describe --out` (e.g. results/part-*.jsonl).
    #[arg(required = true, value_name = "PART")]
    pub parts: Vec<PathBuf>,
    /// The merged file; replaced atomically.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// The run's images, given as to describe (files or folders): checks that each one is
    /// described exactly once and orders the output as describe did.
    #[arg(long, num_args = 1.., value_name = "IMAGE_OR_DIR")]
    pub inputs: Vec<PathBuf>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// The image.
    pub image: PathBuf,
    /// Captions to score.
    #[arg(required = true)]
    pub captions: Vec<String>,
    /// CLIP model: a local directory in the HF layout or a hub id.
    #[arg(long = "encoder", visible_alias = "clip", default_value = DEFAULT_CLIP, value_name = "MODEL")]
    pub clip: String,
    /// Text CLIP reads before each caption, as in CLIPScore's reference code; "" for the bare
    /// caption (a space is added to a prefix that does not end in one).
    #[arg(long, default_value = crate::clipscore::HESSEL_PREFIX)]
    pub prefix: String,
    /// torchmetrics' convention instead: 100 · max(cos, 0) on the bare caption.
    #[arg(long, conflicts_with = "prefix")]
    pub torchmetrics: bool,
    /// Print {"image":..,"convention":..,"prefix":..,"scores":[{"caption":..,"clipscore":..,"cosine":..}]}
    /// instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// CLIP architecture.
    #[arg(long, value_enum, default_value_t = crate::bench::ClipArch::B32)]
    pub clip: crate::bench::ClipArch,
    #[arg(long, default_value_t = 200)]
    pub top_k: usize,
    /// Steps (tokens) to run.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Compute threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value = "An image of ")]
    pub prompt: String,
    /// Directory with gpt2/encoder.json, gpt2/vocab.bpe and clip/bpe_simple_vocab_16e6.txt.gz.
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// Time the approximate --prefilter M mode instead of the exact loop.
    #[arg(long, value_name = "M")]
    pub prefilter: Option<usize>,
    /// With --prefilter: run the exact loop and report how often the prefilter would have kept
    /// the exact choice (top-1 agreement) instead of timing it.
    #[arg(long, requires = "prefilter")]
    pub check_agreement: bool,
    /// The loop to time; magic and beam also take the LM's hidden states or several hypotheses.
    #[arg(long, value_enum, default_value_t = Strategy::Seed)]
    pub strategy: Strategy,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Preset {
    /// The original demo: CLIP ViT-H-14 (LAION) with top-k 2500.
    Seed,
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// Image files, or directories searched recursively for .jpg/.jpeg/.png/.webp. May be
    /// left out when --target-text gives the target.
    #[arg(required_unless_present = "target_text")]
    pub images: Vec<PathBuf>,
    /// Language model: a GPT-2 directory in the HF layout, a hub id, or a llama-family .gguf file.
    #[arg(long, default_value = DEFAULT_LM)]
    pub lm: String,
    /// The scorer: a CLIP model (a local directory in the HF layout or a hub id)
    /// [default: openai/clip-vit-base-patch32]. --clip is an alias.
    #[arg(long = "encoder", visible_alias = "clip", value_name = "MODEL")]
    pub clip: Option<String>,
    /// Steer toward this text (repeatable; with or without images).
    #[arg(long, value_name = "TEXT")]
    pub target_text: Vec<String>,
    /// Steer away from this text (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub avoid_text: Vec<String>,
    /// Weights of the targets, in order: the image (when there is one), each --target-text, then
    /// each --avoid-text (a positive weight; avoiding subtracts it). Unlisted weights are 1.
    #[arg(long, value_name = "W")]
    pub target_weight: Vec<f32>,
    #[command(flatten)]
    pub blocking: BlockArgs,
    /// Text the description starts from; a trailing space stays a token.
    #[arg(long, default_value = "An image of ")]
    pub prompt: String,
    /// Candidates taken from the LM each step [default: 200; 45 with --strategy magic or beam].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 25)]
    pub max_tokens: usize,
    #[arg(long, value_enum, default_value_t = Strategy::Seed)]
    pub strategy: Strategy,
    /// MAGIC: weight α of the degeneration penalty.
    #[arg(long, default_value_t = 0.1)]
    pub magic_alpha: f32,
    /// MAGIC: weight β of the target term.
    #[arg(long, default_value_t = 2.0)]
    pub magic_beta: f32,
    /// MAGIC: temperature of the softmax over candidates' similarities [default: the encoder's:
    /// CLIP's trained exp(logit_scale), 100 for OpenAI CLIP; 100 for sentence encoders, tuned].
    #[arg(long)]
    pub magic_scale: Option<f32>,
    /// Beam: hypotheses kept each step.
    #[arg(long, default_value_t = BeamParams::default().width)]
    pub beam_width: usize,
    /// Beam: weight of the mean per-token log-probability (nats) against similarity; higher is
    /// more fluent, lower more on target.
    #[arg(long, default_value_t = BeamParams::default().fluency)]
    pub beam_fluency: f32,
    /// With --strategy magic or beam: go on to --max-tokens instead of stopping at the end of a
    /// sentence.
    #[arg(long)]
    pub no_sentence_stop: bool,
    /// What the encoder scores: the prompt and the generated text, or only the generated text
    /// [default: full with --strategy seed, as the original demo; generated with magic and beam,
    /// so that an instruction or chat template in the prompt does not dilute the similarity].
    #[arg(long, value_enum)]
    pub score_text: Option<ScoredText>,
    /// A named configuration; explicit --clip/--top-k override it.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Sample from softmax(similarity / T) instead of taking the most similar candidate.
    #[arg(long)]
    pub sample: bool,
    /// Sampling temperature T.
    #[arg(long, default_value_t = 0.05, requires = "sample")]
    pub temperature: f64,
    /// Random seed for --sample.
    #[arg(long, default_value_t = 0, requires = "sample")]
    pub seed: u64,
    /// JSON lines on stdout: a "step" event per token, then a "done" event per image.
    #[arg(long)]
    pub json: bool,
    /// Append one "done" (or "error") JSON line per image to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Skip images that already have a "done" line in --out.
    #[arg(long, requires = "out")]
    pub resume: bool,
    /// APPROXIMATE: score exactly only the M candidates whose own token is most similar to the
    /// image (token similarities are cached across steps). Faster; may pick differently from
    /// the exact loop.
    #[arg(long, value_name = "M")]
    pub prefilter: Option<usize>,
    /// Take the deterministic share I of N (0 ≤ I < N) of the inputs, e.g. --shard 0/4.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Write each image's caption to a .txt file beside it (photo.jpg → photo.txt): the
    /// generated text without the prompt, on one line, as kohya_ss and other LoRA trainers read.
    #[arg(long)]
    pub write_txt: bool,
    /// With --write-txt: text put before each caption, joined with a space (trigger words).
    #[arg(long, requires = "write_txt", value_name = "TEXT")]
    pub txt_prefix: Option<String>,
    /// With --write-txt: text put after each caption, joined with a space.
    #[arg(long, requires = "write_txt", value_name = "TEXT")]
    pub txt_suffix: Option<String>,
    /// With --write-txt: replace caption files that exist (otherwise each is an error for its
    /// image, found before any work is spent on it).
    #[arg(long, requires = "write_txt")]
    pub overwrite: bool,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// CLIP model: a local directory in the HF layout or a hub id.
    #[arg(long, default_value = DEFAULT_CLIP)]
    pub clip: String,
    /// Text to embed.
    #[arg(long, required_unless_present = "image", conflicts_with = "image")]
    pub text: Option<String>,
    /// Image file to embed.
    #[arg(long)]
    pub image: Option<PathBuf>,
}

fn parse_shard(value: &str) -> std::result::Result<(usize, usize), String> {
    let usage = || format!("expected I/N with 0 ≤ I < N (e.g. 0/4), got '{value}'");
    let (i, n) = value.split_once('/').ok_or_else(usage)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| usage())?,
        n.trim().parse().map_err(|_| usage())?,
    );
    if n == 0 || i >= n {
        return Err(usage());
    }
    Ok((i, n))
}

pub fn select_device(choice: DeviceArg) -> Result<Device> {
    match choice {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this clipsteer was built without CUDA or no GPU is visible; rebuild with `cargo build --release --features cuda`");
            }
            Device::new_cuda(0).map_err(|e| {
                anyhow::anyhow!("--device cuda: no usable GPU ({e}); check the NVIDIA driver, or use --device cpu")
            })
        }
        DeviceArg::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(device) = Device::new_cuda(0) {
                    return Ok(device);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    if let Command::Bench(BenchArgs {
        threads: Some(threads),
        ..
    }) = &cli.command
    {
        if *threads == 0 {
            bail!("--threads must be at least 1");
        }
        // Read by rayon and by candle's matmul when their pools start, so set before any work.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let device = select_device(cli.device)?;
    match cli.command {
        Command::Embed(args) => embed(args, &device),
        Command::Describe(args) => run_describe(*args, &device),
        Command::Score(args) => score(args, &device),
        Command::Generate(args) => crate::diffusion::cli::run_generate(*args, &device),
        Command::Evade(args) => crate::evade::run(*args, &device),
        Command::Serve(args) => crate::server::run(*args, &device),
        Command::Merge(args) => run_merge(args),
        Command::Bench(args) => {
            let options = crate::bench::BenchOptions {
                arch: args.clip,
                top_k: args.top_k,
                steps: args.steps,
                prompt: args.prompt,
                assets: args.assets.unwrap_or_else(crate::bench::default_assets),
                json: args.json,
                prefilter: args.prefilter,
                check_agreement: args.check_agreement,
                strategy: args.strategy,
            };
            crate::bench::run(&options, &device)?;
            Ok(0)
        }
    }
}

fn embed(args: EmbedArgs, device: &Device) -> Result<i32> {
    if let Some(image) = &args.image {
        if !image.is_file() {
            bail!("no image at {}", image.display());
        }
    }
    let scorer = load_clip(&args.clip, device)?;
    let embedding = match (&args.text, &args.image) {
        (Some(text), None) => scorer.text_embedding(text)?,
        (None, Some(image)) => scorer.image_embedding_from_path(image, DecodeLimits::default())?,
        _ => bail!("give exactly one of --text or --image"),
    };
    println!("{}", json!({ "embedding": embedding }));
    Ok(0)
}

fn score(args: ScoreArgs, device: &Device) -> Result<i32> {
    use crate::clipscore::{clip_scores, Convention};
    if !args.image.is_file() {
        bail!("no image at {}", args.image.display());
    }
    let convention = if args.torchmetrics {
        Convention::Torchmetrics
    } else {
        Convention::Hessel {
            prefix: args.prefix.clone(),
        }
    };
    let scorer = load_clip(&args.clip, device)?;
    let image = scorer.image_embedding_from_path(&args.image, DecodeLimits::default())?;
    let scores = clip_scores(&scorer, &image, &args.captions, &convention)?;
    if args.json {
        let rows: Vec<_> = scores
            .iter()
            .map(|s| json!({"caption": s.caption, "clipscore": s.clipscore, "cosine": s.cosine}))
            .collect();
        let prefix = match &convention {
            Convention::Hessel { prefix } => prefix.as_str(),
            Convention::Torchmetrics => "",
        };
        println!(
            "{}",
            json!({"image": args.image.display().to_string(), "convention": convention.name(),
                   "prefix": prefix, "scores": rows})
        );
    } else {
        println!(
            "{:>9}  {:>7}  caption ({})",
            "clipscore",
            "cosine",
            convention.name()
        );
        for s in &scores {
            println!("{:>9.4}  {:>7.4}  {}", s.clipscore, s.cosine, s.caption);
        }
    }
    Ok(0)
}

/// Expands files and directories (recursively, sorted) into the list of images to describe.
pub fn collect_inputs(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            out.push(dir.to_path_buf()); // reported as unreadable later
            return;
        };
        let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .map(|e| {
                    matches!(
                        e.to_ascii_lowercase().as_str(),
                        "jpg" | "jpeg" | "png" | "webp"
                    )
                })
                .unwrap_or(false)
            {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut out);
        } else {
            out.push(path.clone());
        }
    }
    out
}

/// The parts of a target that are the same for every image: the text targets, weighted.
fn text_target_parts(
    args: &DescribeArgs,
    scorer: &Encoder,
    has_image: bool,
) -> Result<Vec<TargetPart>> {
    let wanted = usize::from(has_image) + args.target_text.len() + args.avoid_text.len();
    if args.target_weight.len() > wanted {
        bail!(
            "{} --target-weight values for {wanted} targets (the image, then each --target-text, then each --avoid-text)",
            args.target_weight.len()
        );
    }
    let weight = |index: usize| args.target_weight.get(index).copied().unwrap_or(1.0);
    let offset = usize::from(has_image);
    let mut parts = Vec::new();
    for (i, text) in args.target_text.iter().enumerate() {
        parts.push(TargetPart {
            embedding: scorer.embed_text(text)?,
            weight: weight(offset + i),
        });
    }
    for (i, text) in args.avoid_text.iter().enumerate() {
        let w = weight(offset + args.target_text.len() + i);
        parts.push(TargetPart {
            embedding: scorer.embed_text(text)?,
            weight: -w,
        });
    }
    Ok(parts)
}

/// The blocklist flags, shared by describe and evade.
#[derive(Args, Debug, Clone)]
pub struct BlockArgs {
    /// Words never to write, comma-separated (case-insensitive, whole words).
    #[arg(long, value_delimiter = ',', value_name = "WORDS")]
    pub block: Vec<String>,
    /// A file of words never to write: one per line (or comma-separated), # comments.
    #[arg(long, value_name = "FILE")]
    pub blocklist: Option<PathBuf>,
    /// Block any text containing a blocked word as a substring, not only as a whole word.
    #[arg(long)]
    pub block_substrings: bool,
}

impl BlockArgs {
    /// The words of --block and --blocklist together.
    pub fn to_blocklist(&self) -> Result<Blocklist> {
        let mut words = self.block.clone();
        if let Some(path) = &self.blocklist {
            words.extend(Blocklist::read_file(path)?);
        }
        Blocklist::new(words, self.block_substrings)
    }
}

fn run_describe(args: DescribeArgs, device: &Device) -> Result<i32> {
    let preset = args.preset.map(|Preset::Seed| (SEED_CLIP, SEED_TOP_K));
    let clip_spec = args
        .clip
        .clone()
        .unwrap_or_else(|| preset.map_or(DEFAULT_CLIP, |p| p.0).to_string());
    let defaults = DescribeOptions::for_strategy(&args.prompt, args.strategy);
    let options = DescribeOptions {
        top_k: args
            .top_k
            .unwrap_or_else(|| preset.map_or(defaults.top_k, |p| p.1)),
        max_tokens: args.max_tokens,
        sampling: args.sample.then_some(Sampling {
            temperature: args.temperature,
            seed: args.seed,
        }),
        prefilter: args.prefilter,
        blocklist: args.blocking.to_blocklist()?,
        magic: MagicParams {
            alpha: args.magic_alpha,
            beta: args.magic_beta,
            scale: args.magic_scale,
        },
        beam: BeamParams {
            width: args.beam_width,
            fluency: args.beam_fluency,
        },
        stop_at_sentence_end: defaults.stop_at_sentence_end && !args.no_sentence_stop,
        scored_text: args.score_text.unwrap_or(defaults.scored_text),
        ..defaults
    };
    if args.sample && args.strategy != Strategy::Seed {
        bail!("--sample applies to --strategy seed only");
    }
    if args.write_txt && args.images.is_empty() {
        bail!("--write-txt writes a caption file beside each image: give images to describe");
    }
    let captions = args.write_txt.then(|| CaptionFiles {
        prefix: args.txt_prefix.clone(),
        suffix: args.txt_suffix.clone(),
        overwrite: args.overwrite,
    });

    // One job per image; with no images, one job steered by the text targets alone.
    let all_images = collect_inputs(&args.images);
    // Images refused before any work: their caption file exists or collides with another's.
    let mut refused: HashMap<PathBuf, String> = HashMap::new();
    if captions.is_some() {
        for (image, others) in crate::sidecar::collisions(&all_images) {
            let others: Vec<String> = others.iter().map(|o| o.display().to_string()).collect();
            let message = format!(
                "{} and {} would share the caption file {}; rename one",
                image.display(),
                others.join(", "),
                crate::sidecar::caption_path(&image).display()
            );
            refused.insert(image, message);
        }
    }
    let mut inputs: Vec<Option<PathBuf>> = if args.images.is_empty() {
        vec![None]
    } else {
        all_images.into_iter().map(Some).collect()
    };
    let label = |input: &Option<PathBuf>| input.as_ref().map(|p| p.display().to_string());
    if let Some((index, count)) = args.shard {
        inputs = inputs
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % count == index)
            .map(|(_, p)| p)
            .collect();
    }
    // Locked before it is read, so that no other task can write between the read and the run.
    let mut part = match &args.out {
        Some(path) => Some(PartWriter::open(path)?),
        None => None,
    };
    let mut existing = None;
    if let Some(part) = part.as_mut() {
        let contents = part.read_existing()?;
        if contents.trimmed_bytes > 0 {
            eprintln!(
                "note: cut a partial last line ({} bytes) off {}: a run was killed mid-write",
                contents.trimmed_bytes,
                part.path().display()
            );
        }
        if args.resume {
            inputs.retain(|input| !contents.done.contains(&label(input).unwrap_or_default()));
            existing = Some(contents);
        }
    }
    if inputs.is_empty() {
        eprintln!("nothing to describe: every input is already done or the shard is empty");
        return Ok(0);
    }
    if let Some(captions) = &captions {
        for image in inputs.iter().flatten() {
            if let Some(why) = captions.refusal(image) {
                refused.entry(image.clone()).or_insert(why);
            }
        }
        crate::sidecar::check_writable(
            inputs
                .iter()
                .flatten()
                .filter(|image| !refused.contains_key(*image))
                .map(PathBuf::as_path),
        )?;
    }

    if args.json {
        crate::hub::set_progress(false);
    }
    let lm = load_lm(&args.lm, device)?;
    let scorer = load_encoder(&clip_spec, device)?;
    let models = crate::events::models_json(&[("lm", &args.lm), ("encoder", &clip_spec)]);
    // After loading, so that hub models are named by the commit they resolved to.
    let settings = RunSettings::for_describe(
        &args.lm,
        &clip_spec,
        &options,
        TargetSettings {
            image: !args.images.is_empty(),
            target_texts: &args.target_text,
            avoid_texts: &args.avoid_text,
            weights: &args.target_weight,
        },
    )
    .to_json();
    if let (Some(part), Some(existing)) = (&part, &existing) {
        existing.check_settings(part.path(), &settings)?;
    }
    crate::steer::describe::validate(&lm, &options)?;
    let text_parts = text_target_parts(&args, &scorer, !args.images.is_empty())?;
    let image_weight = args.target_weight.first().copied().unwrap_or(1.0);

    let progress = Progress::new(inputs.len());
    let stdout = std::io::stdout();
    let mut failures = 0;
    let mut captions_written = 0;
    for input in &inputs {
        let image = label(input);
        let started = std::time::Instant::now();
        let target = match input {
            Some(path) => match refused.get(path) {
                Some(why) => Err(anyhow::anyhow!("{why}")),
                None => scorer
                    .image_target(path, DecodeLimits::default())
                    .and_then(|embedding| {
                        let mut parts = vec![TargetPart {
                            embedding,
                            weight: image_weight,
                        }];
                        parts.extend(text_parts.iter().cloned());
                        combine(&parts)
                    }),
            },
            None => combine(&text_parts),
        };
        let outcome = target.and_then(|target| {
            describe(&lm, &scorer, &target, &options, |event| {
                if args.json {
                    let mut lock = stdout.lock();
                    writeln!(lock, "{}", step_json(image.as_deref(), event))?;
                    lock.flush()?;
                }
                progress.step(event, options.max_tokens);
                Ok(())
            })
        });
        // The caption file is written before the done line, so a done line means its caption
        // file is in place; a caption that cannot be written makes the image an error.
        let outcome = match (outcome, &captions, input) {
            (Ok(result), Some(captions), Some(path)) => {
                crate::sidecar::generated_part(&result.text, &options.prompt, || {
                    lm.decode(&result.token_ids)
                })
                .and_then(|generated| captions.caption(&generated))
                .and_then(|caption| captions.write(path, &caption))
                .map(|_| {
                    captions_written += 1;
                    result
                })
            }
            (outcome, _, _) => outcome,
        };
        let line = match outcome {
            Ok(result) => {
                let mut done =
                    done_json(image.as_deref(), &result, started.elapsed().as_secs_f64());
                done["models"] = models.clone();
                done["settings"] = settings.clone();
                if let Some(reason) = &result.stop_reason {
                    progress.println_err(&format!("note: {reason}"));
                }
                if args.json {
                    println!("{done}");
                } else {
                    progress.println(&match &image {
                        Some(image) if inputs.len() > 1 => {
                            format!("{image}\t{:.4}\t{}", result.similarity, result.text)
                        }
                        _ => result.text.clone(),
                    });
                }
                done
            }
            Err(e) => {
                failures += 1;
                let message = crate::error_line(&e);
                let mut error = error_json(image.as_deref(), &message);
                error["settings"] = settings.clone();
                if args.json {
                    println!("{error}");
                } else if e.downcast_ref::<crate::image::ImageFile>().is_some() {
                    // load_image's errors name the file already.
                    progress.println_err(&format!("error: {message}"));
                } else {
                    let what = image.as_deref().unwrap_or("text target");
                    progress.println_err(&format!("error: {what}: {message}"));
                }
                error
            }
        };
        if let Some(part) = part.as_mut() {
            part.append(&line)?;
        }
        progress.image_done();
    }
    progress.finish();
    if captions.is_some() {
        eprintln!("wrote {captions_written} caption files");
    }
    if failures > 0 {
        eprintln!("{failures} of {} inputs failed", inputs.len());
        return Ok(1);
    }
    Ok(0)
}

/// `clipsteer merge`: the report goes to stderr (or stdout as JSON); exit 1 unless complete.
fn run_merge(args: MergeArgs) -> Result<i32> {
    let inputs = (!args.inputs.is_empty()).then(|| collect_inputs(&args.inputs));
    let report = merge(&args.parts, inputs.as_deref(), &args.output)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print_merge_report(&report, &args.output);
    }
    Ok(if report.complete() { 0 } else { 1 })
}

fn print_merge_report(report: &crate::merge::MergeReport, output: &Path) {
    const SHOWN: usize = 20;
    let inputs = if report.inputs > 0 {
        format!("{} of {} inputs described", report.described, report.inputs)
    } else {
        format!(
            "{} images described (give --inputs to check for missing ones)",
            report.described
        )
    };
    eprintln!(
        "merged {} parts into {}: {inputs}; {} failed, {} missing, {} duplicated, {} unexpected, {} unreadable lines",
        report.parts,
        output.display(),
        report.failed.len(),
        report.missing.len(),
        report.duplicated.len(),
        report.unexpected.len(),
        report.corrupt.len()
    );
    let list = |kind: &str, items: Vec<String>| {
        for item in items.iter().take(SHOWN) {
            eprintln!("{kind}: {item}");
        }
        if items.len() > SHOWN {
            eprintln!(
                "{kind}: … and {} more (--json lists all)",
                items.len() - SHOWN
            );
        }
    };
    list(
        "failed",
        report
            .failed
            .iter()
            .map(|(image, error)| format!("{image}: {error}"))
            .collect(),
    );
    list("missing", report.missing.clone());
    list(
        "duplicated",
        report
            .duplicated
            .iter()
            .map(|(image, count)| format!("{image} ({count} done lines)"))
            .collect(),
    );
    list(
        "unexpected",
        report
            .unexpected
            .iter()
            .map(|image| format!("{image} (not among --inputs; left out)"))
            .collect(),
    );
    list("unreadable", report.corrupt.clone());
    for part in &report.partial {
        eprintln!("note: {part} ends in a partial line (a task killed mid-write; describe --resume trims it)");
    }
}

/// Columns of the terminal on stderr (80 when unknown).
fn terminal_width() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: TIOCGWINSZ only fills the winsize struct passed to it.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0
            && size.ws_col > 0
        {
            return size.ws_col as usize;
        }
    }
    80
}

/// Live terminal output on stderr: the description growing in place and, for batches, a bar with
/// an ETA. Draws nothing when stderr is not a terminal.
struct Progress {
    multi: indicatif::MultiProgress,
    live: indicatif::ProgressBar,
    overall: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(images: usize) -> Self {
        let multi =
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
        let overall = (images > 1).then(|| {
            let bar = multi.add(indicatif::ProgressBar::new(images as u64));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} images · {elapsed} elapsed · ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let live = multi.add(indicatif::ProgressBar::new_spinner());
        live.set_style(
            indicatif::ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        Self {
            multi,
            live,
            overall,
        }
    }

    fn step(&self, event: &StepEvent, max_tokens: usize) {
        if self.live.is_hidden() {
            return;
        }
        let head = format!(
            "[{}/{max_tokens} · sim {:.4}] ",
            event.step + 1,
            event.similarity
        );
        // One line that never wraps: when the text outgrows the terminal, show its growing end.
        let room = terminal_width()
            .saturating_sub(head.chars().count() + 1)
            .max(10);
        let text = event.text.replace(['\n', '\r', '\t'], " ");
        let count = text.chars().count();
        let shown: String = if count > room {
            std::iter::once('…')
                .chain(text.chars().skip(count - room + 1))
                .collect()
        } else {
            text
        };
        self.live.set_message(format!("{head}{shown}"));
    }

    fn println(&self, line: &str) {
        let _ = self.multi.suspend(|| writeln!(std::io::stdout(), "{line}"));
    }

    fn println_err(&self, line: &str) {
        self.multi.suspend(|| eprintln!("{line}"));
    }

    fn image_done(&self) {
        self.live.set_message("");
        if let Some(bar) = &self.overall {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        self.live.finish_and_clear();
        if let Some(bar) = &self.overall {
            bar.finish_and_clear();
        }
    }
}
