//! The JSON events of `describe --json` and `attack --json`, shared by the command line and
//! `serve` so that a script reading either sees the same names.

use crate::attack::AttackReport;
use crate::steer::describe::{DescribeResult, StepEvent};
use crate::steer::search::attack::AttackStep;
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

/// `attack --json`'s `{"event":"step",...}`: the best prompt so far and the step's top candidates.
pub fn attack_step_json(step: &AttackStep) -> Value {
    json!({
        "event": "step",
        "step": step.step,
        "prompt": step.prompt,
        "suffix": step.suffix,
        "score": step.score,
        "response": step.response,
        "success": step.success,
        "top": step.top,
        "seconds": step.seconds,
    })
}

/// `attack --json`'s `{"event":"done",...}`: `prompt` begins with the instruction verbatim;
/// `target_nll`/`baseline_nll` (nats per target token, after the prompt and after the
/// instruction alone) are null when the objective has no target text; `stop_reason` only
/// when the attack did not succeed.
pub fn attack_done_json(report: &AttackReport) -> Value {
    let result = &report.result;
    let mut done = json!({
        "event": "done",
        "instruction": report.instruction,
        "target": report.target,
        "prompt": result.prompt,
        "suffix": result.suffix,
        "response": result.response,
        "success": result.success,
        "score": result.score,
        "target_nll": report.target_nll,
        "baseline_nll": report.baseline_nll,
        "steps": result.steps,
        "seconds": result.seconds,
        "queries": result.queries,
        "models": report.models,
    });
    if let Some(reason) = &result.stop_reason {
        done["stop_reason"] = json!(reason);
    }
    done
}
