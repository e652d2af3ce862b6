//! Multi-head attention over a key/value cache that separates a prefix shared by every row from
//! each row's own positions.
//!
//! Many candidates continuing one prefix is the core workload of steering: the prefix keys are
//! stored once (batch 1), and every row's queries are matched against them in one large matmul
//! instead of copying the prefix per row.

use super::cpu_kernels;
use candle_core::{Result, Tensor, D};

/// Cached keys and values of one attention layer, each [batch, heads, positions, head_dim].
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    /// Positions every row sees, stored with batch 1.
    shared: Option<(Tensor, Tensor)>,
    /// Positions of each row, after the shared ones.
    own: Option<(Tensor, Tensor)>,
}

/// A KV cache for a whole model. Cloning is cheap: tensors are reference counted.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
    /// Rows of the `own` part; 0 while the cache is empty.
    batch: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerKv::default(); num_layers],
            len: 0,
            batch: 0,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows the cache holds (0 when empty: it then accepts any batch).
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    pub(crate) fn layer_mut(&mut self, index: usize) -> &mut LayerKv {
        &mut self.layers[index]
    }

    pub(crate) fn check_batch(&self, batch: usize) -> Result<()> {
        if self.batch != 0 && self.batch != batch {
            candle_core::bail!(
                "the KV cache holds {} rows but the input has {batch}; fork the cache first",
                self.batch
            )
        }
        Ok(())
    }

    pub(crate) fn advance(&mut self, batch: usize, positions: usize) {
        self.batch = batch;
        self.len += positions;
    }

    /// A cache whose row `i` continues row `rows[i]` of this one.
    ///
    /// Forking a one-row cache makes its positions shared: they are stored once however many
    /// rows continue them, and nothing is copied per row.
    pub fn fork(&self, rows: &[usize]) -> Result<Self> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.batch.max(1)) {
            candle_core::bail!(
                "fork: row {bad} out of range for a cache of {} rows",
                self.batch
            )
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let forked = if self.batch <= 1 {
                let shared = match (&layer.shared, &layer.own) {
                    (Some((sk, sv)), Some((ok, ov))) => {
                        Some((Tensor::cat(&[sk, ok], 2)?, Tensor::cat(&[sv, ov], 2)?))
                    }
                    (Some(s), None) => Some(s.clone()),
                    (None, Some(o)) => Some(o.clone()),
                    (None, None) => None,
                };
                LayerKv { shared, own: None }
            } else {
                let index = Tensor::new(
                    rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                    self.device_of(layer)?,
                )?;
                let own = match &layer.own {
                    Some((k, v)) => Some((k.index_select(&index, 0)?, v.index_select(&index, 0)?)),
                    None => None,
                };
                LayerKv {
                    shared: layer.shared.clone(),
                    own,
                }
            };
            layers.push(forked);
        }
        Ok(Self {
            layers,
            len: self.len,
            batch: rows.len(),
        })
    }

    /// A cache whose row `i` continues the one-row cache `caches[rows[i]]`, for one batched
    /// forward over rows of different histories (the attack beam's children of several
    /// parents). Every cache must hold the same number of positions. With one cache this is
    /// [`Self::fork`] (its positions stay shared); otherwise each row's keys and values are
    /// copied, [rows, heads, len, head_dim] per layer.
    pub fn stack(caches: &[&KvCache], rows: &[usize]) -> Result<Self> {
        let Some(first) = caches.first() else {
            candle_core::bail!("stack: no caches")
        };
        if let Some(&bad) = rows.iter().find(|&&r| r >= caches.len()) {
            candle_core::bail!("stack: row {bad} out of range for {} caches", caches.len())
        }
        for cache in caches {
            if cache.batch > 1 || cache.len != first.len || cache.layers.len() != first.layers.len()
            {
                candle_core::bail!(
                    "stack needs one-row caches of one length, got {} rows of {} positions and {} of {}",
                    cache.batch,
                    cache.len,
                    first.batch,
                    first.len
                )
            }
        }
        if caches.len() == 1 || first.is_empty() {
            return first.fork(&vec![0; rows.len()]);
        }
        let mut layers = Vec::with_capacity(first.layers.len());
        for index in 0..first.layers.len() {
            let kvs = caches
                .iter()
                .map(|cache| {
                    cache.single_row_kv(index)?.ok_or_else(|| {
                        candle_core::Error::Msg("stack: a cache layer is empty".to_string())
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let keys: Vec<&Tensor> = rows.iter().map(|&r| &kvs[r].0).collect();
            let values: Vec<&Tensor> = rows.iter().map(|&r| &kvs[r].1).collect();
            layers.push(LayerKv {
                shared: None,
                own: Some((Tensor::stack(&keys, 0)?, Tensor::stack(&values, 0)?)),
            });
        }
        Ok(Self {
            layers,
            len: first.len,
            batch: rows.len(),
        })
    }

    /// The first `len` positions of this cache.
    pub fn truncate(&self, len: usize) -> Result<Self> {
        if len > self.len {
            candle_core::bail!(
                "truncate: cache holds {} positions, asked for {len}",
                self.len
            )
        }
        let narrow = |(k, v): &(Tensor, Tensor), n: usize| -> Result<Option<(Tensor, Tensor)>> {
            Ok(if n == 0 {
                None
            } else if n == k.dim(2)? {
                Some((k.clone(), v.clone()))
            } else {
                Some((
                    k.narrow(2, 0, n)?.contiguous()?,
                    v.narrow(2, 0, n)?.contiguous()?,
                ))
            })
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let shared_len = layer
                .shared
                .as_ref()
                .map(|(k, _)| k.dim(2))
                .transpose()?
                .unwrap_or(0);
            let shared = match &layer.shared {
                Some(s) => narrow(s, len.min(shared_len))?,
                None => None,
            };
            let own = match &layer.own {
                Some(o) => narrow(o, len.saturating_sub(shared_len))?,
                None => None,
            };
            layers.push(LayerKv { shared, own });
        }
        let batch = if len == 0 { 0 } else { self.batch };
        Ok(Self { layers, len, batch })
    }

    /// All keys and values of layer `index` of a one-row cache, each [heads, len, head_dim].
    pub(crate) fn single_row_kv(&self, index: usize) -> Result<Option<(Tensor, Tensor)>> {
        if self.batch > 1 {
            candle_core::bail!("single_row_kv on a cache of {} rows", self.batch)
        }
        let layer = &self.layers[index];
        Ok(match (&layer.shared, &layer.own) {
            (Some((sk, sv)), Some((ok, ov))) => Some((
                Tensor::cat(&[sk, ok], 2)?.squeeze(0)?,
                Tensor::cat(&[sv, ov], 2)?.squeeze(0)?,
            )),
            (Some((k, v)), None) | (None, Some((k, v))) => Some((k.squeeze(0)?, v.squeeze(0)?)),
            (None, None) => None,
        })
    }

    fn device_of<'a>(&self, layer: &'a LayerKv) -> Result<&'a candle_core::Device> {
        match (&layer.own, &layer.shared) {
            (Some((k, _)), _) | (None, Some((k, _))) => Ok(k.device()),
            (None, None) => candle_core::bail!("empty cache layer"),
        }
    }
}

/// Scaled dot-product attention of `q` over the cached positions plus the new `k`/`v`
/// (all [batch, heads, new, head_dim]), causal among the new positions when `causal`. Appends
/// the new keys and values to `layer`.
pub fn attend(
    q: &Tensor,
    k_new: &Tensor,
    v_new: &Tensor,
    layer: &mut LayerKv,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    attend_capped(q, k_new, v_new, layer, scale, causal, None)
}

/// [`attend`] with the scores soft-capped before the mask, `cap · tanh(score / cap)`, as Gemma 2
/// does (transformers' `attn_logit_softcapping`).
pub fn attend_capped(
    q: &Tensor,
    k_new: &Tensor,
    v_new: &Tensor,
    layer: &mut LayerKv,
    scale: f64,
    causal: bool,
    softcap: Option<f64>,
) -> Result<Tensor> {
    let (own_k, own_v) = match &layer.own {
        Some((k, v)) => (Tensor::cat(&[k, k_new], 2)?, Tensor::cat(&[v, v_new], 2)?),
        None => (k_new.clone(), v_new.clone()),
    };
    let shared = match &layer.shared {
        Some((k, v)) => Some((k.squeeze(0)?, v.squeeze(0)?)),
        None => None,
    };
    let output = attention(
        q,
        &own_k,
        &own_v,
        shared.as_ref().map(|(k, v)| (k, v)),
        None,
        causal,
        Scores { scale, softcap },
    )?;
    layer.own = Some((own_k, own_v));
    Ok(output)
}

/// [`attend`] for a sliding-window layer: each query sees itself and the `window − 1` positions
/// before it, as transformers' `sliding_window_causal` mask (key > query − window) and llama.cpp's
/// standard SWA. The cache keeps every position; while the whole sequence fits in the window the
/// mask is the causal one and the shared-prefix kernel runs as for global layers.
pub fn attend_window(
    q: &Tensor,
    k_new: &Tensor,
    v_new: &Tensor,
    layer: &mut LayerKv,
    scale: f64,
    window: usize,
    softcap: Option<f64>,
) -> Result<Tensor> {
    let len_of = |kv: &Option<(Tensor, Tensor)>| -> Result<usize> {
        kv.as_ref()
            .map(|(k, _)| k.dim(2))
            .transpose()
            .map(|l| l.unwrap_or(0))
    };
    let shared_len = len_of(&layer.shared)?;
    let own_before = len_of(&layer.own)?;
    let (batch, heads, new, _) = q.dims4()?;
    let past = shared_len + own_before;
    if past + new <= window {
        return attend_capped(q, k_new, v_new, layer, scale, true, softcap);
    }
    let (own_k, own_v) = match &layer.own {
        Some((k, v)) => (Tensor::cat(&[k, k_new], 2)?, Tensor::cat(&[v, v_new], 2)?),
        None => (k_new.clone(), v_new.clone()),
    };
    // Every row's keys in full: the shared prefix repeated per row, then the row's own.
    let (all_k, all_v) = match &layer.shared {
        Some((sk, sv)) => {
            let per_row = |t: &Tensor| t.broadcast_as((batch, heads, shared_len, t.dim(3)?));
            (
                Tensor::cat(&[&per_row(sk)?, &own_k], 2)?,
                Tensor::cat(&[&per_row(sv)?, &own_v], 2)?,
            )
        }
        None => (own_k.clone(), own_v.clone()),
    };
    let total = past + new;
    let mask: Vec<f32> = (0..new)
        .flat_map(|i| {
            let query = past + i;
            (0..total).map(move |key| {
                if key > query || query - key >= window {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (new, total), q.device())?;
    let scores =
        cap(q.matmul(&all_k.contiguous()?.t()?)? * scale, softcap)?.broadcast_add(&mask)?;
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    let output = weights.matmul(&all_v.contiguous()?)?;
    layer.own = Some((own_k, own_v));
    Ok(output)
}

/// How raw attention scores q·k become the softmax's input: × `scale`, then soft-capped to
/// `cap · tanh(score / cap)` when `softcap` is set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scores {
    pub scale: f64,
    pub softcap: Option<f64>,
}

/// `cap · tanh(scores / cap)`, or the scores as they are without a cap.
fn cap(scores: Result<Tensor>, softcap: Option<f64>) -> Result<Tensor> {
    match softcap {
        Some(c) => (scores? / c)?.tanh()? * c,
        None => scores,
    }
}

/// Causal mask [new, own_len] for queries that are the last `new` of `own_len` positions.
fn causal_mask(new: usize, own_len: usize, device: &candle_core::Device) -> Result<Tensor> {
    let past = own_len - new;
    let mask: Vec<f32> = (0..new)
        .flat_map(|i| (0..own_len).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (new, own_len), device)
}

/// The attention kernel: queries `q` [batch, heads, new, head_dim] over each row's own keys
/// `own_k`/`own_v` [batch, heads, own_len, head_dim] (the queries are the last `new` of them)
/// and, optionally, keys every row shares, [heads, shared_len, head_dim], which all rows' queries
/// meet in one matmul. `shared_mask` [batch·new, shared_len] is added to the shared scores
/// (−∞ hides a shared position from a row).
pub(crate) fn attention(
    q: &Tensor,
    own_k: &Tensor,
    own_v: &Tensor,
    shared: Option<(&Tensor, &Tensor)>,
    shared_mask: Option<&Tensor>,
    causal: bool,
    scores: Scores,
) -> Result<Tensor> {
    let Scores { scale, softcap } = scores;
    let (batch, heads, new, head_dim) = q.dims4()?;
    let own_len = own_k.dim(2)?;
    let mut own_scores = cap(
        cpu_kernels::batched_matmul(q, &own_k.t()?)? * scale,
        softcap,
    )?;
    if causal && new > 1 {
        own_scores = own_scores.broadcast_add(&causal_mask(new, own_len, q.device())?)?;
    }
    let Some((shared_k, shared_v)) = shared else {
        let weights = candle_nn::ops::softmax_last_dim(&own_scores)?;
        return cpu_kernels::batched_matmul(&weights, own_v);
    };
    let shared_len = shared_k.dim(1)?;
    let q_rows = q
        .transpose(0, 1)?
        .contiguous()?
        .reshape((heads, batch * new, head_dim))?;
    let mut shared_scores = cap(q_rows.matmul(&shared_k.t()?)? * scale, softcap)?;
    if let Some(mask) = shared_mask {
        shared_scores = shared_scores.broadcast_add(mask)?;
    }
    let shared_scores = shared_scores
        .reshape((heads, batch, new, shared_len))?
        .transpose(0, 1)?;
    let scores = Tensor::cat(&[&shared_scores, &own_scores], D::Minus1)?.contiguous()?;
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    let shared_weights = weights
        .narrow(3, 0, shared_len)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((heads, batch * new, shared_len))?;
    let from_shared = shared_weights
        .matmul(shared_v)?
        .reshape((heads, batch, new, head_dim))?
        .transpose(0, 1)?;
    let own_weights = weights.narrow(3, shared_len, own_len)?.contiguous()?;
    cpu_kernels::batched_matmul(&own_weights, own_v)? + from_shared
}
