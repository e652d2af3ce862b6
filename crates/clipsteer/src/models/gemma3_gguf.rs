//! Gemma 3 text models (gemma-3-270m, gemma-3-1b, ...) from a GGUF file, with the tokenizer built
//! from the file's metadata. Checked against transformers' `Gemma3ForCausalLM` loading the same
//! file (tests/gemma3_parity.rs).
//!
//! What sets it apart from llama (transformers' `modeling_gemma3.py`, llama.cpp's `gemma3`):
//! - token embeddings are multiplied by √hidden, rounded to the embeddings' dtype (f32 here);
//! - RMSNorm scales by (1 + w): llama.cpp's converter stores 1 + w in the file, so the stored
//!   weight multiplies as it is;
//! - four norms per block: before and after attention, before and after the MLP;
//! - RMSNorm over each query and key head (QK norm) before the rotation;
//! - rotation of halves (NEOX order: no q/k row permutation in the file);
//! - five sliding-window layers (each query sees itself and the `window − 1` positions before it)
//!   for every global one, with their own rope base (10 000, or `gemma3.rope.freq_base_swa`);
//!   global layers use `gemma3.rope.freq_base`;
//! - a GELU (tanh approximation) gated MLP;
//! - attention scaled by 1/√head_dim: GGUF has no `query_pre_attn_scalar`, and llama.cpp takes
//!   head_dim (equal to transformers' 256 for every size but 27B);
//! - a head tied to the embeddings.
//!
//! Weights are dequantised to f32 at load, as in [`super::llama_gguf`].

use super::attention::{attend, attend_window, KvCache};
use super::llama_gguf::{meta_f32, meta_u32, read_gguf, repeat_kv, without_backtrace};
use super::Dense;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use tokenizers::Tokenizer;

/// Gemma 3's chat template (Jinja), as the instruction-tuned checkpoints' tokenizer_config.json
/// ships it, byte for byte (its string literals hold real newlines, not `\n` escapes), for GGUF
/// files that carry none (`tokenizer.chat_template`): the base gemma-3-270m conversion has none,
/// so there is no file to load it from. A user turn renders as
/// `<bos><start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n`; a system message is
/// folded into the first user turn, since Gemma has no system role.
pub const CHAT_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"#;

/// Layers per global-attention layer: layers 5, 11, 17, ... attend globally. Gemma 3's fixed
/// pattern (transformers' `sliding_window_pattern` = 6, llama.cpp's `set_swa_pattern(6)`); GGUF does
/// not store it.
pub const SLIDING_WINDOW_PATTERN: usize = 6;

/// Rope base of the sliding-window layers when the file does not give one (transformers'
/// `rope_local_base_freq`, llama.cpp's `rope_freq_base_train_swa`).
pub const DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Positions the rope tables cover; a steering run writes tens of tokens, and the tables of the
/// full 32 768-position context would take 64 MB for nothing.
const MAX_POSITIONS: usize = 8192;

#[derive(Debug, Clone)]
pub struct Gemma3Config {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// `gemma3.attention.key_length`: not hidden / heads (640 / 4 ≠ 256 in gemma-3-270m).
    pub head_dim: usize,
    /// Positions the model attends over: the file's context length, capped at 8192.
    pub context: usize,
    pub rms_eps: f64,
    /// Rope base of the global layers.
    pub rope_global: f32,
    /// Rope base of the sliding-window layers.
    pub rope_local: f32,
    pub sliding_window: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// `<end_of_turn>`, which ends the model's turn under the chat template.
    pub end_of_turn_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: the model expects `<bos>` first.
    pub add_bos: bool,
}

impl Gemma3Config {
    /// Whether layer `index` attends over a sliding window (else globally).
    pub fn is_sliding(&self, index: usize) -> bool {
        !(index + 1).is_multiple_of(SLIDING_WINDOW_PATTERN)
    }
}

struct Block {
    attn_norm: Tensor,
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    q_norm: Tensor,
    k_norm: Tensor,
    post_attention_norm: Tensor,
    ffn_norm: Tensor,
    gate: Dense,
    up: Dense,
    down: Dense,
    post_ffw_norm: Tensor,
}

/// Rope cos/sin tables, each [positions, head_dim / 2].
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

pub struct Gemma3Gguf {
    embeddings: Tensor,
    /// √hidden as f32, as transformers casts it to the embeddings' dtype.
    embed_scale: Tensor,
    blocks: Vec<Block>,
    output_norm: Tensor,
    head: Dense,
    global_rope: Rope,
    local_rope: Rope,
    config: Gemma3Config,
    device: Device,
}

impl Gemma3Gguf {
    /// Loads a GGUF file whose `general.architecture` is gemma3.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, Tokenizer)> {
        let (content, file) = read_gguf(path)?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "gemma3" {
            bail!(
                "{}: architecture '{arch}' is not Gemma 3 (general.architecture must be gemma3)",
                path.display()
            );
        }
        if content.metadata.contains_key("gemma3.rope.scaling.type") {
            bail!(
                "{}: rope scaling (gemma3.rope.scaling.type) is not supported; use a Gemma 3 model without it (270m, 1b)",
                path.display()
            );
        }
        let heads = meta_u32(&content, "gemma3.attention.head_count")? as usize;
        let hidden = meta_u32(&content, "gemma3.embedding_length")? as usize;
        let kv_heads = meta_u32(&content, "gemma3.attention.head_count_kv")
            .map(|v| v as usize)
            .unwrap_or(heads);
        let head_dim = meta_u32(&content, "gemma3.attention.key_length")
            .map(|v| v as usize)
            .unwrap_or(hidden / heads.max(1));
        if let Ok(value_length) = meta_u32(&content, "gemma3.attention.value_length") {
            if value_length as usize != head_dim {
                bail!(
                    "{}: key and value head sizes differ ({head_dim} vs {value_length}) in the GGUF metadata",
                    path.display()
                );
            }
        }
        let token_id = |name: &str| -> Option<u32> {
            let tokens = content
                .metadata
                .get("tokenizer.ggml.tokens")?
                .to_vec()
                .ok()?;
            tokens
                .iter()
                .position(|t| t.to_string().is_ok_and(|s| s == name))
                .map(|i| i as u32)
        };
        let mut config = Gemma3Config {
            vocab_size: 0,
            hidden,
            layers: meta_u32(&content, "gemma3.block_count")? as usize,
            heads,
            kv_heads,
            head_dim,
            context: (meta_u32(&content, "gemma3.context_length")? as usize).min(MAX_POSITIONS),
            rms_eps: meta_f32(&content, "gemma3.attention.layer_norm_rms_epsilon", 1e-6) as f64,
            rope_global: meta_f32(&content, "gemma3.rope.freq_base", 1_000_000.0),
            rope_local: meta_f32(
                &content,
                "gemma3.rope.freq_base_swa",
                DEFAULT_LOCAL_ROPE_BASE,
            ),
            sliding_window: meta_u32(&content, "gemma3.attention.sliding_window")? as usize,
            bos_token_id: meta_u32(&content, "tokenizer.ggml.bos_token_id").ok(),
            eos_token_id: meta_u32(&content, "tokenizer.ggml.eos_token_id").ok(),
            end_of_turn_id: token_id("<end_of_turn>"),
            add_bos: content
                .metadata
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(true),
        };
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || head_dim == 0
            || !head_dim.is_multiple_of(2)
            || config.sliding_window == 0
        {
            bail!(
                "{}: inconsistent head counts or sizes in the GGUF metadata",
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
                q_norm: tensor(&p("attn_q_norm"))?,
                k_norm: tensor(&p("attn_k_norm"))?,
                post_attention_norm: tensor(&p("post_attention_norm"))?,
                ffn_norm: tensor(&p("ffn_norm"))?,
                gate: dense(&p("ffn_gate"))?,
                up: dense(&p("ffn_up"))?,
                down: dense(&p("ffn_down"))?,
                post_ffw_norm: tensor(&p("post_ffw_norm"))?,
            });
        }
        let embeddings = tensor("token_embd.weight")?;
        let (vocab, embedding_width) = embeddings.dims2()?;
        if embedding_width != hidden {
            bail!(
                "{}: token_embd.weight is {vocab}×{embedding_width}, but the embedding length is {hidden}",
                path.display()
            );
        }
        // Gemma ties its head to the embeddings; a file with its own head is honoured.
        let head = if content.tensor_infos.contains_key("output.weight") {
            dense("output.weight")?
        } else {
            Dense::from_out_in(embeddings.clone(), vocab, hidden)?
        };
        let output_norm = tensor("output_norm.weight")?;
        config.vocab_size = vocab;
        let tokenizer = gemma_tokenizer_from_gguf(&content).with_context(|| {
            format!(
                "{}: cannot build the tokenizer from the GGUF metadata",
                path.display()
            )
        })?;
        let embed_scale = Tensor::new((hidden as f64).sqrt() as f32, device)?;
        Ok((
            Self {
                embeddings,
                embed_scale,
                blocks,
                output_norm,
                head,
                global_rope: rope_table(config.rope_global, &config, device)?,
                local_rope: rope_table(config.rope_local, &config, device)?,
                config,
                device: device.clone(),
            },
            tokenizer,
        ))
    }

    pub fn config(&self) -> &Gemma3Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.blocks.len())
    }

    /// Final hidden states (after the output norm) [batch, new, hidden] for `ids` [batch, new]
    /// (u32), appending them to `cache`. No `<bos>` is added here: see [`crate::steer::lm`].
    ///
    /// Errors: a cache holding another number of rows, or more positions than the context.
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
        let eps = c.rms_eps as f32;
        let narrow = |rope: &Rope| -> Result<(Tensor, Tensor)> {
            Ok((
                rope.cos.narrow(0, past, new)?,
                rope.sin.narrow(0, past, new)?,
            ))
        };
        let (global_cos, global_sin) = narrow(&self.global_rope)?;
        let (local_cos, local_sin) = narrow(&self.local_rope)?;
        let mut xs = self
            .embeddings
            .embedding(&ids.flatten_all()?)?
            .reshape((batch, new, c.hidden))?
            .broadcast_mul(&self.embed_scale)?;
        let repeat = c.heads / c.kv_heads;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        for (index, block) in self.blocks.iter().enumerate() {
            let normed = candle_nn::ops::rms_norm(&xs, &block.attn_norm, eps)?;
            // [batch, new, heads·head_dim] → per-head RMSNorm → [batch, heads, new, head_dim]
            let heads_of = |t: Tensor, heads: usize, norm: Option<&Tensor>| -> Result<Tensor> {
                let t = t.reshape((batch, new, heads, c.head_dim))?;
                let t = match norm {
                    Some(w) => candle_nn::ops::rms_norm(&t, w, eps)?,
                    None => t,
                };
                Ok(t.transpose(1, 2)?.contiguous()?)
            };
            let q = heads_of(block.q.forward(&normed)?, c.heads, Some(&block.q_norm))?;
            let k = heads_of(block.k.forward(&normed)?, c.kv_heads, Some(&block.k_norm))?;
            let v = heads_of(block.v.forward(&normed)?, c.kv_heads, None)?;
            let sliding = c.is_sliding(index);
            let (cos, sin) = if sliding {
                (&local_cos, &local_sin)
            } else {
                (&global_cos, &global_sin)
            };
            let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
            let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
            let (k, v) = (repeat_kv(&k, repeat)?, repeat_kv(&v, repeat)?);
            let layer = cache.layer_mut(index);
            let attended = if sliding {
                attend_window(&q, &k, &v, layer, scale, c.sliding_window)?
            } else {
                attend(&q, &k, &v, layer, scale, true)?
            };
            let attended = attended
                .transpose(1, 2)?
                .reshape((batch, new, c.heads * c.head_dim))?;
            let attended = block.o.forward(&attended)?;
            xs = (xs + candle_nn::ops::rms_norm(&attended, &block.post_attention_norm, eps)?)?;
            let normed = candle_nn::ops::rms_norm(&xs, &block.ffn_norm, eps)?;
            let gated = (block.gate.forward(&normed)?.gelu()? * block.up.forward(&normed)?)?;
            let mlp = block.down.forward(&gated)?;
            xs = (xs + candle_nn::ops::rms_norm(&mlp, &block.post_ffw_norm, eps)?)?;
        }
        cache.advance(batch, new);
        Ok(candle_nn::ops::rms_norm(&xs, &self.output_norm, eps)?)
    }

    /// Next-token logits [..., vocab] of final hidden states [..., hidden].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.head.forward(hidden)?)
    }
}

/// cos/sin of position × inverse frequency, as transformers computes them in f32:
/// inv_freq_i = 1 / base^(2i / head_dim).
fn rope_table(base: f32, c: &Gemma3Config, device: &Device) -> Result<Rope> {
    let half = c.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / base.powf(2.0 * i as f32 / c.head_dim as f32))
        .collect();
    let positions = c.context;
    let mut angles = Vec::with_capacity(positions * half);
    for p in 0..positions {
        angles.extend(inv_freq.iter().map(|f| p as f32 * f));
    }
    let angles = Tensor::from_vec(angles, (positions, half), device)?;
    Ok(Rope {
        cos: angles.cos()?,
        sin: angles.sin()?,
    })
}

/// The tokenizer a Gemma GGUF describes (`tokenizer.ggml.model` = llama: SentencePiece BPE with
/// byte fallback), built as transformers builds it from the same file
/// (`integrations/gguf/gguf_tokenizer_mapping.py`, `gemma_tokenizer`, and `GemmaTokenizer`):
/// - spaces become "▁" (no prefix space), the decoder turns them back and reassembles bytes;
/// - tokens made of spaces are stored as real spaces ("  ") in the file and renamed "▁▁";
/// - the file has no merges: every split of a token into two tokens is a merge, ranked by the
///   token's position in the vocabulary (Gemma's scores do not follow its merge order), longer
///   left part first within a token;
/// - control tokens (type 3) match whole as special tokens, user-defined ones (type 4, e.g.
///   "\n\n") whole as plain added tokens.
pub fn gemma_tokenizer_from_gguf(content: &gguf_file::Content) -> Result<Tokenizer> {
    use tokenizers::decoders::{
        byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence as DecoderSequence,
        DecoderWrapper,
    };
    use tokenizers::models::bpe::BPE;
    use tokenizers::normalizers::replace::Replace;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{AddedToken, SplitDelimiterBehavior};

    let get = |key: &str| {
        content
            .metadata
            .get(key)
            .with_context(|| format!("GGUF metadata lacks {key}"))
    };
    let model = get("tokenizer.ggml.model")?.to_string()?.clone();
    if model != "llama" {
        bail!("tokenizer model '{model}' is not supported for Gemma (SentencePiece 'llama' is)");
    }
    let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
        .to_vec()?
        .iter()
        .map(|v| {
            v.to_string().map(|t| {
                if t.contains(' ') && t.trim().is_empty() {
                    "\u{2581}".repeat(t.chars().count())
                } else {
                    t.clone()
                }
            })
        })
        .collect::<candle_core::Result<_>>()?;
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|t| t.to_i32().unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    // A repeated token keeps its last id, as a Python dict built from the list does.
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut merges: Vec<(String, String)> = Vec::new();
    // Rank = the merged token's (last) id, ascending; then the longer left part first.
    let mut order: Vec<(u32, &String)> = vocab.iter().map(|(t, &i)| (i, t)).collect();
    order.sort_unstable();
    for (_, token) in order {
        let cuts: Vec<usize> = token.char_indices().map(|(at, _)| at).skip(1).collect();
        for &at in cuts.iter().rev() {
            let (left, right) = token.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push((left.to_string(), right.to_string()));
            }
        }
    }
    let unk = match content
        .metadata
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
    {
        Some(id) => tokens
            .get(id as usize)
            .cloned()
            .context("tokenizer.ggml.unknown_token_id is out of range")?,
        None => "<unk>".to_string(),
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(
        Replace::new(" ", "\u{2581}").map_err(|e| anyhow::anyhow!("{e}"))?,
    ));
    tokenizer.with_pre_tokenizer(Some(
        Split::new(
            SplitPattern::String(" ".into()),
            SplitDelimiterBehavior::MergedWithPrevious,
            false,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    ));
    tokenizer.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(|e| anyhow::anyhow!("{e}"))?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])));
    // The GGUF stores the image markers as user-defined, like the newline runs, but they are
    // markup: transformers' Gemma 3 tokenizer marks them special.
    const IMAGE_MARKERS: [&str; 3] = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"];
    let added = |special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(token, &t)| match t {
                3 => special,
                4 => IMAGE_MARKERS.contains(&token.as_str()) == special,
                _ => false,
            })
            .map(|(token, _)| {
                AddedToken::from(token.clone(), special)
                    .normalized(false)
                    .special(special)
            })
            .collect()
    };
    tokenizer.add_special_tokens(&added(true));
    tokenizer.add_tokens(&added(false));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::CHAT_TEMPLATE;
    use crate::steer::chat_template::{ChatTemplate, Message};
    use std::collections::BTreeMap;

    /// Expected texts: Jinja2 (trim_blocks, lstrip_blocks, as transformers' apply_chat_template)
    /// rendering Gemma 3's tokenizer_config.json template on the same messages.
    #[test]
    fn chat_template_renders_as_gemma_3s_own() {
        let specials = BTreeMap::from([("bos_token".to_string(), "<bos>".to_string())]);
        let template = ChatTemplate::new(CHAT_TEMPLATE, specials).unwrap();
        assert_eq!(
            template.render(&[Message::user("Hi  ")], true).unwrap(),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
        let conversation = [
            Message {
                role: "system".to_string(),
                content: "Be brief.".to_string(),
            },
            Message::user("Hi"),
            Message {
                role: "assistant".to_string(),
                content: "Hello.".to_string(),
            },
            Message::user(" x "),
        ];
        assert_eq!(
            template.render(&conversation, false).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nx<end_of_turn>\n"
        );
    }
}
