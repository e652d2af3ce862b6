//! Every error the server answers is a status and one line of JSON, `{"error":"..."}`, that says
//! what to do about it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds a client should wait before retrying (sent as Retry-After).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: one_line(&message.into()),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The answer to a library error ([`clipsteer::Error`]), its message after `prefix`: 400 when
    /// the request was at fault, 404 for what is not there, 503 when the hub cannot give a
    /// model, else 500.
    pub fn from_library(prefix: &str, error: &anyhow::Error) -> Self {
        let classified = clipsteer::Error::classify(error);
        let status = match classified {
            clipsteer::Error::BadArgument(_) => StatusCode::BAD_REQUEST,
            clipsteer::Error::NotFound(_) => StatusCode::NOT_FOUND,
            clipsteer::Error::Hub { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, format!("{prefix}{}", classified.message()))
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

/// Folds newlines so that a message stays one line (of JSON, of a log, of a close frame).
pub fn one_line(message: &str) -> String {
    message.replace(['\n', '\r'], " ")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
