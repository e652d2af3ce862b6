//! The `params` of a describe request: a JSON object whose keys are the CLI flag names, read into
//! the one [`DescribeRequest`] every face builds. Only [`KNOWN_KEYS`] are accepted: the rest of
//! describe's options (a scorer program, a blocklist file, text targets) are the server
//! operator's, never a client's. Checked by hand rather than by serde so that every mistake names
//! the key, what it must be and what came, and so that the server's limits apply.

use super::error::ApiError;
use clipsteer::request::{DescribeRequest, ResolvedDescribe};
use clipsteer::steer::describe::Strategy;
use serde_json::{Map, Value};

/// Bounds a request may not exceed, whatever the model allows: they keep one request's cost
/// within what a shared server can give it.
#[derive(Debug, Clone, Copy)]
pub struct ParamLimits {
    pub max_top_k: usize,
    pub max_tokens: usize,
    pub max_prompt_chars: usize,
    pub max_block_words: usize,
}

impl Default for ParamLimits {
    fn default() -> Self {
        Self {
            // The original demo's k; larger only slows a step down.
            max_top_k: 2500,
            max_tokens: 64,
            max_prompt_chars: 500,
            max_block_words: 200,
        }
    }
}

/// A params document larger than this is refused before parsing.
pub const MAX_PARAMS_BYTES: usize = 16 * 1024;

pub const KNOWN_KEYS: &[&str] = &[
    "top_k",
    "max_tokens",
    "prompt",
    "instruction",
    "strategy",
    "sample",
    "temperature",
    "seed",
    "block",
];

/// A message written for the command line, with each flag a request can set (`--max-tokens`)
/// named as the request's field (`max_tokens`) instead.
pub fn name_fields(message: &str) -> String {
    clipsteer::error::rename_flags(message, |flag| {
        let key = flag.replace('-', "_");
        KNOWN_KEYS.contains(&key.as_str()).then_some(key)
    })
}

/// The options of a served describe: the request resolved for one image, as the CLI resolves it.
pub fn resolve(request: &DescribeRequest) -> Result<ResolvedDescribe, ApiError> {
    request.resolve(None, true).map_err(|e| library_error(&e))
}

/// A library error about a request's params, with the command line's flags named as its fields.
pub fn library_error(error: &anyhow::Error) -> ApiError {
    let mut answer = ApiError::from_library("params: ", error);
    answer.message = name_fields(&answer.message);
    answer
}

/// Parses the `params` field; empty text means all defaults.
pub fn parse_params(text: &str, limits: &ParamLimits) -> Result<DescribeRequest, String> {
    if text.len() > MAX_PARAMS_BYTES {
        return Err(format!(
            "params is {} bytes, over the limit of {MAX_PARAMS_BYTES}; send only the keys you change",
            text.len()
        ));
    }
    if text.trim().is_empty() {
        return Ok(DescribeRequest::default());
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        format!("params is not valid JSON ({e}); send an object such as {{\"top_k\":50}}")
    })?;
    let Value::Object(object) = value else {
        return Err(format!(
            "params must be a JSON object such as {{\"top_k\":50}}, got {}",
            kind(&value)
        ));
    };
    from_object(&object, limits)
}

/// A non-empty string of at most `max_prompt_chars` characters.
fn text_param(
    value: &Value,
    key: &str,
    advice: &str,
    limits: &ParamLimits,
) -> Result<String, String> {
    let Some(text) = value.as_str() else {
        return Err(format!(
            "params.{key} must be a string, got {}",
            show(value)
        ));
    };
    if text.is_empty() {
        return Err(format!("params.{key} is empty: {advice}"));
    }
    if text.chars().count() > limits.max_prompt_chars {
        return Err(format!(
            "params.{key} is over {} characters; shorten it",
            limits.max_prompt_chars
        ));
    }
    Ok(text.to_string())
}

fn from_object(
    object: &Map<String, Value>,
    limits: &ParamLimits,
) -> Result<DescribeRequest, String> {
    if let Some(unknown) = object.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown parameter '{}'; the known ones are {}",
            truncate(unknown, 40),
            KNOWN_KEYS.join(", ")
        ));
    }
    let mut params = DescribeRequest::default();
    if let Some(value) = object.get("strategy") {
        params.strategy = match value.as_str() {
            Some("seed") => Some(Strategy::Seed),
            Some("magic") => Some(Strategy::Magic),
            Some("beam") => Some(Strategy::Beam),
            _ => {
                return Err(format!(
                    "params.strategy must be \"seed\", \"magic\" or \"beam\", got {}",
                    show(value)
                ))
            }
        };
    }
    if let Some(value) = object.get("top_k") {
        params.top_k = Some(integer(value, "top_k", 1, limits.max_top_k as u64)? as usize);
    }
    if let Some(value) = object.get("max_tokens") {
        params.max_tokens = integer(value, "max_tokens", 1, limits.max_tokens as u64)? as usize;
    }
    params.max_tokens = params.max_tokens.min(limits.max_tokens);
    if let Some(value) = object.get("prompt") {
        params.prompt = Some(text_param(
            value,
            "prompt",
            "give the LM some text to continue, e.g. \"An image of \"",
            limits,
        )?);
    }
    if let Some(value) = object.get("instruction") {
        if params.prompt.is_some() {
            return Err("params.instruction and params.prompt exclude each other: an instruction is rendered through the LM's chat template into a prompt; send one of them".into());
        }
        params.instruction = Some(text_param(
            value,
            "instruction",
            "give the request the LM should answer, e.g. \"Describe the scene in one sentence.\"",
            limits,
        )?);
    }
    let sample = match object.get("sample") {
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "params.sample must be true or false, got {}",
                show(other)
            ))
        }
        None => false,
    };
    let temperature = match object.get("temperature") {
        Some(value) => match value.as_f64() {
            Some(t) if t.is_finite() && t > 0.0 && t <= 100.0 => Some(t),
            _ => {
                return Err(format!(
                    "params.temperature must be a number above 0 and at most 100, got {}",
                    show(value)
                ))
            }
        },
        None => None,
    };
    let seed = match object.get("seed") {
        Some(value) => Some(integer(value, "seed", 0, u64::MAX)?),
        None => None,
    };
    // Unlike the command line (where --temperature and --seed require --sample), a temperature
    // or a seed alone asks to sample: a client sending either means it (docs/SERVE.md).
    // sample:false with either is a contradiction, not a choice to silently ignore one of them.
    if object.get("sample") == Some(&Value::Bool(false))
        && (temperature.is_some() || seed.is_some())
    {
        return Err("params.temperature and params.seed apply only when sampling: drop them or set \"sample\": true".into());
    }
    if sample || temperature.is_some() || seed.is_some() {
        if params.strategy.is_some_and(|s| s != Strategy::Seed) {
            return Err(
                "sampling (sample, temperature, seed) applies to strategy \"seed\" only".into(),
            );
        }
        params.sample = true;
        params.temperature = temperature;
        params.seed = seed;
    }
    if let Some(value) = object.get("block") {
        params.block = block_words(value)?;
        if params.block.len() > limits.max_block_words {
            return Err(format!(
                "params.block has {} words, over the limit of {}",
                params.block.len(),
                limits.max_block_words
            ));
        }
    }
    Ok(params)
}

/// `block` is a list of words or, as on the command line, one comma-separated string.
fn block_words(value: &Value) -> Result<Vec<String>, String> {
    let words: Vec<String> = match value {
        Value::String(list) => list.split(',').map(str::to_string).collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_string).ok_or_else(|| {
                    format!("params.block must hold only strings, got {}", show(item))
                })
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(format!(
                "params.block must be a list of words or a comma-separated string, got {}",
                show(other)
            ))
        }
    };
    let words: Vec<String> = words
        .iter()
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .collect();
    if let Some(long) = words.iter().find(|w| w.chars().count() > 100) {
        return Err(format!(
            "params.block has a word over 100 characters ('{}…')",
            truncate(long, 20)
        ));
    }
    Ok(words)
}

fn integer(value: &Value, key: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "params.{key} must be an integer from {min} to {max}, got {}",
            show(value)
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value as shown in an error: short, so that a huge value does not become a huge message.
fn show(value: &Value) -> String {
    truncate(&value.to_string(), 60)
}

fn truncate(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_string()
    } else {
        text.chars()
            .take(chars)
            .chain(std::iter::once('…'))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DescribeRequest, String> {
        parse_params(text, &ParamLimits::default())
    }

    fn options(text: &str) -> Result<clipsteer::steer::describe::DescribeOptions, String> {
        resolve(&parse(text)?)
            .map(|resolved| resolved.options)
            .map_err(|e| e.message)
    }

    #[test]
    fn empty_params_are_the_cli_defaults() {
        let params = parse("").unwrap();
        assert_eq!(params, DescribeRequest::default());
        let resolved = options("").unwrap();
        assert_eq!(resolved.top_k, 200);
        assert_eq!(resolved.max_tokens, 25);
        assert_eq!(resolved.prompt, "An image of ");
        assert_eq!(parse("{}").unwrap(), params);
    }

    #[test]
    fn every_key_is_read() {
        let params = parse(
            r#"{"top_k":7,"max_tokens":3,"prompt":"A photo of","strategy":"seed","temperature":0.5,"seed":9,"block":["cat"," dog "]}"#,
        )
        .unwrap();
        assert_eq!(params.top_k, Some(7));
        assert_eq!(params.max_tokens, 3);
        assert_eq!(params.prompt.as_deref(), Some("A photo of"));
        let resolved = resolve(&params).unwrap().options;
        let sampling = resolved.sampling.unwrap();
        assert_eq!((sampling.temperature, sampling.seed), (0.5, 9));
        assert_eq!(params.block, vec!["cat", "dog"]);
        assert_eq!(
            parse(r#"{"block":"a, b,,c"}"#).unwrap().block,
            vec!["a", "b", "c"]
        );
    }

    #[test]
    fn magic_defaults_to_its_own_k() {
        let options = options(r#"{"strategy":"magic"}"#).unwrap();
        assert_eq!(options.top_k, 45);
        assert!(options.stop_at_sentence_end);
    }

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            (r#"{"topk":5}"#, "unknown parameter 'topk'"),
            (
                r#"{"top_k":"ten"}"#,
                "params.top_k must be an integer from 1 to 2500, got \"ten\"",
            ),
            (r#"{"top_k":0}"#, "params.top_k must be an integer"),
            (r#"{"top_k":2.5}"#, "params.top_k must be an integer"),
            (
                r#"{"max_tokens":-1}"#,
                "params.max_tokens must be an integer from 1 to 64",
            ),
            (
                r#"{"max_tokens":1000}"#,
                "params.max_tokens must be an integer from 1 to 64",
            ),
            (r#"{"prompt":5}"#, "params.prompt must be a string"),
            (r#"{"prompt":""}"#, "params.prompt is empty"),
            (
                r#"{"strategy":"best"}"#,
                "params.strategy must be \"seed\", \"magic\" or \"beam\"",
            ),
            (
                r#"{"temperature":0}"#,
                "params.temperature must be a number above 0",
            ),
            (
                r#"{"temperature":"hot"}"#,
                "params.temperature must be a number",
            ),
            (r#"{"seed":-3}"#, "params.seed must be an integer"),
            (r#"{"sample":"yes"}"#, "params.sample must be true or false"),
            (r#"{"sample":false,"seed":1}"#, "apply only when sampling"),
            (
                r#"{"strategy":"magic","temperature":1}"#,
                "applies to strategy \"seed\" only",
            ),
            (r#"{"block":5}"#, "params.block must be a list of words"),
            (r#"{"block":[1]}"#, "params.block must hold only strings"),
            ("[1,2]", "params must be a JSON object"),
            ("{\"top_k\":", "params is not valid JSON"),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains('\n'), "{text}: one line: {error}");
        }
    }

    #[test]
    fn command_line_messages_name_the_fields() {
        assert_eq!(
            name_fields(
                "the prompt plus --max-tokens (60) exceeds the context; lower --max-tokens"
            ),
            "the prompt plus max_tokens (60) exceeds the context; lower max_tokens"
        );
        assert_eq!(
            name_fields("--top-k must be at most 50, e.g. --block cat,dog"),
            "top_k must be at most 50, e.g. block cat,dog"
        );
    }

    #[test]
    fn oversized_params_are_refused_before_parsing() {
        let huge = format!("{{\"prompt\":\"{}\"}}", "a".repeat(MAX_PARAMS_BYTES));
        assert!(parse(&huge).unwrap_err().contains("over the limit"));
    }
}
