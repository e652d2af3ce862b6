//! The JSON events of `describe --json`, shared by the command line and `serve` so that a
//! script reading either sees the same names.

use crate::steer::describe::{DescribeResult, StepEvent};
use serde_json::{json, Value};

/// `{"event":"step",...}`: one generated token and the text so far.
pub fn step_json(image: Option<&str>, event: &StepEvent) -> Value {
    json!({
        "event": "step",
        "image": image,
        "step": event.step,
        "token_id": event.token_id,
        "token": event.token,
        "text": event.text,
        "similarity": event.similarity,
        "top": event.top,
    })
}

/// `{"event":"done",...}`: the finished description; `stop_reason` only when it ended early.
pub fn done_json(image: Option<&str>, result: &DescribeResult, seconds: f64) -> Value {
    let mut done = json!({
        "event": "done",
        "image": image,
        "text": result.text,
        "token_ids": result.token_ids,
        "similarity": result.similarity,
        "nll": result.mean_nll(),
        "seconds": seconds,
    });
    if let Some(reason) = &result.stop_reason {
        done["stop_reason"] = json!(reason);
    }
    done
}

/// `{"event":"error",...}`: `message` is one line.
pub fn error_json(image: Option<&str>, message: &str) -> Value {
    json!({"event": "error", "image": image, "error": message})
}
