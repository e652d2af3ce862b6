//! One request type behind every face: the same options given as command-line flags, as
//! `serve`'s params and as the Python package's keyword arguments (the JSON object
//! `clipsteer._options_json` sends) resolve to the same search options and the same settings
//! fingerprint, the one `merge` and `--resume` compare.

use clap::Parser;
use clipsteer::pipeline::planned_settings;
use clipsteer::request::{DescribeRequest, ResolvedDescribe};
use clipsteer_cli::{Cli, Command};
use clipsteer_server::params::{parse_params, resolve, ParamLimits};

const LM: &str = "tests/fixtures/gpt2-tiny";
const ENCODER: &str = "tests/fixtures/clip-tiny-gelu";

/// A case: describe's flags; serve's params (None: a field serve does not take from clients);
/// Python's keyword arguments as JSON.
struct Case {
    flags: &'static [&'static str],
    serve: Option<&'static str>,
    python: &'static str,
}

const CASES: &[Case] = &[
    Case {
        flags: &[],
        serve: Some("{}"),
        python: "{}",
    },
    Case {
        flags: &[
            "--top-k",
            "7",
            "--max-tokens",
            "3",
            "--prompt",
            "A photo of",
        ],
        serve: Some(r#"{"top_k":7,"max_tokens":3,"prompt":"A photo of"}"#),
        python: r#"{"top_k":7,"max_tokens":3,"prompt":"A photo of"}"#,
    },
    Case {
        flags: &["--strategy", "magic"],
        serve: Some(r#"{"strategy":"magic"}"#),
        python: r#"{"strategy":"magic"}"#,
    },
    Case {
        flags: &["--strategy", "beam", "--max-tokens", "9"],
        serve: Some(r#"{"strategy":"beam","max_tokens":9}"#),
        python: r#"{"strategy":"beam","max_tokens":9}"#,
    },
    Case {
        flags: &["--sample", "--temperature", "0.5", "--seed", "9"],
        serve: Some(r#"{"sample":true,"temperature":0.5,"seed":9}"#),
        python: r#"{"sample":true,"temperature":0.5,"seed":9}"#,
    },
    Case {
        // serve takes a temperature or a seed alone as asking to sample.
        flags: &["--sample", "--seed", "3"],
        serve: Some(r#"{"seed":3}"#),
        python: r#"{"sample":true,"seed":3}"#,
    },
    Case {
        flags: &["--block", "cat,dog"],
        serve: Some(r#"{"block":["cat","dog"]}"#),
        python: r#"{"block":["cat,dog"]}"#,
    },
    Case {
        flags: &["--block", "cat", "--block", "dog"],
        serve: Some(r#"{"block":"cat, dog"}"#),
        python: r#"{"block":["cat","dog"]}"#,
    },
    Case {
        flags: &[
            "--strategy",
            "beam",
            "--beam-width",
            "3",
            "--beam-fluency",
            "0.25",
            "--beam-lookahead",
            "0",
            "--score-text",
            "full",
        ],
        serve: None,
        python: r#"{"strategy":"beam","beam_width":3,"beam_fluency":0.25,"beam_lookahead":0,"score_text":"full"}"#,
    },
    Case {
        flags: &[
            "--strategy",
            "magic",
            "--magic-alpha",
            "0.3",
            "--magic-scale",
            "50",
            "--no-sentence-stop",
        ],
        serve: None,
        python: r#"{"strategy":"magic","magic_alpha":0.3,"magic_scale":50,"no_sentence_stop":true}"#,
    },
    Case {
        flags: &[
            "--target-text",
            "a red car",
            "--avoid-text",
            "a dog",
            "--target-weight",
            "1",
            "--target-weight",
            "0.5",
            "--prefilter",
            "20",
        ],
        serve: None,
        python: r#"{"target_text":["a red car"],"avoid_text":["a dog"],"target_weight":[1,0.5],"prefilter":20}"#,
    },
];

fn from_flags(flags: &[&str]) -> ResolvedDescribe {
    let mut argv = vec!["clipsteer", "describe"];
    argv.extend_from_slice(flags);
    argv.push("image.png");
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{flags:?}: {e}"));
    let Command::Describe(args) = cli.command else {
        panic!("not describe")
    };
    args.request.resolve(args.preset, true).unwrap()
}

/// What decides the text: the fingerprinted settings record and the full options.
fn decided(resolved: &ResolvedDescribe) -> (serde_json::Value, String) {
    (
        planned_settings(LM, ENCODER, resolved).unwrap(),
        format!("{:?}", resolved.options),
    )
}

#[test]
fn the_same_options_from_every_face_resolve_alike() {
    for case in CASES {
        let cli = decided(&from_flags(case.flags));
        let python = DescribeRequest::from_json(case.python)
            .and_then(|request| request.resolve(None, true))
            .unwrap_or_else(|e| panic!("{}: {e}", case.python));
        assert_eq!(decided(&python), cli, "python {}", case.python);
        match case.serve {
            Some(params) => {
                let request = parse_params(params, &ParamLimits::default()).unwrap();
                let served = resolve(&request).unwrap_or_else(|e| panic!("{params}: {e:?}"));
                assert_eq!(decided(&served), cli, "serve {params}");
            }
            None => {
                // What serve does not take from clients is refused, never ignored.
                let error = parse_params(case.python, &ParamLimits::default()).unwrap_err();
                assert!(error.starts_with("unknown parameter"), "{error}");
            }
        }
    }
}

#[test]
fn different_options_make_different_fingerprints() {
    let fingerprints: Vec<serde_json::Value> = CASES
        .iter()
        .map(|case| {
            planned_settings(LM, ENCODER, &from_flags(case.flags)).unwrap()["options"].clone()
        })
        .collect();
    // Blocked words split two ways ask for the same thing; every other case asks for something
    // else.
    let distinct: std::collections::HashSet<String> =
        fingerprints.iter().map(|f| f.to_string()).collect();
    assert_eq!(distinct.len(), CASES.len() - 1, "{fingerprints:?}");
}
