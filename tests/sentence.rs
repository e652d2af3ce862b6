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

/// The model's own modules decide its embedding, as in sentence-transformers 6.3
/// (tools/make_sentence_pooling_reference.py): mean or CLS pooling, with or without Normalize,
/// in the legacy and the new config format; other modes and modules are refused by name (a
/// newcomer found a CLS-pooling model silently mean-pooled).
#[test]
fn pooling_and_normalize_follow_the_models_modules() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/sentence-pooling.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<String> = reference["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let tmp = TempDir::new("pooling");
    let model = |name: &str, modules: &serde_json::Value, pooling: &serde_json::Value| {
        let dir = tmp.0.join(name);
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(fixture(&format!("minilm-tiny/{file}")), dir.join(file)).unwrap();
        }
        std::fs::write(dir.join("modules.json"), modules.to_string()).unwrap();
        std::fs::write(dir.join("1_Pooling/config.json"), pooling.to_string()).unwrap();
        dir
    };
    let mut checked = 0;
    for (name, variant) in reference["variants"].as_object().unwrap() {
        for (format, config) in [
            ("legacy", &variant["pooling_config"]),
            ("new", &variant["pooling_config_as_saved_by_this_version"]),
        ] {
            let dir = model(&format!("{name}-{format}"), &variant["modules"], config);
            let mut scorer = SentenceScorer::load(&dir, &Device::Cpu).unwrap();
            for packed in [true, false] {
                scorer.model.use_cpu_kernels(packed);
                for (i, text) in texts.iter().enumerate() {
                    let want: Vec<f32> =
                        serde_json::from_value(variant["embeddings"][i].clone()).unwrap();
                    let got = scorer.embed_text(text).unwrap();
                    let err = rel_err(
                        &candle_core::Tensor::new(got.as_slice(), &Device::Cpu).unwrap(),
                        &candle_core::Tensor::new(want.as_slice(), &Device::Cpu).unwrap(),
                    );
                    assert!(
                        err <= 1e-5,
                        "{name} ({format}, packed {packed}) {text:?}: {err}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 4 * 2 * 2 * texts.len());
    // What clipsteer does not compute is refused, naming the mode or the module.
    let modules = &reference["variants"]["mean"]["modules"];
    for (pooling, says) in [
        (
            serde_json::json!({"pooling_mode": "max"}),
            "pooling max is not supported",
        ),
        (
            serde_json::json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}),
            "pooling cls + mean is not supported",
        ),
    ] {
        let dir = model("refused", modules, &pooling);
        let error = SentenceScorer::load(&dir, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains(says), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let mut dense = modules.clone();
    dense.as_array_mut().unwrap().push(serde_json::json!(
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    ));
    let dir = model(
        "dense",
        &dense,
        &serde_json::json!({"pooling_mode": "mean"}),
    );
    let error = SentenceScorer::load(&dir, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("lists a sentence_transformers.models.Dense module"),
        "{error}"
    );
}
