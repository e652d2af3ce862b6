//! Runs one steering configuration over the evaluation set (eval/targets.jsonl) and reports, per
//! case and as means over the chosen half: cosine to the target (the encoder's, all-MiniLM-L6-v2
//! by default), NLL per generated token under the LM, length, blocked-word leaks, whether the text
//! ended as a sentence, and seconds per case. The harness behind docs/STEERING.md.
//!
//!     scripts/fetch-small-models.sh
//!     nice cargo run --release --example eval_steering -- --split tuning --prompt caption \
//!         --strategy beam [--lm .cache/models/gemma3/gemma-3-270m-q4_k_m.gguf] [--limit 6] \
//!         [--out target/eval.jsonl] [--label NAME]
//!
//! Settings come from the library's defaults for the strategy (what `describe` and `evade` use)
//! unless given: --top-k, --max-tokens (32), --width, --fluency, --alpha, --beta, --scale.
//! `--strategy unguided` is the LM's own greedy text (seed with k = 1), for reference.
//! Tune on `--split tuning` only; `--split held-out` is for confirming.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use clipsteer::load::load_lm;
use clipsteer::steer::constraints::Blocklist;
use clipsteer::steer::describe::{describe, DescribeOptions, ScoredText, Strategy};
use clipsteer::steer::lm::LanguageModel;
use clipsteer::steer::{normalize, Scorer, SentenceScorer};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
struct Args {
    /// GGUF language model.
    #[arg(
        long,
        default_value = ".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    lm: String,
    /// Sentence encoder (HF layout).
    #[arg(long, default_value = ".cache/models/all-minilm-l6-v2")]
    encoder: PathBuf,
    #[arg(long, default_value = "eval/targets.jsonl")]
    targets: PathBuf,
    /// tuning, held-out, fresh (ids 48–63) or fresh2 (ids 64–79), or all. The fresh splits were
    /// written later, each before any run on it, to confirm rules on targets none was shaped
    /// on (eval/README.md).
    #[arg(long, default_value = "tuning")]
    split: String,
    /// caption ("A picture of"), chat (the LM's chat template asking for one sentence, typed as
    /// ChatML or Gemma turns), default (what describe does without --prompt: the LM's own chat
    /// template rendered with --instruction's default), or any other text, used as it is.
    #[arg(long, default_value = "caption")]
    prompt: String,
    /// seed, magic, beam or unguided.
    #[arg(long, default_value = "beam")]
    strategy: String,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    fluency: Option<f32>,
    #[arg(long)]
    alpha: Option<f32>,
    #[arg(long)]
    beta: Option<f32>,
    #[arg(long)]
    scale: Option<f32>,
    /// Beam: sibling-rank penalty γ.
    #[arg(long)]
    diversity: Option<f32>,
    /// Beam: lookahead tokens (text and greedy completion scored together).
    #[arg(long)]
    lookahead: Option<usize>,
    /// Beam: steps before --max-tokens in which a hypothesis may end with "." outside its top-k.
    #[arg(long)]
    close_within: Option<usize>,
    /// generated or full (prompt + text).
    #[arg(long)]
    score_text: Option<String>,
    /// Only the first N cases of the split (to iterate quickly; with --resume, the first N not
    /// yet in --out).
    #[arg(long)]
    limit: Option<usize>,
    /// Skip the cases --out already holds under this --label, and report the means over all of
    /// the label's cases there: a long run goes in chunks (--limit per command) that add up.
    #[arg(long, requires = "out")]
    resume: bool,
    /// Append one JSON line per case here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Name of this configuration in the output.
    #[arg(long)]
    label: Option<String>,
    /// Print each case's text.
    #[arg(long)]
    verbose: bool,
}

struct Case {
    id: usize,
    target: String,
    block: Vec<String>,
}

fn read_cases(path: &PathBuf, split: &str) -> Result<Vec<Case>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut cases = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if split != "all" && v["split"] != split {
            continue;
        }
        cases.push(Case {
            id: v["id"].as_u64().context("id")? as usize,
            target: v["target"].as_str().context("target")?.to_string(),
            block: v["block"]
                .as_array()
                .context("block")?
                .iter()
                .filter_map(|w| w.as_str().map(str::to_string))
                .collect(),
        });
    }
    if cases.is_empty() {
        bail!("no cases in {} for split {split}", path.display());
    }
    Ok(cases)
}

/// The instruction the chat prompt gives, in each LM's own chat template.
const INSTRUCTION: &str = "Write one sentence describing a scene.";

fn prompt_for(lm: &LanguageModel, prompt: &str) -> String {
    match prompt {
        "caption" => "A picture of".to_string(),
        // Gemma's turn markers where the vocabulary has them, else ChatML (SmolLM2's).
        "chat" => match lm.tokenizer.token_to_id("<start_of_turn>") {
            Some(_) => {
                format!("<start_of_turn>user\n{INSTRUCTION}<end_of_turn>\n<start_of_turn>model\n")
            }
            None => format!("<|im_start|>user\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"),
        },
        other => other.to_string(),
    }
}

/// Whether `text` holds `word` as a whole word, case-insensitively: written apart from the
/// Blocklist, so that a leak through it would show.
fn has_whole_word(text: &str, word: &str) -> bool {
    let word = word.to_lowercase();
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w == word)
}

/// A text ends as a sentence when its last character (closing quotes aside) ends one.
fn ends_sentence(text: &str) -> bool {
    let trimmed = text.trim_end().trim_end_matches(['"', '\'', ')', '”', '’']);
    trimmed.ends_with(['.', '!', '?'])
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = Device::Cpu;
    let lm = load_lm(&args.lm, &device)?;
    let scorer = SentenceScorer::load(&args.encoder, &device)?;
    let mut cases = read_cases(&args.targets, &args.split)?;
    // `default`: what describe does without --prompt (the LM's chat template around
    // --instruction's default, scoring the answer alone; "An image of " without a template).
    let defaults = match args.prompt.as_str() {
        "default" => {
            let template = clipsteer::load::chat_template_if_any(&args.lm)?;
            let resolved = clipsteer::request::DescribeRequest::default()
                .resolve(None, false)?
                .for_lm(template.as_ref())?;
            Some((resolved.options.prompt, resolved.options.scored_text))
        }
        _ => None,
    };
    let prompt = match &defaults {
        Some((prompt, _)) => prompt.clone(),
        None => prompt_for(&lm, &args.prompt),
    };
    let (strategy, unguided) = match args.strategy.as_str() {
        "seed" => (Strategy::Seed, false),
        "magic" => (Strategy::Magic, false),
        "beam" => (Strategy::Beam, false),
        "unguided" => (Strategy::Seed, true),
        other => bail!("unknown strategy {other}"),
    };
    let mut options = DescribeOptions::for_strategy(&prompt, strategy);
    options.max_tokens = args.max_tokens;
    if unguided {
        options.top_k = 1;
        options.stop_at_sentence_end = true;
    }
    if let Some(k) = args.top_k {
        options.top_k = k;
    }
    if let Some(w) = args.width {
        options.beam.width = w;
    }
    if let Some(f) = args.fluency {
        options.beam.fluency = f;
    }
    if let Some(a) = args.alpha {
        options.magic.alpha = a;
    }
    if let Some(b) = args.beta {
        options.magic.beta = b;
    }
    if let Some(s) = args.scale {
        options.magic.scale = Some(s);
    }
    if let Some(d) = args.diversity {
        options.beam.diversity = d;
    }
    if let Some(l) = args.lookahead {
        options.beam.lookahead = l;
    }
    if let Some(c) = args.close_within {
        options.beam.close_within = c;
    }
    if let Some((_, scored)) = defaults {
        options.scored_text = scored;
    }
    match args.score_text.as_deref() {
        None => {}
        Some("generated") => options.scored_text = ScoredText::Generated,
        Some("full") => options.scored_text = ScoredText::Full,
        Some(other) => bail!("--score-text is generated or full, got {other}"),
    }
    let label = args.label.clone().unwrap_or_else(|| {
        format!(
            "{} {} {}",
            args.strategy,
            args.prompt,
            std::path::Path::new(&args.lm)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default()
        )
    });
    // Earlier chunks of this label: (id, cosine, nll, tokens, leaked, ended, seconds).
    let mut earlier: Vec<(usize, f64, f64, f64, bool, bool, f64)> = Vec::new();
    if let (true, Some(path)) = (args.resume, &args.out) {
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line)?;
                if v["label"] != label.as_str() || v["split"] != args.split.as_str() {
                    continue;
                }
                let id = v["id"].as_u64().context("id")? as usize;
                if earlier.iter().any(|e| e.0 == id) {
                    continue;
                }
                earlier.push((
                    id,
                    v["cosine"].as_f64().context("cosine")?,
                    v["nll"].as_f64().context("nll")?,
                    v["tokens"].as_f64().context("tokens")?,
                    !v["leaks"].as_array().context("leaks")?.is_empty(),
                    v["ended"].as_bool().context("ended")?,
                    v["seconds"].as_f64().context("seconds")?,
                ));
            }
        }
        cases.retain(|c| !earlier.iter().any(|e| e.0 == c.id));
    }
    if let Some(limit) = args.limit {
        cases.truncate(limit);
    }
    let mut out = (args.out.as_ref())
        .map(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        })
        .transpose()?;
    let prompt_text_len = prompt.len();
    let (mut cosines, mut nlls, mut lengths, mut seconds) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut leaks, mut unfinished) = (0, 0);
    for e in &earlier {
        cosines.push(e.1);
        nlls.push(e.2);
        lengths.push(e.3);
        leaks += usize::from(e.4);
        unfinished += usize::from(!e.5);
        seconds.push(e.6);
    }
    for case in &cases {
        let target = normalize(&scorer.embed_text(&case.target)?);
        let mut options = options.clone();
        options.blocklist = Blocklist::new(case.block.iter(), false)?;
        let clock = std::time::Instant::now();
        let result = describe(&lm, &scorer, &target, &options, |_| Ok(()))?;
        let elapsed = clock.elapsed().as_secs_f64();
        let generated = result
            .text
            .get(prompt_text_len..)
            .unwrap_or(&result.text)
            .trim()
            .to_string();
        let embedding = normalize(&scorer.embed_text(&generated)?);
        let cosine: f32 = embedding.iter().zip(&target).map(|(a, b)| a * b).sum();
        let nll = result.mean_nll();
        let leaked: Vec<&String> = case
            .block
            .iter()
            .filter(|w| has_whole_word(&generated, w))
            .collect();
        let tokens = result.token_ids.len();
        // Ended: a sentence mark, or the LM's end of text before the token limit.
        let ended = ends_sentence(&generated)
            || (tokens < options.max_tokens && result.stop_reason.is_none());
        leaks += usize::from(!leaked.is_empty());
        unfinished += usize::from(!ended);
        if args.verbose {
            eprintln!(
                "#{:<2} cos {cosine:.3} nll {nll:.2} tok {tokens:>2} {:>5.1}s{}{} {generated:?}",
                case.id,
                elapsed,
                if ended { "" } else { " CUT" },
                if leaked.is_empty() { "" } else { " LEAK" },
            );
        }
        if let Some(out) = out.as_mut() {
            let line = serde_json::json!({
                "label": label, "lm": args.lm, "split": args.split, "prompt": args.prompt,
                "strategy": args.strategy, "id": case.id, "target": case.target,
                "text": generated, "cosine": cosine, "nll": nll, "tokens": tokens,
                "leaks": leaked, "ended": ended, "seconds": elapsed,
            });
            writeln!(out, "{line}")?;
        }
        cosines.push(cosine as f64);
        nlls.push(nll);
        lengths.push(tokens as f64);
        seconds.push(elapsed);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "{label} [{} ×{}]: cos {:.3}  nll {:.2}  tokens {:.1}  leaks {leaks}  unfinished {unfinished}  s/case {:.1}  (top-k {}, width {}, fluency {}, diversity {}, lookahead {}, close within {}, α {}, β {}, scale {:?}, scored {:?})",
        args.split,
        cosines.len(),
        mean(&cosines),
        mean(&nlls),
        mean(&lengths),
        mean(&seconds),
        options.top_k,
        options.beam.width,
        options.beam.fluency,
        options.beam.diversity,
        options.beam.lookahead,
        options.beam.close_within,
        options.magic.alpha,
        options.magic.beta,
        options.magic.scale,
        options.scored_text,
    );
    Ok(())
}
