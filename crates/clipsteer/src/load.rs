//! Loading models named on the command line (a local directory, a hub id or a `.gguf` file),
//! shared by every subcommand that runs them.

use crate::hub::{self, ModelKind};
use crate::models::llama_gguf::gguf_architecture;
use crate::steer::lm::LanguageModel;
use crate::steer::scorer::Encoder;
use crate::steer::{ClipScorer, Gemma3Lm, GgufLm, Gpt2Lm};
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

/// A GPT-2 family model (directory or hub id), or a `.gguf` file: Gemma 3 by its
/// `general.architecture`, else the llama family.
pub fn load_lm(spec: &str, device: &Device) -> Result<LanguageModel> {
    let path = Path::new(spec);
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        if !path.is_file() {
            return Err(crate::Error::NotFound(format!(
                "no GGUF file at {spec}; pass an existing .gguf file, or a directory in the Hugging Face layout or a hub id"
            )).into());
        }
        let context = || format!("cannot load language model '{spec}'");
        let architecture = gguf_architecture(path).with_context(context)?;
        return Ok(if architecture == "gemma3" {
            Gemma3Lm::load(path, device).with_context(context)?.boxed()
        } else {
            GgufLm::load(path, device).with_context(context)?.boxed()
        });
    }
    let dir = hub::resolve(spec, ModelKind::CausalLm)?;
    let lm = Gpt2Lm::load(&dir, device)
        .with_context(|| format!("cannot load language model '{spec}'"))?;
    Ok(lm.boxed())
}
