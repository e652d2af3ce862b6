//! The JSON events of `describe --json` and `attack --json`, shared by the command line and
//! `serve` so that a script reading either sees the same names.

use crate::attack::AttackReport;
use crate::steer::describe::{DescribeResult, StepEvent};
use crate::steer::search::attack::AttackStep;
use serde_json::{json, Value};

/// `value` as one JSON line for a terminal or a file a user may `cat` ([`escape_json`]).
pub fn json_line(value: &Value) -> String {
    escape_json(value.to_string())
}

/// JSON text (serde_json's, compact or pretty) with what a terminal or an editor would act on
/// written as `\uXXXX` escapes: serde_json escapes C0 controls only, so DEL, the C1 controls
/// (U+0080–U+009F: some terminals act on U+009B as CSI), the bidirectional formatting and
/// zero-width characters (which reorder or hide what is shown), U+2028/U+2029 (line breaks to
/// JavaScript and some viewers), U+FEFF and the tag characters (U+E0000–U+E007F, invisible
/// text) are escaped, in keys and values alike. The JSON means the same: outside strings
/// serde_json writes ASCII only, and within one an escape stands for its character.
pub fn escape_json(json: String) -> String {
    let hidden = |c: char| {
        matches!(c,
            '\u{7F}'..='\u{9F}'
            | '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{E0000}'..='\u{E007F}')
    };
    if !json.chars().any(hidden) {
        return json;
    }
    let mut escaped = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if !hidden(c) {
            escaped.push(c);
        } else if (c as u32) < 0x10000 {
            escaped.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            // Outside the BMP, JSON escapes a character as its UTF-16 surrogate pair.
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                escaped.push_str(&format!("\\u{:04x}", unit));
            }
        }
    }
    escaped
}

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

#[cfg(test)]
mod tests {
    use super::json_line;
    use serde_json::{json, Value};

    #[test]
    fn json_lines_escape_what_a_terminal_would_act_on_and_mean_the_same() {
        let text =
            "a\u{9B}31mred\u{202E}evil\u{2066}x\u{2028}y\u{1b}[0m\u{7f}\u{200B}\u{E0041} é 猫 🐱";
        let value = json!({"text": text, "image": "\u{85}.png", "key\u{9B}": {"\u{202E}": 1}});
        let line = json_line(&value);
        assert!(
            !line.chars().any(|c| matches!(
                c,
                '\u{80}'..='\u{9F}' | '\u{202E}' | '\u{2066}' | '\u{2028}' | '\u{1b}'
            )),
            "{line}"
        );
        assert!(
            line.contains("\\u009b") && line.contains("\\u202e") && line.contains("é 猫 🐱"),
            "{line}"
        );
        assert!(line.contains("\\udb40\\udc41"), "{line}");
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), value);
        let pretty = super::escape_json(serde_json::to_string_pretty(&value).unwrap());
        assert!(
            pretty.contains("\\u009b") && pretty.contains('\n'),
            "{pretty}"
        );
        assert_eq!(serde_json::from_str::<Value>(&pretty).unwrap(), value);
        assert_eq!(json_line(&json!({"a": 1})), r#"{"a":1}"#);
    }
}
