//! The text encoder of Stable Diffusion: a CLIPTextModel's last hidden state (every position,
//! after the final layer norm), driven by text_encoder/config.json.
//!
//! candle-transformers' stable_diffusion::clip has the same architecture, but its `Config` has
//! private fields and only the real sizes (v1.5, v2.1, SDXL), so it cannot be built from a
//! config.json; this one reads sizes, activation (`gelu` for SD 2's OpenCLIP ViT-H,
//! `quick_gelu` for SD 1.x) and layer-norm epsilon from the file.

use crate::models::clip::ClipTextConfig;
use crate::models::Activation;
use crate::tokenize::{self, ClipTokenizer, TokenizerKind};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use std::path::Path;

struct Layer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm1: LayerNorm,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct TextEncoder {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    heads: usize,
    activation: Activation,
    /// Causal mask [positions, positions]: 0 on and below the diagonal, -inf above.
    causal_mask: Tensor,
}

impl TextEncoder {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config: ClipTextConfig = crate::models::read_config(dir)?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            bail!(
                "no text encoder weights at {}: the diffusers layout needs text_encoder/model.safetensors",
                weights.display()
            );
        }
        let vb = crate::models::load_weights(dir, device)?;
        // transformers 4 saved CLIPTextModel under `text_model.`, transformers 5 without it.
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        Self::from_varbuilder(&config, vb)
            .with_context(|| format!("cannot load the text encoder in {}", dir.display()))
    }

    fn from_varbuilder(config: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = config.hidden_size;
        if config.num_attention_heads == 0 || !hidden.is_multiple_of(config.num_attention_heads) {
            bail!(
                "config.json: hidden_size {hidden} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            );
        }
        let eps = config.layer_norm_eps;
        let embeddings = vb.pp("embeddings");
        let token_embedding =
            candle_nn::embedding(config.vocab_size, hidden, embeddings.pp("token_embedding"))?;
        let position_embedding = embeddings.get(
            (config.max_position_embeddings, hidden),
            "position_embedding.weight",
        )?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let layer = vb.pp(format!("encoder.layers.{i}"));
            let attn = layer.pp("self_attn");
            let square = |name: &str| candle_nn::linear(hidden, hidden, attn.pp(name));
            layers.push(Layer {
                q_proj: square("q_proj")?,
                k_proj: square("k_proj")?,
                v_proj: square("v_proj")?,
                out_proj: square("out_proj")?,
                layer_norm1: candle_nn::layer_norm(hidden, eps, layer.pp("layer_norm1"))?,
                layer_norm2: candle_nn::layer_norm(hidden, eps, layer.pp("layer_norm2"))?,
                fc1: candle_nn::linear(hidden, config.intermediate_size, layer.pp("mlp.fc1"))?,
                fc2: candle_nn::linear(config.intermediate_size, hidden, layer.pp("mlp.fc2"))?,
            });
        }
        let positions = config.max_position_embeddings;
        let mask: Vec<f32> = (0..positions)
            .flat_map(|i| (0..positions).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm: candle_nn::layer_norm(hidden, eps, vb.pp("final_layer_norm"))?,
            heads: config.num_attention_heads,
            activation: Activation::from_hf(&config.hidden_act)?,
            causal_mask: Tensor::from_vec(mask, (positions, positions), vb.device())?,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.position_embedding.dim(0).unwrap_or(0)
    }

    /// Hidden states [batch, len, hidden] of token ids [batch, len]: causal attention over every
    /// position, padding included, and no attention mask, as diffusers' SD pipelines run it.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        if len > self.max_positions() {
            bail!(
                "{len} tokens exceed the text encoder's {} positions",
                self.max_positions()
            );
        }
        let mut xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.narrow(0, 0, len)?)?;
        let mask = self.causal_mask.narrow(0, 0, len)?.narrow(1, 0, len)?;
        let hidden = xs.dim(D::Minus1)?;
        let head_dim = hidden / self.heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        for layer in &self.layers {
            let normed = layer.layer_norm1.forward(&xs)?;
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((batch, len, self.heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = split((layer.q_proj.forward(&normed)? * scale)?)?;
            let k = split(layer.k_proj.forward(&normed)?)?;
            let v = split(layer.v_proj.forward(&normed)?)?;
            let weights = q.matmul(&k.t()?)?.broadcast_add(&mask)?;
            let weights = candle_nn::ops::softmax_last_dim(&weights)?;
            let attended = weights
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((batch, len, hidden))?;
            xs = (xs + layer.out_proj.forward(&attended)?)?;
            let mlp = layer.fc2.forward(
                &self
                    .activation
                    .forward(&layer.fc1.forward(&layer.layer_norm2.forward(&xs)?)?)?,
            )?;
            xs = (xs + mlp)?;
        }
        Ok(self.final_layer_norm.forward(&xs)?)
    }
}

/// SD's prompt tokenizer: CLIP BPE from tokenizer/ (vocab.json + merges.txt, or tokenizer.json),
/// every prompt padded to `model_max_length` with the pad token of the tokenizer's config
/// (SD 2: "!", SD 1.x: <|endoftext|>).
pub struct PromptTokenizer {
    tokenizer: ClipTokenizer,
    pad_id: u32,
    length: usize,
}

impl PromptTokenizer {
    pub fn load(dir: &Path, max_positions: usize) -> Result<Self> {
        let inner = tokenize::load_from_dir(dir, TokenizerKind::Clip)?;
        let config: serde_json::Value = ["tokenizer_config.json", "special_tokens_map.json"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(dir.join(name)).ok())
            .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .fold(serde_json::json!({}), |mut merged, next| {
                if let (Some(merged), Some(next)) = (merged.as_object_mut(), next.as_object()) {
                    for (key, value) in next {
                        merged.entry(key.clone()).or_insert_with(|| value.clone());
                    }
                }
                merged
            });
        let token_text = |value: &serde_json::Value| -> Option<String> {
            value
                .as_str()
                .map(String::from)
                .or_else(|| value.get("content")?.as_str().map(String::from))
        };
        let pad_text = token_text(&config["pad_token"]).unwrap_or_else(|| "<|endoftext|>".into());
        let pad_id = inner.token_to_id(&pad_text).with_context(|| {
            format!(
                "{}: the pad token {pad_text:?} is not in the vocabulary",
                dir.display()
            )
        })?;
        let length = config["model_max_length"]
            .as_u64()
            .map_or(max_positions, |l| (l as usize).min(max_positions));
        Ok(Self {
            tokenizer: ClipTokenizer::new(inner, length)?,
            pad_id,
            length,
        })
    }

    /// Ids padded to the fixed length, truncated with the end token kept last.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text)?;
        ids.resize(self.length, self.pad_id);
        Ok(ids)
    }

    pub fn encode_tensor(&self, text: &str, device: &Device) -> Result<Tensor> {
        let ids = self.encode(text)?;
        Ok(Tensor::new(ids.as_slice(), device)?
            .unsqueeze(0)?
            .to_dtype(DType::U32)?)
    }
}
