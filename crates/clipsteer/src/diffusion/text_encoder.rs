//! The text encoder of Stable Diffusion: a CLIPTextModel's last hidden state (every position,
//! after the final layer norm), driven by text_encoder/config.json.
//!
//! candle-transformers' stable_diffusion::clip has the same architecture, but its `Config` has
//! private fields and only the real sizes (v1.5, v2.1, SDXL), so it cannot be built from a
//! config.json. This one runs the transformer layers of our CLIP (src/models/clip.rs), which read
//! sizes, activation (`gelu` for SD 2's OpenCLIP ViT-H, `quick_gelu` for SD 1.x) and layer-norm
//! epsilon from the file, over every position rather than CLIP's pooled ones.

use crate::models::clip::{text_layers, ClipTextConfig, EncoderLayer};
use crate::tokenize::{self, ClipTokenizer, TokenizerKind};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use std::path::Path;

pub struct TextEncoder {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl TextEncoder {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_variant(dir, None, device)
    }

    /// Loads from `dir` (a pipeline's `text_encoder/`), reading the `variant`'s weights
    /// (`model.fp16.safetensors`) when given; any format and dtype, computed in f32.
    pub fn load_variant(dir: &Path, variant: Option<&str>, device: &Device) -> Result<Self> {
        let config: ClipTextConfig = crate::models::read_config(dir)?;
        let files = crate::models::find_weights(dir, crate::models::TRANSFORMERS_WEIGHTS, variant)?;
        let vb = crate::models::load_weight_files(&files, device)?;
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
        Ok(Self {
            token_embedding,
            position_embedding,
            layers: text_layers(config, &vb)?,
            final_layer_norm: candle_nn::layer_norm(hidden, eps, vb.pp("final_layer_norm"))?,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.position_embedding.dim(0).unwrap_or(0)
    }

    /// Hidden states [batch, len, hidden] of token ids [batch, len]: causal attention over every
    /// position, padding included, and no attention mask, as diffusers' SD pipelines run it.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, len) = ids.dims2()?;
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
        for layer in &self.layers {
            xs = layer.forward_causal(&xs)?;
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
            .filter_map(|name| crate::files::read_regular_to_string(&dir.join(name), name).ok())
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
