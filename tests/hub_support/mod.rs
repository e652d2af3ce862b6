#![allow(dead_code)]
//! A stand-in for the Hugging Face hub on loopback (axum), answering as huggingface.co does
//! (huggingface_hub's file_download.py and the hf-hub crate read exactly these):
//!
//! - `GET /api/models/{id}[/revision/{rev}]`: JSON with `id`, `sha` (the commit) and `siblings`
//!   (`[{"rfilename": ...}]`);
//! - `GET /api/models/{id}/tree/{rev}?recursive=true`: the files with their sizes, git and LFS
//!   ids, as huggingface_hub's `snapshot_download` lists them;
//! - `GET|HEAD /{id}/resolve/{rev}/{file}`: small files inline with `ETag` (git blob sha1),
//!   `X-Repo-Commit`, `Content-Length` and Range requests (206 + `Content-Range`); weight files
//!   (LFS on the hub) as a 302 to a content address on another origin (the CDN,
//!   `/cas/{sha256}`) with `X-Linked-Etag` and `X-Linked-Size`, served there with Range
//!   requests too;
//! - errors with `X-Error-Code`: 401 `RepoNotFound` (the hub hides private repos behind 401),
//!   401/403 `GatedRepo`, 404 `RevisionNotFound` and `EntryNotFound`.
//!
//! Every request is logged, so tests can assert what was (not) downloaded.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Files of one commit, by path in the repository.
pub type Files = BTreeMap<String, Arc<Vec<u8>>>;

/// A model repository: named revisions (branches and tags) pointing at commits.
#[derive(Clone, Default)]
pub struct HubRepo {
    pub id: String,
    /// Revision name → commit sha.
    pub refs: BTreeMap<String, String>,
    /// Commit sha → files.
    pub commits: HashMap<String, Files>,
    /// Gated: files need `Authorization: Bearer <token>` with this token.
    pub gated_token: Option<String>,
}

impl HubRepo {
    /// A repository whose `main` holds `files`.
    pub fn new(id: &str, files: Files) -> Self {
        let mut repo = Self {
            id: id.to_string(),
            ..Default::default()
        };
        repo.branch("main", files);
        repo
    }

    /// Adds (or moves) revision `name` to a new commit holding `files`; returns the commit.
    pub fn branch(&mut self, name: &str, files: Files) -> String {
        let mut hasher = sha1::Sha1::new();
        hasher.update(self.id.as_bytes());
        hasher.update(name.as_bytes());
        for (path, bytes) in &files {
            hasher.update(path.as_bytes());
            hasher.update(git_blob_sha1(bytes).as_bytes());
        }
        let commit = hex(&hasher.finalize());
        self.refs.insert(name.to_string(), commit.clone());
        self.commits.insert(commit.clone(), files);
        commit
    }

    pub fn gated(mut self, token: &str) -> Self {
        self.gated_token = Some(token.to_string());
        self
    }

    pub fn commit(&self, revision: &str) -> Option<String> {
        if self.commits.contains_key(revision) {
            return Some(revision.to_string());
        }
        self.refs.get(revision).cloned()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ETag the hub gives a file kept in git: the git blob sha1.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    hex(&hasher.finalize())
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// Files the hub stores in LFS (and serves through a redirect to a content address).
fn is_lfs(path: &str) -> bool {
    [
        ".safetensors",
        ".bin",
        ".h5",
        ".msgpack",
        ".ckpt",
        ".onnx",
        ".gguf",
    ]
    .iter()
    .any(|ext| path.ends_with(ext))
}

#[derive(Default)]
struct HubState {
    repos: HashMap<String, HubRepo>,
    /// sha256 → bytes, for `/cas/`.
    blobs: HashMap<String, Arc<Vec<u8>>>,
    log: Vec<String>,
    /// When set, content-address downloads trickle at this many bytes per 50 ms.
    trickle: Option<usize>,
    /// Where content addresses are served: another origin, as the hub's CDN is, since clients
    /// follow same-host redirects but read metadata from a redirect to another host.
    cdn: String,
}

/// The running stand-in hub; stops with the test process.
pub struct StandInHub {
    pub endpoint: String,
    state: Arc<Mutex<HubState>>,
}

impl StandInHub {
    pub fn start(repos: Vec<HubRepo>) -> Self {
        let mut state = HubState::default();
        for repo in repos {
            for files in repo.commits.values() {
                for (path, bytes) in files {
                    if is_lfs(path) {
                        state.blobs.insert(sha256(bytes), Arc::clone(bytes));
                    }
                }
            }
            state.repos.insert(repo.id.clone(), repo);
        }
        let bind = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            (listener, url)
        };
        let (hub_listener, endpoint) = bind();
        let (cdn_listener, cdn) = bind();
        state.cdn = cdn;
        let state = Arc::new(Mutex::new(state));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let app = Router::new().fallback(handle).with_state(shared);
                let cdn = tokio::net::TcpListener::from_std(cdn_listener).expect("listener");
                let cdn_app = app.clone();
                tokio::spawn(async move { axum::serve(cdn, cdn_app).await.expect("serve cdn") });
                let hub = tokio::net::TcpListener::from_std(hub_listener).expect("listener");
                axum::serve(hub, app).await.expect("serve");
            });
        });
        Self { endpoint, state }
    }

    /// Every request so far, as "METHOD /path".
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// Makes weight downloads slow (so that a test can interrupt one), or fast again.
    pub fn trickle(&self, bytes_per_tick: Option<usize>) {
        self.state.lock().unwrap().trickle = bytes_per_tick;
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut response = (status, format!("{{\"error\":\"{message}\"}}")).into_response();
    response
        .headers_mut()
        .insert("X-Error-Code", HeaderValue::from_str(code).unwrap());
    response
        .headers_mut()
        .insert("X-Error-Message", HeaderValue::from_str(message).unwrap());
    response
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits "org/name/rest…" or "name/rest…" at `marker` ("/resolve/", "/revision/").
fn split_id<'a>(path: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    let at = path.find(marker)?;
    Some((&path[..at], &path[at + marker.len()..]))
}

async fn handle(State(state): State<Arc<Mutex<HubState>>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let headers = request.headers().clone();
    state.lock().unwrap().log.push(format!("{method} {path}"));
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if let Some(sha) = path.strip_prefix("/cas/") {
        let (blob, trickle) = {
            let state = state.lock().unwrap();
            (state.blobs.get(sha).cloned(), state.trickle)
        };
        return match blob {
            Some(bytes) => ranged(&headers, bytes, HeaderMap::new(), trickle),
            None => error(StatusCode::NOT_FOUND, "EntryNotFound", "no such blob"),
        };
    }
    if let Some(rest) = path.strip_prefix("/api/models/") {
        if let Some((id, rest)) = split_id(rest, "/tree/") {
            return tree(&state, id, &percent_decode(rest));
        }
        let (id, revision) = match split_id(rest, "/revision/") {
            Some((id, revision)) => (id.to_string(), percent_decode(revision)),
            None => (rest.trim_end_matches('/').to_string(), "main".to_string()),
        };
        let state = state.lock().unwrap();
        let Some(repo) = state.repos.get(&id) else {
            return error(
                StatusCode::UNAUTHORIZED,
                "RepoNotFound",
                "Repository not found",
            );
        };
        let Some(commit) = repo.commit(&revision) else {
            return error(
                StatusCode::NOT_FOUND,
                "RevisionNotFound",
                &format!("Invalid rev id: {revision}"),
            );
        };
        let siblings: Vec<serde_json::Value> = repo.commits[&commit]
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({
            "_id": "0",
            "id": id,
            "modelId": id,
            "sha": commit,
            "private": false,
            "gated": if repo.gated_token.is_some() { serde_json::json!("manual") } else { serde_json::json!(false) },
            "disabled": false,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
            "siblings": siblings,
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let Some((id, rest)) = split_id(path.trim_start_matches('/'), "/resolve/") else {
        return error(StatusCode::NOT_FOUND, "EntryNotFound", "not a hub path");
    };
    let Some((revision, file)) = rest.split_once('/') else {
        return error(StatusCode::NOT_FOUND, "EntryNotFound", "no file");
    };
    let (revision, file) = (percent_decode(revision), percent_decode(file));
    let (repo, cdn) = {
        let state = state.lock().unwrap();
        (state.repos.get(id).cloned(), state.cdn.clone())
    };
    let Some(repo) = repo else {
        return error(
            StatusCode::UNAUTHORIZED,
            "RepoNotFound",
            "Repository not found",
        );
    };
    if let Some(token) = &repo.gated_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "GatedRepo",
                    "Access to this model is restricted: you must be authenticated",
                )
            }
            Some(given) if given != token => {
                return error(
                    StatusCode::FORBIDDEN,
                    "GatedRepo",
                    "Access to this model is restricted and you are not in the authorized list",
                )
            }
            Some(_) => {}
        }
    }
    let Some(commit) = repo.commit(&revision) else {
        return error(
            StatusCode::NOT_FOUND,
            "RevisionNotFound",
            &format!("Invalid rev id: {revision}"),
        );
    };
    let Some(bytes) = repo.commits[&commit].get(&file).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            &format!("{file} does not exist on \"{revision}\""),
        );
    };
    let mut extra = HeaderMap::new();
    extra.insert("X-Repo-Commit", HeaderValue::from_str(&commit).unwrap());
    if is_lfs(&file) {
        let sha = sha256(&bytes);
        let mut response = StatusCode::FOUND.into_response();
        let h = response.headers_mut();
        h.extend(extra);
        h.insert(
            header::LOCATION,
            HeaderValue::from_str(&format!("{cdn}/cas/{sha}")).unwrap(),
        );
        h.insert(
            "X-Linked-Etag",
            HeaderValue::from_str(&format!("\"{sha}\"")).unwrap(),
        );
        h.insert("X-Linked-Size", HeaderValue::from(bytes.len()));
        h.insert(
            header::ETAG,
            HeaderValue::from_str(&format!("\"{}\"", git_blob_sha1(sha.as_bytes()))).unwrap(),
        );
        return response;
    }
    extra.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{}\"", git_blob_sha1(&bytes))).unwrap(),
    );
    ranged(&headers, bytes, extra, None)
}

/// `GET /api/models/{id}/tree/{rev}?recursive=true`: every file (and folder) of a revision, as
/// huggingface_hub's `list_repo_tree` (which snapshot_download uses) reads it.
fn tree(state: &Arc<Mutex<HubState>>, id: &str, revision: &str) -> Response {
    let state = state.lock().unwrap();
    let Some(repo) = state.repos.get(id) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "RepoNotFound",
            "Repository not found",
        );
    };
    let Some(commit) = repo.commit(revision) else {
        return error(
            StatusCode::NOT_FOUND,
            "RevisionNotFound",
            &format!("Invalid rev id: {revision}"),
        );
    };
    let mut entries = Vec::new();
    let mut folders = std::collections::BTreeSet::new();
    for (path, bytes) in &repo.commits[&commit] {
        let mut parent = std::path::Path::new(path).parent();
        while let Some(folder) = parent.filter(|p| !p.as_os_str().is_empty()) {
            folders.insert(folder.to_string_lossy().into_owned());
            parent = folder.parent();
        }
        let mut entry = serde_json::json!({
            "type": "file",
            "oid": git_blob_sha1(bytes),
            "size": bytes.len(),
            "path": path,
        });
        if is_lfs(path) {
            entry["lfs"] = serde_json::json!({
                "oid": sha256(bytes),
                "size": bytes.len(),
                "pointerSize": 134,
            });
        }
        entries.push(entry);
    }
    for folder in folders {
        entries.push(serde_json::json!({
            "type": "directory",
            "oid": git_blob_sha1(folder.as_bytes()),
            "size": 0,
            "path": folder,
        }));
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Array(entries).to_string(),
    )
        .into_response()
}

/// A 200, or a 206 for `Range: bytes=a-[b]`, with `extra` headers.
fn ranged(
    request: &HeaderMap,
    bytes: Arc<Vec<u8>>,
    extra: HeaderMap,
    trickle: Option<usize>,
) -> Response {
    let len = bytes.len();
    let range = request
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| {
            let (start, end) = v.split_once('-')?;
            let start: usize = start.parse().ok()?;
            let end: usize = if end.is_empty() {
                len.saturating_sub(1)
            } else {
                end.parse().ok()?
            };
            Some((start, end.min(len.saturating_sub(1))))
        });
    let (status, start, end) = match range {
        Some((start, _)) if start >= len && len > 0 => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).unwrap(),
            );
            return response;
        }
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        None => (StatusCode::OK, 0, len),
    };
    let body = match trickle {
        Some(step) => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = bytes[start..end]
                .chunks(step.max(1))
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let stream = futures_util::stream::unfold(chunks.into_iter(), |mut it| async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                it.next().map(|chunk| (chunk, it))
            });
            Body::from_stream(stream)
        }
        None => Body::from(bytes[start..end].to_vec()),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.extend(extra);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)).unwrap(),
        );
    }
    response
}

/// The files of a fixture directory (symlinks followed), by path relative to it.
pub fn dir_files(dir: &std::path::Path) -> Files {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Files) {
        for entry in std::fs::read_dir(dir).expect("fixture dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(relative, Arc::new(std::fs::read(&path).expect("read")));
            }
        }
    }
    let mut out = Files::new();
    walk(dir, dir, &mut out);
    out
}
