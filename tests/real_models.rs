//! The real small models fetched by scripts/fetch-small-models.sh (which .ci/run calls first).

mod common;
#[path = "common/steering_cases.rs"]
mod steering_cases;

use candle_core::Device;
use clipsteer::steer::{Scorer, SentenceScorer};
use common::*;
use steering_cases::{CHAT_PROMPT, STEERING_CASES};

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
        let want_ids: Vec<u32> = json_ids(&case["ids"]);
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
    assert_round_trips(&lm, &cases);
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

fn gemma3_path() -> std::path::PathBuf {
    let path = root().join(".cache/models/gemma3/gemma-3-270m-q4_k_m.gguf");
    assert!(
        path.is_file(),
        "run scripts/fetch-small-models.sh first (no model at {})",
        path.display()
    );
    path
}

/// The real gemma-3-270m (Q4_K_M: Q8_0 embeddings, Q4_K/Q5_0/Q6_K/Q8_0 matrices) against
/// transformers on the same file: its 262 144-token SentencePiece vocabulary with merges recovered
/// from the vocabulary, and logits on a column subset through the full forward and the cache.
#[test]
fn gemma3_270m_gguf_matches_transformers() {
    use clipsteer::steer::{CausalLm, Gemma3Lm};
    let lm = Gemma3Lm::load(&gemma3_path(), &Device::Cpu).unwrap();
    let c = lm.model.config();
    assert_eq!(
        (c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim),
        (640, 18, 4, 1, 256)
    );
    assert_eq!(
        (c.sliding_window(), c.rope_base, c.rope_local_base),
        (Some(512), 1e6, Some(1e4))
    );
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/gemma3-270m-tokenizer.json")).unwrap(),
    )
    .unwrap();
    assert_round_trips(&lm, &cases);
    let reference = reference("gemma3-270m");
    let columns = reference["columns"]
        .to_dtype(candle_core::DType::U32)
        .unwrap();
    for i in 0..2 {
        // The reference ids begin with <bos>, as transformers' tokenizer writes them.
        let ids: Vec<u32> = ids_of(&reference[&format!("seq_{i}_ids")]);
        let input = candle_core::Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut cache = lm.model.new_cache();
        let hidden = lm.model.hidden_states(&input, &mut cache).unwrap();
        let logits = lm.model.logits(&hidden).unwrap().squeeze(0).unwrap();
        let want = &reference[&format!("seq_{i}_logits")];
        let err = rel_err(&logits.index_select(&columns, 1).unwrap(), want);
        assert!(err <= 1e-4, "sequence {i}: rel err {err}");
        // Through the LM as describe drives it: text without <bos> (fed by the LM), then one
        // token at a time.
        let mut cache = lm.new_cache();
        lm.next_logits(&ids[1..ids.len() - 1], &mut cache).unwrap();
        let last = lm.next_logits(&ids[ids.len() - 1..], &mut cache).unwrap();
        let last = candle_core::Tensor::new(last, &Device::Cpu)
            .unwrap()
            .index_select(&columns, 0)
            .unwrap();
        let err = rel_err(&last, &want.get(ids.len() - 1).unwrap());
        assert!(err <= 1e-4, "sequence {i} incremental: rel err {err}");
    }
}

/// Whether `text` holds `word` as a whole word, case-insensitively: written apart from the
/// Blocklist it checks.
fn has_whole_word(text: &str, word: &str) -> bool {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w == word.to_lowercase())
}

/// Mean per-token NLL of `generated` after `prompt`, one token at a time through the cache.
fn mean_nll(lm: &clipsteer::steer::GgufLm, prompt: &[u32], generated: &[u32]) -> f64 {
    use clipsteer::steer::CausalLm;
    let mut cache = lm.new_cache();
    let mut logits = lm.next_logits(prompt, &mut cache).unwrap();
    let mut total = 0.0;
    for &token in generated {
        let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let log_z = max
            + logits
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        total += log_z - logits[token as usize] as f64;
        logits = lm.next_logits(&[token], &mut cache).unwrap();
    }
    total / generated.len() as f64
}

/// Steers SmolLM2 with MiniLM toward each case's target through the CLI contract scripts use
/// (`describe --target-text T --lm FILE.gguf --encoder DIR --prompt P --block a,b --strategy S
/// --json`), checks that no streamed or final text holds a blocked word and that what the `done`
/// event reports holds when recomputed, and returns the mean cosine to the targets and the mean
/// NLL per generated token.
fn steer_through_cli(strategy: &str, cases: &[(&str, &str)]) -> (f64, f64) {
    use clipsteer::steer::{CausalLm, GgufLm};
    let gguf = smollm2_path();
    let minilm = minilm_dir();
    let lm = GgufLm::load(&gguf, &Device::Cpu).unwrap();
    let scorer = SentenceScorer::load(&minilm, &Device::Cpu).unwrap();
    let prompt_ids = lm.encode(CHAT_PROMPT).unwrap();
    let (mut cosines, mut nlls) = (Vec::new(), Vec::new());
    for &(target, block) in cases {
        let output = bin()
            .args(["describe", "--target-text", target, "--lm"])
            .arg(&gguf)
            .arg("--encoder")
            .arg(&minilm)
            .args(["--prompt", CHAT_PROMPT, "--block", block])
            .args(["--strategy", strategy, "--max-tokens", "32", "--json"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{target}: {stderr}");
        let events: Vec<serde_json::Value> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let done = events.last().unwrap();
        assert_eq!(done["event"], "done", "{target}: {done}");
        let text = done["text"].as_str().unwrap();
        let generated = text
            .strip_prefix(CHAT_PROMPT)
            .expect("text includes the prompt");
        for event in &events {
            let shown = event["text"].as_str().unwrap();
            for word in block.split(',') {
                assert!(!has_whole_word(shown, word), "{word:?} in {shown:?}");
            }
        }
        let ids: Vec<u32> = json_ids(&done["token_ids"]);
        assert!(ids.len() >= 4, "{target}: too short: {generated:?}");
        assert_eq!(lm.decode(&[&prompt_ids[..], &ids].concat()).unwrap(), text);

        let target_embedding = scorer.embed_text(target).unwrap();
        let embedding = scorer.embed_text(generated).unwrap();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let cosine = dot(&embedding, &target_embedding)
            / (dot(&embedding, &embedding) * dot(&target_embedding, &target_embedding)).sqrt();
        // Only the generated text is scored, so the reported similarity is this cosine.
        let reported = done["similarity"].as_f64().unwrap() as f32;
        assert!((reported - cosine).abs() < 1e-4, "{reported} vs {cosine}");
        let nll = mean_nll(&lm, &prompt_ids, &ids);
        let reported = done["nll"].as_f64().unwrap();
        assert!((reported - nll).abs() < 1e-3, "nll {reported} vs {nll}");
        eprintln!("cos {cosine:.3} nll {nll:.2} {generated:?}");
        cosines.push(cosine as f64);
        nlls.push(nll);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (cosine, nll) = (mean(&cosines), mean(&nlls));
    eprintln!("{strategy}: mean cos {cosine:.3}, mean nll {nll:.2}");
    (cosine, nll)
}

/// Issue 5's bar: MAGIC steers SmolLM2 toward five targets with two of each target's own words
/// blocked, and the text is both on target (mean cosine ≥ 0.5) and fluent (mean NLL ≤ 4 nats
/// per token). docs/STEERING.md has the figures (0.574, 3.60).
#[test]
fn magic_steers_smollm2_toward_text_targets_fluently_without_blocked_words() {
    let (cosine, nll) = steer_through_cli("magic", &STEERING_CASES);
    assert!(
        cosine >= 0.5,
        "mean cosine to the targets {cosine:.3} < 0.5"
    );
    assert!(nll <= 4.0, "mean NLL {nll:.2} > 4.0 nats per token");
}

/// Beam search is the default of evade because it beats MAGIC on both counts; held here on two
/// of the cases (0.800 / 3.16 and 0.691 / 2.52 in docs/STEERING.md), which keeps CI short.
#[test]
fn beam_steers_smollm2_further_on_target_and_as_fluently() {
    let cases = [STEERING_CASES[0], STEERING_CASES[4]];
    let (cosine, nll) = steer_through_cli("beam", &cases);
    assert!(
        cosine >= 0.7,
        "mean cosine to the targets {cosine:.3} < 0.7"
    );
    assert!(nll <= 3.5, "mean NLL {nll:.2} > 3.5 nats per token");
}

/// The config-driven decoder's HF-layout path on real weights: each GGUF written in the HF layout
/// as transformers saves it after loading it with `gguf_file=`
/// (`clipsteer::models::gguf::save_hf_layout`, dequantised f32 safetensors under HF names),
/// loaded through its config.json, gives transformers' logits on the GGUF references and the
/// GGUF path's greedy tokens; beam and the attack run on it through the CLI.
#[test]
fn real_models_in_the_hf_layout_match_transformers_and_run_beam_and_attack() {
    use clipsteer::steer::describe::top_k;
    use clipsteer::steer::{CausalLm, TransformerLm};
    let tmp = TempDir::new("hf-layout");
    for (gguf, name) in [(smollm2_path(), "smollm2"), (gemma3_path(), "gemma3-270m")] {
        let dir = tmp.0.join(name);
        clipsteer::models::gguf::save_hf_layout(&gguf, &dir).unwrap();
        let hf = TransformerLm::load(&dir, &Device::Cpu).unwrap();
        let from_gguf = TransformerLm::load(&gguf, &Device::Cpu).unwrap();
        assert_eq!(
            hf.model.config().eos_token_ids,
            from_gguf.model.config().eos_token_ids
        );
        let reference = reference(name);
        let columns = reference["columns"]
            .to_dtype(candle_core::DType::U32)
            .unwrap();
        for i in 0..2 {
            let ids: Vec<u32> = ids_of(&reference[&format!("seq_{i}_ids")]);
            let input = candle_core::Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let mut cache = hf.model.new_cache();
            let hidden = hf.model.hidden_states(&input, &mut cache).unwrap();
            let logits = hf.model.logits(&hidden).unwrap().squeeze(0).unwrap();
            let err = rel_err(
                &logits.index_select(&columns, 1).unwrap(),
                &reference[&format!("seq_{i}_logits")],
            );
            assert!(err <= 1e-4, "{name} sequence {i}: rel err {err}");
        }
        // Greedy from a text, through the LM as describe drives it (Gemma's <bos> fed by it).
        let prompt = hf.encode("The capital of France is").unwrap();
        assert_eq!(
            prompt,
            from_gguf.encode("The capital of France is").unwrap()
        );
        let greedy = |lm: &TransformerLm| {
            let mut cache = lm.new_cache();
            let mut logits = lm.next_logits(&prompt, &mut cache).unwrap();
            let mut out = Vec::new();
            for _ in 0..8 {
                let best = top_k(&logits, 1).unwrap()[0];
                out.push(best);
                logits = lm.next_logits(&[best], &mut cache).unwrap();
            }
            out
        };
        assert_eq!(greedy(&hf), greedy(&from_gguf), "{name}");
    }
    let smollm2 = tmp.0.join("smollm2");
    let lm = smollm2.to_str().unwrap();
    let minilm = minilm_dir();
    let output = run(&[
        "describe",
        "--lm",
        lm,
        "--encoder",
        minilm.to_str().unwrap(),
        "--target-text",
        "A small dog plays with a red ball.",
        "--block",
        "dog",
        "--strategy",
        "beam",
        "--max-tokens",
        "8",
        "--json",
    ]);
    let done: serde_json::Value =
        serde_json::from_str(stdout(&output).lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(done["event"], "done", "{}", stderr(&output));
    // No --prompt: SmolLM2's chat template, asking the default instruction; the text is the
    // answer alone, the rendered template beside it.
    let prompt = done["prompt"].as_str().unwrap_or_default();
    assert!(
        prompt.contains("<|im_start|>user\nWrite one sentence describing a scene.<|im_end|>"),
        "{done}"
    );
    let text = done["text"].as_str().unwrap_or_default();
    assert!(!text.is_empty() && !text.contains("<|im_"), "{done}");
    let output = run(&[
        "attack",
        "--lm",
        lm,
        "--instruction",
        "What is the capital of France?",
        "--target-response",
        "The capital of France is Berlin",
        "--beam-width",
        "2",
        "--candidates",
        "4",
        "--max-tokens",
        "2",
        "--proposal",
        "top-k",
        "--json",
    ]);
    let done: serde_json::Value =
        serde_json::from_str(stdout(&output).lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(done["event"], "done", "{}", stderr(&output));
    // The same victim as the GGUF's: the attack test's baseline NLL.
    assert!(
        (done["baseline_nll"].as_f64().unwrap() - 1.918).abs() < 2e-3,
        "{done}"
    );
}
