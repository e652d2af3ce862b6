//! Model resolution: a local directory in the Hugging Face layout, or a hub id (optionally
//! `ID@REVISION`, a branch, tag or commit) fetched into the cache that Python's huggingface_hub
//! uses, in its layout (`refs/`, `snapshots/`, `blobs/`), so that downloads are shared both ways.
//!
//! What to fetch is decided by the repository's own file list (`GET
//! /api/models/{id}/revision/{rev}`, its `siblings`), as transformers does: safetensors before
//! PyTorch `.bin`, so that a `.bin` beside safetensors is never downloaded. Downloads go through
//! the hf-hub crate (resume, blob/snapshot layout, locking); around it this module adds what it
//! lacks: the token lookup of huggingface_hub (`HF_TOKEN`, then the token file), `HF_HUB_OFFLINE`,
//! cache lookups by commit, and one-line errors from the hub's `X-Error-Code`.

use crate::HubError;
use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The public hub; `HF_ENDPOINT` replaces it.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

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
    /// Files fetched when the repository has them.
    fn optional(self) -> &'static [&'static str] {
        match self {
            // tokenizer_config.json: SigLIP's tokenizer class decides its padding and mask.
            Self::Encoder => &[
                "preprocessor_config.json",
                "tokenizer_config.json",
                "sentence_bert_config.json",
                "modules.json",
                // The Pooling module's mode, where sentence-transformers saves it.
                "1_Pooling/config.json",
            ],
            Self::Clip => &[],
            Self::CausalLm => &[
                "generation_config.json",
                "tokenizer_config.json",
                "chat_template.jinja",
                "special_tokens_map.json",
            ],
        }
    }
}

/// Where a loaded model came from, as reports record it: a hub id with the revision asked for
/// and the commit it resolved to, or a local path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ModelOrigin {
    Hub {
        id: String,
        revision: String,
        commit: String,
        /// The one file of the repository that was loaded (a GGUF named by `--gguf-file`).
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    Local {
        path: String,
    },
}

/// A model argument split into a local path, or a hub id and an optional revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    Local(PathBuf),
    Hub {
        id: String,
        revision: Option<String>,
    },
}

impl ModelSpec {
    /// Parses a model argument: an existing path is local (even with `@` in its name);
    /// otherwise `ID` or `ID@REVISION`, where REVISION is a branch, tag or commit, as in
    /// `huggingface-cli download ID --revision REVISION`.
    ///
    /// Errors: neither an existing path nor a hub id, or an empty revision.
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.exists() {
            return Ok(Self::Local(path.to_path_buf()));
        }
        // A link that leads nowhere (or to itself) names a local model, not a hub id that
        // happens to have a slash in it.
        if path.symlink_metadata().is_ok() {
            return Err(crate::Error::NotFound(format!(
                "{spec} is a symbolic link to nothing (a missing target, or a loop of links): point it at the model directory"
            ))
            .into());
        }
        let (id, revision) = match spec.split_once('@') {
            Some((id, revision)) => (id, Some(revision)),
            None => (spec, None),
        };
        if !looks_like_hub_id(id) {
            return Err(crate::Error::NotFound(format!("no model directory at {spec}; pass an existing directory in the Hugging Face layout or a hub id, ORG/NAME (ORG/NAME@REVISION for a branch, tag or commit)")).into());
        }
        if revision.is_some_and(|r| r.trim().is_empty()) {
            crate::usage_bail!(
                "{spec}: nothing after '@'; give a branch, tag or commit, e.g. {id}@main"
            );
        }
        Ok(Self::Hub {
            id: id.to_string(),
            revision: revision.map(str::to_string),
        })
    }
}

static PROGRESS: AtomicBool = AtomicBool::new(true);

/// Turns download progress bars off (they are drawn only on a terminal anyway); `--json`
/// output sets this so that machine-read runs print nothing but their events.
pub fn set_progress(enabled: bool) {
    PROGRESS.store(enabled, Ordering::Relaxed);
}

/// How to reach the hub and where to cache, read from the environment as huggingface_hub reads
/// it (`HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`, `HF_HUB_CACHE`, `HF_HOME`).
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
    pub cache: PathBuf,
    pub progress: bool,
}

impl HubConfig {
    pub fn from_env() -> Self {
        Self {
            endpoint: env_nonempty("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token: token(),
            offline: offline(),
            cache: cache_dir(),
            progress: PROGRESS.load(Ordering::Relaxed)
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// huggingface_hub's HF_HOME: `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else
/// `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    if let Some(home) = env_nonempty("HF_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = env_nonempty("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("huggingface");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface")
}

/// The access token, found as huggingface_hub finds it: `HF_TOKEN`, then the file at
/// `HF_TOKEN_PATH`, else `$HF_HOME/token` (written by `huggingface-cli login`).
pub fn token() -> Option<String> {
    if let Some(token) = env_nonempty("HF_TOKEN").or_else(|| env_nonempty("HUGGING_FACE_HUB_TOKEN"))
    {
        return Some(token.trim().to_string());
    }
    let path = env_nonempty("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("token"));
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The hub cache directory, resolved as huggingface_hub does.
pub fn cache_dir() -> PathBuf {
    match env_nonempty("HF_HUB_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => hf_home().join("hub"),
    }
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

static ORIGINS: Mutex<Option<HashMap<String, ModelOrigin>>> = Mutex::new(None);

/// Where the model argument `spec` was resolved to in this process (hub id, revision and
/// commit), or its path when it is local; None for a hub id not resolved yet.
pub fn origin(spec: &str) -> Option<ModelOrigin> {
    // First what this process resolved: a GGUF fetched by `--gguf-file` is named by its path in
    // the cache, which exists, yet came from the hub.
    let remembered = ORIGINS
        .lock()
        .ok()
        .and_then(|map| map.as_ref().and_then(|m| m.get(spec).cloned()));
    if remembered.is_some() {
        return remembered;
    }
    match ModelSpec::parse(spec) {
        Ok(ModelSpec::Local(path)) => Some(ModelOrigin::Local {
            path: path.display().to_string(),
        }),
        _ => None,
    }
}

/// One file of a hub repository, as transformers' `gguf_file=` names it (`--lm ID[@REV]
/// --gguf-file NAME.gguf`): fetched into the cache (or found there offline), its path returned.
/// The path is remembered as coming from the hub, so that reports record the id, revision,
/// commit and file. A local directory and a file in it work too.
pub fn resolve_file(spec: &str, file: &str, config: &HubConfig) -> Result<PathBuf> {
    let (id, revision) = match ModelSpec::parse(spec)? {
        ModelSpec::Local(dir) => {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(crate::Error::NotFound(format!(
                    "{} has no {file}; name a file in it",
                    dir.display()
                ))
                .into());
            }
            return Ok(path);
        }
        ModelSpec::Hub { id, revision } => (id, revision),
    };
    let snapshot = Snapshot::open(&id, revision.as_deref(), config)?;
    if !snapshot.has(file) {
        let ggufs: Vec<&str> = snapshot
            .files
            .iter()
            .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
            .map(String::as_str)
            .collect();
        let choice = match ggufs.is_empty() {
            true => "it holds no .gguf file".to_string(),
            false => format!("its GGUF files: {}", ggufs.join(", ")),
        };
        return Err(crate::Error::Hub {
            kind: HubError::Missing,
            message: format!("'{id}@{}' has no {file}; {choice}", snapshot.revision),
        }
        .into());
    }
    let path = snapshot.fetch(file)?;
    snapshot.write_ref()?;
    let origin = match snapshot.origin() {
        ModelOrigin::Hub {
            id,
            revision,
            commit,
            ..
        } => ModelOrigin::Hub {
            id,
            revision,
            commit,
            file: Some(file.to_string()),
        },
        local => local,
    };
    remember(&path.display().to_string(), &origin);
    Ok(path)
}

fn remember(spec: &str, origin: &ModelOrigin) {
    if let Ok(mut map) = ORIGINS.lock() {
        map.get_or_insert_with(HashMap::new)
            .insert(spec.to_string(), origin.clone());
    }
}

/// One revision of a hub repository: its commit and file list, with the means to fetch files
/// into the cache (online) or only to find them there (offline or unreachable).
pub struct Snapshot {
    pub id: String,
    pub revision: String,
    pub commit: String,
    /// Every file of the revision, as paths within the repository.
    pub files: BTreeSet<String>,
    /// `snapshots/<commit>` in the cache.
    pub dir: PathBuf,
    remote: Option<ApiRepo>,
    /// Why files cannot be downloaded, when `remote` is None.
    offline_reason: String,
    cache: PathBuf,
    endpoint: String,
}

fn repo_folder(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// The commit a cached revision points at: `refs/<revision>`, or the revision itself when it
/// is a commit whose snapshot is cached.
fn cached_commit(cache: &Path, id: &str, revision: &str) -> Option<String> {
    let folder = repo_folder(cache, id);
    if let Ok(commit) = std::fs::read_to_string(folder.join("refs").join(revision)) {
        return Some(commit.trim().to_string());
    }
    (is_commit(revision) && folder.join("snapshots").join(revision).is_dir())
        .then(|| revision.to_string())
}

fn list_files(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.is_file() {
                if let Ok(relative) = path.strip_prefix(root) {
                    out.insert(relative.to_string_lossy().replace('\\', "/"));
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// A failed hub request as one line saying what to do, from the status and `X-Error-Code`.
/// Returns None when the hub could not be reached at all (the caller then tries the cache).
fn hub_error(
    error: &ApiError,
    id: &str,
    revision: &str,
    what: &str,
    endpoint: &str,
) -> Option<crate::Error> {
    let ureq_error = match error {
        ApiError::RequestError(e) => e.as_ref(),
        ApiError::TooManyRetries(inner) => {
            return hub_error(inner, id, revision, what, endpoint);
        }
        other => {
            return Some(crate::Error::Failed(format!(
                "{what} of '{id}' failed: {other}"
            )))
        }
    };
    match ureq_error {
        ureq::Error::Status(status, response) => {
            let code = response.header("X-Error-Code").unwrap_or("").to_string();
            let hub = |kind, message| crate::Error::Hub { kind, message };
            Some(match (code.as_str(), *status) {
                ("GatedRepo", _) => hub(HubError::Gated, format!(
                    "'{id}' is a gated model: accept its licence at {endpoint}/{id} and set HF_TOKEN to a token of that account (or run `huggingface-cli login`)"
                )),
                ("RepoNotFound", _) | ("", 401) => hub(HubError::Missing, format!(
                    "no model '{id}' on {endpoint}: check the id; if it is private, set HF_TOKEN to a token that can read it"
                )),
                ("RevisionNotFound", _) => hub(HubError::Missing, format!(
                    "'{id}' has no revision '{revision}': give an existing branch, tag or commit after '@'"
                )),
                ("EntryNotFound", _) | ("", 404) => hub(
                    HubError::Missing,
                    format!("{what} of '{id}@{revision}' failed: the file is not in that revision"),
                ),
                ("", 403) => hub(HubError::Gated, format!(
                    "the hub refused {what} of '{id}' (403): the token in HF_TOKEN cannot read it"
                )),
                _ => crate::Error::Failed(format!(
                    "{what} of '{id}@{revision}' failed: HTTP {status} {code}"
                )),
            })
        }
        ureq::Error::Transport(_) => None,
    }
}

impl Snapshot {
    /// Resolves `revision` (default `main`) of the model repository `id`: asks the hub for its
    /// commit and file list, or, offline or when the hub is unreachable, reads both from the
    /// cache.
    ///
    /// Errors: gated, missing repository or revision (one line each, saying what to do), or the
    /// revision is neither reachable nor cached.
    pub fn open(id: &str, revision: Option<&str>, config: &HubConfig) -> Result<Self> {
        let revision = revision.unwrap_or("main").to_string();
        let why_offline = if config.offline {
            "HF_HUB_OFFLINE is set".to_string()
        } else {
            let api = ApiBuilder::from_cache(hf_hub::Cache::new(config.cache.clone()))
                .with_endpoint(config.endpoint.clone())
                .with_token(config.token.clone())
                .with_progress(config.progress)
                .build()
                .map_err(|e| anyhow!("the hub client failed to start: {e}"))?;
            let repo = api.repo(Repo::with_revision(
                id.to_string(),
                RepoType::Model,
                revision.clone(),
            ));
            match repo.info() {
                Ok(info) => {
                    let dir = repo_folder(&config.cache, id)
                        .join("snapshots")
                        .join(&info.sha);
                    // Files are fetched by commit, as snapshot_download does, so that every
                    // file comes from the commit listed even if the branch moves meanwhile.
                    let by_commit = api.repo(Repo::with_revision(
                        id.to_string(),
                        RepoType::Model,
                        info.sha.clone(),
                    ));
                    return Ok(Self {
                        id: id.to_string(),
                        revision,
                        commit: info.sha,
                        files: info.siblings.into_iter().map(|s| s.rfilename).collect(),
                        dir,
                        remote: Some(by_commit),
                        offline_reason: String::new(),
                        cache: config.cache.clone(),
                        endpoint: config.endpoint.clone(),
                    });
                }
                Err(error) => {
                    match hub_error(&error, id, &revision, "listing the files", &config.endpoint) {
                        Some(typed) => return Err(typed.into()),
                        None => format!("the hub at {} is unreachable ({error})", config.endpoint),
                    }
                }
            }
        };
        let Some(commit) = cached_commit(&config.cache, id, &revision) else {
            return Err(crate::Error::Hub {
                kind: HubError::Offline,
                message: format!(
                    "model '{id}@{revision}' is not in the Hugging Face cache ({}) and {why_offline}; fetch it where the hub is reachable, or pass a local directory in the HF layout",
                    config.cache.display()
                ),
            }
            .into());
        };
        let dir = repo_folder(&config.cache, id)
            .join("snapshots")
            .join(&commit);
        Ok(Self {
            id: id.to_string(),
            revision,
            commit,
            files: list_files(&dir),
            dir,
            remote: None,
            offline_reason: why_offline,
            cache: config.cache.clone(),
            endpoint: config.endpoint.clone(),
        })
    }

    pub fn origin(&self) -> ModelOrigin {
        ModelOrigin::Hub {
            id: self.id.clone(),
            revision: self.revision.clone(),
            commit: self.commit.clone(),
            file: None,
        }
    }

    pub fn has(&self, file: &str) -> bool {
        self.files.contains(file)
    }

    /// The error for a required file the revision lacks: online the repository lacks it
    /// (`what_else` says what the repository is then not); offline the cache does, which says
    /// nothing about the repository.
    fn lacks(&self, file: &str, what_else: &str) -> anyhow::Error {
        match self.remote {
            Some(_) => anyhow!("'{}@{}' has no {file}{what_else}", self.id, self.revision),
            None => self.not_cached(file),
        }
    }

    fn not_cached(&self, file: &str) -> anyhow::Error {
        crate::Error::Hub {
            kind: HubError::Offline,
            message: format!(
                "the cache ({}) lacks {file} of '{}@{}' and {}; fetch the model where the hub is reachable",
                self.cache.display(),
                self.id,
                self.revision,
                self.offline_reason
            ),
        }
        .into()
    }

    /// The local path of `file` in this revision's snapshot, downloaded when missing.
    /// Errors: the download fails, or (offline) the cache lacks the file, naming it.
    pub fn fetch(&self, file: &str) -> Result<PathBuf> {
        let local = self.dir.join(file);
        if local.is_file() {
            return Ok(local);
        }
        let Some(repo) = &self.remote else {
            return Err(self.not_cached(file));
        };
        let path = repo.download(file).map_err(|error| {
            let typed = hub_error(
                &error,
                &self.id,
                &self.revision,
                &format!("downloading {file}"),
                &self.endpoint,
            )
            .unwrap_or_else(|| {
                crate::Error::Failed(format!(
                    "downloading {file} of '{}@{}' failed: the hub at {} is unreachable ({error})",
                    self.id, self.revision, self.endpoint
                ))
            });
            anyhow::Error::new(typed)
        })?;
        // hf-hub wrote refs/<commit>, as it names refs by the revision it was given; the cache
        // layout of huggingface_hub has refs only for branches and tags: replace it by that.
        let refs = repo_folder(&self.cache, &self.id).join("refs");
        let stray = refs.join(&self.commit);
        if std::fs::read_to_string(&stray).is_ok_and(|c| c.trim() == self.commit) {
            let _ = std::fs::remove_file(stray);
        }
        self.write_ref()?;
        if path != local && !local.is_file() {
            bail!(
                "downloaded {file} of '{}' landed at {} rather than in the snapshot of commit {}; run again",
                self.id,
                path.display(),
                self.commit
            );
        }
        Ok(local)
    }

    /// Points `refs/<revision>` at the resolved commit, as huggingface_hub does for branches and
    /// tags (not for commits), so that later offline runs find this snapshot.
    fn write_ref(&self) -> Result<()> {
        if self.remote.is_none() || self.revision == self.commit {
            return Ok(());
        }
        let reference = repo_folder(&self.cache, &self.id)
            .join("refs")
            .join(&self.revision);
        if std::fs::read_to_string(&reference).is_ok_and(|c| c.trim() == self.commit) {
            return Ok(());
        }
        if let Some(parent) = reference.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&reference, &self.commit)
            .with_context(|| format!("cannot write {}", reference.display()))
    }

    /// Fetches `prefix` + the first of `candidates` the revision has, and the shards its index
    /// lists. Errors: none present (listing the files the repository does have).
    pub fn fetch_weights(&self, prefix: &str, candidates: &[String]) -> Result<()> {
        let Some(chosen) = candidates
            .iter()
            .map(|c| format!("{prefix}{c}"))
            .find(|c| self.has(c))
        else {
            if self.remote.is_none() {
                return Err(self.not_cached(&format!(
                    "the weights ({})",
                    candidates
                        .iter()
                        .map(|c| format!("{prefix}{c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let in_folder: Vec<&str> = self
                .files
                .iter()
                .map(String::as_str)
                .filter(|f| f.starts_with(prefix) && !f[prefix.len()..].contains('/'))
                .collect();
            bail!(
                "'{}@{}' has no weights clipsteer reads in {} (looked for {}); it has: {}",
                self.id,
                self.revision,
                if prefix.is_empty() {
                    "its root"
                } else {
                    prefix
                },
                candidates.join(", "),
                if in_folder.is_empty() {
                    "no files".to_string()
                } else {
                    in_folder.join(", ")
                }
            );
        };
        let path = self.fetch(&chosen)?;
        if chosen.ends_with(".json") {
            for shard in crate::models::shard_names(&path)? {
                self.fetch(&format!("{prefix}{shard}"))?;
            }
        }
        Ok(())
    }
}

/// Resolves `spec` (a directory, or a hub id such as `openai/clip-vit-base-patch32`, optionally
/// `ID@REVISION`) to a local directory that holds what `kind` needs, downloading from the hub
/// when the cache lacks it. The resolved origin is remembered for [`origin`].
pub fn resolve(spec: &str, kind: ModelKind) -> Result<PathBuf> {
    resolve_with(spec, kind, &HubConfig::from_env())
}

/// [`resolve`] with an explicit hub configuration.
pub fn resolve_with(spec: &str, kind: ModelKind, config: &HubConfig) -> Result<PathBuf> {
    let (id, revision) = match ModelSpec::parse(spec)? {
        ModelSpec::Local(path) => {
            if !path.is_dir() {
                bail!("{spec} is a file; pass a model directory in the Hugging Face layout or a hub id");
            }
            return Ok(path);
        }
        ModelSpec::Hub { id, revision } => (id, revision),
    };
    let snapshot = Snapshot::open(&id, revision.as_deref(), config)?;
    if !snapshot.has("config.json") {
        return Err(snapshot.lacks("config.json", ": is it a transformers model repository?"));
    }
    snapshot.fetch("config.json")?;
    snapshot.fetch_weights("", &crate::models::TRANSFORMERS_WEIGHTS.candidates(None))?;
    if snapshot.has("tokenizer.json") {
        snapshot.fetch("tokenizer.json")?;
    } else if snapshot.has("vocab.json") && snapshot.has("merges.txt") {
        snapshot.fetch("vocab.json")?;
        snapshot.fetch("merges.txt")?;
    } else if snapshot.has("spiece.model") {
        // Online or not, the repository's tokenizer is spiece.model alone: fetching cannot help.
        return Err(anyhow!(
            "'{}@{}' has no tokenizer.json, only SentencePiece's spiece.model (SigLIP): download the repository with huggingface-cli, make a tokenizer.json beside spiece.model as docs/MODELS.md (Image-text encoders) shows, and pass the directory",
            snapshot.id,
            snapshot.revision
        ));
    } else {
        return Err(snapshot.lacks("tokenizer.json", " (nor vocab.json and merges.txt)"));
    }
    if let ModelKind::Clip = kind {
        if !snapshot.has("preprocessor_config.json") {
            return Err(snapshot.lacks("preprocessor_config.json", ": is it a CLIP model?"));
        }
        snapshot.fetch("preprocessor_config.json")?;
    }
    for file in kind.optional() {
        if snapshot.has(file) {
            snapshot.fetch(file)?;
        }
    }
    // Offline, a file the cache lacks may still be in the repository: for the chat template
    // that decides describe's route, say so rather than take the plain route unannounced.
    if snapshot.remote.is_none()
        && matches!(kind, ModelKind::CausalLm)
        && !snapshot.has("tokenizer_config.json")
        && !snapshot.has("chat_template.jinja")
    {
        crate::errln!(
            "note: the cache holds no tokenizer_config.json of '{}@{}' and {}, so whether it has a chat template is unknown: it runs without one (fetch the model where the hub is reachable, or give --prompt)",
            snapshot.id,
            snapshot.revision,
            snapshot.offline_reason
        );
    }
    snapshot.write_ref()?;
    remember(spec, &snapshot.origin());
    Ok(snapshot.dir.clone())
}

/// What a diffusers pipeline needs from its repository: files that must be there, each
/// weighted component's folder and weight naming, and files fetched when present.
pub struct PipelineLayout<'a> {
    pub required: &'a [&'a str],
    pub weights: &'a [(&'a str, crate::models::WeightNames)],
    pub optional: &'a [&'a str],
}

/// Resolves a diffusers pipeline (hub `id`, at `revision`): fetches what `layout` names, the
/// weights of the `variant` when given. Returns the snapshot directory; `spec` is the
/// argument [`origin`] will know it by.
pub fn resolve_pipeline(
    id: &str,
    revision: Option<&str>,
    layout: &PipelineLayout,
    variant: Option<&str>,
    spec: &str,
    config: &HubConfig,
) -> Result<PathBuf> {
    let snapshot = Snapshot::open(id, revision, config)?;
    for file in layout.required {
        if !snapshot.has(file) {
            return Err(snapshot.lacks(
                file,
                ": is it a Stable Diffusion pipeline in the diffusers layout?",
            ));
        }
        snapshot.fetch(file)?;
    }
    for (folder, names) in layout.weights {
        snapshot.fetch_weights(&format!("{folder}/"), &names.candidates(variant))?;
    }
    for file in layout.optional {
        if snapshot.has(file) {
            snapshot.fetch(file)?;
        }
    }
    snapshot.write_ref()?;
    remember(spec, &snapshot.origin());
    Ok(snapshot.dir.clone())
}

/// `{"lm": {"id","revision","commit"}, "encoder": {...}}`: where each model of a run came from,
/// so that a result can be reproduced; a local model records `{"path"}`. `models` pairs a role
/// with the argument the model was loaded from (after it was loaded: hub ids resolved in this
/// process report their commit, see [`origin`]).
pub fn models_json(models: &[(&str, &str)]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (role, spec) in models {
        let origin = match origin(spec) {
            Some(origin) => serde_json::to_value(origin).unwrap_or(serde_json::Value::Null),
            None => serde_json::json!({ "id": spec }),
        };
        out.insert(role.to_string(), origin);
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_split_into_id_and_revision() {
        assert_eq!(
            ModelSpec::parse("org/model@v2").unwrap(),
            ModelSpec::Hub {
                id: "org/model".into(),
                revision: Some("v2".into())
            }
        );
        assert_eq!(
            ModelSpec::parse("gpt2").unwrap(),
            ModelSpec::Hub {
                id: "gpt2".into(),
                revision: None
            }
        );
        assert!(ModelSpec::parse("org/model@").is_err());
        assert!(ModelSpec::parse("./no/such/dir").is_err());
        assert!(matches!(
            ModelSpec::parse(".").unwrap(),
            ModelSpec::Local(_)
        ));
    }

    #[test]
    fn variants_are_named_as_diffusers_names_them() {
        assert_eq!(
            crate::models::DIFFUSERS_WEIGHTS.candidates(Some("fp16")),
            [
                "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.safetensors.index.fp16.json",
                "diffusion_pytorch_model.fp16.bin",
                "diffusion_pytorch_model.bin.index.fp16.json",
            ]
        );
    }
}
