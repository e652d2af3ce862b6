//! GFLOP/s of the CPU matmuls in the exact describe loop (CLIP B/32's text layers over 543 packed
//! rows, GPT-2's one-row products) and of a 2048³ product, through candle's matmul and through
//! clipsteer's kernels, best of several runs. bench/gemm.sh runs it beside PyTorch's sgemm on the
//! same shapes. Not part of the tests.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release --example gemm_shapes

use candle_core::{Device, Tensor};
use clipsteer::models::cpu_kernels;

fn best_seconds(mut f: impl FnMut() -> candle_core::Result<Tensor>) -> f64 {
    f().expect("warm-up");
    let mut best = f64::MAX;
    for _ in 0..7 {
        let start = std::time::Instant::now();
        f().expect("matmul");
        best = best.min(start.elapsed().as_secs_f64());
    }
    best
}

fn main() -> candle_core::Result<()> {
    let device = Device::Cpu;
    let shapes = [
        ("clip qkv", 543, 512, 1536),
        ("clip out", 543, 512, 512),
        ("clip fc1", 543, 512, 2048),
        ("clip fc2", 543, 2048, 512),
        ("gpt2 c_attn, 1 row", 1, 768, 2304),
        ("gpt2 c_fc, 1 row", 1, 768, 3072),
        ("square 2048", 2048, 2048, 2048),
    ];
    let mut rows = Vec::new();
    for (name, m, k, n) in shapes {
        let x = Tensor::randn(0f32, 1.0, (m, k), &device)?;
        let w = Tensor::randn(0f32, 1.0, (k, n), &device)?;
        let bias = Tensor::randn(0f32, 1.0, n, &device)?;
        let flops = 2.0 * (m * k * n) as f64;
        let candle = best_seconds(|| x.matmul(&w)?.broadcast_add(&bias));
        let ours = best_seconds(|| cpu_kernels::linear(&x, &w, Some(&bias), None));
        rows.push(serde_json::json!({
            "shape": name, "m": m, "k": k, "n": n,
            "candle_gflops": flops / candle / 1e9,
            "clipsteer_gflops": flops / ours / 1e9,
        }));
    }
    println!("{}", serde_json::Value::Array(rows));
    Ok(())
}
