//! Milliseconds of the products in GPT-2 124M's one-token step, with every weight out of cache
//! as in the describe loop (0.5 GB of f32 read once a step): the 48 one-row products of its
//! 12 layers and its tied LM head, through candle's matmul (gemm's gemv, on one thread) and
//! through clipsteer's kernels (the output columns split across the thread pool), in turn in
//! one process, medians of 20. The results are bit for bit the same (a unit test pins this).
//! Not part of the tests.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release --example gpt2_step_products

use candle_core::{Device, Tensor};
use clipsteer::models::cpu_kernels;

fn median_ms(mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..20 {
        let start = std::time::Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> candle_core::Result<()> {
    let device = Device::Cpu;
    let mut layers = Vec::new();
    for _ in 0..12 {
        for (k, n) in [(768, 2304), (768, 768), (768, 3072), (3072, 768)] {
            let w = Tensor::randn(0f32, 1.0, (k, n), &device)?;
            let bias = Tensor::randn(0f32, 1.0, n, &device)?;
            let x = Tensor::randn(0f32, 1.0, (1, k), &device)?;
            layers.push((x, w, bias));
        }
    }
    let wte = Tensor::randn(0f32, 1.0, (50257, 768), &device)?;
    let hidden = Tensor::randn(0f32, 1.0, (1, 768), &device)?;
    let mut rows = Vec::new();
    for round in 0..3 {
        let candle_layers = median_ms(|| {
            for (x, w, bias) in &layers {
                x.matmul(w)?.broadcast_add(bias)?;
            }
            Ok(())
        })?;
        let ours_layers = median_ms(|| {
            for (x, w, bias) in &layers {
                cpu_kernels::linear(x, w, Some(bias), None)?;
            }
            Ok(())
        })?;
        let candle_head = median_ms(|| hidden.matmul(&wte.t()?).map(|_| ()))?;
        let ours_head = median_ms(|| cpu_kernels::matmul_t(&hidden, &wte).map(|_| ()))?;
        rows.push(serde_json::json!({
            "round": round,
            "threads": candle_core::utils::get_num_threads(),
            "layers_ms": {"candle": candle_layers, "clipsteer": ours_layers},
            "lm_head_ms": {"candle": candle_head, "clipsteer": ours_head},
        }));
    }
    println!("{}", serde_json::Value::Array(rows));
    Ok(())
}
