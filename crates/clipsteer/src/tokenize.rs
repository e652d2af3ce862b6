//! Tokenizers: loaded from tokenizer.json, or built from the original vocabulary files (GPT-2's
//! encoder.json + vocab.bpe, CLIP's bpe_simple_vocab_16e6.txt.gz) into exactly the pipeline that
//! transformers writes to tokenizer.json, so that both routes give HF's ids.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;
use tokenizers::Tokenizer;

const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Loads a tokenizer.json file.
pub fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    if !crate::files::model_file_present(path)? {
        bail!(
            "no tokenizer {}: the model directory needs a tokenizer.json",
            path.display()
        );
    }
    // As text first: a file that is not UTF-8 is named as such, not as a JSON syntax error.
    let text = crate::files::read_regular_to_string(path, &path.display().to_string())?;
    let mut tokenizer = Tokenizer::from_bytes(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("{} is not a valid tokenizer.json: {e}", path.display()))?;
    // Some tokenizer.json files pad every input to a fixed length (all-MiniLM-L6-v2: 128) or
    // truncate; clipsteer batches and truncates itself, with masks, so both are turned off.
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(tokenizer)
}

/// Finds and loads the tokenizer of a model directory: tokenizer.json, else vocab.json +
/// merges.txt, else GPT-2's original encoder.json + vocab.bpe. `kind` picks the pipeline for the
/// vocabulary-file routes.
pub fn load_from_dir(dir: &Path, kind: TokenizerKind) -> Result<Tokenizer> {
    let tokenizer_json = dir.join("tokenizer.json");
    // Present, not is_file(): a FIFO or folder by that name is refused, not passed over, and a
    // link to a lost blob is named as such rather than taken for no tokenizer at all.
    if crate::files::model_file_present(&tokenizer_json)? {
        return load_tokenizer_json(&tokenizer_json);
    }
    for (vocab, merges) in [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")] {
        let (vocab, merges) = (dir.join(vocab), dir.join(merges));
        if vocab.is_file() && merges.is_file() {
            return match kind {
                TokenizerKind::Gpt2 => gpt2_from_files(&vocab, &merges),
                TokenizerKind::Clip => clip_from_vocab_files(&vocab, &merges),
            };
        }
    }
    bail!(
        "no tokenizer in {}: it needs tokenizer.json (or vocab.json + merges.txt); copy them from the model's hub repository",
        dir.display()
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    Gpt2,
    Clip,
}

fn read_merges(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
        .filter_map(|line| line.split_once(' '))
        .map(|(a, b)| json!([a, b]))
        .collect()
}

fn build(spec: Value, what: &str) -> Result<Tokenizer> {
    let bytes = serde_json::to_vec(&spec)?;
    Tokenizer::from_bytes(&bytes)
        .map_err(|e| anyhow::anyhow!("cannot build the {what} tokenizer: {e}"))
}

fn read_vocab(path: &Path) -> Result<Value> {
    let text = crate::files::read_regular_to_string(path, &path.display().to_string())?;
    let vocab: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON vocabulary", path.display()))?;
    if !vocab.is_object() {
        bail!(
            "{} is not a JSON vocabulary (expected an object of token → id)",
            path.display()
        );
    }
    Ok(vocab)
}

fn byte_level() -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
}

/// GPT-2's tokenizer from encoder.json (or vocab.json) and vocab.bpe (or merges.txt).
pub fn gpt2_from_files(vocab_path: &Path, merges_path: &Path) -> Result<Tokenizer> {
    let vocab = read_vocab(vocab_path)?;
    let merges_text =
        crate::files::read_regular_to_string(merges_path, &merges_path.display().to_string())?;
    let eot = vocab
        .get("<|endoftext|>")
        .and_then(Value::as_u64)
        .unwrap_or(50256);
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": eot, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": byte_level(),
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": read_merges(&merges_text)}
    });
    build(spec, "GPT-2")
}

/// GPT-2's byte → unicode table: printable bytes map to themselves, the rest to U+0100 onwards.
fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for byte in 0..256u32 {
        if !printable.contains(&byte) {
            printable.push(byte);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    chars.into_iter().filter_map(char::from_u32).collect()
}

/// CLIP's tokenizer from the original `bpe_simple_vocab_16e6.txt.gz`: the vocabulary is the 256
/// byte symbols, the same with `</w>`, one entry per merge, then the two special tokens; only
/// the first 48,894 merges are used, as in CLIP's simple_tokenizer.
pub fn clip_from_bpe_gz(path: &Path) -> Result<Tokenizer> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .with_context(|| format!("{} is not a gzipped CLIP BPE file", path.display()))?;
    const MERGES: usize = 49152 - 256 - 2;
    let merges: Vec<(String, String)> = text
        .split('\n')
        .skip(1)
        .take(MERGES)
        .filter_map(|line| line.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    if merges.len() != MERGES {
        bail!(
            "{} holds {} merges, expected {MERGES}: is it CLIP's bpe_simple_vocab_16e6.txt.gz?",
            path.display(),
            merges.len()
        );
    }
    let symbols = bytes_to_unicode();
    let mut tokens: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
    tokens.extend(symbols.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.push("<|startoftext|>".into());
    tokens.push("<|endoftext|>".into());
    let vocab: serde_json::Map<String, Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| (token, json!(id)))
        .collect();
    let merges = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
    clip_tokenizer(Value::Object(vocab), merges)
}

/// CLIP's tokenizer from vocab.json + merges.txt as the hub's CLIP repositories ship them.
pub fn clip_from_vocab_files(vocab_path: &Path, merges_path: &Path) -> Result<Tokenizer> {
    let vocab = read_vocab(vocab_path)?;
    let merges_text =
        crate::files::read_regular_to_string(merges_path, &merges_path.display().to_string())?;
    clip_tokenizer(vocab, read_merges(&merges_text))
}

fn clip_tokenizer(vocab: Value, merges: Vec<Value>) -> Result<Tokenizer> {
    let id_of = |token: &str| vocab.get(token).and_then(Value::as_u64);
    let (Some(bos), Some(eos)) = (id_of("<|startoftext|>"), id_of("<|endoftext|>")) else {
        bail!("the CLIP vocabulary lacks <|startoftext|> or <|endoftext|>");
    };
    let special = |id: u64, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(bos, "<|startoftext|>"), special(eos, "<|endoftext|>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_SPLIT_PATTERN}, "behavior": "Removed", "invert": true},
            byte_level()]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", eos], "cls": ["<|startoftext|>", bos],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>", "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    });
    build(spec, "CLIP")
}

/// CLIP's text tokenizer with the model's context length: adds <|startoftext|>/<|endoftext|> and
/// truncates long input to `max_len` tokens with <|endoftext|> kept last, as HF's
/// `truncation=True` does.
#[derive(Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    max_len: usize,
}

impl ClipTokenizer {
    pub fn new(tokenizer: Tokenizer, max_len: usize) -> Result<Self> {
        if max_len < 2 {
            bail!("CLIP context length {max_len} leaves no room for the start and end tokens");
        }
        Ok(Self { tokenizer, max_len })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Ids with the start and end tokens, truncated to the context length.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("cannot tokenize text for CLIP: {e}"))?;
        Ok(self.truncate(encoding.get_ids()))
    }

    /// [`Self::encode`] of many texts, spread over the thread pool (a step tokenizes every
    /// candidate's whole text).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("cannot tokenize text for CLIP: {e}"))?;
        Ok(encodings
            .iter()
            .map(|encoding| self.truncate(encoding.get_ids()))
            .collect())
    }

    fn truncate(&self, ids: &[u32]) -> Vec<u32> {
        if ids.len() <= self.max_len {
            return ids.to_vec();
        }
        let mut truncated = ids[..self.max_len - 1].to_vec();
        truncated.push(ids[ids.len() - 1]);
        truncated
    }
}

/// Plain encode without special tokens (GPT-2 adds none).
pub fn encode_plain(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("cannot tokenize {text:?}: {e}"))?
        .get_ids()
        .to_vec())
}

/// SigLIP's text input as transformers' processor gives it with `padding="max_length",
/// max_length=64, truncation=True` (what SigLIP's model card and the zero-shot pipeline use):
/// every text is padded to the model's text length, and the model pools the last position.
///
/// The tokenizer class in tokenizer_config.json decides the rest, as in transformers:
/// - `SiglipTokenizer` (SigLIP; SentencePiece, read here from a tokenizer.json made from its
///   spiece.model): the text is canonicalised first (lowercased when `do_lower_case`, the
///   default; ASCII punctuation removed; whitespace runs collapsed; stripped), `</s>` is
///   appended, padding is on the right with `</s>`, and no attention mask is returned.
/// - any other class (SigLIP 2: Gemma's tokenizer.json): the tokenizer.json's own special tokens,
///   lowercased first for `Siglip2Tokenizer`, padded on `padding_side` (the class default: left
///   for Gemma and SigLIP 2 tokenizers, else right) with `pad_token`, and an attention mask.
#[derive(Clone)]
pub struct SiglipTokenizer {
    tokenizer: Tokenizer,
    len: usize,
    pad_id: u32,
    /// `SiglipTokenizer`'s canonicalisation and appended `</s>`: Some(eos id).
    canonical_eos: Option<u32>,
    lowercase: bool,
    left_padding: bool,
    with_mask: bool,
}

/// One text's ids and attention mask (1 = token), both of the text length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedText {
    pub ids: Vec<u32>,
    pub mask: Vec<u32>,
}

impl SiglipTokenizer {
    /// Reads tokenizer.json and tokenizer_config.json of `dir`; `len` is the text length
    /// (text_config.max_position_embeddings).
    pub fn load(dir: &Path, len: usize) -> Result<Self> {
        let tokenizer_json = dir.join("tokenizer.json");
        if !crate::files::model_file_present(&tokenizer_json)? && dir.join("spiece.model").exists()
        {
            bail!(
                "{} has SigLIP's SentencePiece spiece.model but no tokenizer.json: make one with `python -c \"from transformers import AutoTokenizer; from transformers.convert_slow_tokenizer import T5Converter; t = AutoTokenizer.from_pretrained('{}'); t._extra_ids = 0; T5Converter(t).converted().save('{}')\"`",
                dir.display(),
                dir.display(),
                tokenizer_json.display()
            );
        }
        let tokenizer = load_tokenizer_json(&tokenizer_json)?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if crate::files::model_file_present(&config_path)? {
            let text = crate::files::read_regular_to_string(
                &config_path,
                &config_path.display().to_string(),
            )?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", config_path.display()))?
        } else {
            json!({})
        };
        Self::from_parts(tokenizer, &config, len)
            .with_context(|| format!("SigLIP tokenizer in {}", dir.display()))
    }

    pub fn from_parts(tokenizer: Tokenizer, config: &Value, len: usize) -> Result<Self> {
        if len < 2 {
            bail!("text length {len} leaves no room for a token and the end token");
        }
        // Without a tokenizer_class transformers picks the model type's tokenizer: for
        // model_type siglip, SiglipTokenizer.
        let class = config["tokenizer_class"]
            .as_str()
            .unwrap_or("SiglipTokenizer");
        let siglip1 = class == "SiglipTokenizer";
        // A special token is written as a string or as an AddedToken object.
        let token = |key: &str, default: &str| -> String {
            match &config[key] {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or(default)
                    .to_string(),
                _ => default.to_string(),
            }
        };
        let id_of = |name: &str| -> Result<u32> {
            tokenizer
                .token_to_id(name)
                .with_context(|| format!("the tokenizer has no token {name:?}"))
        };
        let (pad, eos) = if siglip1 {
            (token("pad_token", "</s>"), token("eos_token", "</s>"))
        } else {
            (token("pad_token", "<pad>"), token("eos_token", "<eos>"))
        };
        let left_padding = match config["padding_side"].as_str() {
            Some("left") => true,
            Some("right") => false,
            Some(other) => {
                bail!("tokenizer_config.json: padding_side {other:?} is neither left nor right")
            }
            None => matches!(
                class,
                "GemmaTokenizer" | "GemmaTokenizerFast" | "Siglip2Tokenizer"
            ),
        };
        let with_mask = match config["model_input_names"].as_array() {
            Some(names) => names.iter().any(|n| n == "attention_mask"),
            None => !siglip1,
        };
        Ok(Self {
            pad_id: id_of(&pad)?,
            canonical_eos: if siglip1 { Some(id_of(&eos)?) } else { None },
            lowercase: if siglip1 {
                config["do_lower_case"].as_bool().unwrap_or(true)
            } else {
                class == "Siglip2Tokenizer"
            },
            tokenizer,
            len,
            left_padding,
            with_mask,
        })
    }

    /// The text length every input is padded to.
    pub fn text_len(&self) -> usize {
        self.len
    }

    /// Whether the model is given an attention mask (the tokenizer class returns one).
    pub fn with_mask(&self) -> bool {
        self.with_mask
    }

    /// SigLIP's `canonicalize_text`: punctuation (Python's `string.punctuation`, ASCII only)
    /// removed, whitespace runs made one space, stripped. Whitespace is Python's `\s` (and
    /// `str.strip`'s), which also counts the separators U+001C–U+001F that Rust's does not.
    fn canonicalize(text: &str) -> String {
        let python_space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
        let kept: String = text.chars().filter(|c| !c.is_ascii_punctuation()).collect();
        kept.split(python_space)
            .filter(|word| !word.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Ids before padding, truncated to the text length with the special tokens kept.
    fn unpadded(&self, text: &str) -> Result<Vec<u32>> {
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let fail = |e| anyhow::anyhow!("cannot tokenize text for SigLIP: {e}");
        if let Some(eos) = self.canonical_eos {
            let canonical = Self::canonicalize(text);
            let mut ids = self
                .tokenizer
                .encode(canonical.as_str(), false)
                .map_err(fail)?
                .get_ids()
                .to_vec();
            ids.truncate(self.len - 1);
            ids.push(eos);
            return Ok(ids);
        }
        let with_special = self.tokenizer.encode(text, true).map_err(fail)?;
        if with_special.len() <= self.len {
            return Ok(with_special.get_ids().to_vec());
        }
        // Too long: the text's own tokens are cut so that the special tokens still fit, as
        // transformers' truncation does.
        let content = self.tokenizer.encode(text, false).map_err(fail)?;
        let added = with_special.len() - content.len();
        if added >= self.len {
            bail!("the tokenizer adds {added} special tokens, as many as the text length");
        }
        let mut truncated = content.clone();
        truncated.truncate(self.len - added, 0, tokenizers::TruncationDirection::Right);
        let processed = self
            .tokenizer
            .post_process(truncated, None, true)
            .map_err(fail)?;
        Ok(processed.get_ids().to_vec())
    }

    /// Whether `text` alone fills the text length: anything after it is cut off.
    pub fn fills(&self, text: &str) -> Result<bool> {
        let ids = self.unpadded(text)?;
        // Cut only if a continuation is truncated away, not when the text is merely that long.
        Ok(ids.len() >= self.len && self.unpadded(&format!("{text} x"))? == ids)
    }

    /// Ids and mask of one text, padded to the text length.
    pub fn encode(&self, text: &str) -> Result<PaddedText> {
        let ids = self.unpadded(text)?;
        let pad = self.len - ids.len();
        let padding = std::iter::repeat_n(self.pad_id, pad);
        let zeros = std::iter::repeat_n(0, pad);
        let ones = std::iter::repeat_n(1, ids.len());
        Ok(if self.left_padding {
            PaddedText {
                ids: padding.chain(ids).collect(),
                mask: zeros.chain(ones).collect(),
            }
        } else {
            PaddedText {
                ids: ids.into_iter().chain(padding).collect(),
                mask: ones.chain(zeros).collect(),
            }
        })
    }
}
