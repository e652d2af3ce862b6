//! Steers the real small models (SmolLM2-135M-Instruct by all-MiniLM-L6-v2) toward five target
//! sentences with words of each target blocked, and reports MiniLM cosine to the target and the
//! LM's per-token NLL of what it wrote: the harness behind docs/STEERING.md.
//!
//!     scripts/fetch-small-models.sh
//!     E2E_BETA=2 E2E_SCALE=100 E2E_K=45 cargo run --release --example steer_small_models
//!
//! E2E_STRATEGY=seed|magic|beam|unguided picks the loop (unguided: the LM's own greedy choice);
//! E2E_WIDTH and E2E_FLUENCY set the beam; E2E_SCORED=full scores the prompt too;
//! E2E_SUBSTRINGS=1 blocks substrings.

use candle_core::Device;
use clipsteer::steer::constraints::Blocklist;
use clipsteer::steer::describe::{
    describe, BeamParams, DescribeOptions, MagicParams, ScoredText, Strategy,
};
use clipsteer::steer::{normalize, GgufLm, Scorer, SentenceScorer};
use std::path::PathBuf;

#[path = "../tests/common/steering_cases.rs"]
mod steering_cases;
use steering_cases::{CHAT_PROMPT, STEERING_CASES};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Outcome {
    text: String,
    cosine: f32,
    nll: f32,
    /// Wall-clock seconds of the steering loop (models loaded, target embedded).
    seconds: f64,
    tokens: usize,
}

fn models() -> (GgufLm, SentenceScorer) {
    let dir = root().join(".cache/models");
    let gguf = dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "run scripts/fetch-small-models.sh first");
    (
        GgufLm::load(&gguf, &Device::Cpu).unwrap(),
        SentenceScorer::load(&dir.join("all-minilm-l6-v2"), &Device::Cpu).unwrap(),
    )
}

#[allow(clippy::too_many_arguments)]
fn run(
    lm: &GgufLm,
    scorer: &SentenceScorer,
    prompt: &str,
    target_text: &str,
    block: &str,
    strategy: Strategy,
    top_k: usize,
    magic: MagicParams,
) -> Outcome {
    let target = normalize(&scorer.embed_text(target_text).unwrap());
    let options = DescribeOptions {
        prompt: prompt.into(),
        top_k,
        max_tokens: 32,
        strategy,
        sampling: None,
        prefilter: None,
        blocklist: Blocklist::new(block.split(','), substrings()).unwrap(),
        magic,
        stop_at_sentence_end: strategy != Strategy::Seed,
        beam: BeamParams {
            width: env_f32("E2E_WIDTH", 4.0) as usize,
            fluency: env_f32("E2E_FLUENCY", 0.1),
            ..BeamParams::default()
        },
        scored_text: if std::env::var("E2E_SCORED").as_deref() == Ok("full") {
            ScoredText::Full
        } else {
            ScoredText::Generated
        },
    };
    let start = std::time::Instant::now();
    let result = describe(lm, scorer, &target, &options, |_| Ok(())).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let generated = result.text[prompt.len()..].trim().to_string();
    let embedding = normalize(&scorer.embed_text(&generated).unwrap());
    let cosine = embedding.iter().zip(&target).map(|(a, b)| a * b).sum();
    Outcome {
        nll: result.mean_nll() as f32,
        tokens: result.token_ids.len(),
        text: result.text,
        cosine,
        seconds,
    }
}

/// E2E_SUBSTRINGS=1 blocks inflections too ("dogs" for "dog"), as --block-substrings.
fn substrings() -> bool {
    std::env::var("E2E_SUBSTRINGS").is_ok_and(|v| v == "1")
}

fn env_f32(name: &str, default: f32) -> f32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (lm, scorer) = models();
    let prompt = std::env::var("E2E_PROMPT").unwrap_or_else(|_| CHAT_PROMPT.into());
    let magic = MagicParams {
        alpha: env_f32("E2E_ALPHA", 0.1),
        beta: env_f32("E2E_BETA", 2.0),
        scale: Some(env_f32("E2E_SCALE", 100.0)),
    };
    let strategy_name = std::env::var("E2E_STRATEGY").unwrap_or_else(|_| "magic".into());
    let (strategy, k) = match strategy_name.as_str() {
        "seed" => (Strategy::Seed, env_f32("E2E_K", 45.0) as usize),
        "unguided" => (Strategy::Seed, 1),
        "beam" => (Strategy::Beam, env_f32("E2E_K", 45.0) as usize),
        _ => (Strategy::Magic, env_f32("E2E_K", 45.0) as usize),
    };
    let mut cosines = Vec::new();
    let mut nlls = Vec::new();
    let mut seconds = Vec::new();
    for (target, block) in STEERING_CASES {
        let outcome = run(&lm, &scorer, &prompt, target, block, strategy, k, magic);
        let blocklist = Blocklist::new(block.split(','), substrings()).expect("static blocklist");
        let clean = blocklist.find_in(&outcome.text).is_none();
        println!(
            "cos {:.3}  nll {:.2}  blocked-free {clean}  {:.2} s for {} tokens  {:?}",
            outcome.cosine,
            outcome.nll,
            outcome.seconds,
            outcome.tokens,
            outcome.text.get(prompt.len()..).unwrap_or("")
        );
        cosines.push(outcome.cosine);
        nlls.push(outcome.nll);
        seconds.push(outcome.seconds as f32);
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    println!(
        "{strategy_name} k={k} {magic:?}: mean cos {:.3}, mean nll {:.2}, {:.2} s per caption",
        mean(&cosines),
        mean(&nlls),
        mean(&seconds)
    );
}
