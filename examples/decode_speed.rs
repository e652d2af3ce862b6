//! Times one-token decoding with the KV cache: greedy, one sequence, the LM's own forward per
//! token (what a victim's answer or the success check's reading costs). Prints the generated ids
//! and tokens a second, for `bench/llamacpp.py` to set beside llama.cpp's on the same file.
//!
//!     cargo run --release --example decode_speed -- MODEL (GGUF file or HF dir) PROMPT_IDS.json N [ROUNDS]

use anyhow::{Context, Result};
use candle_core::Device;
use clipsteer::steer::{CausalLm, TransformerLm};
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, ids, n, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: decode_speed MODEL PROMPT_IDS.json N [ROUNDS]");
    };
    let n: usize = n.parse().context("N: a number of tokens")?;
    let rounds: usize = rest.first().map(|r| r.parse()).transpose()?.unwrap_or(3);
    let lm = TransformerLm::load(std::path::Path::new(model), &Device::Cpu)?;
    let prompt: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(ids)?)?;
    let (mut prefill, mut decode, mut generated) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut cache = lm.new_cache();
        let start = Instant::now();
        let mut logits = lm.next_logits(&prompt, &mut cache)?;
        prefill.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        generated.clear();
        for _ in 0..n {
            let next = argmax(&logits);
            generated.push(next);
            logits = lm.next_logits(&[next], &mut cache)?;
        }
        decode.push(start.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (prefill, decode) = (median(&mut prefill), median(&mut decode));
    println!(
        "{}",
        serde_json::json!({
            "prompt_tokens": prompt.len(),
            "generated": generated,
            "prefill_seconds": prefill,
            "decode_seconds": decode,
            "decode_tokens_per_second": n as f64 / decode,
        })
    );
    Ok(())
}

/// The first of the largest logits, as greedy decoding picks.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}
