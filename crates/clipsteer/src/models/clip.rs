//! CLIP (OpenAI's and LAION's) driven by config.json, with HF weight names.
//!
//! Beyond candle-transformers' CLIP this reads the activation (`quick_gelu` or `gelu`) and layer
//! norm epsilon from the config, pools text at the EOS position as transformers does, and keeps a
//! text prefix cache: a prefix is encoded once and many continuations of it are embedded by
//! computing only their new positions.

use super::attention::{attend, attention, KvCache, LayerKv};
use super::{cpu_kernels, Activation, Dense};
use anyhow::{bail, Context, Result};
use candle_core::{Device, IndexOp, Module, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;
use std::path::Path;

/// The fields of `CLIPTextConfig` that change the computation, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
        }
    }
}

/// The fields of `CLIPVisionConfig` that change the computation, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClipConfig {
    pub text: ClipTextConfig,
    pub vision: ClipVisionConfig,
    pub projection_dim: usize,
}

impl ClipConfig {
    /// Reads a `CLIPModel` config.json (older files name the parts `text_config_dict` /
    /// `vision_config_dict`).
    pub fn load(dir: &Path) -> Result<Self> {
        let raw: serde_json::Value = super::read_config(dir)?;
        let part = |name: &str| -> Result<serde_json::Value> {
            raw.get(name)
                .filter(|v| v.is_object())
                .or_else(|| raw.get(format!("{name}_dict")).filter(|v| v.is_object()))
                .cloned()
                .with_context(|| {
                    format!(
                        "{}/config.json has no {name}: is this a CLIP model (CLIPModel) directory?",
                        dir.display()
                    )
                })
        };
        let text: ClipTextConfig = serde_json::from_value(part("text_config")?)
            .with_context(|| format!("{}/config.json: invalid text_config", dir.display()))?;
        let vision: ClipVisionConfig = serde_json::from_value(part("vision_config")?)
            .with_context(|| format!("{}/config.json: invalid vision_config", dir.display()))?;
        let projection_dim = raw
            .get("projection_dim")
            .and_then(|v| v.as_u64())
            .unwrap_or(512) as usize;
        for (what, hidden, heads) in [
            ("text", text.hidden_size, text.num_attention_heads),
            ("vision", vision.hidden_size, vision.num_attention_heads),
        ] {
            if heads == 0 || !hidden.is_multiple_of(heads) {
                bail!("config.json: {what} hidden_size {hidden} is not a multiple of num_attention_heads {heads}");
            }
        }
        if vision.patch_size == 0 || !vision.image_size.is_multiple_of(vision.patch_size) {
            bail!(
                "config.json: image_size {} is not a multiple of patch_size {}",
                vision.image_size,
                vision.patch_size
            );
        }
        Ok(Self {
            text,
            vision,
            projection_dim,
        })
    }
}

/// A pre-LayerNorm transformer layer, as in both CLIP towers (and Stable Diffusion's text
/// encoder, a CLIP text tower).
pub(crate) struct EncoderLayer {
    /// q, k and v projections fused into one matmul.
    qkv_proj: Dense,
    out_proj: Dense,
    layer_norm1: LayerNorm,
    layer_norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    heads: usize,
    activation: Activation,
}

/// `count` pre-LayerNorm encoder layers under `vb` (`encoder.layers.{i}`): CLIP's two towers
/// and SigLIP's share the layer and its weight names.
pub(crate) fn encoder_layers(
    vb: &VarBuilder,
    count: usize,
    (hidden, intermediate, heads): (usize, usize, usize),
    eps: f64,
    activation: Activation,
) -> Result<Vec<EncoderLayer>> {
    (0..count)
        .map(|i| {
            EncoderLayer::load(
                hidden,
                intermediate,
                heads,
                eps,
                activation,
                vb.pp(format!("encoder.layers.{i}")),
            )
        })
        .collect()
}

/// The layers of a CLIP text tower under `vb` (`encoder.layers.{i}`).
pub(crate) fn text_layers(config: &ClipTextConfig, vb: &VarBuilder) -> Result<Vec<EncoderLayer>> {
    encoder_layers(
        vb,
        config.num_hidden_layers,
        (
            config.hidden_size,
            config.intermediate_size,
            config.num_attention_heads,
        ),
        config.layer_norm_eps,
        Activation::from_hf(&config.hidden_act)?,
    )
}

/// How packed rows are grouped for attention: per row for the fused CPU kernel, or in buckets of
/// equal new-token count for candle's batched ops (other devices).
enum PackedLayout {
    Rows(cpu_kernels::PackedRows),
    Buckets(Vec<Bucket>),
}

/// The new positions of a batch of sequences, packed: each row's token and position, the row
/// each sequence is pooled at, and how rows attend.
struct Packed {
    tokens: Vec<u32>,
    positions: Vec<u32>,
    pooled_rows: Vec<u32>,
    layout: PackedLayout,
}

/// Sequences of one new-token count inside a packed batch: rows
/// `start .. start + count·len` hold their positions, sequence after sequence.
struct Bucket {
    start: usize,
    count: usize,
    len: usize,
    /// [count·len, shared_len]: hides the cached prefix positions a sequence does not share.
    prefix_mask: Option<Tensor>,
}

impl EncoderLayer {
    pub(crate) fn load(
        hidden: usize,
        intermediate: usize,
        heads: usize,
        eps: f64,
        activation: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        let attn = vb.pp("self_attn");
        let projection = |name: &str| Dense::linear(hidden, hidden, true, attn.pp(name));
        Ok(Self {
            qkv_proj: Dense::concat(&[
                projection("q_proj")?,
                projection("k_proj")?,
                projection("v_proj")?,
            ])?,
            out_proj: projection("out_proj")?,
            layer_norm1: candle_nn::layer_norm(hidden, eps, vb.pp("layer_norm1"))?,
            layer_norm2: candle_nn::layer_norm(hidden, eps, vb.pp("layer_norm2"))?,
            fc1: Dense::linear(hidden, intermediate, true, vb.pp("mlp.fc1"))?,
            fc2: Dense::linear(intermediate, hidden, true, vb.pp("mlp.fc2"))?,
            heads,
            activation,
        })
    }

    /// q, k, v of `rows` [n, hidden], each [n, hidden].
    fn qkv(&self, rows: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let hidden = rows.dim(D::Minus1)?;
        let qkv = self.qkv_proj.forward(&self.layer_norm1.forward(rows)?)?;
        Ok((
            qkv.narrow(1, 0, hidden)?,
            qkv.narrow(1, hidden, hidden)?,
            qkv.narrow(1, 2 * hidden, hidden)?,
        ))
    }

    fn scale(&self, hidden: usize) -> f64 {
        1.0 / ((hidden / self.heads) as f64).sqrt()
    }

    /// Residual attention output and MLP, on rows [n, hidden].
    fn finish(&self, xs: &Tensor, attended: &Tensor) -> candle_core::Result<Tensor> {
        let xs = self.out_proj.forward_residual(attended, xs)?;
        let mlp = self
            .activation
            .forward(&self.fc1.forward(&self.layer_norm2.forward(&xs)?)?)?;
        self.fc2.forward_residual(&mlp, &xs)
    }

    /// Sequences [batch, len, hidden] attending to every position (no causal mask), with
    /// `key_bias` [batch, 1, 1, len] (0 or −∞) added to the scores to hide padding: SigLIP's text
    /// and vision towers.
    pub(crate) fn forward_bidirectional(
        &self,
        xs: &Tensor,
        key_bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (batch, len, hidden) = xs.dims3()?;
        let head_dim = hidden / self.heads;
        let rows = xs.reshape((batch * len, hidden))?;
        let (q, k, v) = self.qkv(&rows)?;
        let heads = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, len, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
        let mut scores = (cpu_kernels::batched_matmul(&q, &k.t()?)? * self.scale(hidden))?;
        if let Some(bias) = key_bias {
            scores = scores.broadcast_add(bias)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let attended = cpu_kernels::batched_matmul(&weights, &v)?
            .transpose(1, 2)?
            .reshape((batch * len, hidden))?;
        self.finish(&rows, &attended)?.reshape((batch, len, hidden))
    }

    /// Sequences [batch, len, hidden] on their own: causal attention over every position.
    pub(crate) fn forward_causal(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(xs, &mut LayerKv::default(), true)
    }

    /// Sequences [batch, new, hidden] following the positions cached in `kv`.
    fn forward(&self, xs: &Tensor, kv: &mut LayerKv, causal: bool) -> candle_core::Result<Tensor> {
        let (batch, new, hidden) = xs.dims3()?;
        let head_dim = hidden / self.heads;
        let rows = xs.reshape((batch * new, hidden))?;
        let (q, k, v) = self.qkv(&rows)?;
        let heads = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, new, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let attended = attend(
            &heads(q)?,
            &heads(k)?,
            &heads(v)?,
            kv,
            self.scale(hidden),
            causal,
        )?
        .transpose(1, 2)?
        .reshape((batch * new, hidden))?;
        self.finish(&rows, &attended)?.reshape((batch, new, hidden))
    }

    /// Packed rows [n, hidden] of many sequences (see [`Bucket`]), each continuing the shared
    /// prefix `prefix_kv` ([heads, len, head_dim] keys and values). With `keep`, only those rows
    /// go on past attention: in the last layer only the pooled rows matter.
    fn forward_packed(
        &self,
        xs: &Tensor,
        prefix_kv: Option<(&Tensor, &Tensor)>,
        layout: &PackedLayout,
        keep: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let hidden = xs.dim(1)?;
        let head_dim = hidden / self.heads;
        if let PackedLayout::Rows(rows) = layout {
            let qkv = self.qkv_proj.forward(&self.layer_norm1.forward(xs)?)?;
            let attended = cpu_kernels::packed_attention(
                &qkv,
                prefix_kv,
                rows,
                self.heads,
                self.scale(hidden) as f32,
            )?;
            return match keep {
                Some(keep) => {
                    self.finish(&xs.index_select(keep, 0)?, &attended.index_select(keep, 0)?)
                }
                None => self.finish(xs, &attended),
            };
        }
        let PackedLayout::Buckets(buckets) = layout else {
            unreachable!()
        };
        let (q, k, v) = self.qkv(xs)?;
        let mut outputs = Vec::with_capacity(buckets.len());
        for bucket in buckets {
            let heads = |t: &Tensor| -> candle_core::Result<Tensor> {
                t.narrow(0, bucket.start, bucket.count * bucket.len)?
                    .reshape((bucket.count, bucket.len, self.heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let out = attention(
                &heads(&q)?,
                &heads(&k)?,
                &heads(&v)?,
                prefix_kv,
                bucket.prefix_mask.as_ref(),
                true,
                super::attention::Scores {
                    scale: self.scale(hidden),
                    softcap: None,
                },
            )?;
            outputs.push(
                out.transpose(1, 2)?
                    .reshape((bucket.count * bucket.len, hidden))?,
            );
        }
        let attended = Tensor::cat(&outputs, 0)?;
        match keep {
            Some(rows) => self.finish(&xs.index_select(rows, 0)?, &attended.index_select(rows, 0)?),
            None => self.finish(xs, &attended),
        }
    }
}

/// A text prefix encoded once, to be continued by many sequences.
#[derive(Clone)]
pub struct TextPrefix {
    ids: Vec<u32>,
    cache: KvCache,
}

impl TextPrefix {
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// Text embeddings of a batch with the cost of computing them.
pub struct TextFeatures {
    /// Projected, unnormalised features [sequences, projection_dim].
    pub features: Tensor,
    /// Token positions pushed through the text tower (padding included).
    pub positions_computed: usize,
}

pub struct ClipModel {
    token_embedding: Tensor,
    text_position_embedding: Tensor,
    text_layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Dense,
    class_embedding: Tensor,
    patch_embedding: Tensor,
    vision_position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    vision_layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    visual_projection: Dense,
    logit_scale: f32,
    config: ClipConfig,
    device: Device,
    /// Fused CPU attention for packed text batches (on by default on CPU).
    cpu_kernels: bool,
}

impl ClipModel {
    /// Loads config.json and model.safetensors from a directory in the HF layout.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = ClipConfig::load(dir)?;
        let vb = super::load_weights(dir, device)?;
        Self::from_varbuilder(config, vb).with_context(|| {
            format!(
                "{} is not a CLIP checkpoint matching its config.json",
                dir.display()
            )
        })
    }

    pub fn from_varbuilder(config: ClipConfig, vb: VarBuilder) -> Result<Self> {
        let device = vb.device().clone();
        let t = &config.text;
        let v = &config.vision;
        let text_vb = vb.pp("text_model");
        let text_layers = text_layers(t, &text_vb)?;
        let vision_vb = vb.pp("vision_model");
        let vision_layers = encoder_layers(
            &vision_vb,
            v.num_hidden_layers,
            (v.hidden_size, v.intermediate_size, v.num_attention_heads),
            v.layer_norm_eps,
            Activation::from_hf(&v.hidden_act)?,
        )?;
        let patches = (v.image_size / v.patch_size).pow(2);
        let logit_scale = if vb.contains_tensor("logit_scale") {
            vb.get((), "logit_scale")?.to_scalar::<f32>()?.exp()
        } else {
            100.0
        };
        Ok(Self {
            token_embedding: text_vb.get(
                (t.vocab_size, t.hidden_size),
                "embeddings.token_embedding.weight",
            )?,
            text_position_embedding: text_vb.get(
                (t.max_position_embeddings, t.hidden_size),
                "embeddings.position_embedding.weight",
            )?,
            text_layers,
            final_layer_norm: candle_nn::layer_norm(
                t.hidden_size,
                t.layer_norm_eps,
                text_vb.pp("final_layer_norm"),
            )?,
            text_projection: Dense::linear(
                t.hidden_size,
                config.projection_dim,
                false,
                vb.pp("text_projection"),
            )?,
            class_embedding: vision_vb.get(v.hidden_size, "embeddings.class_embedding")?,
            patch_embedding: vision_vb.get(
                (v.hidden_size, v.num_channels, v.patch_size, v.patch_size),
                "embeddings.patch_embedding.weight",
            )?,
            vision_position_embedding: vision_vb.get(
                (patches + 1, v.hidden_size),
                "embeddings.position_embedding.weight",
            )?,
            pre_layrnorm: candle_nn::layer_norm(
                v.hidden_size,
                v.layer_norm_eps,
                vision_vb.pp("pre_layrnorm"),
            )?,
            vision_layers,
            post_layernorm: candle_nn::layer_norm(
                v.hidden_size,
                v.layer_norm_eps,
                vision_vb.pp("post_layernorm"),
            )?,
            visual_projection: Dense::linear(
                v.hidden_size,
                config.projection_dim,
                false,
                vb.pp("visual_projection"),
            )?,
            logit_scale,
            config,
            cpu_kernels: device.is_cpu(),
            device,
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Chooses the fused CPU attention kernel (true) or candle's batched ops (false) for packed
    /// text batches; both compute the same thing. Only CPU models can use the kernel.
    pub fn use_cpu_kernels(&mut self, enabled: bool) {
        self.cpu_kernels = enabled && self.device.is_cpu();
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// exp(logit_scale): the temperature CLIP was trained with (100 for OpenAI's models).
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// The position transformers pools at: the first EOS, or for legacy configs whose
    /// eos_token_id is 2, the largest id (the EOS token has the largest id in CLIP's vocabulary).
    pub fn pool_position(&self, ids: &[u32]) -> usize {
        let eos = self.config.text.eos_token_id;
        if eos == 2 {
            // torch.argmax returns the first maximal index.
            let mut best = 0;
            for (i, &id) in ids.iter().enumerate() {
                if id > ids[best] {
                    best = i;
                }
            }
            best
        } else {
            ids.iter().position(|&id| id == eos).unwrap_or(0)
        }
    }

    /// Runs the text tower over `ids` [batch, new] following the cached positions.
    fn text_hidden(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (batch, new) = ids.dims2()?;
        let past = cache.len();
        cache.check_batch(batch)?;
        let tokens = self
            .token_embedding
            .embedding(&ids.flatten_all()?)?
            .reshape((batch, new, ()))?;
        let positions = self.text_position_embedding.narrow(0, past, new)?;
        let mut xs = tokens.broadcast_add(&positions)?;
        for (index, layer) in self.text_layers.iter().enumerate() {
            xs = layer.forward(&xs, cache.layer_mut(index), true)?;
        }
        cache.advance(batch, new);
        Ok(xs)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let t = &self.config.text;
        if ids.len() > t.max_position_embeddings {
            bail!(
                "CLIP text of {} tokens exceeds the context of {}; tokenize with truncation",
                ids.len(),
                t.max_position_embeddings
            );
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= t.vocab_size) {
            bail!(
                "token id {bad} is outside CLIP's vocabulary of {}",
                t.vocab_size
            );
        }
        Ok(())
    }

    /// Encodes a prefix (token ids starting with <|startoftext|>) once.
    pub fn text_prefix(&self, ids: &[u32]) -> Result<TextPrefix> {
        self.check_ids(ids)?;
        let mut cache = KvCache::new(self.text_layers.len());
        if !ids.is_empty() {
            let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
            self.text_hidden(&input, &mut cache)?;
        }
        Ok(TextPrefix {
            ids: ids.to_vec(),
            cache,
        })
    }

    /// The prefix `ids`, computing only the positions after those it shares with `previous`
    /// (a description grows by a token or two per step).
    pub fn extend_text_prefix(&self, previous: &TextPrefix, ids: &[u32]) -> Result<TextPrefix> {
        self.check_ids(ids)?;
        let common = previous
            .ids
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count();
        let mut cache = previous.cache.truncate(common)?;
        if common < ids.len() {
            let input = Tensor::new(&ids[common..], &self.device)?.unsqueeze(0)?;
            self.text_hidden(&input, &mut cache)?;
        }
        Ok(TextPrefix {
            ids: ids.to_vec(),
            cache,
        })
    }

    /// Text features of whole sequences (ids with the start and end tokens), as
    /// `get_text_features` computes them.
    pub fn text_features(&self, sequences: &[Vec<u32>]) -> Result<Tensor> {
        let empty = TextPrefix {
            ids: Vec::new(),
            cache: KvCache::new(self.text_layers.len()),
        };
        Ok(self.text_features_with_prefix(&empty, sequences)?.features)
    }

    /// Text features of whole sequences, reusing `prefix` for the positions they share with it.
    ///
    /// Each sequence computes only its positions after the part it shares with the prefix (a
    /// sequence that changes the prefix's last token, a continued word, shares one position
    /// less). The new positions of all sequences are packed without padding, so the dense layers
    /// run as single large matmuls. On CPU, sequences that also agree with each other past the
    /// prefix (" 19" and " 1990" both begin "1", "9") compute those positions once, as a prefix
    /// tree, and positions after the pooled one are not computed; other devices run attention per
    /// group of equal new-token count.
    pub fn text_features_with_prefix(
        &self,
        prefix: &TextPrefix,
        sequences: &[Vec<u32>],
    ) -> Result<TextFeatures> {
        if sequences.is_empty() {
            return Ok(TextFeatures {
                features: Tensor::zeros(
                    (0, self.config.projection_dim),
                    candle_core::DType::F32,
                    &self.device,
                )?,
                positions_computed: 0,
            });
        }
        // Where each sequence starts computing, and where it is pooled.
        let mut starts = Vec::with_capacity(sequences.len());
        let mut pools = Vec::with_capacity(sequences.len());
        for ids in sequences {
            if ids.is_empty() {
                bail!("cannot embed an empty token sequence: CLIP input needs at least the start and end tokens");
            }
            self.check_ids(ids)?;
            let common = prefix
                .ids
                .iter()
                .zip(ids)
                .take_while(|(a, b)| a == b)
                .count();
            let pool = self.pool_position(ids);
            starts.push(common.min(pool));
            pools.push(pool);
        }
        let shared_len = starts.iter().copied().max().unwrap_or(0);
        let packed = if self.cpu_kernels {
            Self::tree_layout(sequences, &starts, &pools)
        } else {
            self.bucket_layout(sequences, &starts, &pools, shared_len)?
        };
        let Packed {
            tokens,
            positions,
            pooled_rows,
            layout,
        } = packed;
        let rows = tokens.len();
        let token_ids = Tensor::from_vec(tokens, rows, &self.device)?;
        let position_ids = Tensor::from_vec(positions, rows, &self.device)?;
        let mut xs = self
            .token_embedding
            .embedding(&token_ids)?
            .add(&self.text_position_embedding.embedding(&position_ids)?)?;
        let pooled_rows = Tensor::new(pooled_rows, &self.device)?;
        let last = self.text_layers.len().saturating_sub(1);
        for (index, layer) in self.text_layers.iter().enumerate() {
            let prefix_kv = if shared_len > 0 {
                prefix
                    .cache
                    .single_row_kv(index)?
                    .map(|(k, v)| -> Result<(Tensor, Tensor)> {
                        Ok((
                            k.narrow(1, 0, shared_len)?.contiguous()?,
                            v.narrow(1, 0, shared_len)?.contiguous()?,
                        ))
                    })
                    .transpose()?
            } else {
                None
            };
            let keep = (index == last).then_some(&pooled_rows);
            xs = layer.forward_packed(
                &xs,
                prefix_kv.as_ref().map(|(k, v)| (k, v)),
                &layout,
                keep,
            )?;
        }
        if self.text_layers.is_empty() {
            xs = xs.index_select(&pooled_rows, 0)?;
        }
        let pooled = self.final_layer_norm.forward(&xs)?;
        Ok(TextFeatures {
            features: self.text_projection.forward(&pooled)?,
            positions_computed: rows,
        })
    }

    /// The rows of a packed batch as a prefix tree: sequences that agree on their first new
    /// tokens share those rows (their keys and values are the same), and every row attends to
    /// its ancestors. Only positions up to each sequence's pooled one are computed.
    fn tree_layout(sequences: &[Vec<u32>], starts: &[usize], pools: &[usize]) -> Packed {
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut rows = cpu_kernels::PackedRows::new();
        let mut pooled_rows = Vec::with_capacity(sequences.len());
        // A row is the token at position j of every sequence that starts computing at `start`
        // and agrees with it up to j: (start, ids[..=j]).
        let mut row_of: std::collections::HashMap<(usize, &[u32]), u32> =
            std::collections::HashMap::new();
        let mut ancestors: Vec<u32> = Vec::new();
        for (index, ids) in sequences.iter().enumerate() {
            let start = starts[index];
            ancestors.clear();
            for j in start..=pools[index] {
                let row = match row_of.entry((start, &ids[..=j])) {
                    std::collections::hash_map::Entry::Occupied(entry) => *entry.get(),
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        let row = tokens.len() as u32;
                        tokens.push(ids[j]);
                        positions.push(j as u32);
                        rows.push(
                            start as u32,
                            ancestors.iter().copied().chain(std::iter::once(row)),
                        );
                        *entry.insert(row)
                    }
                };
                ancestors.push(row);
            }
            pooled_rows.push(*ancestors.last().expect("pool >= start"));
        }
        Packed {
            tokens,
            positions,
            pooled_rows,
            layout: PackedLayout::Rows(rows),
        }
    }

    /// The rows of a packed batch grouped by new-token count, for candle's batched attention.
    fn bucket_layout(
        &self,
        sequences: &[Vec<u32>],
        starts: &[usize],
        pools: &[usize],
        shared_len: usize,
    ) -> Result<Packed> {
        let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> =
            std::collections::BTreeMap::new();
        for (index, ids) in sequences.iter().enumerate() {
            by_len
                .entry(ids.len() - starts[index])
                .or_default()
                .push(index);
        }
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut pooled_rows = vec![0u32; sequences.len()];
        let mut buckets = Vec::with_capacity(by_len.len());
        for (&len, members) in &by_len {
            let start = tokens.len();
            let mut mask = Vec::new();
            for &index in members {
                let first = starts[index];
                pooled_rows[index] = (tokens.len() + pools[index] - first) as u32;
                tokens.extend_from_slice(&sequences[index][first..]);
                positions.extend((first..first + len).map(|p| p as u32));
                for _ in 0..len {
                    mask.extend((0..shared_len).map(|p| {
                        if p < first {
                            0f32
                        } else {
                            f32::NEG_INFINITY
                        }
                    }));
                }
            }
            let prefix_mask = if members.iter().any(|&index| starts[index] < shared_len) {
                Some(Tensor::from_vec(
                    mask,
                    (members.len() * len, shared_len),
                    &self.device,
                )?)
            } else {
                None
            };
            buckets.push(Bucket {
                start,
                count: members.len(),
                len,
                prefix_mask,
            });
        }
        Ok(Packed {
            tokens,
            positions,
            pooled_rows,
            layout: PackedLayout::Buckets(buckets),
        })
    }

    /// Image features for preprocessed pixels [batch, channels, image_size, image_size], as
    /// `get_image_features` computes them.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let v = &self.config.vision;
        let (batch, channels, height, width) = pixels.dims4()?;
        if channels != v.num_channels || height != v.image_size || width != v.image_size {
            bail!(
                "pixels of shape ({channels}, {height}, {width}) do not fit CLIP's ({}, {}, {})",
                v.num_channels,
                v.image_size,
                v.image_size
            );
        }
        let patches = pixels
            .conv2d(&self.patch_embedding, 0, v.patch_size, 1, 1)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let class = self
            .class_embedding
            .reshape((1, 1, v.hidden_size))?
            .repeat((batch, 1, 1))?;
        let xs =
            Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.vision_position_embedding)?;
        let mut xs = self.pre_layrnorm.forward(&xs)?;
        for layer in &self.vision_layers {
            xs = layer.forward(&xs, &mut LayerKv::default(), false)?;
        }
        let pooled = self
            .post_layernorm
            .forward(&xs.i((.., 0, ..))?.contiguous()?)?;
        Ok(self.visual_projection.forward(&pooled)?)
    }
}

/// Cosine similarity of each row of `a` [n, d] with the single vector `b` [d].
pub fn cosine_to(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    let a_norm = a.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    let b_norm = b.sqr()?.sum_all()?.sqrt()?;
    let dots = a.matmul(&b.unsqueeze(1)?)?;
    let cos = dots.broadcast_div(&a_norm)?.broadcast_div(&b_norm)?;
    Ok(cos.flatten_all()?.to_vec1::<f32>()?)
}
