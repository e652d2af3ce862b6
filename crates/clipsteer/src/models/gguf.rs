//! GGUF files (llama.cpp's format) of the llama and Gemma 3 architectures, loaded into the one
//! [`Transformer`]: the metadata becomes a [`DecoderConfig`], tensors are served under the
//! Hugging Face names transformers gives them when it loads a GGUF
//! (`integrations/ggml.py`), and the tokenizer is built from the file's vocabulary.
//!
//! What llama.cpp's converter changed and this undoes or honours:
//! - llama's q/k rows are permuted for rotation of interleaved pairs; they are permuted back, so
//!   that the model rotates halves as transformers does;
//! - Gemma's RMSNorm weights are stored as 1 + w: used as they are (`norm_offset` 0);
//! - GGUF has no `query_pre_attn_scalar`: Gemma 3 attention is scaled by 1/√head_dim, as
//!   llama.cpp does (equal to transformers' default of 256 for every size but 27B);
//! - Gemma 3's 5:1 sliding-window pattern is not stored: it is Gemma 3's fixed one.
//!
//! Weights are dequantised to f32 at load: the models this serves are small, f32 matmuls are
//! multi-threaded and fast here, and the results then equal transformers' own GGUF loading
//! (which dequantises too) instead of differing by a quantised-activation kernel's rounding.

use super::decoder::{
    DecoderConfig, Family, RopeScaling, Transformer, WeightSource, MAX_POSITIONS,
};
use super::Activation;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use std::cell::RefCell;
use std::path::Path;
use tokenizers::Tokenizer;

/// Loads a GGUF file of the llama or gemma3 architecture, with the tokenizer its metadata
/// describes.
pub fn load(path: &Path, device: &Device) -> Result<(Transformer, Tokenizer)> {
    let (content, file) = read_gguf(path)?;
    let in_file = |e: anyhow::Error| anyhow::anyhow!("{}: {e:#}", path.display());
    let family = match architecture(&content).as_str() {
        "llama" => Family::Llama,
        "gemma3" => Family::Gemma3,
        other => bail!(
            "{}: architecture '{other}' is not supported (GGUF support covers the llama family and gemma3; other families load from the Hugging Face layout)",
            path.display()
        ),
    };
    let config = config(&content, family).map_err(in_file)?;
    let tokenizer = match family {
        Family::Gemma3 => gemma_tokenizer_from_gguf(&content),
        _ => tokenizer_from_gguf(&content),
    }
    .with_context(|| {
        format!(
            "{}: cannot build the tokenizer from the GGUF metadata",
            path.display()
        )
    })?;
    let weights = GgufWeights {
        content: &content,
        file: RefCell::new(file),
        path,
        device,
        permuted_heads: (family == Family::Llama).then_some((config.heads, config.kv_heads)),
        ffn_norm_is_pre_mlp: family == Family::Gemma3,
    };
    let model = Transformer::from_weights(config, &weights, device)?;
    Ok((model, tokenizer))
}

/// `general.architecture` (e.g. llama, gemma3).
fn architecture(content: &gguf_file::Content) -> String {
    content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default()
}

/// The [`DecoderConfig`] of a llama or gemma3 GGUF's metadata (`{arch}.*` keys, as llama.cpp's
/// converter writes them).
fn config(content: &gguf_file::Content, family: Family) -> Result<DecoderConfig> {
    let arch = if family == Family::Gemma3 {
        "gemma3"
    } else {
        "llama"
    };
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| meta_u32(content, &key(k)).map(|v| v as usize);
    if family == Family::Gemma3 && content.metadata.contains_key(&key("rope.scaling.type")) {
        bail!("rope scaling (gemma3.rope.scaling.type) is not supported; use a Gemma 3 model without it (270m, 1b)");
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        bail!("per-frequency rope factors (rope_freqs.weight, Llama 3.1 and later) are not supported from GGUF; load the model in the Hugging Face layout");
    }
    let heads = u("attention.head_count")?;
    let hidden = u("embedding_length")?;
    let kv_heads = u("attention.head_count_kv").unwrap_or(heads);
    let head_dim = u("attention.key_length").unwrap_or(hidden / heads.max(1));
    if let Ok(value_length) = u("attention.value_length") {
        if value_length != head_dim {
            bail!("key and value head sizes differ ({head_dim} vs {value_length}) in the GGUF metadata");
        }
    }
    let gemma = family == Family::Gemma3;
    if heads == 0
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || head_dim == 0
        || !head_dim.is_multiple_of(2)
        || (!gemma && !hidden.is_multiple_of(heads))
    {
        bail!("inconsistent head counts or sizes in the GGUF metadata");
    }
    let (vocab_size, embedding_width) = match content.tensor_infos.get("token_embd.weight") {
        Some(info) => info.shape.dims2()?,
        None => bail!("the file has no token_embd.weight"),
    };
    if embedding_width != hidden {
        bail!("token_embd.weight is {vocab_size}×{embedding_width}, but the embedding length is {hidden}");
    }
    let intermediate = match u("feed_forward_length") {
        Ok(n) => n,
        Err(_) => match content.tensor_infos.get("blk.0.ffn_gate.weight") {
            Some(info) => info.shape.dims2()?.0,
            None => bail!("the file has no {arch}.feed_forward_length"),
        },
    };
    let layers = u("block_count")?;
    let window = if gemma {
        Some(u("attention.sliding_window")?).filter(|&w| w > 0)
    } else {
        None
    };
    if gemma && window.is_none() {
        bail!("inconsistent head counts or sizes in the GGUF metadata (a sliding window of 0)");
    }
    let add_bos_token = content
        .metadata
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok());
    Ok(DecoderConfig {
        family,
        vocab_size,
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        intermediate,
        context: u("context_length")?.min(MAX_POSITIONS),
        rms_eps: meta_f32(
            content,
            &key("attention.layer_norm_rms_epsilon"),
            if gemma { 1e-6 } else { 1e-5 },
        ) as f64,
        rope_base: meta_f32(
            content,
            &key("rope.freq_base"),
            if gemma { 1_000_000.0 } else { 10_000.0 },
        ),
        rope_scaling: RopeScaling::None,
        rope_local_base: gemma
            .then(|| meta_f32(content, &key("rope.freq_base_swa"), DEFAULT_LOCAL_ROPE_BASE)),
        rotary_dim: head_dim,
        attention_bias: false,
        mlp_bias: false,
        qk_norm: gemma,
        sandwich_norms: gemma,
        norm_offset: 0.0,
        embed_scale: gemma.then(|| (hidden as f32).sqrt()),
        activation: if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
        attn_scale: (head_dim as f64).powf(-0.5),
        attn_softcap: None,
        final_softcap: None,
        windows: (0..layers)
            .map(|i| window.filter(|_| !(i + 1).is_multiple_of(SLIDING_WINDOW_PATTERN)))
            .collect(),
        tie_word_embeddings: true,
        bos_token_id: meta_u32(content, "tokenizer.ggml.bos_token_id").ok(),
        // llama.cpp runs the llama family without a BOS unless asked; Gemma wants <bos> first.
        add_bos: gemma && add_bos_token.unwrap_or(true),
        eos_token_ids: end_of_text_ids(content, gemma),
    })
}

/// Every id that ends a text, the one the model's turn is closed with first: Gemma's chat
/// template ends the model's turn with <end_of_turn>, which transformers' generation config
/// lists beside <eos>.
fn end_of_text_ids(content: &gguf_file::Content, gemma: bool) -> Vec<u32> {
    let token = |name: &str| -> Option<u32> {
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
    let eos = meta_u32(content, "tokenizer.ggml.eos_token_id").ok();
    let end_of_turn = if gemma { token("<end_of_turn>") } else { None };
    end_of_turn.into_iter().chain(eos).collect()
}

/// A GGUF's tensors under the HF names transformers maps them to, dequantised to f32.
struct GgufWeights<'a> {
    content: &'a gguf_file::Content,
    file: RefCell<std::fs::File>,
    path: &'a Path,
    device: &'a Device,
    /// (heads, kv_heads) of a llama file, whose q/k rows llama.cpp permuted.
    permuted_heads: Option<(usize, usize)>,
    /// Gemma's `ffn_norm` is the norm before the MLP (`pre_feedforward_layernorm`); llama's
    /// is the one after attention (`post_attention_layernorm`), which also comes before the MLP.
    ffn_norm_is_pre_mlp: bool,
}

impl GgufWeights<'_> {
    fn gguf_name(&self, name: &str) -> Option<String> {
        let global = match name {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(g) = global {
            return Some(g.to_string());
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (index, rest) = rest.split_once('.')?;
        let (module, kind) = rest.rsplit_once('.')?;
        let post_attention = if self.ffn_norm_is_pre_mlp {
            "post_attention_norm"
        } else {
            "ffn_norm"
        };
        let mapped = match module {
            "input_layernorm" => "attn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            "post_attention_layernorm" => post_attention,
            "pre_feedforward_layernorm" => "ffn_norm",
            "post_feedforward_layernorm" => "post_ffw_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            _ => return None,
        };
        Some(format!("blk.{index}.{mapped}.{kind}"))
    }
}

impl WeightSource for GgufWeights<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let gguf = self.gguf_name(name).with_context(|| {
            format!("{}: no GGUF tensor stands for {name}", self.path.display())
        })?;
        let q = self
            .content
            .tensor(&mut *self.file.borrow_mut(), &gguf, self.device)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot read tensor {gguf} ({})",
                    self.path.display(),
                    super::without_backtrace(e)
                )
            })?;
        let t = q.dequantize(self.device)?.to_dtype(DType::F32)?;
        if t.dims() != shape {
            bail!(
                "{}: tensor {gguf} has shape {:?}, the metadata implies {shape:?}",
                self.path.display(),
                t.dims()
            );
        }
        let heads = match (self.permuted_heads, gguf.rsplit('.').nth(1)) {
            (Some((heads, _)), Some("attn_q")) => heads,
            (Some((_, kv_heads)), Some("attn_k")) => kv_heads,
            _ => return Ok(t),
        };
        // llama.cpp's converter wrote rows (head, pair, 2): back to (head, 2, half).
        let (out, inp) = t.dims2()?;
        Ok(t.reshape((heads, out / heads / 2, 2, inp))?
            .transpose(1, 2)?
            .reshape((out, inp))?
            .contiguous()?)
    }

    fn contains(&self, name: &str) -> bool {
        self.gguf_name(name)
            .is_some_and(|g| self.content.tensor_infos.contains_key(&g))
    }
}

/// The metadata value `key`, or an error naming it.
fn meta<'a>(content: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    content
        .metadata
        .get(key)
        .with_context(|| format!("GGUF metadata lacks {key}"))
}

pub(crate) fn meta_u32(content: &gguf_file::Content, key: &str) -> Result<u32> {
    meta(content, key)?
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
            super::without_backtrace(e)
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

/// Layers per global-attention layer in Gemma 3: layers 5, 11, 17, ... attend globally
/// (transformers' `sliding_window_pattern` = 6, llama.cpp's `set_swa_pattern(6)`); GGUF does not
/// store it.
pub const SLIDING_WINDOW_PATTERN: usize = 6;

/// Rope base of Gemma 3's sliding-window layers when the file does not give one (transformers'
/// `rope_local_base_freq`, llama.cpp's `rope_freq_base_train_swa`).
pub const DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;

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

/// The tokenizer a GGUF file describes (`tokenizer.ggml.model` = gpt2: byte-level BPE), with the
/// pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`.
fn tokenizer_from_gguf(content: &gguf_file::Content) -> Result<Tokenizer> {
    use serde_json::{json, Value};
    let get = |key: &str| meta(content, key);
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

    let get = |key: &str| meta(content, key);
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

/// Writes a llama or gemma3 GGUF file in the Hugging Face layout, as transformers saves a model
/// it loaded with `gguf_file=` (`from_pretrained(…, gguf_file=…)` then `save_pretrained`):
/// config.json, generation_config.json, model.safetensors (dequantised to f32, HF names, q/k
/// rows un-permuted, Gemma norms as w rather than 1 + w), tokenizer.json (adding `<bos>`
/// where the file asks for it) and tokenizer_config.json (the special tokens, and the chat
/// template when the file has one). Tests use it to run the HF-layout path on real weights without
/// torch; `dir` must not exist yet.
pub fn save_hf_layout(path: &Path, dir: &Path) -> Result<()> {
    let (content, file) = read_gguf(path)?;
    let family = match architecture(&content).as_str() {
        "llama" => Family::Llama,
        "gemma3" => Family::Gemma3,
        other => bail!(
            "{}: architecture '{other}' cannot be exported",
            path.display()
        ),
    };
    let c = config(&content, family)?;
    let mut tokenizer = match family {
        Family::Gemma3 => gemma_tokenizer_from_gguf(&content),
        _ => tokenizer_from_gguf(&content),
    }?;
    let device = Device::Cpu;
    let weights = GgufWeights {
        content: &content,
        file: RefCell::new(file),
        path,
        device: &device,
        permuted_heads: (family == Family::Llama).then_some((c.heads, c.kv_heads)),
        ffn_norm_is_pre_mlp: family == Family::Gemma3,
    };
    let gemma = family == Family::Gemma3;
    let tied = !weights.contains("lm_head.weight");
    let mut tensors = std::collections::HashMap::new();
    for (name, shape) in hf_tensor_names(&c, gemma, tied) {
        let mut t = weights.tensor(&name, &shape)?;
        // Gemma's GGUF norms hold 1 + weight, transformers' the weight.
        if gemma && name.ends_with("norm.weight") {
            t = (t - 1.0)?;
        }
        tensors.insert(name, t);
    }
    let hf = hf_config(&c, gemma, tied);
    if c.add_bos {
        add_bos_post_processor(&mut tokenizer, &c)?;
    }
    std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&hf)?)?;
    std::fs::write(
        dir.join("generation_config.json"),
        serde_json::json!({"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_ids})
            .to_string(),
    )?;
    // transformers keeps the chat template and the special tokens in tokenizer_config.json.
    let token = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id));
    let mut tokenizer_config = serde_json::json!({
        "bos_token": token(c.bos_token_id),
        "eos_token": token(meta_u32(&content, "tokenizer.ggml.eos_token_id").ok()),
    });
    if let Some(template) = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
    {
        tokenizer_config["chat_template"] = template.clone().into();
    }
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tokenizer_config)?,
    )?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("cannot write tokenizer.json: {e}"))?;
    Ok(())
}

/// transformers' weight names and shapes of a llama or Gemma 3 text model of config `c`.
fn hf_tensor_names(c: &DecoderConfig, gemma: bool, tied: bool) -> Vec<(String, Vec<usize>)> {
    let mut names = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![c.vocab_size, c.hidden],
        ),
        ("model.norm.weight".to_string(), vec![c.hidden]),
    ];
    if !tied {
        names.push(("lm_head.weight".into(), vec![c.vocab_size, c.hidden]));
    }
    let (q, kv) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    for i in 0..c.layers {
        let mut layer = vec![
            ("input_layernorm", vec![c.hidden]),
            ("self_attn.q_proj", vec![q, c.hidden]),
            ("self_attn.k_proj", vec![kv, c.hidden]),
            ("self_attn.v_proj", vec![kv, c.hidden]),
            ("self_attn.o_proj", vec![c.hidden, q]),
            ("post_attention_layernorm", vec![c.hidden]),
            ("mlp.gate_proj", vec![c.intermediate, c.hidden]),
            ("mlp.up_proj", vec![c.intermediate, c.hidden]),
            ("mlp.down_proj", vec![c.hidden, c.intermediate]),
        ];
        if gemma {
            layer.extend([
                ("self_attn.q_norm", vec![c.head_dim]),
                ("self_attn.k_norm", vec![c.head_dim]),
                ("pre_feedforward_layernorm", vec![c.hidden]),
                ("post_feedforward_layernorm", vec![c.hidden]),
            ]);
        }
        names.extend(
            layer
                .into_iter()
                .map(|(n, shape)| (format!("model.layers.{i}.{n}.weight"), shape)),
        );
    }
    names
}

/// transformers' config.json of a llama or Gemma 3 text model of config `c`.
fn hf_config(c: &DecoderConfig, gemma: bool, tied: bool) -> serde_json::Value {
    let mut hf = serde_json::json!({
        "model_type": if gemma { "gemma3_text" } else { "llama" },
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden,
        "intermediate_size": c.intermediate,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.context,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_base,
        "tie_word_embeddings": tied,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_ids.last(),
        "hidden_act": if gemma { "gelu_pytorch_tanh" } else { "silu" },
    });
    if gemma {
        hf["query_pre_attn_scalar"] = c.head_dim.into();
        hf["sliding_window"] = c.sliding_window().into();
        hf["rope_local_base_freq"] = c.rope_local_base.into();
        hf["layer_types"] = (0..c.layers)
            .map(|i| match c.is_sliding(i) {
                true => "sliding_attention",
                false => "full_attention",
            })
            .collect::<Vec<_>>()
            .into();
    }
    hf
}

/// Makes `tokenizer` add the BOS as the GGUF's `add_bos_token` says, as transformers'
/// tokenizer.json does with a post-processor.
fn add_bos_post_processor(tokenizer: &mut tokenizers::Tokenizer, c: &DecoderConfig) -> Result<()> {
    let bos_id = c
        .bos_token_id
        .context("add_bos_token without a bos_token_id")?;
    let bos = tokenizer
        .id_to_token(bos_id)
        .context("the BOS id is outside the vocabulary")?;
    let post = tokenizers::processors::template::TemplateProcessing::builder()
        .try_single(format!("{bos}:0 $A:0"))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .special_tokens(vec![(bos, bos_id)])
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokenizer.with_post_processor(Some(post));
    Ok(())
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
