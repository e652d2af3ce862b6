//! WebSocket `/describe`, the original demo's protocol: the client sends the image bytes as one
//! binary message and receives the growing text, one text message per step (the whole text so
//! far). The server then closes with code 1000. Before the image, a text message may carry the
//! same JSON params as the SSE API. Errors close the socket with a code and a reason: 1003 for
//! input that cannot be used, 1008 for a message out of turn (a second image, or no image in
//! time), 1009 for a message over the upload limit, 1007 for text that is not UTF-8, 1002 for a
//! broken frame, 1013 when busy, 1011 for failures on the server's side.

use super::error::ApiError;
use super::jobs;
use super::AppState;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long, after its close frame, the server waits for the client's before closing the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub async fn describe_ws(
    State(state): State<Arc<AppState>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => {
            return ApiError::bad_request(format!(
                "{}: /describe is a WebSocket; connect with a WebSocket client and send the image bytes as one binary message (or POST /api/describe)",
                e.body_text()
            ))
            .into_response()
        }
    };
    let limit = state.max_upload_bytes + super::params::MAX_PARAMS_BYTES;
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session(state, socket))
}

/// A close reason must fit a control frame (123 bytes); cut on a character boundary.
fn close(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

fn close_for(error: &ApiError) -> Message {
    let code = if error.status == StatusCode::TOO_MANY_REQUESTS
        || error.status == StatusCode::SERVICE_UNAVAILABLE
    {
        close_code::AGAIN
    } else if error.status.is_client_error() {
        close_code::UNSUPPORTED
    } else {
        close_code::ERROR
    };
    close(code, &error.message)
}

/// The close frame for a message the server could not read.
fn close_for_read_error(error: axum::Error, limit_mb: usize) -> Option<(Message, bool)> {
    let inner = error.into_inner();
    let error = inner.downcast_ref::<tungstenite::Error>()?;
    Some(match error {
        // The rest of the oversize frame is still unread; reading it would buffer it whole.
        tungstenite::Error::Capacity(_) => (
            close(
                close_code::SIZE,
                &format!(
                    "the message is over the upload limit of {limit_mb} MB; send a smaller image"
                ),
            ),
            false,
        ),
        tungstenite::Error::Utf8(_) => (
            close(
                close_code::INVALID,
                "a text message must be UTF-8 JSON params",
            ),
            true,
        ),
        tungstenite::Error::Protocol(e) => (
            close(
                close_code::PROTOCOL,
                &format!("broken WebSocket frame: {e}"),
            ),
            false,
        ),
        _ => return None, // the connection itself failed: there is no one to tell
    })
}

/// Sends the close frame, then waits briefly for the client's own and drops what comes before
/// it: a socket closed with unread data is reset, and the reset can destroy the close frame
/// before the client reads it. `can_read` is false when the stream cannot be read on safely;
/// then the wait alone gives the client its chance to read.
async fn finish(mut socket: WebSocket, message: Message, can_read: bool) {
    if socket.send(message).await.is_err() {
        return;
    }
    if !can_read {
        tokio::time::sleep(CLOSE_GRACE / 2).await;
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Answers the client's close frame. tungstenite queues the reply when it reads the client's
/// frame, but sends it only on the next read or write; dropping the socket there would end the
/// connection without it, and RFC 6455 §5.5.1 has the endpoint that receives a close send one.
async fn answer_close(mut socket: WebSocket) {
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.recv()).await;
}

/// What a failed receive ends with: a close frame for the client, or nothing when it is gone.
async fn end_after_read_error(socket: WebSocket, error: axum::Error, limit_mb: usize) {
    if let Some((message, can_read)) = close_for_read_error(error, limit_mb) {
        finish(socket, message, can_read).await;
    }
}

async fn session(state: Arc<AppState>, mut socket: WebSocket) {
    let deadline = Instant::now() + state.timeout;
    // As for an upload's body: a client that connects and sends nothing holds no place long.
    let image_by = deadline.min(Instant::now() + state.upload_timeout);
    let limit_mb = state.max_upload_bytes >> 20;
    let mut params_text = String::new();
    let (image, describer) = loop {
        let message = match tokio::time::timeout(jobs::remaining(image_by), socket.recv()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => return end_after_read_error(socket, error, limit_mb).await,
            Ok(None) => return, // closed by the client
            Err(_) => {
                let reason = format!(
                    "no image arrived within {} s; send it right after connecting",
                    state.upload_timeout.min(state.timeout).as_secs_f64()
                );
                return finish(socket, close(close_code::POLICY, &reason), true).await;
            }
        };
        match message {
            Message::Text(text) => params_text = text.to_string(),
            Message::Binary(bytes) if bytes.len() > state.max_upload_bytes => {
                let reason = format!(
                    "the image is over the upload limit of {limit_mb} MB; send a smaller one"
                );
                return finish(socket, close(close_code::SIZE, &reason), true).await;
            }
            Message::Binary(bytes) => match super::request_describer(&state, &params_text) {
                Ok(describer) => break (bytes.to_vec(), describer),
                Err(error) => return finish(socket, close_for(&error), true).await,
            },
            Message::Close(_) => return answer_close(socket).await,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    };
    let permit = match state.pool.admit() {
        Ok(permit) => permit,
        Err(error) => return finish(socket, close_for(&error), true).await,
    };
    let mut events = match super::start_job(&state, permit, image, None, describer, deadline).await
    {
        Ok(events) => events,
        Err(error) => return finish(socket, close_for(&error), true).await,
    };
    loop {
        // The client is read while the job runs, so that a message out of turn is answered at
        // once and a client that leaves stops the job.
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return };
                let message = match event["event"].as_str() {
                    Some("step") => Message::Text(event["text"].as_str().unwrap_or_default().into()),
                    Some("done") => close(close_code::NORMAL, "done"),
                    _ => close(
                        close_code::ERROR,
                        event["error"].as_str().unwrap_or("the description failed"),
                    ),
                };
                if matches!(message, Message::Close(_)) {
                    return finish(socket, message, true).await;
                }
                // A send that fails means the client is gone: returning drops `events`, which
                // stops the job.
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Binary(_))) => {
                    drop(events);
                    let reason = "one image per connection: open a new connection for the next image";
                    return finish(socket, close(close_code::POLICY, reason), true).await;
                }
                Some(Ok(Message::Text(_))) => {
                    drop(events);
                    let reason = "params must come before the image; open a new connection to change them";
                    return finish(socket, close(close_code::POLICY, reason), true).await;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) => return answer_close(socket).await,
                None => return,
                Some(Err(error)) => {
                    drop(events);
                    return end_after_read_error(socket, error, limit_mb).await;
                }
            },
        }
    }
}
