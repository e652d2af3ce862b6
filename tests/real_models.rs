//! The real small models fetched by scripts/fetch-small-models.sh (which .ci/run calls first).

mod common;

use candle_core::Device;
use clipsteer::steer::{Scorer, SentenceScorer};
use common::*;

fn minilm_dir() -> std::path::PathBuf {
    let dir = root().join(".cache/models/all-minilm-l6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "run scripts/fetch-small-models.sh first (no model at {})",
        dir.display()
    );
    dir
}

#[test]
fn all_minilm_l6_v2_matches_transformers() {
    let scorer = SentenceScorer::load(&minilm_dir(), &Device::Cpu).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/minilm-real.json")).unwrap(),
    )
    .unwrap();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let want_ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(scorer.encode(text).unwrap(), want_ids, "{text:?}");
        let want: Vec<f32> = case["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = scorer.embed_text(text).unwrap();
        let err = rel_err(
            &candle_core::Tensor::new(got, &Device::Cpu).unwrap(),
            &candle_core::Tensor::new(want, &Device::Cpu).unwrap(),
        );
        assert!(err <= 1e-4, "{text:?}: rel err {err}");
    }
    // It is a real model: paraphrases are closer than unrelated text.
    let e = |t: &str| scorer.embed_text(t).unwrap();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let (cat, kitten, market) = (
        e(cases[0]["text"].as_str().unwrap()),
        e(cases[1]["text"].as_str().unwrap()),
        e(cases[2]["text"].as_str().unwrap()),
    );
    assert!(dot(&cat, &kitten) > dot(&cat, &market) + 0.3);
}
