//! WebSocket `/describe`, the original demo's protocol: the client sends the image bytes as one
//! binary message and receives the growing text, one text message per step (the whole text so
//! far). The server then closes with code 1000. Before the image, a text message may carry the
//! same JSON params as the SSE API. Errors close the socket with a code and a reason: 1003 for
//! input that cannot be used, 1013 when busy, 1011 for failures on the server's side.

use super::error::ApiError;
use super::jobs;
use super::AppState;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

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

async fn session(state: Arc<AppState>, mut socket: WebSocket) {
    let deadline = Instant::now() + state.timeout;
    let mut params_text = String::new();
    let (image, options) = loop {
        let message = match tokio::time::timeout(jobs::remaining(deadline), socket.recv()).await {
            Ok(Some(Ok(message))) => message,
            Ok(_) => return, // closed or broken by the client
            Err(_) => {
                let _ = socket
                    .send(close(
                        close_code::POLICY,
                        "no image arrived within the time limit",
                    ))
                    .await;
                return;
            }
        };
        match message {
            Message::Text(text) => params_text = text.to_string(),
            Message::Binary(bytes) => match super::describe_options(&state, &params_text) {
                Ok(options) => break (bytes.to_vec(), options),
                Err(error) => {
                    let _ = socket.send(close_for(&error)).await;
                    return;
                }
            },
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    };
    let permit = match state.pool.admit() {
        Ok(permit) => permit,
        Err(error) => {
            let _ = socket.send(close_for(&error)).await;
            return;
        }
    };
    let mut events = match super::start_job(&state, permit, image, None, options, deadline).await {
        Ok(events) => events,
        Err(error) => {
            let _ = socket.send(close_for(&error)).await;
            return;
        }
    };
    while let Some(event) = events.recv().await {
        let message = match event["event"].as_str() {
            Some("step") => Message::Text(event["text"].as_str().unwrap_or_default().into()),
            Some("done") => close(close_code::NORMAL, "done"),
            _ => close(
                close_code::ERROR,
                event["error"].as_str().unwrap_or("the description failed"),
            ),
        };
        let last = matches!(message, Message::Close(_));
        // A send that fails means the client is gone: returning drops `events`, which stops the job.
        if socket.send(message).await.is_err() || last {
            return;
        }
    }
}
