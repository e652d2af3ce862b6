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

/// `a.matmul(b)` for batches of small products: `a` [..., m, k] and `b` [..., k, n] with the same
/// batch dimensions. candle runs a batch's products one after another on the calling thread
/// when each is too small for gemm to thread (attention's per-row products: 450 of 14 × 64 ×
/// 90 in an attack step's layer), and the other cores wait; here the products of the batch run
/// in parallel, each through the very gemm call candle makes (gemm threads none of them either
/// way), so the result is bit for bit candle's. Anything else (other devices or dtypes,
/// products large enough for gemm to thread, one product, batch strides that do not flatten)
/// goes to candle's `matmul`.
pub fn batched_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let rank = a.rank();
    if !(applies(a) && applies(b) && rank >= 3 && b.rank() == rank) {
        return a.matmul(b);
    }
    let (dims_a, dims_b) = (a.dims(), b.dims());
    let (m, k, n) = (dims_a[rank - 2], dims_a[rank - 1], dims_b[rank - 1]);
    let batch: usize = dims_a[..rank - 2].iter().product();
    // gemm rounds n up to its register tile when it weighs the work; 64 covers every tile.
    let small = m * n.next_multiple_of(64) * k < gemm::get_threading_threshold();
    if dims_a[..rank - 2] != dims_b[..rank - 2] || dims_b[rank - 2] != k || batch < 2 || !small {
        return a.matmul(b);
    }
    // The batch dimensions must flatten to one stride, as candle's own batched matmul needs.
    let batch_stride = |t: &Tensor| -> Option<usize> {
        let (stride, dims) = (t.stride(), t.dims());
        (0..rank - 3)
            .all(|i| stride[i] == stride[i + 1] * dims[i + 1])
            .then_some(stride[rank - 3])
    };
    let (Some(skip_a), Some(skip_b)) = (batch_stride(a), batch_stride(b)) else {
        return a.matmul(b);
    };
    let (storage_a, layout_a) = a.storage_and_layout();
    let (storage_b, layout_b) = b.storage_and_layout();
    let (Storage::Cpu(cpu_a), Storage::Cpu(cpu_b)) = (&*storage_a, &*storage_b) else {
        return a.matmul(b);
    };
    let (lhs, rhs) = (cpu_a.as_slice::<f32>()?, cpu_b.as_slice::<f32>()?);
    let (start_a, start_b) = (layout_a.start_offset(), layout_b.start_offset());
    let (sa, sb) = (layout_a.stride(), layout_b.stride());
    let (lhs_rs, lhs_cs) = (sa[rank - 2] as isize, sa[rank - 1] as isize);
    let (rhs_rs, rhs_cs) = (sb[rank - 2] as isize, sb[rank - 1] as isize);
    let mut dst = vec![0f32; batch * m * n];
    if m * n > 0 {
        dst.par_chunks_mut(m * n).enumerate().for_each(|(i, out)| {
            let lhs = &lhs[start_a + i * skip_a..];
            let rhs = &rhs[start_b + i * skip_b..];
            // SAFETY: the layouts describe views inside these storages (candle checked them
            // when the views were made), `out` holds m·n elements, row-major, and the
            // arguments are those of candle's CPU matmul with its parallelism resolved.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    lhs.as_ptr(),
                    lhs_cs,
                    lhs_rs,
                    rhs.as_ptr(),
                    rhs_cs,
                    rhs_rs,
                    0f32,
                    1f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        });
    }
    let mut out_dims = dims_a.to_vec();
    out_dims[rank - 1] = n;
    Tensor::from_vec(dst, out_dims, a.device())
}

/// What [`log_softmax_picks`] reads off each row of logits.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSoftmaxPicks {
    /// Per row r, log_softmax(row)[targets[r]] (nats).
    pub picked: Vec<f32>,
    /// Per row, the argmax of log_softmax(row): the first index of the largest value.
    pub argmax: Vec<u32>,
    /// Per row of `mass_rows`, in its order, ln Σ_{t ∈ set} softmax(row)[t] (nats).
    pub set_mass: Vec<f32>,
}

/// Reads what teacher-forced scoring needs off `logits` [rows, vocab] (f32 on the CPU): each
/// row's log-probability of its target, its argmax, and for the rows `mass_rows` the
/// log-probability mass of the tokens `set`. Rows run in parallel and the [rows, vocab]
/// log-softmax is never written out: candle's `log_softmax`, `gather`, `argmax` and
/// `log_sum_exp` make five passes over it (a few hundred MB a step in the attack), mostly on
/// one thread, and page-fault a fresh temporary for each.
///
/// The arithmetic is candle's, in candle's order: m = max, x − m, exp, the sum in the
/// 4 × 8-lane order of candle's AVX2 `vec_sum` (sequential without AVX2, as candle), ln; the
/// log-softmax is (x − m) − ln Σ; the set's mass is ln Σ exp(v − max v) + max v over its
/// log-softmax values. So the results are bit for bit those of
/// `candle_nn::ops::log_softmax` and the ops after it (a test pins this), and seeded searches
/// keep their trajectories. Errors: a target or set id outside the vocabulary, a mass row
/// outside the rows, `targets` not one per row, or an empty set.
pub fn log_softmax_picks(
    logits: &Tensor,
    targets: &[u32],
    set: Option<&[u32]>,
    mass_rows: &[u32],
) -> Result<LogSoftmaxPicks> {
    let (rows, vocab) = logits.dims2()?;
    if targets.len() != rows {
        candle_core::bail!(
            "log_softmax_picks: {} targets for {rows} rows",
            targets.len()
        )
    }
    if vocab == 0 {
        candle_core::bail!("log_softmax_picks: empty vocabulary")
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("log_softmax_picks: target {bad} outside the vocabulary of {vocab}")
    }
    let set = match (set, mass_rows.is_empty()) {
        (_, true) => &[][..],
        (Some(set), false) if !set.is_empty() => set,
        _ => candle_core::bail!("log_softmax_picks: mass rows without a set of tokens"),
    };
    if let Some(bad) = set.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("log_softmax_picks: set token {bad} outside the vocabulary of {vocab}")
    }
    let mut wants_mass = vec![false; rows];
    for &r in mass_rows {
        match wants_mass.get_mut(r as usize) {
            Some(flag) => *flag = true,
            None => candle_core::bail!("log_softmax_picks: mass row {r} outside 0..{rows}"),
        }
    }
    let avx2 = has_avx2();
    let per_row: Vec<(f32, u32, f32)> = with_f32_slice(logits, |data| {
        Ok(data
            .par_chunks(vocab)
            .zip(targets.par_iter())
            .zip(wants_mass.par_iter())
            .map(|((row, &target), &mass)| {
                let max = first_max(row.iter().copied()).1;
                let log_total = candle_sum(row.iter().map(|&x| (x - max).exp()), avx2).ln();
                let log_prob = |x: f32| (x - max) - log_total;
                let argmax = first_max(row.iter().map(|&x| log_prob(x))).0 as u32;
                let set_mass = if mass {
                    let values = || set.iter().map(|&t| log_prob(row[t as usize]));
                    let top = first_max(values()).1;
                    candle_sum(values().map(|v| (v - top).exp()), avx2).ln() + top
                } else {
                    f32::NAN
                };
                (log_prob(row[target as usize]), argmax, set_mass)
            })
            .collect())
    })?;
    let set_mass = mass_rows.iter().map(|&r| per_row[r as usize].2).collect();
    let (picked, argmax) = per_row.iter().map(|&(p, a, _)| (p, a)).unzip();
    Ok(LogSoftmaxPicks {
        picked,
        argmax,
        set_mass,
    })
}

/// (index, value) of the first largest value, as candle's `max`/`argmax` fold: a later value
/// replaces the current one only when strictly larger. The iterator must not be empty.
fn first_max(values: impl Iterator<Item = f32>) -> (usize, f32) {
    let mut best = (0, f32::NAN);
    for (i, v) in values.enumerate() {
        if i == 0 || best.1 < v {
            best = (i, v);
        }
    }
    best
}

fn has_avx2() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        false
    }
}

/// The sum of `values` in the order of candle's f32 `vec_sum`: on AVX2, four 8-lane
/// accumulators over blocks of 32, reduced pairwise and then across lanes, then the tail one by
/// one; otherwise one by one. (candle's NEON and wasm orders are not reproduced: there the
/// result may differ from candle's in the last bits.)
fn candle_sum(values: impl ExactSizeIterator<Item = f32>, avx2: bool) -> f32 {
    if !avx2 {
        return values.fold(0f32, |sum, v| sum + v);
    }
    let len = values.len();
    let blocked = len & !31;
    let mut values = values;
    let mut acc = [[0f32; 8]; 4];
    for _ in 0..blocked / 32 {
        for lanes in acc.iter_mut() {
            for lane in lanes.iter_mut() {
                *lane += values.next().unwrap_or(0.0);
            }
        }
    }
    let mut x0 = [0f32; 8];
    for l in 0..8 {
        x0[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
    }
    let t0: [f32; 4] = std::array::from_fn(|l| x0[l] + x0[l + 4]);
    let mut sum = (t0[0] + t0[1]) + (t0[2] + t0[3]);
    for v in values {
        sum += v;
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
    /// The fused kernel against candle's ops that it replaces, bit for bit: vocabularies with
    /// and without a tail past the 32-wide blocks, ties (the first index wins), and large logits.
    #[test]
    fn log_softmax_picks_equal_candles_ops_bit_for_bit() {
        let device = Device::Cpu;
        for (rows, vocab) in [(7, 1000), (3, 49152), (5, 37), (2, 5)] {
            let mut logits = (Tensor::randn(0f32, 4.0, (rows, vocab), &device).unwrap() + 30.0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            // A tie for the largest value: candle keeps the first.
            let top = logits[0].iter().cloned().fold(f32::MIN, f32::max) + 1.0;
            logits[0][vocab / 2] = top;
            logits[0][vocab - 1] = top;
            let logits = Tensor::new(logits, &device).unwrap();
            let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919) % vocab) as u32).collect();
            let set: Vec<u32> = (0..vocab as u32).filter(|t| t % 3 == 1).collect();
            let mass_rows: Vec<u32> = (0..rows as u32).rev().step_by(2).collect();
            let got = log_softmax_picks(&logits, &targets, Some(&set), &mass_rows).unwrap();

            let log_probs = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap();
            let picked = log_probs
                .gather(
                    &Tensor::new(targets.as_slice(), &device)
                        .unwrap()
                        .unsqueeze(1)
                        .unwrap(),
                    1,
                )
                .unwrap()
                .squeeze(1)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let argmax = log_probs
                .argmax(candle_core::D::Minus1)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
            let set_mass = log_probs
                .index_select(&Tensor::new(mass_rows.as_slice(), &device).unwrap(), 0)
                .unwrap()
                .index_select(&Tensor::new(set.as_slice(), &device).unwrap(), 1)
                .unwrap()
                .log_sum_exp(1)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.picked), bits(&picked), "[{rows}, {vocab}] picked");
            assert_eq!(got.argmax, argmax, "[{rows}, {vocab}] argmax");
            assert_eq!(
                bits(&got.set_mass),
                bits(&set_mass),
                "[{rows}, {vocab}] set mass"
            );
            if vocab == 1000 {
                assert_eq!(got.argmax[0], (vocab / 2) as u32, "the first of a tie");
            }
        }
    }

    #[test]
    fn log_softmax_picks_refuses_bad_ids() {
        let logits = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(log_softmax_picks(&logits, &[0, 4], None, &[]).is_err());
        assert!(log_softmax_picks(&logits, &[0], None, &[]).is_err());
        assert!(log_softmax_picks(&logits, &[0, 1], Some(&[9]), &[0]).is_err());
        assert!(log_softmax_picks(&logits, &[0, 1], Some(&[1]), &[2]).is_err());
        assert!(log_softmax_picks(&logits, &[0, 1], None, &[0]).is_err());
        let ok = log_softmax_picks(&logits, &[0, 1], Some(&[1, 2]), &[1]).unwrap();
        // Uniform over 4: ln ¼ each, ln ½ for two tokens.
        assert_eq!(ok.picked, vec![(0.25f32).ln(); 2]);
        assert!((ok.set_mass[0] - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(ok.argmax, vec![0, 0]);
    }
    /// The parallel batch of small products against candle's matmul, bit for bit, with a
    /// transposed right side as attention passes it, and a large product that goes to candle.
    #[test]
    fn batched_matmul_equals_candles_bit_for_bit() {
        let device = Device::Cpu;
        let bits = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        let q = Tensor::randn(0f32, 1.0, (50, 9, 14, 64), &device).unwrap();
        let k = Tensor::randn(0f32, 1.0, (50, 9, 90, 64), &device).unwrap();
        let got = batched_matmul(&q, &k.t().unwrap()).unwrap();
        let want = q.matmul(&k.t().unwrap()).unwrap();
        assert_eq!(got.dims(), [50, 9, 14, 90]);
        assert_eq!(bits(&got), bits(&want));
        let w = Tensor::randn(0f32, 1.0, (50, 9, 14, 90), &device).unwrap();
        let got = batched_matmul(&w, &k).unwrap();
        assert_eq!(bits(&got), bits(&w.matmul(&k).unwrap()));
        // A narrowed (non-zero offset) left side.
        let narrowed = w.narrow(3, 10, 64).unwrap();
        let v = Tensor::randn(0f32, 1.0, (50, 9, 64, 8), &device).unwrap();
        let got = batched_matmul(&narrowed, &v).unwrap();
        assert_eq!(bits(&got), bits(&narrowed.matmul(&v).unwrap()));
        // Large enough for gemm to thread: candle's matmul itself.
        let big = Tensor::randn(0f32, 1.0, (2, 256, 256), &device).unwrap();
        let got = batched_matmul(&big, &big).unwrap();
        assert_eq!(bits(&got), bits(&big.matmul(&big).unwrap()));
        // Mismatched shapes: candle's error.
        assert!(batched_matmul(&q, &k).is_err());
    }
}
