//! One decoder-only transformer for the families that share llama's shape, configured by
//! config.json as transformers configures them (`modeling_llama.py`, `modeling_mistral.py`,
//! `modeling_qwen2.py`, `modeling_qwen3.py`, `modeling_gemma2.py`, `modeling_gemma3.py`,
//! `modeling_phi3.py`), and loaded from HF weight names. GGUF files of the llama and Gemma 3
//! architectures load into the same model ([`super::gguf`]): one implementation per computation.
//!
//! What the families change, all of it config:
//! - q/k/v biases (qwen2), RMSNorm over each query and key head (qwen3, gemma3);
//! - fused q/k/v and gate/up projections (phi3): every family runs fused here, since one matmul
//!   is faster than three at steering's row counts;
//! - Gemma: embeddings × √hidden, RMSNorm weights used as (1 + w), norms after attention and
//!   MLP as well as before, attention scaled by `query_pre_attn_scalar`^−½, soft-capped
//!   attention scores and logits (gemma2), a GELU-tanh gate;
//! - sliding-window layers (mistral, qwen2 with `use_sliding_window`, gemma2's alternate
//!   layers, gemma3's `layer_types`), with their own rope base in Gemma 3;
//! - rope scaling: `linear`, `dynamic` and `llama3`; a partial rotary dimension (phi3).
//!
//! Weights are f32 in memory whatever the file holds (f16, bf16 or quantised GGUF), as the
//! reference runs them: transformers loads a checkpoint with `dtype=torch.float32`.

use super::attention::{attend_capped, attend_window, KvCache, LayerKv};
use super::{Activation, Dense};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;
use std::path::Path;

/// Positions the rope tables cover. Steering writes tens of tokens; tables for Llama 3's
/// 131 072 positions would take tens of MB for nothing.
pub const MAX_POSITIONS: usize = 8192;

/// The `model_type`s of config.json this implementation runs, with GPT-2's own.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "phi3",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
}

impl Family {
    /// The family of a config.json `model_type`, None for one this module does not run.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "llama" => Self::Llama,
            "mistral" => Self::Mistral,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "gemma2" => Self::Gemma2,
            "gemma3_text" | "gemma3" => Self::Gemma3,
            "phi3" => Self::Phi3,
            _ => return None,
        })
    }

    fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }
}

/// Rope scaling (transformers' `rope_scaling` / `rope_parameters`, `modeling_rope_utils.py`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// NTK scaling past `original` positions: position p rotates with the base transformers
    /// computes for a sequence of p + 1 positions, as it does while generating one token at a
    /// time with a cache. (One transformers forward over a longer sequence rotates every
    /// position with the base of the whole length; see docs/MODELS.md.)
    Dynamic {
        factor: f32,
        original: usize,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original: usize,
    },
}

/// Everything about a decoder that changes its computation.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    /// Positions the model attends over: `max_position_embeddings`, at most [`MAX_POSITIONS`].
    pub context: usize,
    pub rms_eps: f64,
    /// Rope base of the global layers.
    pub rope_base: f32,
    pub rope_scaling: RopeScaling,
    /// Rope base of the sliding-window layers when it differs (Gemma 3), unscaled.
    pub rope_local_base: Option<f32>,
    /// Dimensions of each head that rotate (`partial_rotary_factor` · head_dim).
    pub rotary_dim: usize,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub qk_norm: bool,
    /// Norms after attention and after the MLP too (Gemma 2 and 3).
    pub sandwich_norms: bool,
    /// Added to every RMSNorm weight at load: 1 for HF Gemma, which stores w and scales by
    /// (1 + w); 0 where the file stores the factor itself (llama.cpp's Gemma GGUF).
    pub norm_offset: f32,
    pub embed_scale: Option<f32>,
    pub activation: Activation,
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// Each layer's attention window, None for global attention.
    pub windows: Vec<Option<usize>>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// Whether the model's tokenizer puts `bos_token_id` first.
    pub add_bos: bool,
    /// Every id that ends a text (generation_config.json's `eos_token_id` may list several).
    pub eos_token_ids: Vec<u32>,
}

impl DecoderConfig {
    /// Whether layer `index` attends over a sliding window.
    pub fn is_sliding(&self, index: usize) -> bool {
        self.windows.get(index).is_some_and(|w| w.is_some())
    }

    /// The sliding window, if any layer has one.
    pub fn sliding_window(&self) -> Option<usize> {
        self.windows.iter().flatten().next().copied()
    }

    /// Reads a transformers config.json (and generation_config.json's end-of-text ids, which
    /// win over config.json's as they do in `generate`).
    pub fn from_hf(raw: &Value, generation: Option<&Value>) -> Result<Self> {
        let model_type = raw["model_type"].as_str().unwrap_or_default();
        let family = Family::from_model_type(model_type).with_context(|| {
            format!(
                "model_type '{model_type}' is not a supported language model (supported: {})",
                SUPPORTED_MODEL_TYPES.join(", ")
            )
        })?;
        // Gemma 3's multimodal checkpoints nest the language model's config.
        let c = match raw.get("text_config") {
            Some(text) if model_type == "gemma3" => text,
            _ => raw,
        };
        let int = |key: &str| c.get(key).and_then(Value::as_u64).map(|v| v as usize);
        let float = |key: &str| c.get(key).and_then(Value::as_f64);
        let need = |key: &str| match c.get(key) {
            None | Some(Value::Null) => bail!("config.json lacks {key}"),
            Some(v) => v.as_u64().map(|v| v as usize).with_context(|| {
                format!("config.json: {key} must be a non-negative integer, not {v}")
            }),
        };
        let hidden = need("hidden_size")?;
        let heads = need("num_attention_heads")?;
        let layers = need("num_hidden_layers")?;
        let kv_heads = int("num_key_value_heads").unwrap_or(heads);
        let head_dim = int("head_dim").unwrap_or(hidden / heads.max(1));
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || head_dim == 0 {
            bail!("config.json: inconsistent head counts ({heads} heads, {kv_heads} key/value heads, head_dim {head_dim})");
        }
        let gemma = family.is_gemma();
        let (rope_base, rope_scaling, rope_local_base) = rope_settings(c, family)?;
        let partial = float("partial_rotary_factor")
            .or_else(|| c["rope_parameters"]["partial_rotary_factor"].as_f64())
            .unwrap_or(1.0);
        let rotary_dim = (head_dim as f64 * partial) as usize;
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
            bail!("config.json: head_dim {head_dim} × partial_rotary_factor {partial} must be an even number of rotated dimensions");
        }
        if !(rope_base.is_finite() && rope_base > 0.0)
            || rope_local_base.is_some_and(|b| !(b.is_finite() && b > 0.0))
        {
            bail!("config.json: rope_theta must be a positive number");
        }
        let activation = c
            .get("hidden_activation")
            .or_else(|| c.get("hidden_act"))
            .and_then(Value::as_str)
            .unwrap_or(if gemma { "gelu_pytorch_tanh" } else { "silu" });
        let tie_default = matches!(family, Family::Gemma2 | Family::Gemma3);
        let tie_word_embeddings = c
            .get("tie_word_embeddings")
            .or_else(|| raw.get("tie_word_embeddings"))
            .and_then(Value::as_bool)
            .unwrap_or(tie_default);
        let attn_scale = match float("query_pre_attn_scalar").filter(|_| gemma) {
            Some(scalar) => scalar.powf(-0.5),
            None => (head_dim as f64).powf(-0.5),
        };
        let positive = |key: &str| float(key).filter(|v| *v > 0.0);
        let eos = |v: &Value| ids_of(v.get("eos_token_id"));
        let mut eos_token_ids = generation.map(eos).unwrap_or_default();
        if eos_token_ids.is_empty() {
            eos_token_ids = eos(c);
        }
        if eos_token_ids.is_empty() {
            eos_token_ids = eos(raw);
        }
        Ok(Self {
            family,
            vocab_size: need("vocab_size")?,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            intermediate: need("intermediate_size")?,
            context: context_of(int("max_position_embeddings"), &rope_scaling),
            rms_eps: float("rms_norm_eps").unwrap_or(1e-6),
            rope_base,
            rope_scaling,
            rope_local_base,
            rotary_dim,
            attention_bias: family == Family::Qwen2
                || c.get("attention_bias").and_then(Value::as_bool) == Some(true),
            mlp_bias: c.get("mlp_bias").and_then(Value::as_bool) == Some(true),
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            sandwich_norms: gemma,
            norm_offset: if gemma { 1.0 } else { 0.0 },
            embed_scale: gemma.then(|| (hidden as f32).sqrt()),
            activation: Activation::from_hf(activation)?,
            attn_scale,
            attn_softcap: positive("attn_logit_softcapping").filter(|_| gemma),
            final_softcap: positive("final_logit_softcapping").filter(|_| gemma),
            windows: layer_windows(c, family, layers)?,
            tie_word_embeddings,
            bos_token_id: ids_of(c.get("bos_token_id").or_else(|| raw.get("bos_token_id")))
                .first()
                .copied(),
            add_bos: false,
            eos_token_ids,
        })
    }
}

/// Positions the model runs: `max_position_embeddings`, times the factor of dynamic NTK scaling
/// (which exists to run past it), at most [`MAX_POSITIONS`].
fn context_of(max_positions: Option<usize>, scaling: &RopeScaling) -> usize {
    let max = max_positions.unwrap_or(MAX_POSITIONS);
    let extended = match *scaling {
        RopeScaling::Dynamic { factor, .. } => (max as f32 * factor.max(1.0)) as usize,
        _ => max,
    };
    extended.min(MAX_POSITIONS)
}

/// An id or a list of ids (config.json writes either).
fn ids_of(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_u64)
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// (global base, its scaling, local base) from either spelling transformers has written:
/// `rope_theta` + `rope_scaling` (+ Gemma 3's `rope_local_base_freq`), or transformers 5's
/// `rope_parameters`, which Gemma 3 keys by layer type.
fn rope_settings(c: &Value, family: Family) -> Result<(f32, RopeScaling, Option<f32>)> {
    let default_base = if family == Family::Gemma3 {
        1_000_000.0
    } else {
        10_000.0
    };
    let max_positions = c
        .get("max_position_embeddings")
        .and_then(Value::as_u64)
        .unwrap_or(MAX_POSITIONS as u64) as usize;
    let theta = |v: Option<&Value>| v.and_then(|v| v.get("rope_theta")).and_then(Value::as_f64);
    let params = c.get("rope_parameters").filter(|v| v.is_object());
    let (global, local) = match params {
        Some(p) if p.get("full_attention").is_some() => {
            (p.get("full_attention"), p.get("sliding_attention"))
        }
        Some(p) => (Some(p), None),
        None => (c.get("rope_scaling").filter(|v| v.is_object()), None),
    };
    let base = theta(global)
        .or_else(|| c.get("rope_theta").and_then(Value::as_f64))
        .unwrap_or(default_base) as f32;
    let scaling = match global {
        Some(p) => scaling_of(p, max_positions)?,
        None => RopeScaling::None,
    };
    let local_base = match family {
        Family::Gemma3 => Some(
            theta(local)
                .or_else(|| c.get("rope_local_base_freq").and_then(Value::as_f64))
                .unwrap_or(10_000.0) as f32,
        ),
        _ => None,
    };
    Ok((base, scaling, local_base))
}

fn scaling_of(p: &Value, max_positions: usize) -> Result<RopeScaling> {
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    // transformers requires the factors of each scaling type (`rope_config_validation`).
    let f = |key: &str| -> Result<f32> {
        match p.get(key).and_then(Value::as_f64) {
            Some(v) if v.is_finite() && v > 0.0 => Ok(v as f32),
            _ => bail!("config.json: rope scaling '{kind}' needs {key}, a positive number"),
        }
    };
    let original = p
        .get("original_max_position_embeddings")
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .unwrap_or(max_positions);
    // transformers' dynamic NTK counts from max_position_embeddings and reads no other field.
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: f("factor")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: f("factor")?,
            original: max_positions,
        },
        "llama3" => {
            let (low_freq_factor, high_freq_factor) = (f("low_freq_factor")?, f("high_freq_factor")?);
            if high_freq_factor <= low_freq_factor {
                bail!("config.json: llama3 rope scaling needs high_freq_factor > low_freq_factor");
            }
            RopeScaling::Llama3 {
                factor: f("factor")?,
                low_freq_factor,
                high_freq_factor,
                original,
            }
        }
        other => bail!(
            "rope scaling '{other}' in config.json is not supported (default, linear, dynamic, llama3)"
        ),
    })
}

/// Each layer's window. `layer_types` wins where the config has it; otherwise each family's
/// own rule, as transformers derives `layer_types` from older configs.
fn layer_windows(c: &Value, family: Family, layers: usize) -> Result<Vec<Option<usize>>> {
    let window = match c.get("sliding_window") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().filter(|&w| w > 0) {
            Some(w) => Some(w as usize),
            None => {
                bail!("config.json: sliding_window must be a positive integer or null, not {v}")
            }
        },
    };
    if let Some(types) = c.get("layer_types").and_then(Value::as_array) {
        if types.len() != layers {
            bail!(
                "config.json: layer_types names {} layers, num_hidden_layers {layers}",
                types.len()
            );
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(None),
                Some("sliding_attention") => window
                    .map(Some)
                    .context("config.json: a sliding_attention layer without sliding_window"),
                Some(other) => bail!("config.json: layer type '{other}' is not supported (sliding_attention, full_attention)"),
                None => bail!("config.json: layer_types must be a list of strings"),
            })
            .collect();
    }
    Ok((0..layers)
        .map(|i| {
            let sliding = match family {
                Family::Mistral | Family::Phi3 => true,
                Family::Qwen2 | Family::Qwen3 => {
                    c.get("use_sliding_window").and_then(Value::as_bool) == Some(true)
                        && i >= c
                            .get("max_window_layers")
                            .and_then(Value::as_u64)
                            .unwrap_or(0) as usize
                }
                Family::Gemma2 => i % 2 == 0,
                Family::Gemma3 => {
                    let pattern = c
                        .get("sliding_window_pattern")
                        .and_then(Value::as_u64)
                        .unwrap_or(6) as usize;
                    !(i + 1).is_multiple_of(pattern.max(1))
                }
                Family::Llama => false,
            };
            window.filter(|_| sliding)
        })
        .collect())
}

/// Where weights come from: HF names in, f32 tensors of the asked shape out.
pub trait WeightSource {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    fn contains(&self, name: &str) -> bool;
}

/// A checkpoint in the HF layout. Causal LMs name their weights `model.…` and `lm_head.…`;
/// Gemma 3's multimodal checkpoints put the language model under `language_model.` (transformers
/// 4) or `model.language_model.` (5).
pub struct HfWeights<'a> {
    vb: VarBuilder<'a>,
    body: String,
}

impl<'a> HfWeights<'a> {
    pub fn new(vb: VarBuilder<'a>) -> Self {
        let body = ["model.", "language_model.model.", "model.language_model."]
            .into_iter()
            .find(|p| vb.contains_tensor(&format!("{p}embed_tokens.weight")))
            .unwrap_or("model.")
            .to_string();
        Self { vb, body }
    }

    fn name(&self, name: &str) -> String {
        match name.strip_prefix("model.") {
            Some(rest) => format!("{}{rest}", self.body),
            None if self.body == "language_model.model." => format!("language_model.{name}"),
            None => name.to_string(),
        }
    }
}

impl WeightSource for HfWeights<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self
            .vb
            .get_with_hints_dtype(
                shape.to_vec(),
                &self.name(name),
                Default::default(),
                candle_core::DType::F32,
            )
            .map_err(super::without_backtrace)?)
    }
    fn contains(&self, name: &str) -> bool {
        self.vb.contains_tensor(&self.name(name))
    }
}

struct Layer {
    input_norm: Tensor,
    /// q, k and v side by side.
    qkv: Dense,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: Dense,
    post_attention_norm: Option<Tensor>,
    pre_mlp_norm: Tensor,
    /// gate and up side by side.
    gate_up: Dense,
    down: Dense,
    post_mlp_norm: Option<Tensor>,
    window: Option<usize>,
    /// Index into [`Transformer::ropes`].
    rope: usize,
}

/// Rope cos/sin tables, each [positions, rotary_dim / 2].
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// The decoder-only transformer of every family in [`Family`].
pub struct Transformer {
    embeddings: Tensor,
    embed_scale: Option<Tensor>,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Dense,
    /// The global layers' table, then the local layers' if they have their own base.
    ropes: Vec<Rope>,
    config: DecoderConfig,
    device: Device,
}

fn dense(w: &dyn WeightSource, name: &str, out: usize, inp: usize, bias: bool) -> Result<Dense> {
    fused(w, &[(name, out)], inp, bias)
}

/// One layer computing the outputs of `parts` (name, out) side by side, joined before the one
/// transposition [`Dense`] makes, so that loading copies each weight once.
fn fused(w: &dyn WeightSource, parts: &[(&str, usize)], inp: usize, bias: bool) -> Result<Dense> {
    let weights = parts
        .iter()
        .map(|(name, out)| w.tensor(&format!("{name}.weight"), &[*out, inp]))
        .collect::<Result<Vec<_>>>()?;
    let out: usize = parts.iter().map(|(_, out)| out).sum();
    let weight = match weights.as_slice() {
        [one] => one.clone(),
        all => Tensor::cat(all, 0)?,
    };
    let bias = if bias {
        let biases = parts
            .iter()
            .map(|(name, out)| w.tensor(&format!("{name}.bias"), &[*out]))
            .collect::<Result<Vec<_>>>()?;
        Some(Tensor::cat(&biases, 0)?)
    } else {
        None
    };
    Dense::from_out_in(weight, out, inp)?.with_bias(bias)
}

impl Layer {
    fn load(w: &dyn WeightSource, c: &DecoderConfig, index: usize) -> Result<Self> {
        let p = |n: &str| format!("model.layers.{index}.{n}");
        let norm = |n: &str, size: usize| -> Result<Tensor> {
            let t = w.tensor(&format!("{}.weight", p(n)), &[size])?;
            Ok(if c.norm_offset != 0.0 {
                (t + c.norm_offset as f64)?
            } else {
                t
            })
        };
        let (h, d, i) = (c.hidden, c.head_dim, c.intermediate);
        let (q_out, kv_out) = (c.heads * d, c.kv_heads * d);
        let qkv = if c.family == Family::Phi3 {
            dense(w, &p("self_attn.qkv_proj"), q_out + 2 * kv_out, h, false)?
        } else {
            let (q, k, v) = (
                p("self_attn.q_proj"),
                p("self_attn.k_proj"),
                p("self_attn.v_proj"),
            );
            fused(
                w,
                &[(&q, q_out), (&k, kv_out), (&v, kv_out)],
                h,
                c.attention_bias,
            )?
        };
        let gate_up = if c.family == Family::Phi3 {
            dense(w, &p("mlp.gate_up_proj"), 2 * i, h, false)?
        } else {
            let (gate, up) = (p("mlp.gate_proj"), p("mlp.up_proj"));
            fused(w, &[(&gate, i), (&up, i)], h, c.mlp_bias)?
        };
        let (post_attention_norm, pre_mlp_norm, post_mlp_norm) = if c.sandwich_norms {
            (
                Some(norm("post_attention_layernorm", h)?),
                norm("pre_feedforward_layernorm", h)?,
                Some(norm("post_feedforward_layernorm", h)?),
            )
        } else {
            (None, norm("post_attention_layernorm", h)?, None)
        };
        let window = c.windows[index];
        Ok(Self {
            input_norm: norm("input_layernorm", h)?,
            qkv,
            q_norm: c.qk_norm.then(|| norm("self_attn.q_norm", d)).transpose()?,
            k_norm: c.qk_norm.then(|| norm("self_attn.k_norm", d)).transpose()?,
            o: dense(w, &p("self_attn.o_proj"), h, q_out, false)?,
            post_attention_norm,
            pre_mlp_norm,
            gate_up,
            down: dense(w, &p("mlp.down_proj"), h, i, c.mlp_bias)?,
            post_mlp_norm,
            window,
            rope: usize::from(window.is_some() && c.rope_local_base.is_some()),
        })
    }

    /// One block over `xs` [batch, new, hidden], with `rope` narrowed to the new positions.
    fn forward(
        &self,
        xs: &Tensor,
        c: &DecoderConfig,
        rope: (&Tensor, &Tensor),
        kv: &mut LayerKv,
    ) -> Result<Tensor> {
        let (batch, new, _) = xs.dims3()?;
        let eps = c.rms_eps as f32;
        let rms = |t: &Tensor, w: &Tensor| candle_nn::ops::rms_norm(t, w, eps);
        let qkv = self.qkv.forward(&rms(xs, &self.input_norm)?)?;
        let (q_out, kv_out) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        // [batch, new, heads·head_dim] → (per-head norm) → rotated [batch, heads, new, head_dim]
        let heads = |start: usize, heads: usize, norm: Option<&Tensor>, rotate: bool| {
            let width = heads * c.head_dim;
            let t = qkv
                .narrow(2, start, width)?
                .reshape((batch, new, heads, c.head_dim))?;
            let t = match norm {
                Some(w) => rms(&t, w)?,
                None => t,
            };
            let t = t.transpose(1, 2)?.contiguous()?;
            if rotate {
                rotate_half(&t, rope.0, rope.1, c.rotary_dim)
            } else {
                Ok(t)
            }
        };
        let q = heads(0, c.heads, self.q_norm.as_ref(), true)?;
        let k = heads(q_out, c.kv_heads, self.k_norm.as_ref(), true)?;
        let v = heads(q_out + kv_out, c.kv_heads, None, false)?;
        let repeat = c.heads / c.kv_heads;
        let (k, v) = (repeat_kv(&k, repeat)?, repeat_kv(&v, repeat)?);
        let attended = match self.window {
            Some(w) => attend_window(&q, &k, &v, kv, c.attn_scale, w, c.attn_softcap)?,
            None => attend_capped(&q, &k, &v, kv, c.attn_scale, true, c.attn_softcap)?,
        }
        .transpose(1, 2)?
        .reshape((batch, new, q_out))?;
        let xs = match &self.post_attention_norm {
            Some(w) => (xs + rms(&self.o.forward(&attended)?, w)?)?,
            None => self.o.forward_residual(&attended, xs)?,
        };
        let gate_up = self.gate_up.forward(&rms(&xs, &self.pre_mlp_norm)?)?;
        let i = c.intermediate;
        let gated =
            (c.activation.forward(&gate_up.narrow(2, 0, i)?)? * gate_up.narrow(2, i, i)?)?;
        Ok(match &self.post_mlp_norm {
            Some(w) => (&xs + rms(&self.down.forward(&gated)?, w)?)?,
            None => self.down.forward_residual(&gated, &xs)?,
        })
    }
}

/// Rotates the first `rotary_dim` dimensions of `t` [batch, heads, new, head_dim] by halves
/// (transformers' `rotate_half`); the rest pass through (`partial_rotary_factor`).
fn rotate_half(t: &Tensor, cos: &Tensor, sin: &Tensor, rotary_dim: usize) -> Result<Tensor> {
    let head_dim = t.dim(3)?;
    if rotary_dim == head_dim {
        return Ok(candle_nn::rotary_emb::rope(t, cos, sin)?);
    }
    let rotated =
        candle_nn::rotary_emb::rope(&t.narrow(3, 0, rotary_dim)?.contiguous()?, cos, sin)?;
    let passed = t.narrow(3, rotary_dim, head_dim - rotary_dim)?;
    Ok(Tensor::cat(&[&rotated, &passed], 3)?.contiguous()?)
}

/// Shares each key/value head among `repeat` consecutive query heads (grouped-query attention).
pub(crate) fn repeat_kv(xs: &Tensor, repeat: usize) -> candle_core::Result<Tensor> {
    if repeat == 1 {
        return Ok(xs.clone());
    }
    let (batch, kv_heads, len, dim) = xs.dims4()?;
    xs.unsqueeze(2)?
        .broadcast_as((batch, kv_heads, repeat, len, dim))?
        .reshape((batch, kv_heads * repeat, len, dim))
}

/// Inverse frequencies 1 / base^(2i / dim) in f32, as transformers computes them, then scaled.
fn inv_freq(base: f32, dim: usize, scaling: &RopeScaling) -> Vec<f32> {
    let plain: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
        .collect();
    match *scaling {
        RopeScaling::None | RopeScaling::Dynamic { .. } => plain,
        RopeScaling::Linear { factor } => plain.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original,
        } => {
            let original = original as f32;
            let low_wavelen = original / low_freq_factor;
            let high_wavelen = original / high_freq_factor;
            plain
                .iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen > low_wavelen {
                        f / factor
                    } else if wavelen < high_wavelen {
                        f
                    } else {
                        let smooth = (original / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

fn rope_table(
    base: f32,
    scaling: &RopeScaling,
    c: &DecoderConfig,
    device: &Device,
) -> Result<Rope> {
    let dim = c.rotary_dim;
    let half = dim / 2;
    let freqs = inv_freq(base, dim, scaling);
    let mut angles = Vec::with_capacity(c.context * half);
    for p in 0..c.context {
        match *scaling {
            RopeScaling::Dynamic { factor, original } if p >= original => {
                // transformers' `_compute_dynamic_ntk_parameters` for a sequence of p + 1.
                let len = (p + 1) as f64;
                let ratio = factor as f64 * len / original as f64 - (factor as f64 - 1.0);
                let scaled = base as f64 * ratio.powf(dim as f64 / (dim as f64 - 2.0));
                let freqs = inv_freq(scaled as f32, dim, &RopeScaling::None);
                angles.extend(freqs.iter().map(|f| p as f32 * f));
            }
            _ => angles.extend(freqs.iter().map(|f| p as f32 * f)),
        }
    }
    let angles = Tensor::from_vec(angles, (c.context, half), device)?;
    Ok(Rope {
        cos: angles.cos()?,
        sin: angles.sin()?,
    })
}

impl Transformer {
    /// Loads a directory in the HF layout: config.json, generation_config.json when present,
    /// and the weights in any format [`super::load_weights`] reads.
    pub fn load_hf(dir: &Path, device: &Device) -> Result<Self> {
        let raw: Value = super::read_config(dir)?;
        let generation_path = dir.join("generation_config.json");
        // Optional, but a FIFO or a directory under its name is refused rather than waited on.
        let generation: Option<Value> = match crate::files::model_file_present(&generation_path)? {
            true => {
                let what = generation_path.display().to_string();
                let text = crate::files::read_regular_to_string(&generation_path, &what)?;
                Some(serde_json::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("{what} is not valid JSON ({e}); download it again")
                })?)
            }
            false => None,
        };
        let config = DecoderConfig::from_hf(&raw, generation.as_ref())
            .with_context(|| format!("{}", dir.join("config.json").display()))?;
        let vb = super::load_weights(dir, device)?;
        Self::from_weights(config, &HfWeights::new(vb), device).with_context(|| {
            format!(
                "{} does not hold the weights its config.json describes",
                dir.display()
            )
        })
    }

    /// Builds the model from `weights` named as transformers names them.
    pub fn from_weights(
        mut config: DecoderConfig,
        weights: &dyn WeightSource,
        device: &Device,
    ) -> Result<Self> {
        let c = &config;
        if c.windows.len() != c.layers {
            bail!("{} layer windows for {} layers", c.windows.len(), c.layers);
        }
        let embeddings = weights.tensor("model.embed_tokens.weight", &[c.vocab_size, c.hidden])?;
        let layers = (0..c.layers)
            .map(|i| Layer::load(weights, c, i))
            .collect::<Result<Vec<_>>>()?;
        let mut norm = weights.tensor("model.norm.weight", &[c.hidden])?;
        if c.norm_offset != 0.0 {
            norm = (norm + c.norm_offset as f64)?;
        }
        // A checkpoint that ships its head uses it even when the config says tied (GGUF files
        // of tied models may carry one).
        let head = if weights.contains("lm_head.weight") || !c.tie_word_embeddings {
            dense(weights, "lm_head", c.vocab_size, c.hidden, false)?
        } else {
            Dense::from_out_in(embeddings.clone(), c.vocab_size, c.hidden)?
        };
        let mut ropes = vec![rope_table(c.rope_base, &c.rope_scaling, c, device)?];
        if let Some(local) = c.rope_local_base {
            ropes.push(rope_table(local, &RopeScaling::None, c, device)?);
        }
        let embed_scale = c.embed_scale.map(|s| Tensor::new(s, device)).transpose()?;
        config.vocab_size = embeddings.dim(0)?;
        Ok(Self {
            embeddings,
            embed_scale,
            layers,
            norm,
            head,
            ropes,
            config,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Sets the BOS the model is fed first (the tokenizer's, which only it knows).
    pub fn set_bos(&mut self, bos: Option<u32>) {
        self.config.add_bos = bos.is_some();
        if bos.is_some() {
            self.config.bos_token_id = bos;
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Final hidden states (after the output norm) [batch, new, hidden] of `ids` [batch, new]
    /// (u32), which continue the positions in `cache`; the cache is extended with them.
    ///
    /// Errors: a cache of another number of rows, or more positions than the context.
    pub fn hidden_states(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (batch, new) = ids.dims2()?;
        let past = cache.len();
        let c = &self.config;
        if past + new > c.context {
            bail!(
                "sequence of {} tokens exceeds the model's context of {}",
                past + new,
                c.context
            );
        }
        cache.check_batch(batch)?;
        let tables = self
            .ropes
            .iter()
            .map(|r| Ok((r.cos.narrow(0, past, new)?, r.sin.narrow(0, past, new)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut xs = self
            .embeddings
            .embedding(&ids.flatten_all()?)?
            .reshape((batch, new, c.hidden))?;
        if let Some(scale) = &self.embed_scale {
            xs = xs.broadcast_mul(scale)?;
        }
        for (index, layer) in self.layers.iter().enumerate() {
            let (cos, sin) = &tables[layer.rope];
            xs = layer.forward(&xs, c, (cos, sin), cache.layer_mut(index))?;
        }
        cache.advance(batch, new);
        Ok(candle_nn::ops::rms_norm(&xs, &self.norm, c.rms_eps as f32)?)
    }

    /// Next-token logits [.., vocab] of final hidden states [.., hidden], soft-capped where the
    /// config says so (Gemma 2's `final_logit_softcapping`).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = self.head.forward(hidden)?;
        Ok(match self.config.final_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }
}
