//! Loading models named on the command line (a local directory, a hub id or a `.gguf` file),
//! shared by every subcommand that runs them.

use crate::hub::{self, ModelKind};
use crate::steer::chat_template::ChatTemplate;
use crate::steer::lm::LanguageModel;
use crate::steer::scorer::Encoder;
use crate::steer::{ClipScorer, Gpt2Lm, TransformerLm};
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::Path;

/// The scorer behind `--encoder`: CLIP or a sentence encoder, by its config.json.
pub fn load_encoder(spec: &str, device: &Device) -> Result<Encoder> {
    let dir = hub::resolve(spec, ModelKind::Encoder)?;
    Encoder::load(&dir, device).with_context(|| format!("cannot load encoder '{spec}'"))
}

pub fn load_clip(spec: &str, device: &Device) -> Result<ClipScorer> {
    let dir = hub::resolve(spec, ModelKind::Clip)?;
    ClipScorer::load(&dir, device).with_context(|| format!("cannot load CLIP model '{spec}'"))
}

/// The LM behind `--lm`: a `.gguf` file (llama or Gemma 3), or a directory or hub id in the HF
/// layout, by its config.json `model_type`: GPT-2, or any family of
/// [`crate::models::decoder::Family`].
pub fn load_lm(spec: &str, device: &Device) -> Result<LanguageModel> {
    let path = Path::new(spec);
    let context = || format!("cannot load language model '{spec}'");
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        if let Ok(meta) = std::fs::metadata(path).map(|m| m.file_type()) {
            if !meta.is_file() {
                crate::usage_bail!(
                    "{spec} is {}, not a GGUF file: pass a .gguf file, or a directory in the Hugging Face layout or a hub id",
                    crate::files::kind_name(&meta)
                );
            }
        }
        if !path.is_file() {
            return Err(crate::Error::NotFound(format!(
                "no GGUF file at {spec}; pass an existing .gguf file, or a directory in the Hugging Face layout or a hub id"
            )).into());
        }
        return Ok(TransformerLm::load(path, device)
            .with_context(context)?
            .boxed());
    }
    let dir = hub::resolve(spec, ModelKind::CausalLm)?;
    let model_type = crate::models::model_type(&dir)?;
    match model_type.as_deref() {
        Some("gpt2") | None => Ok(Gpt2Lm::load(&dir, device).with_context(context)?.boxed()),
        Some(t) if crate::models::decoder::Family::from_model_type(t).is_some() => {
            Ok(TransformerLm::load(&dir, device)
                .with_context(context)?
                .boxed())
        }
        Some(t) => Err(crate::Error::BadArgument(not_an_lm(spec, t)).into()),
    }
}

/// The LM argument for `--lm SPEC --gguf-file NAME` (transformers' `gguf_file=`): the GGUF file
/// fetched from the hub repository SPEC (or found in the local directory SPEC), as the path every
/// loader takes; reports name it by id, revision, commit and file. Without `gguf_file`, SPEC.
pub fn lm_argument(spec: &str, gguf_file: Option<&str>) -> Result<String> {
    let Some(file) = gguf_file else {
        return Ok(spec.to_string());
    };
    if !is_gguf(Path::new(file)) {
        crate::usage_bail!("--gguf-file {file}: name a .gguf file of the repository");
    }
    if is_gguf(Path::new(spec)) {
        crate::usage_bail!("--gguf-file names a file in the repository --lm gives; --lm {spec} is a file already: drop --gguf-file");
    }
    let path = hub::resolve_file(spec, file, &hub::HubConfig::from_env())?;
    Ok(path.display().to_string())
}

/// The chat template a model's files carry: a GGUF's `tokenizer.chat_template`, or the
/// `tokenizer_config.json` (or `chat_template.jinja`) of a model directory or hub id.
pub fn chat_template_of(spec: &str) -> Result<ChatTemplate> {
    let path = Path::new(spec);
    if is_gguf(path) {
        return ChatTemplate::from_gguf(path);
    }
    let dir = hub::resolve(spec, ModelKind::CausalLm)?;
    ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))
}

/// [`chat_template_of`] for a model that may have none (GPT-2, a base model's GGUF): None then.
/// A template that is there but does not compile is an error, not a silent plain prompt.
pub fn chat_template_if_any(spec: &str) -> Result<Option<ChatTemplate>> {
    let path = Path::new(spec);
    if is_gguf(path) {
        // One read of the header (a large vocabulary makes it the costly part).
        let (content, _) = crate::models::gguf::read_gguf(path)?;
        if !content.metadata.contains_key("tokenizer.chat_template") {
            return Ok(None);
        }
        return ChatTemplate::from_gguf_metadata(&content, path).map(Some);
    }
    // A config that is there but unreadable is an error, as when transformers loads the
    // tokenizer, not a silent fall back to the plain prompt.
    let dir = hub::resolve(spec, ModelKind::CausalLm)?;
    ChatTemplate::in_tokenizer_config(&dir.join("tokenizer_config.json"))
}

fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Why a model of `model_type` cannot be `--lm`, in one line that says what to pass.
fn not_an_lm(spec: &str, model_type: &str) -> String {
    let supported = crate::models::decoder::SUPPORTED_MODEL_TYPES.join(", ");
    match model_type {
        "clip" | "siglip" | "siglip2" | "clip_vision_model" => format!(
            "{spec} is an image-text encoder ('{model_type}'), not a language model: pass it as --encoder, and a causal LM ({supported}) as --lm"
        ),
        "bert" | "mpnet" | "roberta" | "xlm-roberta" => format!(
            "{spec} is a text encoder ('{model_type}'), not a language model: pass it as --encoder, and a causal LM ({supported}) as --lm"
        ),
        _ => format!(
            "{spec} holds a '{model_type}' model (config.json model_type), which clipsteer cannot run as a language model; supported: {supported}, or a llama or Gemma 3 .gguf file"
        ),
    }
}
