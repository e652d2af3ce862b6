//! Checkpoints in every format and dtype the hub serves: PyTorch `.bin` written by torch
//! (tests/fixtures/torch/, tools/make_torch_fixtures.py) and safetensors, each in f32, f16 and
//! bf16, single and sharded. Each is held to transformers' outputs on the same (rounded)
//! weights, and the two formats of one dtype to each other exactly.

mod common;

use candle_core::{DType, Device, Tensor};
use clipsteer::steer::SentenceScorer;
use common::*;
use std::collections::HashMap;
use std::path::Path;

fn sentences() -> Vec<String> {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("reference/sentence.json")).unwrap())
            .unwrap();
    cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

/// The sentence encoder's files without weights, copied into `dir`.
fn minilm_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    std::fs::create_dir(dir.0.join("1_Pooling")).unwrap();
    for file in [
        "config.json",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        std::fs::copy(fixture("minilm-tiny").join(file), dir.0.join(file)).unwrap();
    }
    dir
}

fn embeddings(dir: &Path) -> Vec<Vec<f32>> {
    let scorer = SentenceScorer::load(dir, &Device::Cpu).unwrap();
    scorer.embed(&sentences()).unwrap()
}

fn assert_matches(got: &[Vec<f32>], reference: &HashMap<String, Tensor>, prefix: &str, what: &str) {
    for (i, row) in got.iter().enumerate() {
        let row = Tensor::new(row.as_slice(), &Device::Cpu).unwrap();
        let err = rel_err(&row, &reference[&format!("{prefix}sentence_{i}_embedding")]);
        assert!(err <= 1e-4, "{what}, sentence {i}: rel err {err}");
    }
}

fn torch_reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("torch/reference.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn pytorch_bin_and_safetensors_in_every_dtype_match_transformers() {
    let f32_reference = reference("sentence");
    let rounded_reference = torch_reference();
    let safetensors_f32 = fixture("minilm-tiny/model.safetensors");
    for (name, dtype, reference, prefix) in [
        ("f32", DType::F32, &f32_reference, ""),
        ("f16", DType::F16, &rounded_reference, "f16_"),
        ("bf16", DType::BF16, &rounded_reference, "bf16_"),
    ] {
        let bin = minilm_dir(&format!("bin-{name}"));
        std::fs::copy(
            fixture(&format!("torch/minilm-{name}.bin")),
            bin.0.join("pytorch_model.bin"),
        )
        .unwrap();
        let from_bin = embeddings(&bin.0);
        assert_matches(
            &from_bin,
            reference,
            prefix,
            &format!("{name} pytorch_model.bin"),
        );

        let safetensors = minilm_dir(&format!("st-{name}"));
        cast_safetensors(
            &safetensors_f32,
            &safetensors.0.join("model.safetensors"),
            dtype,
        );
        let from_safetensors = embeddings(&safetensors.0);
        assert_matches(
            &from_safetensors,
            reference,
            prefix,
            &format!("{name} model.safetensors"),
        );
        // The same weights in either format give the same numbers, bit for bit.
        assert_eq!(
            from_bin, from_safetensors,
            "{name}: .bin and .safetensors differ"
        );
    }
}

#[test]
fn sharded_checkpoints_of_both_formats_match_the_single_file() {
    let single = embeddings(&fixture("minilm-tiny"));
    let bin = minilm_dir("sharded-bin");
    for entry in std::fs::read_dir(fixture("torch/minilm-sharded")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bin.0.join(entry.file_name())).unwrap();
    }
    assert_eq!(embeddings(&bin.0), single, "sharded pytorch_model.bin");
    let safetensors = minilm_dir("sharded-st");
    shard_safetensors(&fixture("minilm-tiny/model.safetensors"), &safetensors.0);
    assert_eq!(
        embeddings(&safetensors.0),
        single,
        "sharded model.safetensors"
    );
}

#[test]
fn safetensors_win_over_a_bin_beside_them() {
    // A corrupt .bin beside good safetensors: never read, as transformers never reads it.
    let dir = minilm_dir("both");
    std::fs::copy(
        fixture("minilm-tiny/model.safetensors"),
        dir.0.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.0.join("pytorch_model.bin"), b"not a checkpoint").unwrap();
    assert_eq!(embeddings(&dir.0), embeddings(&fixture("minilm-tiny")));
}

#[test]
fn a_legacy_pickle_is_refused_in_one_line_that_says_how_to_convert() {
    let dir = minilm_dir("legacy");
    std::fs::copy(
        fixture("torch/minilm-legacy.bin"),
        dir.0.join("pytorch_model.bin"),
    )
    .unwrap();
    let error = SentenceScorer::load(&dir.0, &Device::Cpu)
        .err()
        .expect("refused");
    let line = clipsteer::error_line(&error);
    assert!(line.contains("legacy"), "{line}");
    assert!(line.contains("torch.save(torch.load("), "{line}");
    assert!(!line.contains('\n'));
}

#[test]
fn a_repo_without_readable_weights_lists_what_it_has() {
    let dir = minilm_dir("tf-only");
    std::fs::write(dir.0.join("tf_model.h5"), b"h5").unwrap();
    std::fs::write(dir.0.join("flax_model.msgpack"), b"msgpack").unwrap();
    let error = SentenceScorer::load(&dir.0, &Device::Cpu)
        .err()
        .expect("refused");
    let line = clipsteer::error_line(&error);
    assert!(
        line.contains("tf_model.h5") && line.contains("flax_model.msgpack"),
        "{line}"
    );
    assert!(line.contains("pytorch_model.bin"), "{line}");
}

#[test]
fn clip_from_a_float16_pytorch_bin_equals_the_same_weights_as_safetensors() {
    let image = image::open(fixture("images/crop32.png")).unwrap();
    let load = |tag: &str, weights: &dyn Fn(&Path)| {
        let dir = TempDir::new(tag);
        for file in ["config.json", "preprocessor_config.json", "tokenizer.json"] {
            std::fs::copy(fixture("clip-tiny-gelu").join(file), dir.0.join(file)).unwrap();
        }
        weights(&dir.0);
        let scorer = clipsteer::steer::ClipScorer::load(&dir.0, &Device::Cpu).unwrap();
        (
            scorer.image_embedding(&image).unwrap(),
            scorer.text_embedding("a photo of a cat").unwrap(),
        )
    };
    let from_bin = load("clip-bin", &|dir| {
        std::fs::copy(
            fixture("torch/clip-gelu-f16.bin"),
            dir.join("pytorch_model.bin"),
        )
        .unwrap();
    });
    let from_safetensors = load("clip-st", &|dir| {
        cast_safetensors(
            &fixture("clip-tiny-gelu/model.safetensors"),
            &dir.join("model.safetensors"),
            DType::F16,
        );
    });
    assert_eq!(from_bin, from_safetensors);
    // And near the f32 original: f16 rounding moves embeddings by well under a percent.
    let (f32_image, _) = load("clip-f32", &|dir| {
        std::fs::copy(
            fixture("clip-tiny-gelu/model.safetensors"),
            dir.join("model.safetensors"),
        )
        .unwrap();
    });
    let a = Tensor::new(from_bin.0.as_slice(), &Device::Cpu).unwrap();
    let b = Tensor::new(f32_image.as_slice(), &Device::Cpu).unwrap();
    assert!(rel_err(&a, &b) < 1e-2, "f16 vs f32: {}", rel_err(&a, &b));
}
