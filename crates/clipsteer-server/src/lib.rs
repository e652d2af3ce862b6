//! `clipsteer serve`: the describe loop behind a web page, an SSE API and the original demo's
//! WebSocket, hardened to run on a shared machine (bounded queue, upload and image limits, time
//! limits, cancellation when a client leaves, optional bearer token).

// The library's macros (errln!, outln!, usage_bail!) in every module.
#[macro_use]
extern crate clipsteer;

mod accept;
pub mod error;
pub mod guard;
pub mod harness;
pub mod jobs;
pub mod params;
mod ws;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use candle_core::Device;
use clipsteer::image::DecodeLimits;
use clipsteer::pipeline::Describer;
use error::ApiError;
use futures_util::FutureExt;
use jobs::{Job, Models, Pool, Start};
use params::{parse_params, ParamLimits};
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on; the default serves this machine only. Use 0.0.0.0 to serve a
    /// network, with --token.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Language model: a directory in the HF layout or a hub id (GPT-2, llama, mistral, qwen2,
    /// qwen3, gemma2, gemma3, phi3), or a llama or Gemma 3 .gguf file.
    #[arg(long, default_value = clipsteer::request::DEFAULT_LM)]
    pub lm: String,
    /// A GGUF file of the --lm hub repository (or local directory) to load, as transformers'
    /// `gguf_file=`: fetched with the repository's revision into the Hugging Face cache.
    #[arg(long, value_name = "NAME.gguf")]
    pub gguf_file: Option<String>,
    /// Image-text encoder (CLIP or SigLIP): a local directory in the HF layout or a hub id.
    #[arg(long = "clip", visible_alias = "encoder", default_value = clipsteer::request::DEFAULT_CLIP, value_name = "MODEL")]
    pub clip: String,
    /// The language model's name as clients see it (health, done events); default: its hub id,
    /// or the last part of its local path. Clients never see a path on the server.
    #[arg(long, value_name = "NAME", value_parser = public_name)]
    pub lm_name: Option<String>,
    /// The CLIP model's name as clients see it, as --lm-name.
    #[arg(long, value_name = "NAME", value_parser = public_name)]
    pub clip_name: Option<String>,
    /// Descriptions computed at once (1 to 256).
    #[arg(long, default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub workers: usize,
    /// Requests that may wait for a worker (at most 100000); more are answered 429 with
    /// Retry-After.
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000))]
    pub queue: usize,
    /// Largest upload accepted, in MB.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub max_upload_mb: u64,
    /// Require `Authorization: Bearer T` on the API.
    #[arg(
        long,
        value_name = "T",
        env = "CLIPSTEER_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Time limit of one request, from arrival to its last event, in seconds.
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS", value_parser = positive_seconds)]
    pub timeout: f64,
    /// Time an upload's body may take to arrive, in seconds; a slower one is answered 408. A
    /// request takes its place in the queue only once its body has arrived.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = positive_seconds)]
    pub upload_timeout: f64,
    /// Host names the server answers to besides its own address (and localhost, on loopback),
    /// comma-separated: clip.example.org, .example.org (it and every name under it), * (any).
    #[arg(long, env = "CLIPSTEER_ALLOWED_HOSTS", value_delimiter = ',', value_name = "NAMES", value_parser = guard::parse_allowed_host)]
    pub allowed_hosts: Vec<String>,
    /// Web pages (origins) besides the server's own that may use the API, comma-separated, e.g.
    /// https://app.example.org; * allows any. They get CORS headers; others get 403.
    #[arg(long, env = "CLIPSTEER_ALLOWED_ORIGINS", value_delimiter = ',', value_name = "ORIGINS", value_parser = guard::parse_allowed_origin)]
    pub allowed_origins: Vec<String>,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds, such as 30 or 2.5".to_string())?;
    clipsteer::request::seconds("the value", value).map_err(|e| e.to_string())?;
    Ok(value)
}

fn public_name(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > 200 || text.chars().any(char::is_control) {
        return Err("give a name of 1 to 200 characters on one line, such as gpt2".into());
    }
    Ok(text.to_string())
}

/// Images larger than this are refused before their pixels are allocated.
pub const SERVE_DECODE_LIMITS: DecodeLimits = DecodeLimits {
    max_width: 8192,
    max_height: 8192,
    max_alloc_bytes: 256 << 20,
};

pub struct AppState {
    pub models: Arc<Models>,
    pub pool: Pool,
    pub token: Option<String>,
    pub max_upload_bytes: usize,
    pub timeout: Duration,
    pub upload_timeout: Duration,
    pub param_limits: ParamLimits,
    pub guard: guard::Guard,
    /// Requests whose body is still arriving; they hold no place in the queue.
    pub uploading: AtomicUsize,
}

/// How clients see a model: a hub model's provenance (id, revision, commit), a local model's
/// name (the operator's, or the last part of its path). A path on the server's disk would tell
/// every client how the machine is laid out.
pub struct PublicModel {
    pub name: String,
    /// The `models` entry of done events.
    pub record: serde_json::Value,
    /// The `settings` record's name for the model.
    pub identity: String,
}

pub fn public_model(spec: &str, chosen: Option<&str>) -> PublicModel {
    match clipsteer::hub::origin(spec) {
        Some(clipsteer::hub::ModelOrigin::Hub {
            id,
            revision,
            commit,
            ..
        }) => {
            let name = chosen.map_or_else(|| id.clone(), str::to_string);
            PublicModel {
                record: serde_json::json!({"name": name, "id": id, "revision": revision, "commit": commit}),
                identity: format!("{id}@{commit}"),
                name,
            }
        }
        _ => {
            let name = chosen.map(str::to_string).unwrap_or_else(|| {
                std::path::absolute(spec)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "local model".to_string())
            });
            PublicModel {
                record: serde_json::json!({ "name": name }),
                identity: name.clone(),
                name,
            }
        }
    }
}

/// A mistake in serve's own flags: said in one line, exit status 2 as for clap's own.
fn usage_error(message: &str) -> Result<i32> {
    errln!("error: {}", error::one_line(message));
    Ok(2)
}

/// The token as given (flag or environment). An empty one would silently turn authentication
/// off, and characters a header cannot carry exactly would make every request fail.
fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("--token is empty (from the flag or $CLIPSTEER_TOKEN), which would leave the server open to anyone; give a token such as \"$(openssl rand -hex 16)\", or unset CLIPSTEER_TOKEN to serve without one".into());
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err("--token holds a space, a control or a non-ASCII character, which an Authorization header cannot carry exactly; use letters, digits and punctuation, e.g. \"$(openssl rand -hex 16)\"".into());
    }
    Ok(())
}

/// Why the server could not listen: a `--host` that is no address of this machine is a usage
/// mistake (exit 2); a port in use or without permission is the machine's state (exit 1).
enum ListenError {
    Usage(String),
    Failed(String),
}

async fn listen(host: &str, port: u16) -> Result<tokio::net::TcpListener, ListenError> {
    let pick = "give one of this machine's addresses: 127.0.0.1 (this machine only) or 0.0.0.0 (every network)";
    // A dotted number is never a name: looking it up would only wait for DNS to fail.
    let dotted = !host.is_empty() && host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if dotted && host.parse::<std::net::Ipv4Addr>().is_err() {
        return Err(ListenError::Usage(format!(
            "--host {host} is not a valid IPv4 address (four numbers from 0 to 255); {pick}"
        )));
    }
    let addresses: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(addresses) => addresses.collect(),
        Err(e) => {
            return Err(ListenError::Usage(format!(
                "--host '{host}' is not an address this machine can listen on ({e}); {pick}"
            )))
        }
    };
    let mut failure = None;
    for address in addresses {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(e) => failure = Some((address, e)),
        }
    }
    let Some((address, e)) = failure else {
        return Err(ListenError::Usage(format!(
            "--host '{host}' resolves to no address; {pick}"
        )));
    };
    Err(match e.kind() {
        std::io::ErrorKind::AddrInUse => ListenError::Failed(format!(
            "cannot listen on {address}: the port is in use; pick another with --port (0 picks a free one)"
        )),
        std::io::ErrorKind::AddrNotAvailable => ListenError::Usage(format!(
            "cannot listen on {address}: --host {host} is not an address of this machine; {pick}"
        )),
        std::io::ErrorKind::PermissionDenied => ListenError::Failed(format!(
            "cannot listen on {address}: ports below 1024 need privileges; pick another with --port"
        )),
        _ => ListenError::Failed(format!("cannot listen on {address}: {e}")),
    })
}

/// Loads the models, starts the workers and serves until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs, device: &Device) -> Result<i32> {
    // Both were checked by their value parser.
    let timeout = Duration::from_secs_f64(args.timeout);
    let upload_timeout = Duration::from_secs_f64(args.upload_timeout);
    if let Some(token) = &args.token {
        if let Err(message) = check_token(token) {
            return usage_error(&message);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Bind before loading models, so that a bad address or a port in use is reported at once.
    let listener = match runtime.block_on(listen(&args.host, args.port)) {
        Ok(listener) => listener,
        Err(ListenError::Usage(message)) => return usage_error(&message),
        Err(ListenError::Failed(message)) => bail!(message),
    };
    let address = listener.local_addr()?;
    let lm_spec = clipsteer::load::lm_argument(&args.lm, args.gguf_file.as_deref())?;
    let lm = clipsteer::load::load_lm(&lm_spec, device)?;
    let chat_template = clipsteer::load::chat_template_if_any(&lm_spec)?;
    let encoder = clipsteer::load::load_encoder(&args.clip, device)?;
    if !encoder.embeds_images() {
        clipsteer::usage_bail!(
            "{} embeds text only: serve describes images, so --clip needs a CLIP or SigLIP model",
            args.clip
        );
    }
    encoder
        .check_embeds_images()
        .with_context(|| format!("--clip {}", args.clip))?;
    // After loading: a hub model's commit is known only then.
    let lm_public = public_model(&lm_spec, args.lm_name.as_deref());
    let clip_public = public_model(&args.clip, args.clip_name.as_deref());
    let models = Arc::new(Models {
        describe: Arc::new(clipsteer::pipeline::DescribeModels {
            lm,
            encoder: Some(encoder),
            lm_spec: lm_public.name,
            encoder_spec: Some(clip_public.name),
            chat_template,
        }),
        provenance: serde_json::json!({"lm": lm_public.record, "encoder": clip_public.record}),
        lm_identity: lm_public.identity,
        clip_identity: clip_public.identity,
    });
    let pool = Pool::start(args.workers, args.queue, SERVE_DECODE_LIMITS);
    if !address.ip().is_loopback() && args.token.is_none() {
        errln!(
            "warning: serving {} without --token: anyone who can reach this port can use it",
            address.ip()
        );
    }
    let state = Arc::new(AppState {
        models,
        pool,
        token: args.token.clone(),
        max_upload_bytes: (args.max_upload_mb as usize).saturating_mul(1 << 20),
        timeout,
        upload_timeout,
        param_limits: ParamLimits::default(),
        guard: guard::Guard::new(
            address,
            &args.host,
            &args.allowed_hosts,
            &args.allowed_origins,
        ),
        uploading: AtomicUsize::new(0),
    });
    let app = router(state);
    errln!(
        "clipsteer serve: listening on http://{address}/ ({} worker{}, queue {})",
        args.workers,
        if args.workers == 1 { "" } else { "s" },
        args.queue
    );
    runtime.block_on(accept::serve(
        listener,
        app,
        shutdown_signal(),
        accept::HEADER_READ_TIMEOUT,
    ));
    Ok(0)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    errln!("clipsteer serve: shutting down");
}

pub fn router(state: Arc<AppState>) -> Router {
    // Room for the multipart framing and the params field around the largest image.
    let body_limit = body_limit(&state);
    let api = Router::new()
        .route("/api/describe", post(describe_sse))
        .route("/describe", get(ws::describe_ws))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ));
    Router::new()
        .route("/", get(page_html))
        .route("/app.js", get(page_js))
        .route("/app.css", get(page_css))
        .route("/api/health", get(health))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            guard_request,
        ))
        .layer(middleware::from_fn(catch_panic))
        .with_state(state)
}

/// The Host and Origin checks (see [`guard`]); an allowed foreign origin gets CORS headers, and
/// its preflight is answered here.
async fn guard_request(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let checked = state
        .guard
        .check_host(request.uri(), request.headers(), request.version())
        .and_then(|()| state.guard.check_origin(request.headers()));
    let origin = match checked {
        Ok(guard::Cross::SameOrigin) => return next.run(request).await,
        Ok(guard::Cross::Allowed(origin)) => HeaderValue::from_str(&origin).ok(),
        Err(error) => {
            let limit = body_limit(&state);
            discard_body(request.into_body(), limit, Instant::now() + DISCARD_TIME).await;
            return error.into_response();
        }
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

fn static_page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn page_html() -> Response {
    let mut response = static_page("text/html; charset=utf-8", INDEX_HTML);
    let headers = response.headers_mut();
    // Everything the page needs comes from this server; images are previewed from blob: URLs and
    // thumbnails of past runs are data: URLs.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn page_js() -> Response {
    static_page("text/javascript; charset=utf-8", APP_JS)
}

async fn page_css() -> Response {
    static_page("text/css; charset=utf-8", APP_CSS)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let limits = &state.param_limits;
    let body = serde_json::json!({
        "status": "ok",
        "lm": state.models.describe.lm_spec,
        "clip": state.models.describe.encoder_spec,
        "workers": state.pool.workers,
        "queue": state.pool.queue,
        "running": state.pool.running(),
        "admitted": state.pool.admitted(),
        "uploading": state.uploading.load(Ordering::SeqCst),
        "auth": state.token.is_some(),
        "limits": {
            "max_upload_bytes": state.max_upload_bytes,
            "max_side": SERVE_DECODE_LIMITS.max_width,
            "max_top_k": limits.max_top_k,
            "max_tokens": limits.max_tokens,
            "timeout_seconds": state.timeout.as_secs_f64(),
            "upload_timeout_seconds": state.upload_timeout.as_secs_f64(),
        },
    });
    json_response(StatusCode::OK, body)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such page: {method} {}; the API is POST /api/describe, GET /api/health and WebSocket /describe",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let allowed = match uri.path() {
        "/api/describe" => "POST",
        _ => "GET",
    };
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}; use {allowed}", uri.path()),
    )
}

/// A panic in a handler becomes a 500 for that request; the server goes on serving.
async fn catch_panic(request: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => ApiError::internal("internal error; the server log has details").into_response(),
    }
}

/// Equal-time comparison: the time taken depends on the expected token's length only, so that
/// response timing reveals neither how much of a guess matched nor how long the token is.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = given.len() ^ expected.len();
    for (i, want) in expected.iter().enumerate() {
        difference |= usize::from(given.get(i).copied().unwrap_or(0) ^ want);
    }
    std::hint::black_box(difference) == 0
}

/// The credentials of `Authorization: Bearer <token>`. The scheme is case-insensitive (RFC 9110
/// §11.1), so `bearer` is as good as `Bearer`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        let authorized = given.is_some_and(|g| same_secret(g.as_bytes(), expected.as_bytes()));
        if !authorized {
            let message = match given {
                None => "this server needs a token: send the header Authorization: Bearer <token> (the --token it was started with)",
                Some(_) => "wrong token: send Authorization: Bearer <token> with the --token the server was started with",
            };
            let limit = body_limit(&state);
            discard_body(request.into_body(), limit, Instant::now() + DISCARD_TIME).await;
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// Reads and drops a request body the server will not use, up to `limit` bytes and `deadline`,
/// so that an early answer (401, 429) reaches a client still sending instead of being lost to
/// the connection reset that closing a socket with unread data causes. Nothing is kept.
async fn discard_body(body: Body, limit: usize, deadline: Instant) {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    while read <= limit {
        match tokio::time::timeout(jobs::remaining(deadline), stream.next()).await {
            Ok(Some(Ok(chunk))) => read += chunk.len(),
            _ => return,
        }
    }
}

/// The most a describe request's body may hold: the image, the params and the multipart framing.
fn body_limit(state: &AppState) -> usize {
    state.max_upload_bytes + params::MAX_PARAMS_BYTES + 16 * 1024
}

/// How long an unusable body is read before the answer is sent anyway.
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// An upload: the image bytes, the file name it came with, and its params text.
struct Upload {
    image: Vec<u8>,
    file_name: Option<String>,
    params: String,
}

async fn read_upload(state: &AppState, request: Request) -> Result<Upload, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the upload is over the limit of {} MB; send a smaller image",
                state.max_upload_bytes >> 20
            ),
        )
    };
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{}; send multipart/form-data with the file field 'image' and optionally a 'params' JSON field",
                e.body_text()
            ))
        })?;
    let mut upload = Upload {
        image: Vec::new(),
        file_name: None,
        params: String::new(),
    };
    let mut has_image = false;
    let field_error = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request(format!("cannot read the upload: {}", e.body_text()))
        }
    };
    // A mistake in one field is reported after the whole body has been read: answering while the
    // client is still sending makes the closing socket reset the connection, and the client then
    // sees a broken pipe instead of the answer.
    let mut mistake: Option<ApiError> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(field_error)? {
        if mistake.is_some() {
            while field.chunk().await.map_err(field_error)?.is_some() {}
            continue;
        }
        match field.name() {
            Some("image") if !has_image => {
                has_image = true;
                upload.file_name = field.file_name().map(|n| {
                    // Only the name is echoed back in events; never a client's path, and its
                    // controls as escapes, so that a page showing it shows what was sent
                    // (`a` + U+202E + `gnp.exe` would be drawn as `aexe.png`).
                    let name: String = n
                        .rsplit(['/', '\\'])
                        .next()
                        .unwrap_or(n)
                        .chars()
                        .take(200)
                        .collect();
                    clipsteer::terminal_safe(&name, false).into_owned()
                });
                upload.image = field.bytes().await.map_err(field_error)?.to_vec();
                if upload.image.len() > state.max_upload_bytes {
                    return Err(too_large());
                }
            }
            Some("image") => {
                mistake = Some(ApiError::bad_request(
                    "more than one 'image' field; send one image per request",
                ));
            }
            Some("params") => {
                upload.params = field.text().await.map_err(field_error)?;
            }
            other => {
                mistake = Some(ApiError::bad_request(format!(
                    "unknown form field '{}'; send the file field 'image' and optionally 'params'",
                    other.unwrap_or("")
                )));
            }
        }
    }
    if let Some(mistake) = mistake {
        return Err(mistake);
    }
    if !has_image {
        return Err(ApiError::bad_request(
            "no 'image' field: send the picture as the multipart/form-data file field 'image'",
        ));
    }
    if upload.image.is_empty() {
        return Err(ApiError::bad_request(
            "the 'image' field is empty; choose an image file",
        ));
    }
    Ok(upload)
}

/// The describer of one request: params checked against the limits, resolved as the CLI resolves
/// its flags, and checked against the LM, before any work. Results name the models as clients
/// see them ([`public_model`]).
fn request_describer(state: &AppState, params_text: &str) -> Result<Describer, ApiError> {
    let request = parse_params(params_text, &state.param_limits).map_err(ApiError::bad_request)?;
    let resolved = params::resolve(&request)?;
    let models = &state.models;
    let mut describer = Describer::new(Arc::clone(&models.describe), &resolved)
        .map_err(|e| params::library_error(&e))?;
    describer.provenance = models.provenance.clone();
    describer.settings["lm"] = Value::String(models.lm_identity.clone());
    describer.settings["encoder"] = Value::String(models.clip_identity.clone());
    Ok(describer)
}

/// Hands a job to the pool and waits, within the deadline, for a worker to start it.
async fn start_job(
    state: &AppState,
    permit: tokio::sync::OwnedSemaphorePermit,
    image: Vec<u8>,
    image_name: Option<String>,
    describer: Describer,
    deadline: Instant,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>, ApiError> {
    let (start, started) = tokio::sync::oneshot::channel();
    // A quarter of the time limit is kept for the description itself.
    let start_by = deadline.checked_sub(state.timeout / 4).unwrap_or(deadline);
    let _withdraw_unless_started = state.pool.submit(Job {
        image,
        image_name,
        describer,
        deadline,
        start_by,
        start,
        permit,
    })?;
    match tokio::time::timeout(jobs::remaining(start_by), started).await {
        Ok(Ok(Start::Events(events))) => Ok(events),
        Ok(Ok(Start::Rejected(error))) => Err(error),
        Ok(Err(_)) => Err(ApiError::internal(
            "the worker stopped before starting the job; the server log has details",
        )),
        Err(_) => Err(jobs::queue_timeout(state.pool.retry_after_seconds())),
    }
}

/// Counts a request among those whose body is still arriving, for as long as it lives.
struct Uploading<'a>(&'a AtomicUsize);

impl<'a> Uploading<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Uploading(count)
    }
}

impl Drop for Uploading<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `POST /api/describe`: multipart `image` (+ `params`) in, `describe --json` events out as SSE.
async fn describe_sse(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let deadline = Instant::now() + state.timeout;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "multipart/form-data" {
        let limit = body_limit(&state);
        discard_body(request.into_body(), limit, Instant::now() + DISCARD_TIME).await;
        let got = match mime.as_str() {
            "" => "a body without a Content-Type".to_string(),
            other => other.chars().take(60).collect(),
        };
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("POST /api/describe takes multipart/form-data, not {got}: send the picture as the file field 'image' and the params JSON as the field 'params', e.g. curl -F image=@cat.jpg -F 'params={{\"top_k\":50}}'"),
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > body_limit(&state)) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the upload is over the limit of {} MB; send a smaller image",
                state.max_upload_bytes >> 20
            ),
        ));
    }
    // A server already full answers at once, without holding an upload it will not run.
    if let Err(busy) = state.pool.admit() {
        let limit = body_limit(&state);
        discard_body(request.into_body(), limit, Instant::now() + DISCARD_TIME).await;
        return Err(busy);
    }
    let upload = {
        let _uploading = Uploading::enter(&state.uploading);
        let read_by = deadline.min(Instant::now() + state.upload_timeout);
        match tokio::time::timeout(jobs::remaining(read_by), read_upload(&state, request)).await {
            Ok(upload) => upload?,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the upload did not arrive within {} s; send the whole body at once, or retry on a faster connection",
                        state.upload_timeout.min(state.timeout).as_secs_f64()
                    ),
                ))
            }
        }
    };
    let describer = request_describer(&state, &upload.params)?;
    // The place in the queue is taken only now that the whole body is here: a client that sends
    // slowly, or never finishes, holds no worker's place.
    let permit = state.pool.admit()?;
    let mut events = start_job(
        &state,
        permit,
        upload.image,
        upload.file_name,
        describer,
        deadline,
    )
    .await?;
    let stream = futures_util::stream::poll_fn(move |cx| {
        events.poll_recv(cx).map(|event| {
            event.map(|event| Ok::<_, Infallible>(Event::default().data(event.to_string())))
        })
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(2)))
        .into_response();
    // Proxies such as nginx would otherwise hold events back until a buffer fills.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
