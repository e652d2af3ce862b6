//! The `clipsteer` command line: each command's arguments (one module per command) turned into
//! the library's request types, and what the terminal shows ([`progress`]); the work happens in
//! the `clipsteer` library, and `serve` in `clipsteer-server`.

// The library's macros (errln!, outln!, usage_bail!) in every module.
#[macro_use]
extern crate clipsteer;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use clipsteer::request::{select_device, DeviceChoice};

mod attack;
mod bench;
mod describe;
mod merge;
mod progress;
mod score;

pub use attack::{AttackArgs, ProposalArg};
pub use bench::BenchArgs;
pub use describe::DescribeArgs;
pub use merge::MergeArgs;
pub use score::{EmbedArgs, ScoreArgs};

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
    /// Describe images: the LM proposes tokens, the encoder (CLIP, SigLIP) picks the one closest to
    /// the image.
    Describe(Box<DescribeArgs>),
    /// Print an encoder's embedding as JSON: {"embedding":[...]} (unnormalised features, as
    /// get_text_features / get_image_features).
    Embed(EmbedArgs),
    /// Time the describe loop on full-size architectures with random weights (no download).
    Bench(BenchArgs),
    /// CLIPScore of captions for an image: 2.5 · max(cos, 0) with "A photo depicts " before each
    /// caption (Hessel et al. 2021), or torchmetrics' 100 · max(cos, 0) with --torchmetrics; with
    /// a SigLIP encoder, its probability sigmoid(exp(logit_scale) · cos + logit_bias).
    Score(ScoreArgs),
    /// Text to image with Stable Diffusion (diffusers layout: SD 1.x/2.x).
    Generate(Box<clipsteer::diffusion::cli::GenerateArgs>),
    /// Filter evasion: describe an image without blocked words, regenerate it from the
    /// description, and report how much of the image survived (JSON + HTML).
    Evade(Box<clipsteer::evade::EvadeArgs>),
    /// Attack a language model: an attacker LM writes a suffix after an instruction that steers
    /// a victim LM's answer toward a target (BEAST-style beam search).
    Attack(Box<AttackArgs>),
    /// Serve a web page and an API that describe uploaded images live.
    Serve(Box<clipsteer_server::ServeArgs>),
    /// Join the part files of a sharded `describe --out` run into one file, in input order, and
    /// report images missing, described twice or failed (exit 1 if any).
    Merge(MergeArgs),
}

impl Cli {
    /// Sets RAYON_NUM_THREADS from `bench --threads`. Rayon and candle read it when their pools
    /// start, so call this before [`clipsteer::tune_runtime`] (which starts rayon's pool) and any
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
        Command::Embed(args) => score::embed(args, &device),
        Command::Describe(args) => describe::run_describe(*args, &device),
        Command::Score(args) => score::score(args, &device),
        Command::Generate(args) => clipsteer::diffusion::cli::run_generate(*args, &device),
        Command::Evade(args) => clipsteer::evade::run(*args, &device),
        Command::Serve(args) => clipsteer_server::run(*args, &device),
        Command::Attack(args) => attack::run_attack_command(*args, &device),
        Command::Merge(args) => merge::run_merge(args),
        Command::Bench(args) => {
            let options = clipsteer::bench::BenchOptions {
                arch: args.clip,
                top_k: args.top_k.unwrap_or(args.strategy.default_top_k()),
                steps: args.steps,
                prompt: args.prompt,
                assets: args.assets.unwrap_or_else(clipsteer::bench::default_assets),
                json: args.json,
                prefilter: args.prefilter,
                check_agreement: args.check_agreement,
                strategy: args.strategy,
                checkpoints: match (args.lm, args.encoder, args.image) {
                    (Some(lm), Some(encoder), Some(image)) => {
                        Some(clipsteer::bench::BenchCheckpoints { lm, encoder, image })
                    }
                    _ => None,
                },
            };
            clipsteer::bench::run(&options, &device)?;
            Ok(0)
        }
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
