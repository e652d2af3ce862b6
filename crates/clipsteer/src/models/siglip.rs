//! SigLIP and SigLIP 2 FixRes (`SiglipModel`, config.json `model_type` "siglip"), with HF weight
//! names, as transformers' `modeling_siglip.py` computes them.
//!
//! What differs from CLIP ([`super::clip`]): the text tower attends in both directions (no causal
//! mask) and pools its *last* position, padding included, through a linear `head`; the vision
//! tower has no class token and no pre-norm, its patch convolution has a bias, and it pools with a
//! multihead-attention probe (`head`). Neither tower has a projection: the features are the pooled
//! outputs. The pair's probability is sigmoid(exp(logit_scale) · cos + logit_bias), not a softmax.
//!
//! candle-transformers' SigLIP has no attention mask for the text tower, which transformers
//! passes whenever the tokenizer returns one (SigLIP 2's Gemma tokenizer does), so the towers are
//! built here from the CLIP encoder layer, which SigLIP's layers match weight for weight.

use super::clip::{encoder_layers, EncoderLayer};
use super::{Activation, Dense};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;
use std::path::Path;

/// The fields of `SiglipTextConfig` that change the computation, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SiglipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// The text length every input is padded or truncated to (64).
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// Output size of the text `head`; `None` means `hidden_size`.
    pub projection_size: Option<usize>,
}

impl Default for SiglipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 64,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
            projection_size: None,
        }
    }
}

/// The fields of `SiglipVisionConfig` that change the computation, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SiglipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub vision_use_head: bool,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
            vision_use_head: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SiglipConfig {
    pub text: SiglipTextConfig,
    pub vision: SiglipVisionConfig,
}

impl SiglipConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let raw: serde_json::Value = super::read_config(dir)?;
        Self::from_json(&raw).with_context(|| format!("{}/config.json", dir.display()))
    }

    pub fn from_json(raw: &serde_json::Value) -> Result<Self> {
        let part = |name: &str| -> serde_json::Value {
            raw.get(name)
                .filter(|v| v.is_object())
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}))
        };
        let text: SiglipTextConfig =
            serde_json::from_value(part("text_config")).context("invalid text_config")?;
        let vision: SiglipVisionConfig = serde_json::from_value(part("vision_config"))
            .context("invalid vision_config (image_size and patch_size must be integers)")?;
        for (what, hidden, heads) in [
            ("text", text.hidden_size, text.num_attention_heads),
            ("vision", vision.hidden_size, vision.num_attention_heads),
        ] {
            if heads == 0 || !hidden.is_multiple_of(heads) {
                bail!(
                    "{what} hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
                );
            }
        }
        if vision.patch_size == 0 || !vision.image_size.is_multiple_of(vision.patch_size) {
            bail!(
                "image_size {} is not a multiple of patch_size {}",
                vision.image_size,
                vision.patch_size
            );
        }
        if text.max_position_embeddings == 0 {
            bail!("text max_position_embeddings is 0");
        }
        Ok(Self { text, vision })
    }
}

/// The vision tower's pooling: one learned probe query attends over the patches
/// (`torch.nn.MultiheadAttention`, batch first), then a residual MLP after a LayerNorm.
struct PoolingHead {
    probe: Tensor,
    in_proj: Dense,
    out_proj: Dense,
    layernorm: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    heads: usize,
    activation: Activation,
}

impl PoolingHead {
    fn load(v: &SiglipVisionConfig, activation: Activation, vb: VarBuilder) -> Result<Self> {
        let h = v.hidden_size;
        let attention = vb.pp("attention");
        let in_proj = Dense::from_out_in(attention.get((3 * h, h), "in_proj_weight")?, 3 * h, h)?
            .with_bias(Some(attention.get(3 * h, "in_proj_bias")?))?;
        Ok(Self {
            probe: vb.get((1, 1, h), "probe")?,
            in_proj,
            out_proj: Dense::linear(h, h, true, attention.pp("out_proj"))?,
            layernorm: candle_nn::layer_norm(h, v.layer_norm_eps, vb.pp("layernorm"))?,
            fc1: Dense::linear(h, v.intermediate_size, true, vb.pp("mlp.fc1"))?,
            fc2: Dense::linear(v.intermediate_size, h, true, vb.pp("mlp.fc2"))?,
            heads: v.num_attention_heads,
            activation,
        })
    }

    /// Patches [batch, n, hidden] → pooled [batch, hidden].
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, n, h) = xs.dims3()?;
        let head_dim = h / self.heads;
        // The probe's query and the patches' keys and values, through the packed in-projection.
        let probe_qkv = self.in_proj.forward(&self.probe.reshape((1, h))?)?;
        let q = probe_qkv.narrow(1, 0, h)?;
        let kv = self.in_proj.forward(&xs.reshape((batch * n, h))?)?;
        let (k, v) = (kv.narrow(1, h, h)?, kv.narrow(1, 2 * h, h)?);
        let q = q
            .reshape((1, 1, self.heads, head_dim))?
            .transpose(1, 2)?
            .broadcast_as((batch, self.heads, 1, head_dim))?
            .contiguous()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, n, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (k, v) = (split(k)?, split(v)?);
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let attended = weights.matmul(&v)?.transpose(1, 2)?.reshape((batch, h))?;
        let pooled = self.out_proj.forward(&attended)?;
        let mlp = self
            .activation
            .forward(&self.fc1.forward(&self.layernorm.forward(&pooled)?)?)?;
        self.fc2.forward_residual(&mlp, &pooled)
    }
}

/// SigLIP's two towers and the pair's logit scale and bias.
pub struct SiglipModel {
    config: SiglipConfig,
    device: Device,
    token_embedding: Tensor,
    text_position_embedding: Tensor,
    text_layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_head: Dense,
    patch_embedding: Tensor,
    patch_bias: Tensor,
    vision_position_embedding: Tensor,
    vision_layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    vision_head: Option<PoolingHead>,
    logit_scale: f32,
    logit_bias: f32,
}

/// Texts embedded per forward: bounds the attention scores' memory
/// (batch × heads × 64 × 64 floats) on a step's hundreds of candidates.
const TEXT_BATCH: usize = 64;

impl SiglipModel {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = SiglipConfig::load(dir)?;
        let vb = super::load_weights(dir, device)?;
        Self::from_varbuilder(config, vb).with_context(|| {
            format!(
                "{} is not a SigLIP checkpoint matching its config.json",
                dir.display()
            )
        })
    }

    pub fn from_varbuilder(config: SiglipConfig, vb: VarBuilder) -> Result<Self> {
        let device = vb.device().clone();
        let t = &config.text;
        let v = &config.vision;
        let text_vb = vb.pp("text_model");
        let text_act = Activation::from_hf(&t.hidden_act)?;
        let vision_vb = vb.pp("vision_model");
        let vision_act = Activation::from_hf(&v.hidden_act)?;
        let patches = (v.image_size / v.patch_size).pow(2);
        let projection = t.projection_size.unwrap_or(t.hidden_size);
        let scalar = |name: &str| -> Result<f32> {
            Ok(vb.get(1, name)?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0])
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
            text_layers: encoder_layers(
                &text_vb,
                t.num_hidden_layers,
                (t.hidden_size, t.intermediate_size, t.num_attention_heads),
                t.layer_norm_eps,
                text_act,
            )?,
            final_layer_norm: candle_nn::layer_norm(
                t.hidden_size,
                t.layer_norm_eps,
                text_vb.pp("final_layer_norm"),
            )?,
            text_head: Dense::linear(t.hidden_size, projection, true, text_vb.pp("head"))?,
            patch_embedding: vision_vb.get(
                (v.hidden_size, v.num_channels, v.patch_size, v.patch_size),
                "embeddings.patch_embedding.weight",
            )?,
            patch_bias: vision_vb
                .get(v.hidden_size, "embeddings.patch_embedding.bias")?
                .reshape((1, v.hidden_size, 1, 1))?,
            vision_position_embedding: vision_vb.get(
                (patches, v.hidden_size),
                "embeddings.position_embedding.weight",
            )?,
            vision_layers: encoder_layers(
                &vision_vb,
                v.num_hidden_layers,
                (v.hidden_size, v.intermediate_size, v.num_attention_heads),
                v.layer_norm_eps,
                vision_act,
            )?,
            post_layernorm: candle_nn::layer_norm(
                v.hidden_size,
                v.layer_norm_eps,
                vision_vb.pp("post_layernorm"),
            )?,
            vision_head: if v.vision_use_head {
                Some(PoolingHead::load(v, vision_act, vision_vb.pp("head"))?)
            } else {
                None
            },
            logit_scale: scalar("logit_scale")?.exp(),
            logit_bias: scalar("logit_bias")?,
            config,
            device,
        })
    }

    pub fn config(&self) -> &SiglipConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// exp(logit_scale), the trained temperature of the pair's logit.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// logit_bias, added to the scaled cosine.
    pub fn logit_bias(&self) -> f32 {
        self.logit_bias
    }

    /// SigLIP's probability that an image and a text match: sigmoid(exp(logit_scale) · cos +
    /// logit_bias), transformers' `torch.sigmoid(outputs.logits_per_image)`.
    pub fn probability(&self, cosine: f32) -> f32 {
        1.0 / (1.0 + (-(self.logit_scale * cosine + self.logit_bias)).exp())
    }

    /// Text features [n, projection] of padded sequences (all of the text length), as
    /// `get_text_features(input_ids, attention_mask)`: `masks` (1 = token, 0 = padding), where
    /// the tokenizer returns one, hide the padding as keys; the last position is pooled either way.
    pub fn text_features(&self, ids: &[Vec<u32>], masks: Option<&[Vec<u32>]>) -> Result<Tensor> {
        let len = self.config.text.max_position_embeddings;
        if let Some(bad) = ids.iter().find(|ids| ids.len() != len) {
            bail!(
                "SigLIP text of {} tokens: inputs are padded to {len}",
                bad.len()
            );
        }
        let vocab = self.config.text.vocab_size as u32;
        if let Some(&id) = ids.iter().flatten().find(|&&id| id >= vocab) {
            bail!("token id {id} is outside the SigLIP text vocabulary ({vocab}): the tokenizer does not belong to this model");
        }
        let mut features = Vec::new();
        for (start, chunk) in ids.chunks(TEXT_BATCH).enumerate() {
            let start = start * TEXT_BATCH;
            let batch = chunk.len();
            let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
            let tokens = Tensor::from_vec(flat, batch * len, &self.device)?;
            let mut xs = self
                .token_embedding
                .index_select(&tokens, 0)?
                .reshape((batch, len, ()))?
                .broadcast_add(&self.text_position_embedding.narrow(0, 0, len)?)?;
            let bias = match masks {
                Some(masks) => {
                    let bias: Vec<f32> = masks[start..start + batch]
                        .iter()
                        .flat_map(|mask| {
                            mask.iter()
                                .map(|&m| if m == 0 { f32::NEG_INFINITY } else { 0.0 })
                        })
                        .collect();
                    Some(Tensor::from_vec(bias, (batch, 1, 1, len), &self.device)?)
                }
                None => None,
            };
            for layer in &self.text_layers {
                xs = layer.forward_bidirectional(&xs, bias.as_ref())?;
            }
            let last = xs.i((.., len - 1, ..))?.contiguous()?;
            let pooled = self.final_layer_norm.forward(&last)?;
            features.push(self.text_head.forward(&pooled)?);
        }
        if features.is_empty() {
            bail!("no texts to embed");
        }
        Ok(Tensor::cat(&features, 0)?)
    }

    /// Image features [batch, hidden] for preprocessed pixels [batch, channels, size, size], as
    /// `get_image_features` computes them (the probe-pooled output).
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let v = &self.config.vision;
        let (_, channels, height, width) = pixels.dims4()?;
        if channels != v.num_channels || height != v.image_size || width != v.image_size {
            bail!(
                "pixels of shape ({channels}, {height}, {width}) do not fit SigLIP's ({}, {}, {})",
                v.num_channels,
                v.image_size,
                v.image_size
            );
        }
        let Some(head) = &self.vision_head else {
            bail!("this SigLIP vision tower has no pooling head (vision_use_head false), so it gives no image features");
        };
        let mut xs = pixels
            .conv2d(&self.patch_embedding, 0, v.patch_size, 1, 1)?
            .broadcast_add(&self.patch_bias)?
            .flatten_from(2)?
            .transpose(1, 2)?
            .broadcast_add(&self.vision_position_embedding)?
            .contiguous()?;
        for layer in &self.vision_layers {
            xs = layer.forward_bidirectional(&xs, None)?;
        }
        let xs = self.post_layernorm.forward(&xs)?;
        Ok(head.forward(&xs)?)
    }
}
