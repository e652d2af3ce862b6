//! BERT as a sentence encoder (sentence-transformers: mean or [CLS] pooling over the attention
//! mask, then L2 normalisation where the model's modules say), with HF weight names, with or
//! without the `bert.` prefix.
//!
//! On CPU a batch is packed without padding: the dense layers run on every sequence's tokens
//! stacked as one matrix, and attention stays within each sequence (the fused kernel in
//! [`super::cpu_kernels`]). Other devices run a padded batch with a key mask; both compute the
//! same thing.

use super::{cpu_kernels, Activation, Dense};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;
use std::path::Path;

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}

/// The fields of a transformers `BertConfig` that change the computation.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub model_type: Option<String>,
}

struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
    heads: usize,
    activation: Activation,
}

impl Layer {
    fn load(c: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = c.hidden_size;
        let attn = vb.pp("attention.self");
        Ok(Self {
            qkv: Dense::concat(&[
                Dense::linear(h, h, true, attn.pp("query"))?,
                Dense::linear(h, h, true, attn.pp("key"))?,
                Dense::linear(h, h, true, attn.pp("value"))?,
            ])?,
            attention_out: Dense::linear(h, h, true, vb.pp("attention.output.dense"))?,
            attention_norm: candle_nn::layer_norm(
                h,
                c.layer_norm_eps,
                vb.pp("attention.output.LayerNorm"),
            )?,
            intermediate: Dense::linear(h, c.intermediate_size, true, vb.pp("intermediate.dense"))?,
            output: Dense::linear(c.intermediate_size, h, true, vb.pp("output.dense"))?,
            output_norm: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: c.num_attention_heads,
            activation: Activation::from_hf(&c.hidden_act)?,
        })
    }

    /// Post-LayerNorm block over [batch, len, hidden]; `mask` [batch·len, len] hides padding.
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, len, hidden) = xs.dims3()?;
        let head_dim = hidden / self.heads;
        let qkv = self.qkv.forward(xs)?;
        let heads = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(2, i * hidden, hidden)?
                .reshape((batch, len, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        // Padding is masked through the key scores: per row, −∞ on padded keys.
        let scale = 1.0 / (head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let attended = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, len, hidden))?;
        self.finish(xs, &attended)
    }

    /// Packed rows [n, hidden], each attending to the rows of its own sequence.
    fn forward_packed(
        &self,
        xs: &Tensor,
        rows: &cpu_kernels::PackedRows,
    ) -> candle_core::Result<Tensor> {
        let hidden = xs.dim(1)?;
        let scale = 1.0 / ((hidden / self.heads) as f32).sqrt();
        let qkv = self.qkv.forward(xs)?;
        let attended = cpu_kernels::packed_attention(&qkv, None, rows, self.heads, scale)?;
        self.finish(xs, &attended)
    }

    /// Attention output projection, residual and norm, then the MLP, residual and norm.
    fn finish(&self, xs: &Tensor, attended: &Tensor) -> candle_core::Result<Tensor> {
        let xs = self
            .attention_norm
            .forward(&self.attention_out.forward_residual(attended, xs)?)?;
        let inner = self.activation.forward(&self.intermediate.forward(&xs)?)?;
        self.output_norm
            .forward(&self.output.forward_residual(&inner, &xs)?)
    }
}

pub struct BertModel {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    config: BertConfig,
    device: Device,
    /// Packed batches with the fused CPU attention (on by default on CPU).
    cpu_kernels: bool,
}

impl BertModel {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config: BertConfig = super::read_config(dir)?;
        let vb = super::load_weights(dir, device)?;
        Self::from_varbuilder(config, vb)
            .with_context(|| format!("{} is not a BERT checkpoint", dir.display()))
    }

    pub fn from_varbuilder(config: BertConfig, vb: VarBuilder) -> Result<Self> {
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            bail!("config.json: hidden_size must be a multiple of num_attention_heads");
        }
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = config.hidden_size;
        let emb = vb.pp("embeddings");
        Ok(Self {
            word_embeddings: emb.get((config.vocab_size, h), "word_embeddings.weight")?,
            position_embeddings: emb.get(
                (config.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            token_type_embeddings: emb
                .get((config.type_vocab_size, h), "token_type_embeddings.weight")?,
            embeddings_norm: candle_nn::layer_norm(h, config.layer_norm_eps, emb.pp("LayerNorm"))?,
            layers: (0..config.num_hidden_layers)
                .map(|i| Layer::load(&config, vb.pp(format!("encoder.layer.{i}"))))
                .collect::<Result<Vec<_>>>()?,
            cpu_kernels: vb.device().is_cpu(),
            device: vb.device().clone(),
            config,
        })
    }

    /// Chooses packed batches with the fused CPU attention (true) or padded batches with
    /// candle's ops (false); both compute the same thing. Only CPU models can pack.
    pub fn use_cpu_kernels(&mut self, enabled: bool) {
        self.cpu_kernels = enabled && self.device.is_cpu();
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The last hidden states of each sequence pooled as `pooling` says, not normalised
    /// [n, hidden].
    pub fn pooled(&self, sequences: &[Vec<u32>], pooling: Pooling) -> Result<Tensor> {
        if sequences.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.config.hidden_size),
                DType::F32,
                &self.device,
            )?);
        }
        let len = sequences.iter().map(Vec::len).max().unwrap_or(0);
        if len == 0 || len > self.config.max_position_embeddings {
            bail!(
                "a sequence of {len} tokens does not fit BERT's {} positions",
                self.config.max_position_embeddings
            );
        }
        if sequences.iter().any(Vec::is_empty) {
            bail!(
                "cannot embed an empty token sequence: BERT input needs at least [CLS] and [SEP]"
            );
        }
        for seq in sequences {
            if let Some(bad) = seq
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                bail!(
                    "token id {bad} is outside BERT's vocabulary of {}",
                    self.config.vocab_size
                );
            }
        }
        if self.cpu_kernels {
            return self.packed_pooled(sequences, pooling);
        }
        let batch = sequences.len();
        let mut ids = Vec::with_capacity(batch * len);
        let mut valid = Vec::with_capacity(batch * len);
        for seq in sequences {
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(0, len - seq.len()));
            valid.extend(std::iter::repeat_n(1f32, seq.len()));
            valid.extend(std::iter::repeat_n(0f32, len - seq.len()));
        }
        let ids = Tensor::from_vec(ids, (batch, len), &self.device)?;
        let valid = Tensor::from_vec(valid, (batch, len), &self.device)?;
        let key_mask = valid
            .affine(1.0, -1.0)?
            .affine(1e9, 0.0)?
            .reshape((batch, 1, 1, len))?;
        let words = self
            .word_embeddings
            .embedding(&ids.flatten_all()?)?
            .reshape((batch, len, ()))?;
        let positions = self.position_embeddings.narrow(0, 0, len)?;
        let types = self.token_type_embeddings.narrow(0, 0, 1)?;
        let mut xs = self
            .embeddings_norm
            .forward(&words.broadcast_add(&positions)?.broadcast_add(&types)?)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &key_mask)?;
        }
        if pooling == Pooling::Cls {
            return Ok(xs.narrow(1, 0, 1)?.squeeze(1)?);
        }
        let summed = xs.broadcast_mul(&valid.unsqueeze(2)?)?.sum(1)?;
        let counts = valid.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?;
        Ok(summed.broadcast_div(&counts)?)
    }

    /// [`Self::pooled`] with the sequences packed: no padding is computed.
    fn packed_pooled(&self, sequences: &[Vec<u32>], pooling: Pooling) -> Result<Tensor> {
        let total: usize = sequences.iter().map(Vec::len).sum();
        let mut ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut rows = cpu_kernels::PackedRows::new();
        for seq in sequences {
            let first = ids.len() as u32;
            let end = first + seq.len() as u32;
            ids.extend_from_slice(seq);
            positions.extend(0..seq.len() as u32);
            for _ in 0..seq.len() {
                rows.push(0, first..end);
            }
        }
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let words = self.word_embeddings.embedding(&ids)?;
        let types = self.token_type_embeddings.narrow(0, 0, 1)?;
        let mut xs = self.embeddings_norm.forward(
            &words
                .add(&self.position_embeddings.embedding(&positions)?)?
                .broadcast_add(&types)?,
        )?;
        for layer in &self.layers {
            xs = layer.forward_packed(&xs, &rows)?;
        }
        // Each sequence's first row ([CLS]) or the mean of its rows, as sentence-transformers
        // pools.
        let hidden = self.config.hidden_size;
        let states = xs.flatten_all()?.to_vec1::<f32>()?;
        let mut pooled = Vec::with_capacity(sequences.len() * hidden);
        let mut start = 0;
        for seq in sequences {
            let rows = &states[start * hidden..(start + seq.len()) * hidden];
            match pooling {
                Pooling::Cls => pooled.extend_from_slice(&rows[..hidden]),
                Pooling::Mean => {
                    let mut mean = vec![0f32; hidden];
                    for row in rows.chunks_exact(hidden) {
                        for (m, x) in mean.iter_mut().zip(row) {
                            *m += x;
                        }
                    }
                    let count = seq.len() as f32;
                    pooled.extend(mean.iter().map(|m| m / count));
                }
            }
            start += seq.len();
        }
        Ok(Tensor::from_vec(
            pooled,
            (sequences.len(), hidden),
            &self.device,
        )?)
    }
}

/// How a sentence-transformers model pools its last hidden states (its `1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the sequence's tokens (all-MiniLM, all-mpnet).
    Mean,
    /// The first token's, [CLS] (BGE, GTE).
    Cls,
}

/// Each row of `x` [n, d] at unit L2 length (sentence-transformers' Normalize: a row of zeros
/// stays zeros).
pub fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let norms = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norms)?)
}
