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

fn smollm2_path() -> std::path::PathBuf {
    let path = root().join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "run scripts/fetch-small-models.sh first (no model at {})",
        path.display()
    );
    path
}

#[test]
fn smollm2_gguf_matches_transformers() {
    use clipsteer::steer::{CausalLm, GgufLm};
    let lm = GgufLm::load(&smollm2_path(), &Device::Cpu).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/smollm2-tokenizer.json")).unwrap(),
    )
    .unwrap();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(lm.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(lm.decode(&want).unwrap(), text, "decode of {text:?}");
    }
    let reference = reference("smollm2");
    let columns = reference["columns"]
        .to_dtype(candle_core::DType::U32)
        .unwrap();
    for i in 0..2 {
        let ids: Vec<u32> = ids_of(&reference[&format!("seq_{i}_ids")]);
        let input = candle_core::Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut cache = lm.model.new_cache();
        let hidden = lm.model.hidden_states(&input, &mut cache).unwrap();
        let logits = lm.model.logits(&hidden).unwrap().squeeze(0).unwrap();
        let err = rel_err(
            &logits.index_select(&columns, 1).unwrap(),
            &reference[&format!("seq_{i}_logits")],
        );
        assert!(err <= 1e-4, "sequence {i}: rel err {err}");
        // Incremental decoding through the cache gives the same last row.
        let mut cache = lm.new_cache();
        lm.next_logits(&ids[..ids.len() - 1], &mut cache).unwrap();
        let last = lm.next_logits(&ids[ids.len() - 1..], &mut cache).unwrap();
        let last = candle_core::Tensor::new(last, &Device::Cpu).unwrap();
        let err = rel_err(&last, &reference[&format!("seq_{i}_last_full")]);
        assert!(err <= 1e-4, "sequence {i} incremental: rel err {err}");
    }
}
