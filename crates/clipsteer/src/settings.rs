//! The settings record of a describe run: everything its output depends on, carried on every
//! `done` and `error` line of `--out` so that parts made with different models or options are
//! never mixed without notice (`clipsteer merge` refuses them, `--resume` refuses to extend them).
//!
//! The record is small on purpose, since a million-image run writes it a million times:
//!
//! ```json
//! "settings":{"lm":"openai-community/gpt2@607a30d783df…","encoder":"/models/clip-b32","options":"9f2c81d0a4b3e6f1"}
//! ```
//!
//! `lm` and `encoder` name the models readably: a hub id with the commit it resolved to, or a
//! local path made absolute (the `models` field beside it has the full provenance). `options` is a fingerprint (FNV-1a, 64 bits, hex) of
//! every other setting that changes the text: prompt, top-k, token budget, strategy and its
//! parameters, sampling, prefilter, blocklist, targets and weights, and clipsteer's version.
//! The device and the thread count are left out: they change speed, not the settings asked for.

use crate::hub::ModelOrigin;
use crate::steer::describe::{DescribeOptions, Strategy};
use serde_json::{json, Value};

/// The targets a run steers toward, besides its options.
#[derive(Debug, Clone, Copy)]
pub struct TargetSettings<'a> {
    /// Whether each job's target includes its image.
    pub image: bool,
    pub target_texts: &'a [String],
    pub avoid_texts: &'a [String],
    /// Weights in the order of `--target-weight`: the image, each target text, each avoid text.
    pub weights: &'a [f32],
}

/// A run's settings record; see the module docs for its JSON shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    pub lm: String,
    pub encoder: String,
    /// 16 lowercase hex digits.
    pub options: String,
}

impl RunSettings {
    /// The record of a describe run with models given as on the command line (`lm_spec`,
    /// `encoder_spec`: a local path or a hub id) and the options it runs with.
    pub fn for_describe(
        lm_spec: &str,
        encoder_spec: &str,
        options: &DescribeOptions,
        targets: TargetSettings<'_>,
    ) -> Self {
        Self {
            lm: model_identity(lm_spec),
            encoder: model_identity(encoder_spec),
            options: fingerprint(&options_record(options, targets)),
        }
    }

    /// Whether a recorded settings record agrees with a `planned` one, made by
    /// [`Self::for_describe`] before loading, where a hub model not yet resolved is named by
    /// its spec (`id` or `id@revision`) instead of `id@commit`. Options must be equal; a model
    /// agrees when equal, or when both name the same hub id.
    pub fn agrees_with_planned(recorded: &Value, planned: &Value) -> bool {
        let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        if recorded.get("options") != planned.get("options") {
            return false;
        }
        ["lm", "encoder"].iter().all(|k| {
            match (field(recorded, k), field(planned, k)) {
                (Some(r), Some(p)) if r == p => true,
                // A hub id is never an absolute path; a local model is recorded absolute.
                (Some(r), Some(p)) if !p.starts_with('/') && !p.starts_with("scorer-cmd:") => {
                    r.split('@').next() == p.split('@').next()
                }
                (r, p) => r == p,
            }
        })
    }

    pub fn to_json(&self) -> Value {
        json!({"lm": self.lm, "encoder": self.encoder, "options": self.options})
    }

    /// What differs between two records, for an error message: "lm A vs B", "options (other
    /// describe flags) X vs Y"; several joined by "; ".
    pub fn describe_difference(a: &Value, b: &Value) -> String {
        let field = |v: &Value, k: &str| match v.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "none".to_string(),
        };
        if !a.is_object() || !b.is_object() {
            return format!("{a} vs {b}");
        }
        let mut keys: Vec<&String> = a
            .as_object()
            .into_iter()
            .chain(b.as_object())
            .flat_map(|o| o.keys())
            .collect();
        keys.sort();
        keys.dedup();
        let differences: Vec<String> = keys
            .into_iter()
            .filter(|k| a.get(k.as_str()) != b.get(k.as_str()))
            .map(|k| {
                let what = if k == "options" {
                    "options (prompt, top-k, strategy or other describe flags)".to_string()
                } else {
                    k.clone()
                };
                format!("{what} {} vs {}", field(a, k), field(b, k))
            })
            .collect();
        differences.join("; ")
    }
}

/// A model as the record names it, from where [`crate::hub`] resolved it in this process (so call
/// it after the models are loaded): a hub model as `id@commit` (the commit, not the branch or
/// tag, says which weights), a local one as its path made absolute (no symlinks resolved, so the
/// same shared mount reads the same on every node). `spec` itself when it was never resolved.
pub fn model_identity(spec: &str) -> String {
    match crate::hub::origin(spec) {
        Some(ModelOrigin::Hub {
            id, commit, file, ..
        }) => match file {
            Some(file) => format!("{id}@{commit}/{file}"),
            None => format!("{id}@{commit}"),
        },
        Some(ModelOrigin::Local { path }) => std::path::absolute(&path)
            .map(|p| p.display().to_string())
            .unwrap_or(path),
        None => spec.to_string(),
    }
}

/// Everything in `options` and `targets` that changes the text, as one JSON value whose
/// serialisation is the fingerprint's input (serde_json keeps insertion order here).
fn options_record(options: &DescribeOptions, targets: TargetSettings<'_>) -> Value {
    json!({
        "clipsteer": env!("CARGO_PKG_VERSION"),
        "prompt": options.prompt,
        "top_k": options.top_k,
        "max_tokens": options.max_tokens,
        "strategy": format!("{:?}", options.strategy).to_lowercase(),
        "sampling": options.sampling.map(|s| json!({"temperature": s.temperature, "seed": s.seed})),
        "prefilter": options.prefilter,
        "block": options.blocklist.words(),
        "block_substrings": options.blocklist.matches_substrings(),
        // Only the chosen strategy's parameters: a --beam-width given to seed changes no text,
        // so it must not make two runs' parts unmergeable.
        "magic": (options.strategy == Strategy::Magic).then(|| json!({
            "alpha": options.magic.alpha,
            "beta": options.magic.beta,
            "scale": options.magic.scale,
        })),
        "beam": (options.strategy == Strategy::Beam).then(|| json!({
            "width": options.beam.width,
            "fluency": options.beam.fluency,
            "diversity": options.beam.diversity,
            "lookahead": options.beam.lookahead,
            "close_within": options.beam.close_within,
        })),
        "sentence_stop": options.stop_at_sentence_end,
        "score_text": format!("{:?}", options.scored_text).to_lowercase(),
        "targets": {
            "image": targets.image,
            "texts": targets.target_texts,
            "avoid": targets.avoid_texts,
            "weights": targets.weights,
        },
    })
}

/// FNV-1a (64-bit) of the value's compact JSON, as 16 hex digits: a fixed, published algorithm
/// (Fowler, Noll, Vo; offset basis 0xcbf29ce484222325, prime 0x100000001b3), so that the same
/// settings give the same fingerprint from any build, as std's DefaultHasher does not promise.
/// It detects accidental mixing; it is not meant to resist forgery.
pub fn fingerprint(value: &Value) -> String {
    format!("{:016x}", fnv1a64(value.to_string().as_bytes()))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steer::describe::Strategy;

    fn targets() -> TargetSettings<'static> {
        TargetSettings {
            image: true,
            target_texts: &[],
            avoid_texts: &[],
            weights: &[],
        }
    }

    #[test]
    fn fingerprint_is_fnv1a_of_the_compact_json() {
        // The published FNV-1a 64 test vectors (Fowler, Noll, Vo).
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
        assert_eq!(
            fingerprint(&json!("a")),
            format!("{:016x}", fnv1a64(b"\"a\""))
        );
    }

    #[test]
    fn every_option_changes_the_fingerprint() {
        let base = DescribeOptions::for_strategy("An image of ", Strategy::Seed);
        let print = |o: &DescribeOptions, t: TargetSettings<'_>| {
            RunSettings::for_describe("gpt2", "clip", o, t).options
        };
        let reference = print(&base, targets());
        assert_eq!(reference, print(&base.clone(), targets()), "deterministic");
        assert_eq!(reference.len(), 16);
        let mut changed = Vec::new();
        let mut o = base.clone();
        o.top_k = 100;
        changed.push(print(&o, targets()));
        let mut o = base.clone();
        o.prompt = "A photo of ".into();
        changed.push(print(&o, targets()));
        let mut o = base.clone();
        o.max_tokens = 24;
        changed.push(print(&o, targets()));
        let mut o = base.clone();
        o.strategy = Strategy::Magic;
        changed.push(print(&o, targets()));
        let mut o = base.clone();
        o.blocklist = crate::steer::constraints::Blocklist::new(["cat"], false).unwrap();
        changed.push(print(&o, targets()));
        let mut o = base.clone();
        o.blocklist = crate::steer::constraints::Blocklist::new(["cat"], true).unwrap();
        changed.push(print(&o, targets()));
        let texts = vec!["a dog".to_string()];
        changed.push(print(
            &base,
            TargetSettings {
                target_texts: &texts,
                ..targets()
            },
        ));
        changed.push(print(
            &base,
            TargetSettings {
                weights: &[0.5],
                ..targets()
            },
        ));
        let mut all = changed.clone();
        all.push(reference.clone());
        all.sort();
        all.dedup();
        assert_eq!(all.len(), changed.len() + 1, "{changed:?}");
    }

    #[test]
    fn only_the_chosen_strategys_parameters_count() {
        let print =
            |o: &DescribeOptions| RunSettings::for_describe("gpt2", "clip", o, targets()).options;
        let seed = DescribeOptions::for_strategy("An image of ", Strategy::Seed);
        let mut unused = seed.clone();
        unused.beam.width += 3;
        unused.magic.alpha += 1.0;
        assert_eq!(
            print(&seed),
            print(&unused),
            "beam and magic flags do not change seed's text"
        );
        let beam = DescribeOptions::for_strategy("An image of ", Strategy::Beam);
        let mut wider = beam.clone();
        wider.beam.width += 3;
        assert_ne!(print(&beam), print(&wider));
        let mut magic_flag = beam.clone();
        magic_flag.magic.alpha += 1.0;
        assert_eq!(print(&beam), print(&magic_flag));
    }

    #[test]
    fn a_planned_record_agrees_with_the_resolved_hub_commit_only_for_the_same_id() {
        let recorded = json!({"lm": "openai-community/gpt2@607a30d783df", "encoder": "/m/clip", "options": "1"});
        let agree = |planned: Value| RunSettings::agrees_with_planned(&recorded, &planned);
        assert!(agree(
            json!({"lm": "openai-community/gpt2", "encoder": "/m/clip", "options": "1"})
        ));
        assert!(agree(
            json!({"lm": "openai-community/gpt2@main", "encoder": "/m/clip", "options": "1"})
        ));
        assert!(!agree(
            json!({"lm": "distilgpt2", "encoder": "/m/clip", "options": "1"})
        ));
        assert!(!agree(
            json!({"lm": "openai-community/gpt2", "encoder": "/m/clip2", "options": "1"})
        ));
        assert!(!agree(
            json!({"lm": "openai-community/gpt2", "encoder": "/m/clip", "options": "2"})
        ));
    }

    #[test]
    fn differences_name_the_field() {
        let a = json!({"lm": "gpt2", "encoder": "clip", "options": "00"});
        let b = json!({"lm": "gpt2-medium", "encoder": "clip", "options": "01"});
        let text = RunSettings::describe_difference(&a, &b);
        assert!(text.contains("lm gpt2 vs gpt2-medium"), "{text}");
        assert!(text.contains("options"), "{text}");
        assert!(!text.contains("encoder"), "{text}");
    }
}
