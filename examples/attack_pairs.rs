//! The attack measurement behind docs/ATTACK.md: SmolLM2-135M-Instruct attacks itself on every
//! pair of tests/fixtures/attack-pairs.json (tune and held-out halves reported apart), and for
//! each pair also tries no suffix and a random suffix of the same length.
//!
//! cargo run --release --example attack_pairs -- [--time-limit 180] [--split tune|held_out|all]
//!     [--beam-width W] [--candidates K] [--max-tokens N] [--seed S]

use anyhow::{Context, Result};
use candle_core::Device;
use clipsteer::steer::chat_template::ChatTemplate;
use clipsteer::steer::objectives::victim::{TargetResponse, Victim};
use clipsteer::steer::search::attack::{run, AttackOptions, Proposal, Success};
use clipsteer::steer::{CausalLm, GgufLm};
use rand::{Rng, SeedableRng};
use std::time::Duration;

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lm = GgufLm::load(&model, &Device::Cpu).context("run scripts/fetch-small-models.sh")?;
    let template = ChatTemplate::from_gguf(&model)?;
    let victim = Victim::new(&lm, template.clone())?;
    let before_user = template.user_slot()?.0;
    let pairs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("tests/fixtures/attack-pairs.json"),
    )?)?;
    let split: String = flag(&args, "--split", "all".to_string());
    let defaults = AttackOptions::new("");
    let mut rows = Vec::new();
    for name in ["tune", "held_out"] {
        if split != "all" && split != name {
            continue;
        }
        for pair in pairs[name].as_array().context("pairs")? {
            let instruction = pair["instruction"].as_str().context("instruction")?;
            let target = pair["target"].as_str().context("target")?;
            let options = AttackOptions {
                beam_width: flag(&args, "--beam-width", defaults.beam_width),
                candidates: flag(&args, "--candidates", defaults.candidates),
                max_tokens: flag(&args, "--max-tokens", defaults.max_tokens),
                time_limit: Some(Duration::from_secs_f64(flag(&args, "--time-limit", 180.0))),
                proposal: Proposal::Sample {
                    top_p: 1.0,
                    temperature: 1.0,
                    seed: flag(&args, "--seed", 0u64),
                },
                ..AttackOptions::new(instruction)
            };
            let objective = TargetResponse::new(&victim, target)?;
            let success = Success::ResponseStartsWith(target.to_string());
            let baseline_nll = objective.target_nll(instruction)?;
            let tokens = victim.response_ids(target)?.len() + 1;
            let plain = success.check(&victim.greedy_answer(instruction, tokens)?.0, 0.0);
            let context = format!("{before_user}{instruction}");
            let result = run(
                &lm,
                &context,
                &victim,
                &objective,
                &success,
                &options,
                |_| Ok(()),
            )?;
            let nll = objective.target_nll(&result.prompt)?;
            // A random suffix of the attack's length, from the attacker's ordinary tokens.
            let special = lm.special_token_ids();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
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
            let random = success.check(&victim.greedy_answer(&random_prompt, tokens)?.0, 0.0);
            println!(
                "{name}\t{:.1}s\t{}\tplain={plain}\trandom={random}\tnll {baseline_nll:.3} -> {nll:.3}\t{:?} -> {:?}",
                result.seconds, result.success, result.prompt, result.response
            );
            rows.push((
                name,
                result.success,
                result.seconds,
                plain,
                random,
                baseline_nll,
                nll,
            ));
        }
    }
    for name in ["tune", "held_out"] {
        let part: Vec<_> = rows.iter().filter(|r| r.0 == name).collect();
        if part.is_empty() {
            continue;
        }
        let n = part.len() as f64;
        let mut seconds: Vec<f64> = part.iter().map(|r| r.2).collect();
        seconds.sort_by(f64::total_cmp);
        println!(
            "{name}: success {}/{} · median {:.1} s · no suffix {}/{} · random suffix {}/{} · mean target NLL {:.3} -> {:.3}",
            part.iter().filter(|r| r.1).count(),
            part.len(),
            seconds[seconds.len() / 2],
            part.iter().filter(|r| r.3).count(),
            part.len(),
            part.iter().filter(|r| r.4).count(),
            part.len(),
            part.iter().map(|r| r.5).sum::<f64>() / n,
            part.iter().map(|r| r.6).sum::<f64>() / n,
        );
    }
    Ok(())
}
