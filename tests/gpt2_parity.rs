//! GPT-2 logits against transformers on the tiny random-init fixture.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use clipsteer::models::gpt2::Gpt2;
use common::*;

const TOL: f32 = 1e-4;

fn model() -> Gpt2 {
    Gpt2::load(&fixture("gpt2-tiny"), &Device::Cpu).expect("load gpt2 fixture")
}

fn columns(reference: &std::collections::HashMap<String, Tensor>) -> Tensor {
    reference["columns"].to_dtype(DType::U32).unwrap()
}

fn select(logits: &Tensor, columns: &Tensor) -> Tensor {
    let last = logits.rank() - 1;
    logits.index_select(columns, last).unwrap()
}

#[test]
fn single_sequence_logits_match_transformers() {
    let gpt2 = model();
    let reference = reference("gpt2");
    let ids = reference["single_ids"].to_dtype(DType::U32).unwrap();
    let logits = gpt2.forward(&ids, &mut gpt2.new_cache()).unwrap();
    let err = rel_err(
        &select(&logits, &columns(&reference)),
        &reference["single_logits"],
    );
    assert!(err <= TOL, "rel err {err}");
    let seq_len = ids.dim(1).unwrap();
    let last = logits.i((0, seq_len - 1)).unwrap();
    let err = rel_err(&last, &reference["single_last_full"]);
    assert!(err <= TOL, "full-row rel err {err}");
}

#[test]
fn batched_logits_match_transformers() {
    let gpt2 = model();
    let reference = reference("gpt2");
    let ids = reference["batched_ids"].to_dtype(DType::U32).unwrap();
    let logits = gpt2.forward(&ids, &mut gpt2.new_cache()).unwrap();
    let err = rel_err(
        &select(&logits, &columns(&reference)),
        &reference["batched_logits"],
    );
    assert!(err <= TOL, "rel err {err}");
}

#[test]
fn incremental_decoding_with_cache_matches_full_forward() {
    let gpt2 = model();
    let reference = reference("gpt2");
    let ids = reference["incremental_ids"].to_dtype(DType::U32).unwrap();
    let expected = &reference["incremental_logits"];
    let cols = columns(&reference);
    let mut cache = gpt2.new_cache();
    let prefix = gpt2
        .forward(&ids.narrow(1, 0, 4).unwrap(), &mut cache)
        .unwrap();
    let err = rel_err(&select(&prefix, &cols), &expected.narrow(1, 0, 4).unwrap());
    assert!(err <= TOL, "prefix rel err {err}");
    for position in 4..ids.dim(1).unwrap() {
        let step = gpt2
            .forward(&ids.narrow(1, position, 1).unwrap(), &mut cache)
            .unwrap();
        let err = rel_err(
            &select(&step, &cols),
            &expected.narrow(1, position, 1).unwrap(),
        );
        assert!(err <= TOL, "step {position} rel err {err}");
    }
    assert_eq!(cache.len(), ids.dim(1).unwrap());
}

#[test]
fn forked_cache_continues_each_row_like_a_full_forward() {
    let gpt2 = model();
    let reference = reference("gpt2");
    let prefix = reference["fork_prefix_ids"].to_dtype(DType::U32).unwrap();
    let tails = reference["fork_tail_ids"].to_dtype(DType::U32).unwrap();
    let expected = &reference["fork_logits"];
    let cols = columns(&reference);
    let mut cache = gpt2.new_cache();
    gpt2.forward(&prefix, &mut cache).unwrap();
    let rows = tails.dim(0).unwrap();
    let mut forked = cache.fork(&vec![0; rows]).unwrap();
    for step in 0..tails.dim(1).unwrap() {
        let logits = gpt2
            .forward(&tails.narrow(1, step, 1).unwrap(), &mut forked)
            .unwrap();
        let err = rel_err(
            &select(&logits, &cols),
            &expected.narrow(1, step, 1).unwrap(),
        );
        assert!(err <= TOL, "fork step {step} rel err {err}");
    }
    // Fork again from the many-row cache, reordering rows: row i now continues old row 2 - i.
    let mut reordered = cache.fork(&vec![0; rows]).unwrap();
    gpt2.forward(&tails.narrow(1, 0, 1).unwrap(), &mut reordered)
        .unwrap();
    let mut reordered = reordered.fork(&[2, 1, 0]).unwrap();
    let flipped = tails
        .narrow(1, 1, 1)
        .unwrap()
        .contiguous()
        .unwrap()
        .index_select(&Tensor::new(&[2u32, 1, 0], &Device::Cpu).unwrap(), 0)
        .unwrap();
    let logits = gpt2.forward(&flipped, &mut reordered).unwrap();
    let want = expected
        .narrow(1, 1, 1)
        .unwrap()
        .contiguous()
        .unwrap()
        .index_select(&Tensor::new(&[2u32, 1, 0], &Device::Cpu).unwrap(), 0)
        .unwrap();
    let err = rel_err(&select(&logits, &cols), &want);
    assert!(err <= TOL, "reordered fork rel err {err}");
}

#[test]
fn loads_weights_without_the_transformer_prefix() {
    // The hub's openai-community/gpt2 stores bare names; rewrite the fixture that way.
    let dir = TempDir::new("gpt2-bare");
    let tensors =
        candle_core::safetensors::load(fixture("gpt2-tiny/model.safetensors"), &Device::Cpu)
            .unwrap();
    let bare: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, t)| (name.trim_start_matches("transformer.").to_string(), t))
        .collect();
    candle_core::safetensors::save(&bare, dir.0.join("model.safetensors")).unwrap();
    std::fs::copy(fixture("gpt2-tiny/config.json"), dir.0.join("config.json")).unwrap();
    let gpt2 = Gpt2::load(&dir.0, &Device::Cpu).unwrap();
    let reference = reference("gpt2");
    let ids = reference["single_ids"].to_dtype(DType::U32).unwrap();
    let logits = gpt2.forward(&ids, &mut gpt2.new_cache()).unwrap();
    let err = rel_err(
        &select(&logits, &columns(&reference)),
        &reference["single_logits"],
    );
    assert!(err <= TOL, "rel err {err}");
}

#[test]
fn context_overflow_is_an_error_not_a_panic() {
    let gpt2 = model();
    let n = gpt2.config().n_positions + 1;
    let ids = Tensor::zeros((1, n), DType::U32, &Device::Cpu).unwrap();
    let err = gpt2
        .forward(&ids, &mut gpt2.new_cache())
        .expect_err("overflow must fail");
    assert!(err.to_string().contains("context"), "{err}");
}
