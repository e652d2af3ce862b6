//! Times one batched forward of the config-driven decoder: the rows of `bench/forward_batch.py`'s
//! ids file (the teacher-forced rows an attack step scores), logits of every position, median of
//! --rounds, and writes the logits' last rows for the script to compare with transformers'.
//!
//!     cargo run --release --example forward_batch -- MODEL_DIR IDS.json OUT.safetensors [ROUNDS]

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clipsteer::steer::TransformerLm;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, ids, out, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: forward_batch MODEL_DIR IDS.json OUT.safetensors [ROUNDS]");
    };
    let rounds: usize = rest.first().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let lm = TransformerLm::load(std::path::Path::new(model), &Device::Cpu)?;
    let rows: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(ids)?)?;
    let (batch, len) = (rows.len(), rows.first().context("no rows")?.len());
    let flat: Vec<u32> = rows.concat();
    let input = Tensor::from_vec(flat, (batch, len), &Device::Cpu)?;
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut cache = lm.model.new_cache();
        let hidden = lm.model.hidden_states(&input, &mut cache)?;
        let logits = lm.model.logits(&hidden)?;
        times.push(start.elapsed().as_secs_f64());
        last = Some(logits.narrow(1, len - 1, 1)?.squeeze(1)?);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"rows\":{batch},\"positions\":{len},\"median_seconds\":{},\"runs\":{times:?}}}",
        times[times.len() / 2]
    );
    let last = last.context("no rounds")?;
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("last_logits".to_string(), last)]),
        out,
    )?;
    Ok(())
}
