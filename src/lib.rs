//! clipsteer: steer a language model's sampling toward an objective (a target embedding, a
//! victim model's answer, any score).
//!
//! The library is the product; the command line ([`cli`]), [`server`] and [`evade`] are faces
//! over [`pipeline`] and [`steer`], and no library module imports a face.

pub mod attack;
pub mod bench;
pub mod cli;
pub mod clipscore;
pub mod diffusion;
pub mod evade;
pub mod events;
pub mod hub;
pub mod image;
pub mod load;
pub mod merge;
pub mod models;
pub mod parts;
pub mod pipeline;
pub mod server;
pub mod settings;
pub mod sidecar;
pub mod steer;
pub mod tokenize;

/// An error as one line: the whole context chain, joined by ": ", newlines folded. candle
/// appends a backtrace to its errors when RUST_BACKTRACE is set; that is dropped here, since
/// it would bury the message (it belongs in a debugger, not in a one-line error).
pub fn error_line(error: &anyhow::Error) -> String {
    let parts: Vec<String> = error
        .chain()
        .map(|cause| match cause.downcast_ref::<candle_core::Error>() {
            Some(candle_core::Error::WithBacktrace { inner, .. }) => inner.to_string(),
            _ => cause.to_string(),
        })
        .collect();
    parts.join(": ").replace('\n', " ")
}
