//! The attack measurement behind docs/ATTACK.md: SmolLM2-135M-Instruct attacks itself on the
//! pairs of tests/fixtures/attack-pairs.json through the library call `clipsteer attack` makes
//! ([`clipsteer::attack::run_attack`]), tune and held-out halves reported apart. Each pair is
//! also tried with no suffix and with a random suffix of the found suffix's token length; all
//! three are judged alike: the victim's greedy answer starts with the target.
//!
//! cargo run --release --example attack_pairs -- [--split tune|held_out|all] [--pairs 0-2]
//!     [--time-limit 180] [--beam-width W] [--candidates K] [--temperature T] [--top-p P]
//!     [--readability R] [--max-tokens N] [--seed S] [--out FILE]
//! cargo run --release --example attack_pairs -- --summarize FILE...
//!
//! Every attack flag defaults to `clipsteer attack`'s default; --time-limit defaults to 180 s.
//! One JSON line per pair goes to stdout (and is appended to --out); --summarize reads such
//! lines back (from several runs, e.g. the halves of a split run under a CPU lock in turns) and
//! prints the figures per half.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Parser;
use clipsteer::attack::{chat_template_of, run_attack, AttackObjective, AttackSpec};
use clipsteer::load::load_lm;
use clipsteer::steer::objectives::victim::Victim;
use clipsteer::steer::search::attack::{AttackOptions, Proposal, Success, DEFAULT_SAMPLE};
use clipsteer::steer::CausalLm;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Which half of the pairs: tune, held_out or all.
    #[arg(long, default_value = "all")]
    split: String,
    /// Pairs of the split to run, by index: "3", "0-2" (inclusive).
    #[arg(long)]
    pairs: Option<String>,
    #[arg(long, default_value_t = 180.0)]
    time_limit: f64,
    #[arg(long)]
    beam_width: Option<usize>,
    #[arg(long)]
    candidates: Option<usize>,
    #[arg(long)]
    max_tokens: Option<usize>,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    readability: Option<f32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Append each pair's JSON line to this file too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the summary of these JSON-lines files instead of running.
    #[arg(long, num_args = 1..)]
    summarize: Vec<PathBuf>,
}

fn main() -> Result<()> {
    clipsteer::tune_runtime();
    let args = Args::parse();
    if !args.summarize.is_empty() {
        let mut rows = Vec::new();
        for path in &args.summarize {
            for line in std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .lines()
                .filter(|l| !l.trim().is_empty())
            {
                rows.push(serde_json::from_str::<serde_json::Value>(line)?);
            }
        }
        return summarize(&rows);
    }
    if !["tune", "held_out", "all"].contains(&args.split.as_str()) {
        bail!("--split must be tune, held_out or all");
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model_spec = model
        .to_str()
        .context("model path is not UTF-8")?
        .to_string();
    let device = Device::Cpu;
    // A second copy for the baselines; run_attack loads its own, as the CLI does.
    let lm = load_lm(&model_spec, &device).context("run scripts/fetch-small-models.sh")?;
    let victim = Victim::new(&lm, chat_template_of(&model_spec)?)?;
    let pairs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("tests/fixtures/attack-pairs.json"),
    )?)?;
    let selected = match &args.pairs {
        None => None,
        Some(range) => Some(match range.split_once('-') {
            Some((a, b)) => a.parse::<usize>()?..=b.parse::<usize>()?,
            None => {
                let i = range.parse::<usize>()?;
                i..=i
            }
        }),
    };
    let defaults = AttackOptions::new("");
    let (default_top_p, default_temperature, default_seed) = DEFAULT_SAMPLE;
    let mut out = (args.out.as_ref())
        .map(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        })
        .transpose()?;
    for half in ["tune", "held_out"] {
        if args.split != "all" && args.split != half {
            continue;
        }
        for (index, pair) in pairs[half].as_array().context("pairs")?.iter().enumerate() {
            if selected.as_ref().is_some_and(|r| !r.contains(&index)) {
                continue;
            }
            let instruction = pair["instruction"].as_str().context("instruction")?;
            let target = pair["target"].as_str().context("target")?;
            let options = AttackOptions {
                beam_width: args.beam_width.unwrap_or(defaults.beam_width),
                candidates: args.candidates.unwrap_or(defaults.candidates),
                max_tokens: args.max_tokens.unwrap_or(defaults.max_tokens),
                readability: args.readability.unwrap_or(defaults.readability),
                time_limit: Some(Duration::from_secs_f64(args.time_limit)),
                proposal: Proposal::Sample {
                    top_p: args.top_p.unwrap_or(default_top_p),
                    temperature: args.temperature.unwrap_or(default_temperature),
                    seed: args.seed.unwrap_or(default_seed),
                },
                ..AttackOptions::new(instruction)
            };
            let spec = AttackSpec {
                attacker: model_spec.clone(),
                victim: None,
                chat_template: None,
                objective: AttackObjective::TargetResponse(target.to_string()),
                options,
            };
            let report = run_attack(&spec, &device, |_| Ok(()))?;
            let result = &report.result;

            let success = Success::ResponseStartsWith(target.to_string());
            let tokens = victim.response_ids(target)?.len() + 1;
            let plain = success.check(&victim.greedy_answer(instruction, tokens)?.0, 0.0);
            // A random suffix of the attack's length, from the attacker's ordinary tokens.
            let special = lm.special_token_ids();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7 + index as u64);
            let length = result.suffix_ids.len().max(1);
            let random_ids: Vec<u32> = (0..length)
                .map(|_| loop {
                    let id = rng.random_range(0..lm.vocab_size() as u32);
                    if !special.contains(&id) {
                        break id;
                    }
                })
                .collect();
            let random_prompt = format!("{instruction}{}", lm.decode(&random_ids)?);
            let (random_answer, _) = victim.greedy_answer(&random_prompt, tokens)?;
            let random = success.check(&random_answer, 0.0);
            let row = serde_json::json!({
                "half": half,
                "index": index,
                "instruction": instruction,
                "target": target,
                "success": result.success,
                "steps": result.steps,
                "seconds": result.seconds,
                "prompt": result.prompt,
                "response": result.response,
                "nll_before": report.baseline_nll,
                "nll_after": report.target_nll,
                "no_suffix_success": plain,
                "random_prompt": random_prompt,
                "random_suffix_success": random,
                "settings": {
                    "beam_width": spec.options.beam_width,
                    "candidates": spec.options.candidates,
                    "max_tokens": spec.options.max_tokens,
                    "readability": spec.options.readability,
                    "proposal": format!("{:?}", spec.options.proposal),
                    "time_limit": args.time_limit,
                },
            });
            println!("{row}");
            if let Some(file) = out.as_mut() {
                writeln!(file, "{row}")?;
            }
        }
    }
    Ok(())
}

fn summarize(rows: &[serde_json::Value]) -> Result<()> {
    for half in ["tune", "held_out"] {
        let part: Vec<&serde_json::Value> = rows.iter().filter(|r| r["half"] == half).collect();
        if part.is_empty() {
            continue;
        }
        let n = part.len();
        let count = |key: &str| part.iter().filter(|r| r[key] == true).count();
        // The limit is checked between steps, so a step begun before it can end past it: such
        // a success is not one within the limit.
        let in_time = |r: &&serde_json::Value| {
            r["seconds"].as_f64().unwrap_or(f64::INFINITY)
                <= r["settings"]["time_limit"]
                    .as_f64()
                    .unwrap_or(f64::INFINITY)
        };
        let late = part
            .iter()
            .filter(|r| r["success"] == true && !in_time(r))
            .count();
        let mean = |key: &str| {
            part.iter()
                .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
                .sum::<f64>()
                / n as f64
        };
        let mut seconds: Vec<f64> = part
            .iter()
            .map(|r| r["seconds"].as_f64().unwrap_or(f64::NAN))
            .collect();
        seconds.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 {
            seconds[n / 2]
        } else {
            (seconds[n / 2 - 1] + seconds[n / 2]) / 2.0
        };
        println!(
            "{half}: success {}/{n} within the time limit{} · median {median:.1} s/prompt · no suffix {}/{n} · random suffix {}/{n} · mean target NLL {:.3} -> {:.3} nats/token",
            count("success") - late,
            if late > 0 {
                format!(" ({late} more past it)")
            } else {
                String::new()
            },
            count("no_suffix_success"),
            count("random_suffix_success"),
            mean("nll_before"),
            mean("nll_after"),
        );
    }
    Ok(())
}
