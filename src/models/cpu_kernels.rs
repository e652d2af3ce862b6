//! Fused CPU kernels for the places where candle's general ops cost more than the maths:
//! attention of many short sequences over a shared prefix (thousands of tiny matmuls otherwise),
//! QuickGELU (three passes and two temporaries otherwise), and products of a few rows with a
//! large weight (one thread otherwise). Other devices use candle's ops.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Whether the fused kernels can take `tensor`: f32 on the CPU.
pub fn applies(tensor: &Tensor) -> bool {
    tensor.device().is_cpu() && tensor.dtype() == candle_core::DType::F32
}

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

/// Which keys each packed row attends to: some of the packed rows (its own sequence's, in order)
/// and the first `visible_prefix` positions of the shared prefix. Causal rows list themselves and
/// the rows before them in their sequence; bidirectional rows list their whole sequence; rows of
/// a prefix tree list their ancestors.
#[derive(Debug, Clone, Default)]
pub struct PackedRows {
    visible_prefix: Vec<u32>,
    /// Row `r`'s keys are `keys[key_offsets[r]..key_offsets[r + 1]]`.
    key_offsets: Vec<u32>,
    keys: Vec<u32>,
}

impl PackedRows {
    pub fn new() -> Self {
        Self {
            visible_prefix: Vec::new(),
            key_offsets: vec![0],
            keys: Vec::new(),
        }
    }

    /// Appends a row that attends to the packed rows `keys` and `visible_prefix` prefix positions.
    pub fn push(&mut self, visible_prefix: u32, keys: impl IntoIterator<Item = u32>) {
        self.visible_prefix.push(visible_prefix);
        self.keys.extend(keys);
        self.key_offsets.push(self.keys.len() as u32);
    }

    pub fn len(&self) -> usize {
        self.visible_prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.visible_prefix.is_empty()
    }

    fn keys(&self, row: usize) -> &[u32] {
        &self.keys[self.key_offsets[row] as usize..self.key_offsets[row + 1] as usize]
    }
}

/// Attention of packed rows, each over the keys its entry in `rows` names. `qkv` is
/// [rows, 3·hidden] (q, k, v side by side, heads contiguous within each); `prefix` keys and
/// values are [heads, len, head_dim]. Returns [rows, hidden].
pub fn packed_attention(
    qkv: &Tensor,
    prefix: Option<(&Tensor, &Tensor)>,
    rows: &PackedRows,
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
    if let Some(bad) = rows.keys.iter().find(|&&key| key as usize >= n) {
        candle_core::bail!("packed attention: key row {bad} outside 0..{n}")
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
                let visible = (rows.visible_prefix[r] as usize).min(prefix_len);
                let keys = rows.keys(r);
                let mut scores = vec![0f32; visible + keys.len()];
                for h in 0..heads {
                    let q = &qkv[r * width + h * head_dim..][..head_dim];
                    for (p, score) in scores[..visible].iter_mut().enumerate() {
                        let key = &prefix_k[(h * prefix_len + p) * head_dim..][..head_dim];
                        *score = dot(q, key) * scale;
                    }
                    for (&j, score) in keys.iter().zip(scores[visible..].iter_mut()) {
                        let key = &qkv[j as usize * width + hidden + h * head_dim..][..head_dim];
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
                    for (&j, &w) in keys.iter().zip(&scores[visible..]) {
                        axpy(
                            w / total,
                            &qkv[j as usize * width + 2 * hidden + h * head_dim..][..head_dim],
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

/// `residual + x·w + bias` for `x` [m, k] and `w` [k, n] (contiguous, in × out), with gemm
/// accumulating into a destination that already holds the residual and the bias: one pass over
/// the output instead of a matmul, a bias add and a residual add, each of which candle runs as
/// its own pass (the adds on one thread). `residual` is [m, n], `bias` [n]. Returns [m, n].
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let (k2, n) = w.dims2()?;
    if k != k2 {
        candle_core::bail!("linear: x is [{m}, {k}] but w is [{k2}, {n}]")
    }
    if m == 0 || k == 0 {
        let out = Tensor::zeros((m, n), candle_core::DType::F32, w.device())?;
        let out = match bias {
            Some(bias) => out.broadcast_add(bias)?,
            None => out,
        };
        return match residual {
            Some(residual) => out + residual,
            None => Ok(out),
        };
    }
    // The destination starts as residual + bias, or as the bias alone (which also saves
    // zeroing it: calloc on recycled heap memory is a memset).
    let mut dst = match (residual, bias) {
        (Some(residual), _) => {
            if residual.dims() != [m, n] {
                candle_core::bail!(
                    "linear: residual {:?}, expected [{m}, {n}]",
                    residual.dims()
                )
            }
            let mut dst = residual.flatten_all()?.to_vec1::<f32>()?;
            if let Some(bias) = bias {
                with_f32_slice(bias, |bias| {
                    dst.par_chunks_mut(n).for_each(|row| {
                        for (d, b) in row.iter_mut().zip(bias) {
                            *d += b;
                        }
                    });
                    Ok(())
                })?;
            }
            dst
        }
        (None, Some(bias)) => with_f32_slice(bias, |bias| Ok(bias.repeat(m)))?,
        (None, None) => vec![0f32; m * n],
    };
    let read_dst = bias.is_some() || residual.is_some();
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    with_f32_slice(x, |x| {
        with_f32_slice(w, |w| {
            // SAFETY: the three slices hold m·k, k·n and m·n elements, row-major, as the
            // strides below say; dst is exclusively borrowed.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    read_dst,
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    1,
                    n as isize,
                    1f32,
                    1f32,
                    false,
                    false,
                    false,
                    parallelism,
                )
            };
            Ok(())
        })
    })?;
    Tensor::from_vec(dst, (m, n), w.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    #[test]
    fn fused_linear_equals_matmul_bias_and_residual() {
        let device = Device::Cpu;
        for (m, k, n) in [(543, 512, 1536), (5, 3, 7), (0, 4, 4)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &device).unwrap();
            let w = Tensor::randn(0f32, 1.0, (k, n), &device).unwrap();
            let bias = Tensor::randn(0f32, 1.0, n, &device).unwrap();
            let residual = Tensor::randn(0f32, 1.0, (m, n), &device).unwrap();
            let product = x.matmul(&w).unwrap();
            let want = (product.broadcast_add(&bias).unwrap() + &residual).unwrap();
            let got = linear(&x, &w, Some(&bias), Some(&residual)).unwrap();
            assert_eq!(got.dims(), [m, n]);
            if m > 0 {
                assert!(max_rel_err(&got, &want) < 1e-5, "[{m}, {k}] × [{k}, {n}]");
                let got = linear(&x, &w, None, None).unwrap();
                assert!(max_rel_err(&got, &product) < 1e-5, "no bias");
            }
        }
    }
}
