//! `clipsteer serve`: the describe loop behind a web page, an SSE API and the original demo's
//! WebSocket, hardened to run on a shared machine (bounded queue, upload and image limits, time
//! limits, cancellation when a client leaves, optional bearer token).

pub mod error;
pub mod harness;
pub mod jobs;
pub mod params;
mod ws;

use crate::image::DecodeLimits;
use crate::steer::describe::validate;
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
use error::ApiError;
use futures_util::FutureExt;
use jobs::{Job, Models, Pool, Start};
use params::{parse_params, DescribeParams, ParamLimits};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
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
    /// Language model: a GPT-2 directory in the HF layout, a hub id, or a .gguf file.
    #[arg(long, default_value = crate::pipeline::DEFAULT_LM)]
    pub lm: String,
    /// CLIP model: a local directory in the HF layout or a hub id.
    #[arg(long = "clip", visible_alias = "encoder", default_value = crate::pipeline::DEFAULT_CLIP, value_name = "MODEL")]
    pub clip: String,
    /// Descriptions computed at once.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Requests that may wait for a worker; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Largest upload accepted, in MB.
    #[arg(long, default_value_t = 20)]
    pub max_upload_mb: u64,
    /// Require `Authorization: Bearer T` on the API (default: $CLIPSTEER_TOKEN, if set).
    #[arg(long, value_name = "T")]
    pub token: Option<String>,
    /// Time limit of one request, from arrival to its last event, in seconds.
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
    pub timeout: f64,
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
    pub param_limits: ParamLimits,
}

/// Loads the models, starts the workers and serves until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs, device: &Device) -> Result<i32> {
    if !(1..=256).contains(&args.workers) {
        bail!("--workers must be between 1 and 256");
    }
    if args.queue > 100_000 {
        bail!("--queue must be at most 100000");
    }
    let timeout = crate::pipeline::seconds("--timeout", args.timeout)?;
    if args.max_upload_mb == 0 {
        bail!("--max-upload-mb must be at least 1");
    }
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("CLIPSTEER_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Bind before loading models, so that a port in use is reported at once.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((
            args.host.as_str(),
            args.port,
        )))
        .with_context(|| {
            format!(
                "cannot listen on {}:{}; is the port in use? pick another with --port",
                args.host, args.port
            )
        })?;
    let address = listener.local_addr()?;
    let lm = crate::load::load_lm(&args.lm, device)?;
    let clip = crate::load::load_clip(&args.clip, device)?;
    let models = Arc::new(Models {
        lm,
        clip,
        lm_name: args.lm.clone(),
        clip_name: args.clip.clone(),
    });
    let pool = Pool::start(
        Arc::clone(&models),
        args.workers,
        args.queue,
        SERVE_DECODE_LIMITS,
    );
    if !address.ip().is_loopback() && token.is_none() {
        errln!(
            "warning: serving {} without --token: anyone who can reach this port can use it",
            address.ip()
        );
    }
    let state = Arc::new(AppState {
        models,
        pool,
        token,
        max_upload_bytes: (args.max_upload_mb as usize).saturating_mul(1 << 20),
        timeout,
        param_limits: ParamLimits::default(),
    });
    let app = router(state);
    errln!(
        "clipsteer serve: listening on http://{address}/ ({} workers, queue {})",
        args.workers,
        args.queue
    );
    runtime.block_on(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
    })?;
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
        .layer(middleware::from_fn(catch_panic))
        .with_state(state)
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
        "lm": state.models.lm_name,
        "clip": state.models.clip_name,
        "workers": state.pool.workers,
        "queue": state.pool.queue,
        "running": state.pool.running(),
        "admitted": state.pool.admitted(),
        "auth": state.token.is_some(),
        "limits": {
            "max_upload_bytes": state.max_upload_bytes,
            "max_side": SERVE_DECODE_LIMITS.max_width,
            "max_top_k": limits.max_top_k,
            "max_tokens": limits.max_tokens,
            "timeout_seconds": state.timeout.as_secs_f64(),
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

/// Equal-time comparison, so that response timing does not reveal how much of a guess matched.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
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
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
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
                    // Only the name is echoed back in events; never a client's path.
                    n.rsplit(['/', '\\'])
                        .next()
                        .unwrap_or(n)
                        .chars()
                        .take(200)
                        .collect()
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

/// Checks params against the limits and the LM, as the CLI would before any work.
fn describe_options(
    state: &AppState,
    params_text: &str,
) -> Result<crate::steer::describe::DescribeOptions, ApiError> {
    let params: DescribeParams =
        parse_params(params_text, &state.param_limits).map_err(ApiError::bad_request)?;
    let options = params.to_options().map_err(ApiError::bad_request)?;
    validate(&state.models.lm, &options)
        .map_err(|e| ApiError::bad_request(format!("params: {}", crate::error_line(&e))))?;
    Ok(options)
}

/// Hands a job to the pool and waits, within the deadline, for a worker to start it.
async fn start_job(
    state: &AppState,
    permit: tokio::sync::OwnedSemaphorePermit,
    image: Vec<u8>,
    image_name: Option<String>,
    options: crate::steer::describe::DescribeOptions,
    deadline: Instant,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>, ApiError> {
    let (start, started) = tokio::sync::oneshot::channel();
    // A quarter of the time limit is kept for the description itself.
    let start_by = deadline.checked_sub(state.timeout / 4).unwrap_or(deadline);
    let _withdraw_unless_started = state.pool.submit(Job {
        image,
        image_name,
        options,
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

/// `POST /api/describe`: multipart `image` (+ `params`) in, `describe --json` events out as SSE.
async fn describe_sse(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let deadline = Instant::now() + state.timeout;
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
    // Admission before reading the body: a busy server never holds an upload it will not run.
    let permit = match state.pool.admit() {
        Ok(permit) => permit,
        Err(busy) => {
            let limit = body_limit(&state);
            discard_body(request.into_body(), limit, Instant::now() + DISCARD_TIME).await;
            return Err(busy);
        }
    };
    let upload = match tokio::time::timeout(jobs::remaining(deadline), read_upload(&state, request))
        .await
    {
        Ok(upload) => upload?,
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "the upload did not arrive within the request's time limit; retry on a faster connection",
            ))
        }
    };
    let options = describe_options(&state, &upload.params)?;
    let mut events = start_job(
        &state,
        permit,
        upload.image,
        upload.file_name,
        options,
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
