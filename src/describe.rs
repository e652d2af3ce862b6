//! `clipsteer describe`: its command line and the batch it runs, with progress on the terminal.

use crate::progress::Progress;
use crate::*;
use anyhow::Result;
use candle_core::Device;
use clap::Args;
use clipsteer::events::{json_line, step_json};
use clipsteer::pipeline::{planned_settings, run_batch, BatchEvent, Describer, InputSpec};
use clipsteer::request::{encoder_for, DescribeRequest, Preset, DEFAULT_LM};
use clipsteer::sidecar::CaptionFiles;
use std::path::PathBuf;

/// describe's command line: the inputs, models and outputs of a batch, and the options of each
/// description ([`DescribeRequest`], shared with every other face).
#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// Image files, or directories searched recursively for .jpg/.jpeg/.png/.webp/.gif/.bmp. May be
    /// left out when --target-text gives the target.
    #[arg(required_unless_present_any = ["target_text", "scorer_cmd"], conflicts_with = "scorer_cmd")]
    pub images: Vec<PathBuf>,
    /// Language model: a directory in the HF layout or a hub id (GPT-2, llama, mistral, qwen2,
    /// qwen3, gemma2, gemma3, phi3), or a llama or Gemma 3 .gguf file.
    #[arg(long, default_value = DEFAULT_LM)]
    pub lm: String,
    /// A GGUF file of the --lm hub repository (or local directory) to load, as transformers'
    /// `gguf_file=`: fetched with the repository's revision into the Hugging Face cache.
    #[arg(long, value_name = "NAME.gguf")]
    pub gguf_file: Option<String>,
    /// The scorer: CLIP, SigLIP / SigLIP 2, or a sentence encoder for text targets (a local
    /// directory in the HF layout or a hub id)
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

pub(crate) fn parse_shard(value: &str) -> std::result::Result<(usize, usize), String> {
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

pub(crate) fn run_describe(args: DescribeArgs, device: &Device) -> Result<i32> {
    let resolved = args.request.resolve(args.preset, !args.images.is_empty())?;
    let encoder = encoder_for(args.clip.as_deref(), args.preset);
    let mut plan = args.inputs().plan()?;
    if args.json {
        // Downloads draw no progress bar under --json, as scripts read stderr too.
        clipsteer::hub::set_progress(false);
    }
    let lm = clipsteer::load::lm_argument(&args.lm, args.gguf_file.as_deref())?;
    plan.check_planned_settings(|| planned_settings(&lm, &encoder, &resolved))?;
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

    let describer = Describer::load(&lm, &encoder, &resolved, device)?;

    let progress = Progress::new(inputs);
    let summary = run_batch(&describer, &mut plan, |event| {
        match event {
            BatchEvent::Step { image, event } => {
                if args.json {
                    clipsteer::write_stdout_line(format_args!(
                        "{}",
                        json_line(&step_json(image, event))
                    ))?;
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
                    outln!("{}", json_line(line));
                } else {
                    let text = &result.text;
                    // A tab-separated record per image: names and texts may not break it, nor
                    // reach the terminal as escapes (--json carries them exactly).
                    progress.println(&match image {
                        Some(image) if inputs > 1 => format!(
                            "{}\t{:.4}\t{}",
                            clipsteer::terminal_safe(image, false),
                            result.similarity,
                            clipsteer::terminal_safe(text, false)
                        ),
                        _ => clipsteer::terminal_safe(text, true).into_owned(),
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
                    outln!("{}", json_line(line));
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
