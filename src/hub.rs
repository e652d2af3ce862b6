//! Model resolution: a local directory in the Hugging Face layout, or a hub id fetched into the
//! same cache Python uses (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub).

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// What a model directory must hold; each entry lists alternatives, the first present wins.
#[derive(Debug, Clone, Copy)]
pub enum ModelKind {
    /// A causal LM in the HF layout (GPT-2).
    CausalLm,
    /// A CLIPModel with its image preprocessor.
    Clip,
    /// Any scorer: CLIP or a sentence encoder; the image preprocessor is fetched when present.
    Encoder,
}

impl ModelKind {
    fn required(self) -> Vec<Vec<&'static str>> {
        let mut files = vec![
            vec!["config.json"],
            vec!["model.safetensors", "model.safetensors.index.json"],
            vec!["tokenizer.json", "vocab.json"],
        ];
        if let Self::Clip = self {
            files.push(vec!["preprocessor_config.json"]);
        }
        files
    }

    /// Files fetched when the repository has them.
    fn optional(self) -> &'static [&'static str] {
        match self {
            Self::Encoder => &["preprocessor_config.json", "sentence_bert_config.json"],
            _ => &[],
        }
    }

    /// Files that come with an alternative above (vocab.json needs merges.txt).
    fn companions(file: &str) -> &'static [&'static str] {
        match file {
            "vocab.json" => &["merges.txt"],
            _ => &[],
        }
    }
}

/// The hub cache directory, resolved as huggingface_hub does.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("huggingface").join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

pub(crate) fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

pub(crate) fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    !spec.starts_with('.')
        && parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// Resolves `spec` (a directory, or a hub id such as `openai/clip-vit-base-patch32`) to a local
/// directory that holds what `kind` needs, downloading from the hub when the cache lacks it.
pub fn resolve(spec: &str, kind: ModelKind) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!("{spec} is a file; pass a model directory in the Hugging Face layout or a hub id");
    }
    if !looks_like_hub_id(spec) {
        bail!("no model directory at {spec}; pass an existing directory or a hub id such as openai-community/gpt2");
    }
    let cache_root = cache_dir();
    let cache = Cache::new(cache_root.clone());
    let cached = cache.repo(Repo::new(spec.to_string(), RepoType::Model));
    let mut fetched: Vec<PathBuf> = Vec::new();
    let mut missing: Vec<Vec<&str>> = Vec::new();
    for alternatives in kind.required() {
        match alternatives.iter().find_map(|file| {
            let found = cached.get(file)?;
            let companions: Option<Vec<PathBuf>> = ModelKind::companions(file)
                .iter()
                .map(|c| cached.get(c))
                .collect();
            Some((found, companions?))
        }) {
            Some((found, companions)) => {
                fetched.push(found);
                fetched.extend(companions);
            }
            None => missing.push(alternatives),
        }
    }
    let explain = |why: String| {
        anyhow::anyhow!(
            "model '{spec}' is not in the Hugging Face cache ({}) and {why}; pass a local directory in the HF layout (config.json, model.safetensors, tokenizer.json) instead, or fetch the model where the hub is reachable",
            cache_root.display()
        )
    };
    if !missing.is_empty() {
        if offline() {
            return Err(explain("HF_HUB_OFFLINE is set".into()));
        }
        let api = ApiBuilder::from_cache(cache.clone())
            .with_endpoint(
                std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into()),
            )
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .build()
            .map_err(|e| explain(format!("the hub client failed to start ({e})")))?;
        let repo = api.model(spec.to_string());
        for alternatives in missing {
            let mut last_error = None;
            let mut got = None;
            for file in &alternatives {
                match repo.get(file) {
                    Ok(found) => {
                        got = Some(found);
                        for companion in ModelKind::companions(file) {
                            fetched.push(repo.get(companion).map_err(|e| {
                                explain(format!("downloading {companion} failed ({e})"))
                            })?);
                        }
                        break;
                    }
                    Err(e) => last_error = Some(e.to_string()),
                }
            }
            match got {
                Some(found) => fetched.push(found),
                None => {
                    return Err(explain(format!(
                        "downloading {} failed ({})",
                        alternatives.join(" / "),
                        last_error.unwrap_or_default()
                    )))
                }
            }
        }
    }
    if !offline() {
        let optional: Vec<&str> = kind
            .optional()
            .iter()
            .copied()
            .filter(|f| cached.get(f).is_none())
            .collect();
        if !optional.is_empty() {
            if let Ok(api) = ApiBuilder::from_cache(cache.clone())
                .with_progress(false)
                .build()
            {
                let repo = api.model(spec.to_string());
                for file in optional {
                    // Absent from some repositories by design: a failure here is not an error.
                    let _ = repo.get(file);
                }
            }
        }
    }
    // Every file of one revision lives in the same snapshot directory.
    let snapshot = fetched
        .first()
        .and_then(|f| f.parent())
        .map(Path::to_path_buf)
        .context("no files resolved")?;
    fetch_shards(spec, &snapshot, &cache)?;
    Ok(snapshot)
}

/// Sharded checkpoints list their shards in model.safetensors.index.json: fetch them too.
fn fetch_shards(spec: &str, snapshot: &Path, cache: &Cache) -> Result<()> {
    let index = snapshot.join("model.safetensors.index.json");
    if snapshot.join("model.safetensors").is_file() || !index.is_file() {
        return Ok(());
    }
    let shards = crate::models::weight_files(snapshot)?;
    let missing: Vec<&PathBuf> = shards.iter().filter(|s| !s.is_file()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if offline() {
        bail!(
            "model '{spec}': shard {} is not in the cache and HF_HUB_OFFLINE is set",
            missing[0].display()
        );
    }
    let api = ApiBuilder::from_cache(cache.clone()).build()?;
    let repo = api.model(spec.to_string());
    for shard in missing {
        let name = shard
            .file_name()
            .and_then(|n| n.to_str())
            .context("shard name")?;
        repo.get(name)
            .with_context(|| format!("downloading {name} of '{spec}' failed"))?;
    }
    Ok(())
}
