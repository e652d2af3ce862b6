//! Fused CPU kernels for the two places where candle's general ops cost more than the maths:
//! attention of many short sequences over a shared prefix (thousands of tiny matmuls otherwise),
//! and QuickGELU (three passes and two temporaries otherwise). Other devices use candle's ops.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Borrows a contiguous f32 CPU tensor's data.
fn with_f32_slice<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let data = cpu.as_slice::<f32>()?;
            let start = layout.start_offset();
            f(&data[start..start + tensor.elem_count()])
        }
        _ => candle_core::bail!("cpu kernel called on a non-CPU tensor"),
    }
}

struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("quick-gelu needs a contiguous input")
        };
        let input = &storage.as_slice::<f32>()?[start..end];
        let mut output = vec![0f32; input.len()];
        output
            .par_chunks_mut(16 * 1024)
            .zip(input.par_chunks(16 * 1024))
            .for_each(|(out, inp)| {
                for (o, &x) in out.iter_mut().zip(inp) {
                    *o = x / (1.0 + (-1.702 * x).exp());
                }
            });
        Ok((CpuStorage::F32(output), layout.shape().clone()))
    }
}

/// x·σ(1.702x) in one pass.
pub fn quick_gelu(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1_no_bwd(&QuickGelu)
}

/// Where a packed row's sequence begins and how much of the shared prefix it sees.
#[derive(Debug, Clone, Copy)]
pub struct PackedRow {
    /// First packed row of this row's sequence: the row attends to rows `sequence_start..=self`.
    pub sequence_start: u32,
    /// Prefix positions this row attends to (its sequence's shared length).
    pub visible_prefix: u32,
}

/// Causal attention of packed rows. `qkv` is [rows, 3·hidden] (q, k, v side by side, heads
/// contiguous within each); `prefix` keys and values are [heads, len, head_dim]. Returns
/// [rows, hidden].
pub fn packed_attention(
    qkv: &Tensor,
    prefix: Option<(&Tensor, &Tensor)>,
    rows: &[PackedRow],
    heads: usize,
    scale: f32,
) -> Result<Tensor> {
    let (n, width) = qkv.dims2()?;
    let hidden = width / 3;
    let head_dim = hidden / heads;
    if n != rows.len() {
        candle_core::bail!(
            "packed attention: {n} rows but {} row descriptions",
            rows.len()
        )
    }
    let (prefix_k, prefix_v, prefix_len) = match prefix {
        Some((k, v)) => (
            k.flatten_all()?.to_vec1::<f32>()?,
            v.flatten_all()?.to_vec1::<f32>()?,
            k.dim(1)?,
        ),
        None => (Vec::new(), Vec::new(), 0),
    };
    let mut output = vec![0f32; n * hidden];
    with_f32_slice(qkv, |qkv| {
        output
            .par_chunks_mut(hidden)
            .enumerate()
            .for_each(|(r, out)| {
                let row = rows[r];
                let visible = (row.visible_prefix as usize).min(prefix_len);
                let first = row.sequence_start as usize;
                let mut scores = vec![0f32; visible + r + 1 - first];
                for h in 0..heads {
                    let q = &qkv[r * width + h * head_dim..][..head_dim];
                    for (p, score) in scores[..visible].iter_mut().enumerate() {
                        let key = &prefix_k[(h * prefix_len + p) * head_dim..][..head_dim];
                        *score = dot(q, key) * scale;
                    }
                    for (j, score) in (first..=r).zip(scores[visible..].iter_mut()) {
                        let key = &qkv[j * width + hidden + h * head_dim..][..head_dim];
                        *score = dot(q, key) * scale;
                    }
                    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let mut total = 0f32;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        total += *s;
                    }
                    let out = &mut out[h * head_dim..][..head_dim];
                    out.fill(0.0);
                    for (p, &w) in scores[..visible].iter().enumerate() {
                        axpy(
                            w / total,
                            &prefix_v[(h * prefix_len + p) * head_dim..][..head_dim],
                            out,
                        );
                    }
                    for (j, &w) in (first..=r).zip(&scores[visible..]) {
                        axpy(
                            w / total,
                            &qkv[j * width + 2 * hidden + h * head_dim..][..head_dim],
                            out,
                        );
                    }
                }
            });
        Ok(())
    })?;
    Tensor::from_vec(output, (n, hidden), qkv.device())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorise without reassociating.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

fn axpy(w: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += w * x;
    }
}
