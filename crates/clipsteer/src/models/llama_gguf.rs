//! Llama-family causal LMs (SmolLM2, Llama, TinyLlama, ...) from a GGUF file, with the tokenizer
//! built from the file's metadata.
//!
//! Weights are dequantised to f32 at load: the models this serves are small, f32 matmuls are
//! multi-threaded and fast here, and the results then equal transformers' own GGUF loading
//! (which dequantises too) instead of differing by a quantised-activation kernel's rounding.
//! The KV cache is clipsteer's forkable one, so MAGIC can branch on candidates.

use super::attention::{attend, KvCache};
use super::Dense;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use tokenizers::Tokenizer;

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context: usize,
    pub rms_eps: f64,
    pub rope_base: f32,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

struct Block {
    attn_norm: Tensor,
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    ffn_norm: Tensor,
    gate: Dense,
    up: Dense,
    down: Dense,
}

pub struct LlamaGguf {
    embeddings: Tensor,
    blocks: Vec<Block>,
    output_norm: Tensor,
    /// The LM head as (hidden, vocab); the token embeddings when the file ties them.
    head: Dense,
    cos: Tensor,
    sin: Tensor,
    config: LlamaConfig,
    device: Device,
}

pub(crate) fn meta_u32(content: &gguf_file::Content, key: &str) -> Result<u32> {
    content
        .metadata
        .get(key)
        .with_context(|| format!("GGUF metadata lacks {key}"))?
        .to_u32()
        .with_context(|| format!("GGUF metadata {key} is not an integer"))
}

pub(crate) fn meta_f32(content: &gguf_file::Content, key: &str, default: f32) -> f32 {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(default)
}

/// A GGUF file's header (metadata and tensor index), and the open file to read tensors from.
pub(crate) fn read_gguf(path: &Path) -> Result<(gguf_file::Content, std::fs::File)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid GGUF file ({}); download it again",
            path.display(),
            without_backtrace(e)
        )
    })?;
    Ok((content, file))
}

/// `general.architecture` of a GGUF file (e.g. llama, gemma3), read from its header alone.
pub fn gguf_architecture(path: &Path) -> Result<String> {
    let (content, _) = read_gguf(path)?;
    Ok(content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default())
}

/// candle appends a backtrace to its errors' text when RUST_BACKTRACE is set; inside these
/// one-line messages it would split the sentence over dozens of lines.
pub(crate) fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => *inner,
        e => e,
    }
}

impl LlamaGguf {
    /// Loads a GGUF file whose `general.architecture` is llama.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, Tokenizer)> {
        let (content, file) = read_gguf(path)?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            bail!(
                "{}: architecture '{arch}' is not supported (GGUF support covers the llama family and gemma3)",
                path.display()
            );
        }
        let heads = meta_u32(&content, "llama.attention.head_count")? as usize;
        let hidden = meta_u32(&content, "llama.embedding_length")? as usize;
        let config = LlamaConfig {
            vocab_size: 0,
            hidden,
            layers: meta_u32(&content, "llama.block_count")? as usize,
            heads,
            kv_heads: meta_u32(&content, "llama.attention.head_count_kv")
                .map(|v| v as usize)
                .unwrap_or(heads),
            head_dim: hidden / heads.max(1),
            context: meta_u32(&content, "llama.context_length")? as usize,
            rms_eps: meta_f32(&content, "llama.attention.layer_norm_rms_epsilon", 1e-5) as f64,
            rope_base: meta_f32(&content, "llama.rope.freq_base", 10_000.0),
            bos_token_id: meta_u32(&content, "tokenizer.ggml.bos_token_id").ok(),
            eos_token_id: meta_u32(&content, "tokenizer.ggml.eos_token_id").ok(),
        };
        if heads == 0
            || config.kv_heads == 0
            || !heads.is_multiple_of(config.kv_heads)
            || !hidden.is_multiple_of(heads)
        {
            bail!(
                "{}: inconsistent head counts in the GGUF metadata",
                path.display()
            );
        }
        let file = std::cell::RefCell::new(file);
        let tensor = |name: &str| -> Result<Tensor> {
            let q = content
                .tensor(&mut *file.borrow_mut(), name, device)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{}: cannot read tensor {name} ({})",
                        path.display(),
                        without_backtrace(e)
                    )
                })?;
            Ok(q.dequantize(device)?.to_dtype(DType::F32)?)
        };
        // GGUF stores matrices as (out, in), like torch.nn.Linear.
        let dense = |name: &str| -> Result<Dense> {
            let w = tensor(name)?;
            let (out_dim, in_dim) = w.dims2()?;
            Dense::from_out_in(w, out_dim, in_dim)
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            blocks.push(Block {
                attn_norm: tensor(&p("attn_norm"))?,
                q: dense(&p("attn_q"))?,
                k: dense(&p("attn_k"))?,
                v: dense(&p("attn_v"))?,
                o: dense(&p("attn_output"))?,
                ffn_norm: tensor(&p("ffn_norm"))?,
                gate: dense(&p("ffn_gate"))?,
                up: dense(&p("ffn_up"))?,
                down: dense(&p("ffn_down"))?,
            });
        }
        let embeddings = tensor("token_embd.weight")?;
        let head = if content.tensor_infos.contains_key("output.weight") {
            dense("output.weight")?
        } else {
            let (vocab, hidden) = embeddings.dims2()?;
            Dense::from_out_in(embeddings.clone(), vocab, hidden)?
        };
        let output_norm = tensor("output_norm.weight")?;
        let mut config = config;
        config.vocab_size = embeddings.dim(0)?;
        let (cos, sin) = rope_tables(&config, device)?;
        let tokenizer = tokenizer_from_gguf(&content).with_context(|| {
            format!(
                "{}: cannot build the tokenizer from the GGUF metadata",
                path.display()
            )
        })?;
        Ok((
            Self {
                embeddings,
                blocks,
                output_norm,
                head,
                cos,
                sin,
                config,
                device: device.clone(),
            },
            tokenizer,
        ))
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.blocks.len())
    }

    /// Final hidden states (after the output norm) [batch, new, hidden] for `ids` [batch, new].
    pub fn hidden_states(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (batch, new) = ids.dims2()?;
        let past = cache.len();
        if past + new > self.config.context {
            bail!(
                "sequence of {} tokens exceeds the model's context of {}",
                past + new,
                self.config.context
            );
        }
        cache.check_batch(batch)?;
        let c = &self.config;
        let cos = self.cos.narrow(0, past, new)?;
        let sin = self.sin.narrow(0, past, new)?;
        let mut xs = self
            .embeddings
            .embedding(&ids.flatten_all()?)?
            .reshape((batch, new, c.hidden))?;
        let repeat = c.heads / c.kv_heads;
        for (index, block) in self.blocks.iter().enumerate() {
            let normed = candle_nn::ops::rms_norm(&xs, &block.attn_norm, c.rms_eps as f32)?;
            let split = |t: Tensor, heads: usize| -> Result<Tensor> {
                Ok(t.reshape((batch, new, heads, c.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = split(block.q.forward(&normed)?, c.heads)?;
            let k = split(block.k.forward(&normed)?, c.kv_heads)?;
            let v = split(block.v.forward(&normed)?, c.kv_heads)?;
            // GGUF's q/k rows are permuted for rotation of interleaved pairs.
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            let (k, v) = (repeat_kv(&k, repeat)?, repeat_kv(&v, repeat)?);
            let scale = 1.0 / (c.head_dim as f64).sqrt();
            let attended = attend(&q, &k, &v, cache.layer_mut(index), scale, true)?
                .transpose(1, 2)?
                .reshape((batch, new, c.hidden))?;
            xs = (xs + block.o.forward(&attended)?)?;
            let normed = candle_nn::ops::rms_norm(&xs, &block.ffn_norm, c.rms_eps as f32)?;
            let gated = (candle_nn::ops::silu(&block.gate.forward(&normed)?)?
                * block.up.forward(&normed)?)?;
            xs = (xs + block.down.forward(&gated)?)?;
        }
        cache.advance(batch, new);
        Ok(candle_nn::ops::rms_norm(
            &xs,
            &self.output_norm,
            c.rms_eps as f32,
        )?)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.head.forward(hidden)?)
    }
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

fn rope_tables(c: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / c.rope_base.powf(2.0 * i as f32 / c.head_dim as f32))
        .collect();
    let positions = c.context.min(1 << 16);
    let mut angles = Vec::with_capacity(positions * half);
    for p in 0..positions {
        angles.extend(inv_freq.iter().map(|f| p as f32 * f));
    }
    let angles = Tensor::from_vec(angles, (positions, half), device)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// The tokenizer a GGUF file describes (`tokenizer.ggml.model` = gpt2: byte-level BPE), with the
/// pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`.
fn tokenizer_from_gguf(content: &gguf_file::Content) -> Result<Tokenizer> {
    use serde_json::{json, Value};
    let get = |key: &str| {
        content
            .metadata
            .get(key)
            .with_context(|| format!("GGUF metadata lacks {key}"))
    };
    let model = get("tokenizer.ggml.model")?.to_string()?.clone();
    if model != "gpt2" {
        bail!("tokenizer model '{model}' is not supported (byte-level BPE 'gpt2' is)");
    }
    let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
        .to_vec()?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<candle_core::Result<_>>()?;
    let merges: Vec<Value> = get("tokenizer.ggml.merges")?
        .to_vec()?
        .iter()
        .filter_map(|v| v.to_string().ok())
        .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
        .collect();
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|t| t.to_i32().unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let pre = content
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre.as_str() {
        // SmolLM's tokenizer.json: digits one by one, then GPT-2's byte-level split.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "gpt2" | "default" | "" => byte_level,
        other => bail!("GGUF pre-tokenizer '{other}' is not supported (smollm, gpt2)"),
    };
    // Control tokens (type 3) and user-defined ones (type 4) match as whole added tokens.
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": types.get(i) == Some(&3)})
        })
        .collect();
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    });
    Tokenizer::from_bytes(serde_json::to_vec(&spec)?).map_err(|e| anyhow::anyhow!("{e}"))
}
