//! describe's `--json` output on the fixture runs, pinned byte for byte (insta snapshots in
//! tests/snapshots/): what every face of one request type must keep printing. Only what no run can
//! repeat is masked: the seconds a description took, and where the repository was checked out.
//!
//! `CLIPSTEER_BIN=path/to/clipsteer cargo test --test json_snapshots` checks another build (an
//! older commit's, say) against the same snapshots.

use std::path::Path;
use std::process::Command;

const GPT2: &str = "tests/fixtures/gpt2-tiny";
const LLAMA: &str = "tests/fixtures/llama-tiny.gguf";
const CLIP: &str = "tests/fixtures/clip-tiny-gelu";
const MINILM: &str = "tests/fixtures/minilm-tiny";
const PHOTO: &str = "tests/fixtures/images/photo_80x53.jpg";
const RGBA: &str = "tests/fixtures/images/rgba_50x50.png";

/// The runs: a name, then describe's arguments after `describe --json`.
const CASES: &[(&str, &[&str])] = &[
    (
        "seed_image",
        &["--lm", GPT2, "--encoder", CLIP, "--max-tokens", "3", PHOTO],
    ),
    (
        "seed_sampled_two_images",
        &[
            "--lm",
            GPT2,
            "--encoder",
            CLIP,
            "--max-tokens",
            "3",
            "--sample",
            "--temperature",
            "0.5",
            "--seed",
            "7",
            PHOTO,
            RGBA,
        ],
    ),
    (
        "magic_text_targets",
        &[
            "--lm",
            GPT2,
            "--encoder",
            CLIP,
            "--strategy",
            "magic",
            "--max-tokens",
            "4",
            "--target-text",
            "a red car",
            "--avoid-text",
            "a dog",
            "--target-weight",
            "1",
            "--target-weight",
            "0.5",
            "--no-sentence-stop",
        ],
    ),
    (
        "beam_image",
        &[
            "--lm",
            GPT2,
            "--encoder",
            CLIP,
            "--strategy",
            "beam",
            "--beam-width",
            "2",
            "--max-tokens",
            "4",
            "--top-k",
            "8",
            PHOTO,
        ],
    ),
    (
        "blocked_words_and_prompt",
        &[
            "--lm",
            GPT2,
            "--encoder",
            CLIP,
            "--max-tokens",
            "3",
            "--block",
            "the,an,cat",
            "--prompt",
            "A photo of ",
            "--score-text",
            "generated",
            "--top-k",
            "50",
            RGBA,
        ],
    ),
    (
        "sentence_encoder",
        &[
            "--lm",
            GPT2,
            "--encoder",
            MINILM,
            "--max-tokens",
            "3",
            "--target-text",
            "a calm lake",
        ],
    ),
    (
        "gguf_lm",
        &["--lm", LLAMA, "--encoder", CLIP, "--max-tokens", "3", PHOTO],
    ),
    (
        "an_unreadable_input",
        &[
            "--lm",
            GPT2,
            "--encoder",
            CLIP,
            "--max-tokens",
            "2",
            "tests/fixtures/letter-symbols.tsv",
        ],
    ),
];

/// The output with the seconds and the checkout's path masked.
fn masked(stdout: &str, root: &str) -> String {
    let mut out = String::new();
    for line in stdout.lines() {
        let mut line = line.replace(root, "[repo]");
        if let Some(at) = line.find("\"seconds\":") {
            let start = at + "\"seconds\":".len();
            let end = line[start..]
                .find([',', '}'])
                .map_or(line.len(), |n| start + n);
            line.replace_range(start..end, "\"[seconds]\"");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn describe_json_is_unchanged_on_the_fixture_runs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let binary =
        std::env::var("CLIPSTEER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_clipsteer").into());
    for (name, args) in CASES {
        let output = Command::new(&binary)
            .current_dir(root)
            .args(["describe", "--json"])
            .args(*args)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            Path::new(&binary).exists() && !stdout.is_empty(),
            "{name}: no output; stderr: {stderr}"
        );
        let text = format!(
            "exit {}\n{}",
            output.status.code().unwrap_or(-1),
            masked(&stdout, root)
        );
        insta::assert_snapshot!(*name, text);
    }
}
