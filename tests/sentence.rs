//! The BERT sentence encoder against transformers (mean pooling, normalised) on a tiny
//! random checkpoint, and as a text-only scorer from the command line.

mod common;

use candle_core::{Device, IndexOp};
use clipsteer::steer::{Scorer, SentenceScorer};
use common::*;

fn cases() -> Vec<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference/sentence.json")).unwrap())
        .unwrap()
}

#[test]
fn sentence_embeddings_match_transformers() {
    let scorer = SentenceScorer::load(&fixture("minilm-tiny"), &Device::Cpu).unwrap();
    let reference = reference("sentence");
    let cases = cases();
    let texts: Vec<String> = cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    for (i, case) in cases.iter().enumerate() {
        let want: Vec<u32> = json_ids(&case["ids"]);
        assert_eq!(
            scorer.encode(&texts[i]).unwrap(),
            want,
            "ids of {:?}",
            texts[i]
        );
        let got =
            candle_core::Tensor::new(scorer.embed_text(&texts[i]).unwrap(), &Device::Cpu).unwrap();
        let err = rel_err(&got, &reference[&format!("sentence_{i}_embedding")]);
        assert!(err <= 1e-4, "{:?}: rel err {err}", texts[i]);
    }
    // Batched with padding equals one at a time.
    let batched = scorer.embed(&texts).unwrap();
    for (i, row) in batched.iter().enumerate() {
        let got = candle_core::Tensor::new(row.as_slice(), &Device::Cpu).unwrap();
        let want = reference[&format!("sentence_{i}_embedding")].i(..).unwrap();
        assert!(rel_err(&got, &want) <= 1e-4, "batched row {i}");
    }
}

#[test]
fn packed_batches_equal_padded_ones() {
    let mut scorer = SentenceScorer::load(&fixture("minilm-tiny"), &Device::Cpu).unwrap();
    // Lengths that differ, so that the padded batch pads and the packed one does not.
    let texts: Vec<String> = cases()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .chain([
            "a".to_string(),
            "a longer sentence than the others, with commas, and more words".to_string(),
        ])
        .collect();
    let packed = scorer.embed(&texts).unwrap();
    scorer.model.use_cpu_kernels(false);
    let padded = scorer.embed(&texts).unwrap();
    for (i, (p, q)) in packed.iter().zip(&padded).enumerate() {
        let err = rel_err(
            &candle_core::Tensor::new(p.as_slice(), &Device::Cpu).unwrap(),
            &candle_core::Tensor::new(q.as_slice(), &Device::Cpu).unwrap(),
        );
        assert!(err <= 1e-5, "text {i}: packed and padded differ by {err}");
    }
}

#[test]
fn text_only_encoder_steers_from_the_command_line_and_refuses_images() {
    let bin = env!("CARGO_BIN_EXE_clipsteer");
    let base = [
        "describe",
        "--lm",
        &fixture("gpt2-tiny").display().to_string(),
        "--encoder",
        &fixture("minilm-tiny").display().to_string(),
        "--max-tokens",
        "4",
        "--json",
    ]
    .map(String::from);
    let output = std::process::Command::new(bin)
        .env("HF_HUB_OFFLINE", "1")
        .args(&base)
        .args([
            "--target-text",
            "the quick brown fox",
            "--strategy",
            "magic",
            "--block",
            "fox",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let done: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(done["event"], "done");
    assert!(done["similarity"].is_number());
    let output = std::process::Command::new(bin)
        .env("HF_HUB_OFFLINE", "1")
        .args(&base)
        .arg(fixture("images/crop32.png"))
        .output()
        .unwrap();
    // Said once, before any image is read (issue 29: it used to fail on each image in turn).
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("embeds text only"), "{err}");
}
