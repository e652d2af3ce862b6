//! GPT-2 (and distilgpt2, gpt2-medium/large/xl) with HF weight names.
//!
//! transformers stores GPT-2's projections as Conv1D, weight (in, out); the LM head is tied to
//! `wte`. Checkpoints from the hub have bare names (`h.0.attn...`), while `save_pretrained` in
//! transformers 5 writes `transformer.h.0.attn...`: both load.

use super::attention::{attend, KvCache};
use super::{Activation, Dense};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;
use std::path::Path;

fn default_n_positions() -> usize {
    1024
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

/// The fields of a transformers `GPT2Config` that change the computation.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    #[serde(default = "default_n_positions")]
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Dense,
    attn_proj: Dense,
    ln_2: LayerNorm,
    c_fc: Dense,
    mlp_proj: Dense,
    n_head: usize,
    attn_scale: f64,
    activation: Activation,
}

impl Block {
    fn load(cfg: &Gpt2Config, layer_index: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.n_embd;
        let inner = cfg.n_inner.unwrap_or(4 * hidden);
        let head_dim = hidden / cfg.n_head;
        let mut attn_scale = 1.0;
        if cfg.scale_attn_weights {
            attn_scale /= (head_dim as f64).sqrt();
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            attn_scale /= (layer_index + 1) as f64;
        }
        Ok(Self {
            ln_1: candle_nn::layer_norm(hidden, cfg.layer_norm_epsilon, vb.pp("ln_1"))?,
            c_attn: Dense::conv1d(hidden, 3 * hidden, vb.pp("attn.c_attn"))?,
            attn_proj: Dense::conv1d(hidden, hidden, vb.pp("attn.c_proj"))?,
            ln_2: candle_nn::layer_norm(hidden, cfg.layer_norm_epsilon, vb.pp("ln_2"))?,
            c_fc: Dense::conv1d(hidden, inner, vb.pp("mlp.c_fc"))?,
            mlp_proj: Dense::conv1d(inner, hidden, vb.pp("mlp.c_proj"))?,
            n_head: cfg.n_head,
            attn_scale,
            activation: Activation::from_hf(&cfg.activation_function)?,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        layer_index: usize,
        cache: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        use candle_core::Module;
        let (batch, new, hidden) = xs.dims3()?;
        let head_dim = hidden / self.n_head;
        let qkv = self.c_attn.forward(&self.ln_1.forward(xs)?)?;
        let split = |index: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(2, index * hidden, hidden)?
                .reshape((batch, new, self.n_head, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let attended = attend(
            &q,
            &k,
            &v,
            cache.layer_mut(layer_index),
            self.attn_scale,
            true,
        )?
        .transpose(1, 2)?
        .reshape((batch, new, hidden))?;
        let xs = self.attn_proj.forward_residual(&attended, xs)?;
        let mlp = self
            .activation
            .forward(&self.c_fc.forward(&self.ln_2.forward(&xs)?)?)?;
        self.mlp_proj.forward_residual(&mlp, &xs)
    }
}

/// GPT-2 with its tied LM head.
pub struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    config: Gpt2Config,
    device: Device,
}

impl Gpt2 {
    /// Loads config.json and model.safetensors from a directory in the HF layout.
    ///
    /// Errors: a config.json whose `model_type` is not GPT-2's (a CLIP or BERT directory
    /// given as the LM) says which model it is, rather than which GPT-2 field it lacks.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let raw: serde_json::Value = super::read_config(dir)?;
        if let Some(model_type) = raw.get("model_type").and_then(|t| t.as_str()) {
            if model_type != "gpt2" {
                bail!(
                    "{} holds a '{model_type}' model (config.json model_type), not a GPT-2 language model: give a GPT-2 family checkpoint (gpt2, distilgpt2, gpt2-medium, …) or a llama or Gemma 3 .gguf file",
                    dir.display()
                );
            }
        }
        let config: Gpt2Config =
            serde_json::from_value(raw).with_context(|| super::invalid_config(dir))?;
        let vb = super::load_weights(dir, device)?;
        Self::from_varbuilder(config, vb)
            .with_context(|| format!("{} is not a GPT-2 checkpoint", dir.display()))
    }

    pub fn from_varbuilder(config: Gpt2Config, vb: VarBuilder) -> Result<Self> {
        if config.n_head == 0 || !config.n_embd.is_multiple_of(config.n_head) {
            bail!(
                "config.json: n_embd ({}) must be a multiple of n_head ({})",
                config.n_embd,
                config.n_head
            );
        }
        let vb = if vb.contains_tensor("transformer.wte.weight") {
            vb.pp("transformer")
        } else {
            vb
        };
        let device = vb.device().clone();
        let wte = vb.get((config.vocab_size, config.n_embd), "wte.weight")?;
        let wpe = vb.get((config.n_positions, config.n_embd), "wpe.weight")?;
        let blocks = (0..config.n_layer)
            .map(|i| Block::load(&config, i, vb.pp(format!("h.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = candle_nn::layer_norm(config.n_embd, config.layer_norm_epsilon, vb.pp("ln_f"))?;
        Ok(Self {
            wte,
            wpe,
            blocks,
            ln_f,
            config,
            device,
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.blocks.len())
    }

    /// Final hidden states [batch, new, n_embd] for `ids` [batch, new], which continue the
    /// positions already in `cache`; the cache is extended with them.
    pub fn hidden_states(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        use candle_core::Module;
        let (batch, new) = ids.dims2()?;
        let past = cache.len();
        if past + new > self.config.n_positions {
            bail!(
                "sequence of {} tokens exceeds the model's context of {} positions",
                past + new,
                self.config.n_positions
            );
        }
        cache.check_batch(batch)?;
        let token_embeddings =
            self.wte
                .embedding(&ids.flatten_all()?)?
                .reshape((batch, new, ()))?;
        let position_embeddings = self.wpe.narrow(0, past, new)?;
        let mut xs = token_embeddings.broadcast_add(&position_embeddings)?;
        for (index, block) in self.blocks.iter().enumerate() {
            xs = block.forward(&xs, index, cache)?;
        }
        cache.advance(batch, new);
        Ok(self.ln_f.forward(&xs)?)
    }

    /// Next-token logits [batch, new, vocab] for every new position.
    pub fn forward(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let hidden = self.hidden_states(ids, cache)?;
        self.logits(&hidden)
    }

    /// Projects hidden states onto the vocabulary with the tied head.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let rows = hidden.elem_count() / self.config.n_embd;
        let hidden = hidden.reshape((rows, self.config.n_embd))?;
        let logits = hidden.matmul(&self.wte.t()?)?;
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.config.vocab_size;
        Ok(logits.reshape(out_dims)?)
    }
}
