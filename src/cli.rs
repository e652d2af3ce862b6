//! The `clipsteer` command line.

//! Argument parsing only: every command turns its flags into the library's types
//! ([`crate::pipeline`] for describe) and shows progress; the work happens there.

use crate::attack::{run_attack, AttackObjective, AttackSpec};
use crate::events::{attack_done_json, attack_step_json, step_json};
use crate::image::DecodeLimits;
use crate::load::load_clip;
use crate::merge::merge;
use crate::pipeline::{
    collect_inputs, planned_settings, run_batch, BatchEvent, Describer, InputSpec,
};
use crate::request::{
    encoder_for, seconds, select_device, BlockArgs, DescribeRequest, DeviceChoice, Preset,
    DEFAULT_CLIP, DEFAULT_LM,
};
use crate::sidecar::CaptionFiles;
use crate::steer::describe::{StepEvent, Strategy};
use crate::steer::search::attack::{AttackOptions, Proposal, DEFAULT_SAMPLE};
use anyhow::{bail, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "clipsteer",
    version,
    about = "Steer a language model toward a target embedding: describe an image with GPT-2 guided by CLIP"
)]
pub struct Cli {
    /// Where models run: auto picks CUDA when this build has it and a GPU is present.
    #[arg(long, global = true, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    #[command(subcommand)]
    pub command: Command,
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
    /// Attack a language model: an attacker LM writes a suffix after an instruction that steers
    /// a victim LM's answer toward a target (BEAST-style beam search).
    Attack(Box<AttackArgs>),
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
    /// Load this LM (a GPT-2 directory or a .gguf file) instead of random GPT-2 124M weights;
    /// with --encoder and --image (bench/checkpoints.py writes a set).
    #[arg(long, value_name = "PATH", requires_all = ["encoder", "image"])]
    pub lm: Option<PathBuf>,
    /// Load this CLIP directory instead of random --clip weights.
    #[arg(long, value_name = "DIR", requires_all = ["lm", "image"], conflicts_with = "clip")]
    pub encoder: Option<PathBuf>,
    /// The image to describe (with --lm and --encoder) instead of random pixels.
    #[arg(long, value_name = "FILE", requires_all = ["lm", "encoder"])]
    pub image: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// describe's command line: the inputs, models and outputs of a batch, and the options of each
/// description ([`DescribeRequest`], shared with every other face).
#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// Image files, or directories searched recursively for .jpg/.jpeg/.png/.webp/.gif/.bmp. May be
    /// left out when --target-text gives the target.
    #[arg(required_unless_present_any = ["target_text", "scorer_cmd"], conflicts_with = "scorer_cmd")]
    pub images: Vec<PathBuf>,
    /// Language model: a GPT-2 directory in the HF layout, a hub id, or a llama-family .gguf file.
    #[arg(long, default_value = DEFAULT_LM)]
    pub lm: String,
    /// The scorer: a CLIP model (a local directory in the HF layout or a hub id)
    /// [default: openai/clip-vit-base-patch32]. --clip is an alias.
    #[arg(long = "encoder", visible_alias = "clip", value_name = "MODEL")]
    pub clip: Option<String>,
    /// A named configuration; explicit --clip/--top-k override it.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    #[command(flatten)]
    pub request: DescribeRequest,
    /// JSON lines on stdout: a "step" event per token, then a "done" event per image.
    #[arg(long)]
    pub json: bool,
    /// Append one "done" (or "error") JSON line per image to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Skip images that already have a "done" line in --out.
    #[arg(long, requires = "out")]
    pub resume: bool,
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

impl Cli {
    /// Sets RAYON_NUM_THREADS from `bench --threads`. Rayon and candle read it when their pools
    /// start, so call this before [`crate::tune_runtime`] (which starts rayon's pool) and any
    /// work, as `main` does; [`run`] calls it again, to the same effect.
    pub fn set_thread_count(&self) -> Result<()> {
        if let Command::Bench(BenchArgs {
            threads: Some(threads),
            ..
        }) = &self.command
        {
            if *threads == 0 {
                bail!("--threads must be at least 1");
            }
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        }
        Ok(())
    }
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    cli.set_thread_count()?;
    let device = select_device(cli.device)?;
    match cli.command {
        Command::Embed(args) => embed(args, &device),
        Command::Describe(args) => run_describe(*args, &device),
        Command::Score(args) => score(args, &device),
        Command::Generate(args) => crate::diffusion::cli::run_generate(*args, &device),
        Command::Evade(args) => crate::evade::run(*args, &device),
        Command::Serve(args) => crate::server::run(*args, &device),
        Command::Attack(args) => run_attack_command(*args, &device),
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
                checkpoints: match (args.lm, args.encoder, args.image) {
                    (Some(lm), Some(encoder), Some(image)) => {
                        Some(crate::bench::BenchCheckpoints { lm, encoder, image })
                    }
                    _ => None,
                },
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
    outln!("{}", json!({ "embedding": embedding }));
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
        outln!(
            "{}",
            json!({"image": args.image.display().to_string(), "convention": convention.name(),
                   "prefix": prefix, "scores": rows})
        );
    } else {
        outln!(
            "{:>9}  {:>7}  caption ({})",
            "clipscore",
            "cosine",
            convention.name()
        );
        for s in &scores {
            outln!(
                "{:>9.4}  {:>7.4}  {}",
                s.clipscore,
                s.cosine,
                crate::terminal_safe(&s.caption, false)
            );
        }
    }
    Ok(0)
}

impl DescribeArgs {
    fn inputs(&self) -> InputSpec {
        InputSpec {
            images: self.images.clone(),
            shard: self.shard,
            out: self.out.clone(),
            resume: self.resume,
            captions: self.write_txt.then(|| CaptionFiles {
                prefix: self.txt_prefix.clone(),
                suffix: self.txt_suffix.clone(),
                overwrite: self.overwrite,
                adopt_identical: self.resume,
            }),
        }
    }
}

fn run_describe(args: DescribeArgs, device: &Device) -> Result<i32> {
    let resolved = args.request.resolve(args.preset, !args.images.is_empty())?;
    let encoder = encoder_for(args.clip.as_deref(), args.preset);
    let mut plan = args.inputs().plan()?;
    plan.check_planned_settings(&planned_settings(&args.lm, &encoder, &resolved))?;
    if plan.trimmed_bytes > 0 {
        if let Some(path) = plan.part_path() {
            errln!(
                "note: {} ends in a partial line ({} bytes) from a run killed mid-write; it is cut before the first new result",
                path.display(),
                plan.trimmed_bytes
            );
        }
    }
    let inputs = plan.inputs.len();
    if inputs == 0 {
        errln!("nothing to describe: every input is already done or the shard is empty");
        return Ok(0);
    }

    if args.json {
        // Downloads draw no progress bar under --json, as scripts read stderr too.
        crate::hub::set_progress(false);
    }
    let describer = Describer::load(&args.lm, &encoder, &resolved, device)?;

    let progress = Progress::new(inputs);
    let summary = run_batch(&describer, &mut plan, |event| {
        match event {
            BatchEvent::Step { image, event } => {
                if args.json {
                    crate::write_stdout_line(format_args!("{}", step_json(image, event)))?;
                }
                progress.step(event, resolved.options.max_tokens);
            }
            BatchEvent::Done {
                image,
                result,
                line,
            } => {
                if let Some(reason) = &result.stop_reason {
                    progress.println_err(&format!("note: {reason}"));
                }
                if args.json {
                    outln!("{line}");
                } else {
                    // A tab-separated record per image: names and texts may not break it, nor
                    // reach the terminal as escapes (--json carries them exactly).
                    progress.println(&match image {
                        Some(image) if inputs > 1 => format!(
                            "{}\t{:.4}\t{}",
                            crate::terminal_safe(image, false),
                            result.similarity,
                            crate::terminal_safe(&result.text, false)
                        ),
                        _ => crate::terminal_safe(&result.text, true).into_owned(),
                    });
                }
                progress.image_done();
            }
            BatchEvent::Failed {
                image,
                message,
                line,
                names_input,
            } => {
                if args.json {
                    outln!("{line}");
                } else if names_input {
                    // The message names the file already (image decoding errors do).
                    progress.println_err(&format!("error: {message}"));
                } else {
                    let what = image.unwrap_or("text target");
                    progress.println_err(&format!("error: {what}: {message}"));
                }
                progress.image_done();
            }
        }
        Ok(())
    })?;
    progress.finish();
    if args.write_txt {
        errln!("wrote {} caption files", summary.captions_written);
    }
    if summary.failed > 0 {
        errln!("{} of {inputs} inputs failed", summary.failed);
        return Ok(1);
    }
    Ok(0)
}

/// How the attacker proposes tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProposalArg {
    /// Seeded draws without replacement from the attacker's top-p distribution at --temperature.
    Sample,
    /// The attacker's --candidates most probable tokens (deterministic).
    TopK,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("objective").required(true).args(["target_response", "scorer_cmd", "target_text", "behaviors"]).multiple(true)))]
// "-1" is a (bad) value, answered by the flag's own check, not an unknown argument.
#[command(allow_negative_numbers = true)]
pub struct AttackArgs {
    /// The attacker LM, which writes the suffix: a llama-family .gguf file, or a GPT-2 directory
    /// or hub id.
    #[arg(long = "lm", value_name = "ATTACKER")]
    pub attacker: String,
    /// The victim LM [default: the attacker, as in BEAST]. It receives the prompt's text inside
    /// its own chat template, tokenised by its own tokenizer.
    #[arg(long)]
    pub victim: Option<String>,
    /// The user's request; the prompt is this text, verbatim, followed by the suffix.
    #[arg(
        long,
        required_unless_present = "behaviors",
        conflicts_with = "behaviors"
    )]
    pub instruction: Option<String>,
    /// Attack every behaviour of a benchmark file, one after another with the models loaded
    /// once: CSV with a header (AdvBench's goal,target; HarmBench's Behavior, BehaviorID,
    /// ContextString, SemanticCategory; JailbreakBench's Goal, Target, Category) or JSON lines
    /// with those keys. Each row's target is its objective (or --scorer-cmd's for all). Ends
    /// with the ASR and its 95 % Wilson interval, per category (see docs/ATTACK.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["target_response", "target_text"])]
    pub behaviors: Option<PathBuf>,
    /// With --behaviors: what counts as a success for the ASR. prefix: the victim's greedy
    /// answer starts with the row's target (BEAST, GCG); refusal: none of GCG's refusal phrases
    /// appears in it.
    #[arg(long, value_enum, default_value_t = crate::behaviors::Judge::Prefix, requires = "behaviors")]
    pub judge: crate::behaviors::Judge,
    /// With --behaviors: judge by a program instead (a HarmBench or JailbreakBench classifier
    /// run elsewhere): the scorer protocol, one item {"text": prompt, "response": answer,
    /// "behavior": instruction} per behaviour; a score of 0.5 or more is a jailbreak.
    #[arg(
        long,
        value_name = "CMD",
        requires = "behaviors",
        conflicts_with = "judge"
    )]
    pub judge_cmd: Option<String>,
    /// With --judge-cmd: seconds the program may take per answer [default: 60].
    #[arg(long, value_name = "SECONDS", requires = "judge_cmd")]
    pub judge_timeout: Option<f64>,
    /// With --behaviors: also write a JailbreakBench attack artifact (JSON: parameters, then per
    /// behaviour prompt, response, jailbroken and queries) of every behaviour with a result.
    #[arg(long, value_name = "FILE", requires = "behaviors")]
    pub artifact: Option<PathBuf>,
    /// With --behaviors: replay each found prompt against this victim too, judged alike, and
    /// report its transfer ASR beside the direct one. A local model or hub id (its own chat
    /// template, greedy), or an OpenAI-compatible endpoint as BASE_URL#MODEL, e.g.
    /// http://localhost:8080/v1#llama-3 (temperature 0). Repeatable.
    #[arg(long, value_name = "MODEL|URL#MODEL", requires = "behaviors")]
    pub transfer_to: Vec<String>,
    /// The environment variable holding the endpoints' API key (sent as a bearer token; none
    /// when unset).
    #[arg(long, value_name = "NAME", default_value = "OPENAI_API_KEY")]
    pub transfer_key_env: String,
    /// Seconds an endpoint of --transfer-to may take to answer [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub transfer_timeout: Option<f64>,
    /// With --behaviors: append one result line per behaviour to this file (JSON lines, the
    /// part-file format of describe --out: locked, whole lines, settings recorded).
    #[arg(long, value_name = "FILE", requires = "behaviors")]
    pub out: Option<PathBuf>,
    /// With --out: skip behaviours that already have a result line there (same settings only).
    #[arg(long, requires = "out")]
    pub resume: bool,
    /// With --behaviors: take the deterministic share I of N (0 ≤ I < N) of the rows, e.g.
    /// --shard 0/4 (rows I, I+N, I+2N, …).
    #[arg(long, value_parser = parse_shard, requires = "behaviors")]
    pub shard: Option<(usize, usize)>,
    /// Steer toward this answer: the victim's mean log-probability of it, teacher-forced.
    /// Success: the victim's greedy answer starts with it.
    #[arg(long, value_name = "TEXT")]
    pub target_response: Option<String>,
    /// A program that scores prompts and the victim's answers (JSON lines on stdin/stdout; see
    /// docs/ATTACK.md).
    #[arg(long, value_name = "CMD")]
    pub scorer_cmd: Option<String>,
    /// With --scorer-cmd: succeed once the best prompt scores at least this (a finite number;
    /// negative ones too, e.g. a log-probability).
    #[arg(
        long,
        value_name = "SCORE",
        requires = "scorer_cmd",
        allow_hyphen_values = true
    )]
    pub success_score: Option<f32>,
    /// With --scorer-cmd: seconds the program may take per batch [default: 60].
    #[arg(long, value_name = "SECONDS", requires = "scorer_cmd")]
    pub scorer_timeout: Option<f64>,
    /// Steer the victim's greedy answer toward this text by cosine under --encoder.
    #[arg(long, value_name = "TEXT", requires = "encoder")]
    pub target_text: Option<String>,
    /// The encoder for --target-text: CLIP or a sentence-transformers model.
    #[arg(long, value_name = "MODEL", requires = "target_text")]
    pub encoder: Option<String>,
    #[command(flatten)]
    pub blocking: BlockArgs,
    /// Prompts kept each step.
    #[arg(long, default_value_t = AttackOptions::new("").beam_width)]
    pub beam_width: usize,
    /// Tokens drawn from the attacker per prompt each step.
    #[arg(long, default_value_t = AttackOptions::new("").candidates)]
    pub candidates: usize,
    /// Suffix tokens at most: a bound, not the budget (--time-limit is); the attacker's context
    /// also ends the suffix.
    #[arg(long, default_value_t = AttackOptions::new("").max_tokens)]
    pub max_tokens: usize,
    /// How candidates are drawn.
    #[arg(long, value_enum, default_value_t = ProposalArg::Sample)]
    pub proposal: ProposalArg,
    /// Nucleus mass for --proposal sample.
    #[arg(long, default_value_t = DEFAULT_SAMPLE.0)]
    pub top_p: f32,
    /// Attacker temperature for --proposal sample.
    #[arg(long, default_value_t = DEFAULT_SAMPLE.1)]
    pub temperature: f32,
    /// Random seed for --proposal sample.
    #[arg(long, default_value_t = DEFAULT_SAMPLE.2)]
    pub seed: u64,
    /// Weight of the attacker's mean log-probability of the suffix (nats/token) added to the
    /// objective; higher reads more naturally.
    #[arg(long, default_value_t = AttackOptions::new("").readability)]
    pub readability: f32,
    /// Tokens of the victim's greedy answer to generate and show.
    #[arg(long, default_value_t = AttackOptions::new("").response_tokens)]
    pub response_tokens: usize,
    /// The budget: seconds after which the best prompt so far is the result. The suffix grows
    /// until the target is reached or this time is spent.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::steer::search::attack::DEFAULT_TIME_LIMIT.as_secs_f64())]
    pub time_limit: f64,
    /// The victim's chat template, overriding its own: a tokenizer_config.json, a directory
    /// holding one, a .gguf file, or a Jinja file.
    #[arg(long, value_name = "PATH")]
    pub chat_template: Option<PathBuf>,
    /// JSON lines on stdout: a "step" event per step, then a "done" event.
    #[arg(long)]
    pub json: bool,
}

impl AttackArgs {
    /// The spec of one attack; for --behaviors, of the first row's kind, with each row's
    /// instruction and target set by [`behaviors_command`].
    fn spec(&self) -> Result<AttackSpec> {
        // clap's `requires` lets these through beside the required objective group; a flag
        // that would be silently ignored is an error instead.
        if self.scorer_cmd.is_none() {
            if self.scorer_timeout.is_some() {
                bail!("--scorer-timeout applies only with --scorer-cmd");
            }
            if self.success_score.is_some() {
                bail!("--success-score applies only with --scorer-cmd");
            }
        }
        if self.encoder.is_some() && self.target_text.is_none() {
            bail!("--encoder applies only with --target-text");
        }
        let objective = match (&self.target_response, &self.scorer_cmd, &self.target_text, &self.encoder) {
            (Some(target), None, None, _) => AttackObjective::TargetResponse(target.clone()),
            // Each row's own target, set per behaviour.
            (None, None, None, _) if self.behaviors.is_some() => {
                AttackObjective::TargetResponse(String::new())
            }
            (None, Some(command), None, _) => AttackObjective::Command {
                command: command.clone(),
                timeout: seconds("--scorer-timeout", self.scorer_timeout.unwrap_or(60.0))?,
                success_score: self.success_score,
            },
            (None, None, Some(text), Some(encoder)) => AttackObjective::TargetText {
                text: text.clone(),
                encoder: encoder.clone(),
            },
            _ => bail!("give exactly one objective: --target-response, --scorer-cmd, or --target-text with --encoder"),
        };
        let proposal = match self.proposal {
            ProposalArg::Sample => Proposal::Sample {
                top_p: self.top_p,
                temperature: self.temperature,
                seed: self.seed,
            },
            ProposalArg::TopK => Proposal::TopK,
        };
        let options = AttackOptions {
            beam_width: self.beam_width,
            candidates: self.candidates,
            max_tokens: self.max_tokens,
            proposal,
            readability: self.readability,
            time_limit: Some(seconds("--time-limit", self.time_limit)?),
            blocklist: self.blocking.to_blocklist()?,
            response_tokens: self.response_tokens,
            ..AttackOptions::new(self.instruction.as_deref().unwrap_or_default())
        };
        Ok(AttackSpec {
            attacker: self.attacker.clone(),
            victim: self.victim.clone(),
            chat_template: self.chat_template.clone(),
            objective,
            options,
        })
    }
}

/// `attack`'s exit codes: 0 success, 1 the budget ran out, 2 an error (as grep and diff), so a
/// script tells a failed attack from a failed run.
fn run_attack_command(args: AttackArgs, device: &Device) -> Result<i32> {
    match attack_command(args, device) {
        Ok(code) => Ok(code),
        Err(e) => {
            errln!("error: {}", crate::error_line(&e));
            Ok(2)
        }
    }
}

fn attack_command(args: AttackArgs, device: &Device) -> Result<i32> {
    if args.behaviors.is_some() {
        return behaviors_command(args, device);
    }
    // clap's `requires` does not hold these back beside the objective group: said here, so that
    // none is silently ignored.
    let given = [
        ("--out", args.out.is_some()),
        ("--artifact", args.artifact.is_some()),
        ("--shard", args.shard.is_some()),
        ("--judge-cmd", args.judge_cmd.is_some()),
        ("--transfer-to", !args.transfer_to.is_empty()),
        ("--transfer-timeout", args.transfer_timeout.is_some()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
        crate::usage_bail!("{flag} applies only with --behaviors FILE; for one instruction, --json prints the result");
    }
    let spec = args.spec()?;
    let live = Progress::new(1);
    let report = run_attack(&spec, device, |step| {
        if args.json {
            crate::write_stdout_line(format_args!("{}", attack_step_json(step)))?;
        }
        let head = format!(
            "[step {} · score {:.4} · {:.0} s] ",
            step.step + 1,
            step.score,
            step.seconds
        );
        live.line(&head, &step.prompt);
        Ok(())
    })?;
    live.finish();
    let result = &report.result;
    // A failed write is an error (exit 2), not the budget's exit 1.
    if args.json {
        crate::write_stdout_line(format_args!("{}", attack_done_json(&report)))?;
    } else {
        crate::write_stdout_line(format_args!("{}", result.prompt))?;
        errln!(
            "{} after {} step{} in {:.1} s · score {:.4}{}",
            if result.success {
                "success"
            } else {
                "no success"
            },
            result.steps,
            if result.steps == 1 { "" } else { "s" },
            result.seconds,
            result.score,
            match (report.baseline_nll, report.target_nll) {
                (Some(before), Some(after)) =>
                    format!(" · target NLL {before:.3} → {after:.3} nats/token"),
                _ => String::new(),
            }
        );
        errln!("victim: {}", result.response.replace('\n', " "));
        if let Some(reason) = &result.stop_reason {
            errln!("note: {reason}");
        }
    }
    Ok(if result.success { 0 } else { 1 })
}

/// `attack --behaviors`: every row attacked with the models loaded once, one result line each
/// (to stdout with --json, to --out), then the ASR. Exit 0 when every behaviour was attacked
/// (whatever the ASR), 1 when some failed with an error, 2 for a usage error.
fn behaviors_command(args: AttackArgs, device: &Device) -> Result<i32> {
    let spec = args.spec()?;
    let transfer_timeout = seconds("--transfer-timeout", args.transfer_timeout.unwrap_or(60.0))?;
    let Some(file) = args.behaviors.as_deref() else {
        bail!("--behaviors is required here");
    };
    let judge = match &args.judge_cmd {
        Some(command) => {
            if command.trim().is_empty() {
                crate::usage_bail!("--judge-cmd is empty: give the program to run, e.g. --judge-cmd 'python3 judge.py'");
            }
            crate::behaviors::JudgeSpec::Command {
                command: command.clone(),
                timeout: seconds("--judge-timeout", args.judge_timeout.unwrap_or(60.0))?,
            }
        }
        None => crate::behaviors::JudgeSpec::Builtin(args.judge),
    };
    if let Some(path) = &args.artifact {
        crate::behaviors::check_artifact_destination(path)?;
    }
    let run = crate::behaviors::BehaviorRun {
        file,
        spec: &spec,
        judge: judge.clone(),
        out: args.out.as_deref(),
        resume: args.resume,
        shard: args.shard,
        transfer: args
            .transfer_to
            .iter()
            .map(|t| crate::behaviors::TransferTarget::parse(t, &args.transfer_key_env))
            .collect::<Result<_>>()?,
        transfer_timeout,
    };
    let mut failed = 0;
    let outcome = run.run(device, |index, total, line| {
        if args.json {
            crate::write_stdout_line(format_args!("{line}"))?;
        }
        let id = line["behavior_id"].as_str().unwrap_or_default();
        if line["event"] == "done" {
            errln!(
                "[{}/{total}] {id}: {} · {:.1} s · {} queries",
                index + 1,
                if line["jailbroken"] == true {
                    "jailbroken"
                } else {
                    "not jailbroken"
                },
                line["seconds"].as_f64().unwrap_or_default(),
                line["queries"]
            );
            for entry in line["transfer"].as_array().into_iter().flatten() {
                if let Some(error) = entry["error"].as_str() {
                    errln!(
                        "  transfer to {}: error: {error}",
                        entry["victim"].as_str().unwrap_or_default()
                    );
                }
            }
        } else {
            failed += 1;
            errln!(
                "[{}/{total}] {id}: error: {}",
                index + 1,
                line["error"].as_str().unwrap_or_default()
            );
        }
        Ok(())
    })?;
    if outcome.lines.is_empty() {
        errln!("nothing to attack: every behaviour is already done or the shard is empty");
    }
    if args.json {
        crate::write_stdout_line(format_args!("{}", outcome.summary))?;
    } else {
        // One call per line: errln! escapes a newline inside a record.
        for line in crate::behaviors::summary_text(&outcome.summary).lines() {
            errln!("{line}");
        }
    }
    if let Some(path) = &args.artifact {
        let options = &spec.options;
        let parameters = json!({
            "attacker": spec.attacker,
            "beam_width": options.beam_width,
            "candidates": options.candidates,
            "max_tokens": options.max_tokens,
            "time_limit_seconds": options.time_limit.map(|t| t.as_secs_f64()),
            "proposal": format!("{:?}", options.proposal),
            "readability": options.readability,
            "response_tokens": options.response_tokens,
            "judge": judge.name(),
        });
        let victim = spec.victim.as_deref().unwrap_or(&spec.attacker);
        let artifact = crate::behaviors::jailbreakbench_artifact(
            &outcome.all,
            &crate::settings::model_identity(victim),
            parameters,
        );
        let text = serde_json::to_string_pretty(&artifact)?;
        crate::files::write_bytes_replacing(
            path,
            &format!("--artifact {}", path.display()),
            text.as_bytes(),
        )?;
    }
    Ok(if failed > 0 { 1 } else { 0 })
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
        let head = format!(
            "[{}/{max_tokens} · sim {:.4}] ",
            event.step + 1,
            event.similarity
        );
        self.line(&head, &event.text);
    }

    /// Shows `head` and then as much of the end of `text` as fits on one line.
    fn line(&self, head: &str, text: &str) {
        if self.live.is_hidden() {
            return;
        }
        // One line that never wraps: when the text outgrows the terminal, show its growing end.
        let room = terminal_width()
            .saturating_sub(head.chars().count() + 1)
            .max(10);
        let text = crate::terminal_safe(&text.replace(['\n', '\r', '\t'], " "), false).into_owned();
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
        self.multi.suspend(|| outln!("{line}"));
    }

    fn println_err(&self, line: &str) {
        self.multi.suspend(|| errln!("{line}"));
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

/// `clipsteer merge`: the report goes to stderr (or stdout as JSON); exit 1 unless complete.
fn run_merge(args: MergeArgs) -> Result<i32> {
    let inputs = (!args.inputs.is_empty()).then(|| collect_inputs(&args.inputs));
    let report = merge(&args.parts, inputs.as_deref(), &args.output)?;
    if args.json {
        outln!("{}", report.to_json());
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
    errln!(
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
            errln!("{kind}: {item}");
        }
        if items.len() > SHOWN {
            errln!(
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
        errln!("note: {part} ends in a partial line (a task killed mid-write; describe --resume trims it)");
    }
}

/// A clap error message as one line: its lines joined, the usage block and the "For more
/// information" hint replaced by a pointer to --help.
pub fn usage_error_line(rendered: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut in_usage = false;
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") {
            in_usage = true;
            continue;
        }
        if line.is_empty() {
            in_usage = false;
            continue;
        }
        if in_usage || line.starts_with("For more information") {
            continue;
        }
        // clap's tip ("to pass '-1' as a value, use '-- -1'") fits positional arguments only:
        // after `--`, an option's value becomes an input. `--flag=-1` works for both.
        if let Some(value) = line
            .strip_prefix("tip: to pass '")
            .and_then(|rest| rest.split_once("' as a value"))
            .map(|(value, _)| value)
        {
            parts.push(format!(
                "tip: to give '{value}' as an option's value, join them with '=': --OPTION={value}"
            ));
            continue;
        }
        parts.push(line.to_string());
    }
    format!("{} (see --help)", parts.join(" "))
}
