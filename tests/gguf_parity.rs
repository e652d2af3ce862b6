//! The GGUF llama loader against transformers on a tiny random-init checkpoint
//! (tests/fixtures/llama-tiny.gguf, written by tools/make_gguf_fixture.py) whose matrices cover
//! every GGML type both sides read, with grouped-query attention and a non-default rope base.

mod common;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
use clipsteer::steer::{CausalLm, GgufLm};
use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

const TOL: f32 = 1e-4;

fn gguf_path() -> std::path::PathBuf {
    fixture("llama-tiny.gguf")
}

fn lm() -> &'static GgufLm {
    static LM: OnceLock<GgufLm> = OnceLock::new();
    LM.get_or_init(|| GgufLm::load(&gguf_path(), &Device::Cpu).expect("load llama-tiny.gguf"))
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference/llama-tiny.json")).unwrap())
        .unwrap()
}

fn columns(reference: &HashMap<String, Tensor>) -> Tensor {
    reference["columns"].to_dtype(DType::U32).unwrap()
}

fn select(logits: &Tensor, columns: &Tensor) -> Tensor {
    logits.index_select(columns, logits.rank() - 1).unwrap()
}

/// Logits [batch, len, vocab] of a full forward from an empty cache.
fn forward(lm: &GgufLm, ids: &Tensor) -> Tensor {
    let mut cache = lm.model.new_cache();
    let hidden = lm.model.hidden_states(ids, &mut cache).unwrap();
    lm.model.logits(&hidden).unwrap()
}

#[test]
fn config_and_tensor_types_are_what_the_script_wrote() {
    let meta = meta();
    let want = &meta["config"];
    let c = lm().model.config();
    let n = |key: &str| want[key].as_u64().unwrap() as usize;
    assert_eq!(c.vocab_size, n("vocab_size"));
    assert_eq!(c.hidden, n("hidden"));
    assert_eq!(c.layers, n("layers"));
    assert_eq!((c.heads, c.kv_heads), (n("heads"), n("kv_heads")));
    assert_eq!(
        c.heads / c.kv_heads,
        2,
        "the fixture is meant to exercise GQA"
    );
    assert_eq!(c.head_dim, n("hidden") / n("heads"));
    assert_eq!(c.context, n("context"));
    assert_eq!(c.rope_base, want["rope_theta"].as_f64().unwrap() as f32);
    assert_ne!(
        c.rope_base, 10_000.0,
        "a default rope base would hide a metadata bug"
    );
    // GGUF stores eps as f32: compare at that precision.
    assert_eq!(c.rms_eps as f32, want["rms_eps"].as_f64().unwrap() as f32);
    assert_eq!(
        c.bos_token_id,
        Some(want["bos_token_id"].as_u64().unwrap() as u32)
    );
    assert_eq!(
        c.eos_token_ids,
        [want["eos_token_id"].as_u64().unwrap() as u32]
    );
    assert_eq!(lm().eos_token_ids(), c.eos_token_ids);
    assert_eq!(lm().context_len(), c.context);

    // The parity tests below only cover the formats the file really holds.
    let mut file = std::fs::File::open(gguf_path()).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let formats = meta["formats"].as_object().unwrap();
    for (name, format) in formats {
        let info = &content.tensor_infos[&format!("{name}.weight")];
        let got = format!("{:?}", info.ggml_dtype).replace('_', "");
        assert_eq!(got, format.as_str().unwrap().replace('_', ""), "{name}");
    }
    let kinds: std::collections::HashSet<GgmlDType> = content
        .tensor_infos
        .values()
        .map(|t| t.ggml_dtype)
        .collect();
    assert_eq!(kinds.len(), 11, "{kinds:?}");
    assert!(!content.tensor_infos.contains_key("output.weight"));
}

#[test]
fn tokenizer_from_metadata_matches_transformers() {
    let lm = lm();
    assert_round_trips(lm, meta()["tokenizer"].as_array().unwrap());
}

#[test]
fn full_forward_logits_match_transformers() {
    let lm = lm();
    let reference = reference("llama-tiny");
    let cols = columns(&reference);
    for i in 0..2 {
        let ids = reference[&format!("seq_{i}_ids")]
            .to_dtype(DType::U32)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = forward(lm, &ids).squeeze(0).unwrap();
        let err = rel_err(
            &select(&logits, &cols),
            &reference[&format!("seq_{i}_logits")],
        );
        assert!(err <= TOL, "seq {i} rel err {err}");
        let last = logits.i(logits.dim(0).unwrap() - 1).unwrap();
        let err = rel_err(&last, &reference[&format!("seq_{i}_last_full")]);
        assert!(err <= TOL, "seq {i} full-row rel err {err}");
    }
}

#[test]
fn batched_logits_match_transformers() {
    let lm = lm();
    let reference = reference("llama-tiny");
    let ids = reference["batched_ids"].to_dtype(DType::U32).unwrap();
    let logits = forward(lm, &ids);
    let err = rel_err(
        &select(&logits, &columns(&reference)),
        &reference["batched_logits"],
    );
    assert!(err <= TOL, "rel err {err}");
}

#[test]
fn incremental_decoding_matches_full_forward_up_to_the_context_limit() {
    let lm = lm();
    let reference = reference("llama-tiny");
    let cols = columns(&reference);
    let ids = ids_of(&reference["seq_1_ids"]);
    let expected = &reference["seq_1_logits"];
    assert_eq!(ids.len(), lm.context_len(), "seq_1 fills the context");
    let row = |logits: &[f32]| {
        let t = Tensor::new(logits, &Device::Cpu).unwrap();
        select(&t, &cols)
    };
    let mut cache = lm.new_cache();
    let prefix = 5;
    let first = lm.next_logits(&ids[..prefix], &mut cache).unwrap();
    let err = rel_err(&row(&first), &expected.i(prefix - 1).unwrap());
    assert!(err <= TOL, "prefix rel err {err}");
    let mut last = first;
    for (position, id) in ids.iter().enumerate().skip(prefix) {
        last = lm.next_logits(&[*id], &mut cache).unwrap();
        let err = rel_err(&row(&last), &expected.i(position).unwrap());
        assert!(err <= TOL, "step {position} rel err {err}");
    }
    assert_eq!(cache.len(), ids.len());
    let last = Tensor::new(last.as_slice(), &Device::Cpu).unwrap();
    let err = rel_err(&last, &reference["seq_1_last_full"]);
    assert!(err <= TOL, "last full-row rel err {err}");
    // One token past the context is an error, not a panic or a rope-table overrun.
    let err = lm
        .next_logits(&[ids[0]], &mut cache)
        .expect_err("context overflow must fail");
    assert!(err.to_string().contains("context"), "{err}");
}

/// The fixture's metadata and tensors, to write modified copies of it.
fn read_fixture() -> (gguf_file::Content, Vec<(String, QTensor)>) {
    let mut file = std::fs::File::open(gguf_path()).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    let tensors = names
        .into_iter()
        .map(|name| {
            let t = content.tensor(&mut file, &name, &Device::Cpu).unwrap();
            (name, t)
        })
        .collect();
    (content, tensors)
}

fn write_gguf(
    path: &Path,
    metadata: &HashMap<String, gguf_file::Value>,
    tensors: &[(String, QTensor)],
) {
    let metadata: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

#[test]
fn an_untied_output_head_is_used_instead_of_the_embeddings() {
    // output.weight = 2 x token_embd (exact in f32): logits must be exactly twice the tied ones,
    // so a loader that ignored output.weight would be off by half.
    let (content, mut tensors) = read_fixture();
    let embd = tensors
        .iter()
        .find(|(name, _)| name == "token_embd.weight")
        .unwrap()
        .1
        .dequantize(&Device::Cpu)
        .unwrap();
    let head = QTensor::quantize(&(embd * 2.0).unwrap(), GgmlDType::F32).unwrap();
    tensors.push(("output.weight".to_string(), head));
    let dir = TempDir::new("gguf-untied");
    let path = dir.0.join("untied.gguf");
    write_gguf(&path, &content.metadata, &tensors);
    let lm = GgufLm::load(&path, &Device::Cpu).unwrap();
    let reference = reference("llama-tiny");
    let ids = reference["seq_0_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = forward(&lm, &ids).squeeze(0).unwrap();
    let want = (&reference["seq_0_logits"] * 2.0).unwrap();
    let err = rel_err(&select(&logits, &columns(&reference)), &want);
    assert!(err <= TOL, "rel err {err}");
}

/// Loading must fail with one line that names the file.
fn load_error(path: &Path) -> String {
    let err = GgufLm::load(path, &Device::Cpu)
        .err()
        .expect("loading must fail");
    let message = format!("{err:#}");
    assert!(!message.contains('\n'), "not one line: {message}");
    assert!(
        message.contains(&path.display().to_string()),
        "no path: {message}"
    );
    message
}

#[test]
fn truncated_files_are_one_line_errors() {
    let bytes = std::fs::read(gguf_path()).unwrap();
    let dir = TempDir::new("gguf-truncated");
    // Cut inside the tokenizer metadata, then inside the tensor data.
    let path = dir.0.join("header.gguf");
    std::fs::write(&path, &bytes[..100_000]).unwrap();
    let message = load_error(&path);
    assert!(message.contains("not a valid GGUF file"), "{message}");
    let path = dir.0.join("data.gguf");
    std::fs::write(&path, &bytes[..bytes.len() - 4096]).unwrap();
    let message = load_error(&path);
    assert!(message.contains("cannot read tensor"), "{message}");
}

#[test]
fn unsupported_architecture_and_bad_head_counts_are_one_line_errors() {
    let (content, _) = read_fixture();
    let dir = TempDir::new("gguf-arch");
    // The loader checks metadata before any tensor, so header-only files suffice.
    let mut metadata = content.metadata.clone();
    metadata.insert(
        "general.architecture".to_string(),
        gguf_file::Value::String("gpt2".to_string()),
    );
    let path = dir.0.join("gpt2.gguf");
    write_gguf(&path, &metadata, &[]);
    let message = load_error(&path);
    assert!(
        message.contains("architecture 'gpt2' is not supported"),
        "{message}"
    );

    let mut metadata = content.metadata.clone();
    metadata.insert(
        "llama.attention.head_count_kv".to_string(),
        gguf_file::Value::U32(3),
    );
    let path = dir.0.join("heads.gguf");
    write_gguf(&path, &metadata, &[]);
    let message = load_error(&path);
    assert!(message.contains("inconsistent head counts"), "{message}");
}
