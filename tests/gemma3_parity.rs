//! The GGUF Gemma 3 loader against transformers' Gemma3ForCausalLM on a tiny random-init checkpoint
//! (tests/fixtures/gemma3-tiny.gguf, written by tools/make_gemma3_fixture.py): sliding-window and
//! global layers with a window of 8 in a context of 64, QK norm, the embedding scale, (1 + w)
//! norms before and after attention and MLP, GELU-tanh, grouped-query attention, a head size that
//! is not hidden / heads, and a SentencePiece vocabulary with no merges in the file.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use clipsteer::steer::{CausalLm, Gemma3Lm};
use common::*;
use std::sync::OnceLock;

const TOL: f32 = 1e-4;

fn lm() -> &'static Gemma3Lm {
    static LM: OnceLock<Gemma3Lm> = OnceLock::new();
    LM.get_or_init(|| {
        Gemma3Lm::load(&fixture("gemma3-tiny.gguf"), &Device::Cpu).expect("load gemma3-tiny.gguf")
    })
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference/gemma3-tiny.json")).unwrap())
        .unwrap()
}

/// Logits [batch, len, vocab] of a full forward from an empty cache (no `<bos>` added).
fn forward(ids: &Tensor) -> Tensor {
    let lm = lm();
    let mut cache = lm.model.new_cache();
    let hidden = lm.model.hidden_states(ids, &mut cache).unwrap();
    lm.model.logits(&hidden).unwrap()
}

fn ids_tensor(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

#[test]
fn config_is_what_the_script_wrote() {
    let meta = meta();
    let want = &meta["config"];
    let c = lm().model.config();
    let n = |key: &str| want[key].as_u64().unwrap() as usize;
    assert_eq!(c.vocab_size, n("vocab_size"));
    assert_eq!((c.hidden, c.layers), (n("hidden"), n("layers")));
    assert_eq!((c.heads, c.kv_heads), (n("heads"), n("kv_heads")));
    assert_eq!(c.head_dim, n("head_dim"));
    assert_ne!(c.head_dim, c.hidden / c.heads, "key_length must win");
    assert_eq!(c.context, n("context"));
    assert_eq!(c.sliding_window(), Some(n("sliding_window")));
    assert_eq!(c.rope_base, want["rope_theta"].as_f64().unwrap() as f32);
    assert_eq!(
        c.rope_local_base,
        Some(want["rope_local_theta"].as_f64().unwrap() as f32)
    );
    assert_eq!(c.rms_eps as f32, want["rms_eps"].as_f64().unwrap() as f32);
    assert_eq!(
        (0..c.layers).map(|i| c.is_sliding(i)).collect::<Vec<_>>(),
        [true, true, true, true, true, false]
    );
    assert_eq!(c.bos_token_id, Some(n("bos_token_id") as u32));
    // The chat template ends the model's turn with <end_of_turn>: that is the text's end, and
    // <eos> beside it, as transformers' generation config lists both.
    assert_eq!(c.eos_token_ids, [7, n("eos_token_id") as u32]);
    assert_eq!(lm().eos_token_ids()[0], 7);
    assert_eq!(lm().decode(&[7]).unwrap(), "<end_of_turn>");
    // One position goes to the <bos> the LM feeds first.
    assert_eq!(lm().context_len(), c.context - 1);
}

#[test]
fn tokenizer_from_metadata_matches_transformers() {
    assert_round_trips(lm(), meta()["tokenizer"].as_array().unwrap());
}

#[test]
fn full_forward_logits_match_transformers() {
    let reference = reference("gemma3-tiny");
    for i in 0..2 {
        let ids = ids_tensor(&reference[&format!("seq_{i}_ids")])
            .unsqueeze(0)
            .unwrap();
        let logits = forward(&ids).squeeze(0).unwrap();
        let err = rel_err(&logits, &reference[&format!("seq_{i}_logits")]);
        assert!(err <= TOL, "seq {i} rel err {err}");
    }
}

#[test]
fn batched_logits_match_transformers() {
    let reference = reference("gemma3-tiny");
    let logits = forward(&ids_tensor(&reference["batched_ids"]));
    let err = rel_err(&logits, &reference["batched_logits"]);
    assert!(err <= TOL, "rel err {err}");
}

/// Token by token through the cache, past the window (8) up to the context (64): the sliding
/// layers must drop keys that fall out of the window exactly as the full forward's mask does.
#[test]
fn incremental_decoding_matches_transformers_past_the_window() {
    let lm = lm();
    let reference = reference("gemma3-tiny");
    let ids = ids_of(&reference["seq_1_ids"]);
    let expected = &reference["seq_1_logits"];
    assert_eq!(ids.len(), lm.model.config().context);
    // ids[0] is <bos>: the LM must not add a second one.
    let mut cache = lm.new_cache();
    let prefix = 5;
    let first = lm.next_logits(&ids[..prefix], &mut cache).unwrap();
    assert_eq!(cache.len(), prefix);
    let row = |logits: Vec<f32>| Tensor::new(logits, &Device::Cpu).unwrap();
    let err = rel_err(&row(first), &expected.i(prefix - 1).unwrap());
    assert!(err <= TOL, "prefix rel err {err}");
    for (position, id) in ids.iter().enumerate().skip(prefix) {
        let logits = lm.next_logits(&[*id], &mut cache).unwrap();
        let err = rel_err(&row(logits), &expected.i(position).unwrap());
        assert!(err <= TOL, "step {position} rel err {err}");
    }
    let err = lm
        .next_logits(&[ids[1]], &mut cache)
        .expect_err("context overflow must fail");
    assert!(err.to_string().contains("context"), "{err}");
}

/// Branching many candidates off one prefix longer than the window (the shared-prefix cache)
/// gives each candidate the logits of the full forward over prefix + candidate, and a kept
/// branch continues like the sequence itself.
#[test]
fn branches_past_the_window_match_transformers() {
    let lm = lm();
    let reference = reference("gemma3-tiny");
    let ids = ids_of(&reference["seq_1_ids"]);
    let expected = &reference["seq_1_logits"];
    let at = 20;
    let mut cache = lm.new_cache();
    lm.next_logits(&ids[..at], &mut cache).unwrap();
    // Candidate 1 is the sequence's own next token; the others are other tokens.
    let candidates = [ids[at + 3], ids[at], ids[at + 7]];
    let branches = lm.branch(&cache, &candidates).unwrap();
    let logits = Tensor::new(branches.logits[1].clone(), &Device::Cpu).unwrap();
    let err = rel_err(&logits, &expected.i(at).unwrap());
    assert!(err <= TOL, "branch rel err {err}");
    for (row, &candidate) in candidates.iter().enumerate() {
        let sequence: Vec<u32> = ids[..at].iter().copied().chain([candidate]).collect();
        let input = Tensor::new(sequence.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let full = forward(&input).squeeze(0).unwrap().i(at).unwrap();
        let got = Tensor::new(branches.logits[row].clone(), &Device::Cpu).unwrap();
        let err = rel_err(&got, &full);
        assert!(err <= TOL, "candidate {row} rel err {err}");
    }
    let mut kept = lm.keep_branch(&branches.cache, 1).unwrap();
    for (position, id) in ids.iter().enumerate().skip(at + 1).take(12) {
        let logits = lm.next_logits(&[*id], &mut kept).unwrap();
        let err = rel_err(
            &Tensor::new(logits, &Device::Cpu).unwrap(),
            &expected.i(position).unwrap(),
        );
        assert!(err <= TOL, "kept branch step {position} rel err {err}");
    }
}

/// Branching rows off several parents past the window in one forward (the attack beam's step)
/// gives each row the logits of the full forward over its parent's sequence and its token, and
/// a kept row continues like that sequence.
#[test]
fn rows_branched_off_several_parents_match_full_forwards() {
    let lm = lm();
    let reference = reference("gemma3-tiny");
    let ids = ids_of(&reference["seq_1_ids"]);
    let at = 20;
    // Two parents of one length that differ after their <bos>.
    let other: Vec<u32> = ids[..1]
        .iter()
        .chain(ids[1..at].iter().rev())
        .copied()
        .collect();
    let parents_ids = [ids[..at].to_vec(), other];
    let caches: Vec<_> = parents_ids
        .iter()
        .map(|p| {
            let mut cache = lm.new_cache();
            lm.next_logits(p, &mut cache).unwrap();
            cache
        })
        .collect();
    let parents = [1, 0, 1, 0];
    let tokens = [ids[at], ids[at], ids[at + 3], ids[at + 7]];
    let rows = lm
        .branch_rows(&caches.iter().collect::<Vec<_>>(), &parents, &tokens)
        .unwrap();
    for (row, (logits, cache)) in rows.into_iter().enumerate() {
        let mut sequence = parents_ids[parents[row]].clone();
        sequence.push(tokens[row]);
        let input = Tensor::new(sequence.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let full = forward(&input).squeeze(0).unwrap().i(at).unwrap();
        let err = rel_err(&Tensor::new(logits, &Device::Cpu).unwrap(), &full);
        assert!(err <= TOL, "row {row} rel err {err}");
        // Eight more tokens, past the window of 8 from the branch point.
        let mut kept = cache;
        for step in 1..=8 {
            let next = ids[at + step];
            sequence.push(next);
            let logits = lm.next_logits(&[next], &mut kept).unwrap();
            let input = Tensor::new(sequence.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let full = forward(&input).squeeze(0).unwrap().i(at + step).unwrap();
            let err = rel_err(&Tensor::new(logits, &Device::Cpu).unwrap(), &full);
            assert!(err <= TOL, "row {row} step {step} rel err {err}");
        }
    }
}

/// The LM feeds `<bos>` before a prompt that lacks it, as transformers' tokenizer adds it, and
/// the prompt still decodes to itself.
#[test]
fn bos_is_fed_first_but_never_shown() {
    let lm = lm();
    let reference = reference("gemma3-tiny");
    let with_bos = ids_of(&reference["seq_0_ids"]);
    assert_eq!(with_bos[0], 2);
    let text = meta()["tokenizer"][0]["text"].as_str().unwrap().to_string();
    let ids = lm.encode(&text).unwrap();
    assert_eq!(ids, with_bos[1..]);
    assert_eq!(lm.decode(&ids).unwrap(), text);
    let mut cache = lm.new_cache();
    let (logits, hidden) = lm.next_logits_and_hidden(&ids, &mut cache).unwrap();
    assert_eq!(cache.len(), ids.len() + 1);
    assert_eq!(hidden.len(), ids.len(), "one hidden state per id given");
    let want = reference["seq_0_logits"].i(with_bos.len() - 1).unwrap();
    let err = rel_err(&Tensor::new(logits, &Device::Cpu).unwrap(), &want);
    assert!(err <= TOL, "rel err {err}");
}

#[test]
fn clipsteer_loads_gemma3_by_its_architecture() {
    // The CLI picks the Gemma 3 model from general.architecture and runs a describe on it.
    let out = run(&[
        "describe",
        "--lm",
        &f("gemma3-tiny.gguf"),
        "--encoder",
        &f("minilm-tiny"),
        "--target-text",
        "a lighthouse on a cliff",
        "--prompt",
        "A picture of",
        "--max-tokens",
        "3",
        "--strategy",
        "magic",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let done = stdout(&out).lines().last().unwrap().to_string();
    let done: serde_json::Value = serde_json::from_str(&done).unwrap();
    assert_eq!(done["event"], "done");
    assert!(done["text"].as_str().unwrap().starts_with("A picture of"));
    assert!(!done["text"].as_str().unwrap().contains("<bos>"));
}
