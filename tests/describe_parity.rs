//! The seed loop against the Python reference loop (transformers) on the tiny fixtures: the same
//! tokens, step for step; cached scoring against full recomputation; sampling statistics.

mod common;

use candle_core::Device;
use clipsteer::image::DecodeLimits;
use clipsteer::steer::describe::{
    describe, sample_softmax, top_k, DescribeOptions, Sampling, Strategy,
};
use clipsteer::steer::scorer::image_target;
use clipsteer::steer::{normalize, ClipScorer, Gpt2Lm, Scorer};
use common::*;
use rand::SeedableRng;

fn lm() -> Gpt2Lm {
    Gpt2Lm::load(&fixture("gpt2-tiny"), &Device::Cpu).unwrap()
}

fn scorer(name: &str) -> ClipScorer {
    ClipScorer::load(&fixture(name), &Device::Cpu).unwrap()
}

fn cases() -> Vec<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference/describe.json")).unwrap())
        .unwrap()
}

fn options(case: &serde_json::Value, sampling: Option<Sampling>) -> DescribeOptions {
    DescribeOptions {
        prompt: case["prompt"].as_str().unwrap().into(),
        top_k: case["top_k"].as_u64().unwrap() as usize,
        max_tokens: case["max_tokens"].as_u64().unwrap() as usize,
        strategy: Strategy::Seed,
        sampling,
        prefilter: None,
        blocklist: Default::default(),
        magic: Default::default(),
        stop_at_sentence_end: false,
        beam: Default::default(),
        scored_text: clipsteer::steer::describe::ScoredText::Full,
    }
}

#[test]
fn greedy_loop_reproduces_the_reference_token_for_token() {
    let lm = lm();
    let cases = cases();
    assert!(cases.len() >= 3);
    for case in &cases {
        let scorer = scorer(case["clip"].as_str().unwrap());
        let image = fixture(&format!("images/{}", case["image"].as_str().unwrap()));
        let target = image_target(&scorer, &image, DecodeLimits::default()).unwrap();
        let want_sims: Vec<f64> = case["similarities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let mut step_sims = Vec::new();
        let result = describe(&lm, &scorer, &target, &options(case, None), |event| {
            step_sims.push(event.similarity);
            Ok(())
        })
        .unwrap();
        let want: Vec<u32> = json_ids(&case["generated_ids"]);
        assert_eq!(result.token_ids, want, "case {}", case["image"]);
        assert_eq!(result.text, case["text"].as_str().unwrap());
        for (got, want) in step_sims.iter().zip(&want_sims) {
            assert!(
                (*got as f64 - want).abs() <= 1e-5,
                "similarity {got} vs {want}"
            );
        }
    }
}

/// A scorer that embeds every text in full, for comparison with the prefix-cached path.
struct FullRecompute<'a>(&'a ClipScorer);

impl Scorer for FullRecompute<'_> {
    type Prefix = ();
    fn embed_text(&self, text: &str) -> anyhow::Result<Vec<f32>> {
        self.0.text_embedding(text)
    }
    fn prefix(&self, _: &str, _: Option<&()>) -> anyhow::Result<()> {
        Ok(())
    }
    fn similarities(
        &self,
        _: &(),
        texts: &[String],
        target: &[f32],
    ) -> anyhow::Result<clipsteer::steer::ScoreBatch> {
        let mut sims = Vec::new();
        for text in texts {
            sims.push(
                normalize(&self.0.text_embedding(text)?)
                    .iter()
                    .zip(target)
                    .map(|(a, b)| a * b)
                    .sum(),
            );
        }
        Ok(clipsteer::steer::ScoreBatch {
            similarities: sims,
            ..Default::default()
        })
    }
}

#[test]
fn cached_scoring_equals_full_recomputation_over_whole_decodes() {
    let lm = lm();
    for case in cases() {
        let scorer = scorer(case["clip"].as_str().unwrap());
        let image = fixture(&format!("images/{}", case["image"].as_str().unwrap()));
        let target = image_target(&scorer, &image, DecodeLimits::default()).unwrap();
        let mut opts = options(&case, None);
        opts.top_k = opts.top_k.min(50);
        let mut cached_events = Vec::new();
        let cached = describe(&lm, &scorer, &target, &opts, |e| {
            cached_events.push(e.clone());
            Ok(())
        })
        .unwrap();
        let mut full_events = Vec::new();
        let full = describe(&lm, &FullRecompute(&scorer), &target, &opts, |e| {
            full_events.push(e.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(cached.token_ids, full.token_ids);
        for (a, b) in cached_events.iter().zip(&full_events) {
            assert!((a.similarity - b.similarity).abs() <= 1e-5);
            for (x, y) in a.top.iter().zip(&b.top) {
                assert!(
                    (x.similarity - y.similarity).abs() <= 1e-5,
                    "{} vs {}",
                    x.similarity,
                    y.similarity
                );
            }
        }
    }
}

#[test]
fn sampling_is_reproducible_per_seed() {
    let lm = lm();
    let case = &cases()[0];
    let scorer = scorer(case["clip"].as_str().unwrap());
    let target = target_of(&scorer, "crop32.png");
    let run = |seed| {
        describe(
            &lm,
            &scorer,
            &target,
            &options(
                case,
                Some(Sampling {
                    temperature: 0.05,
                    seed,
                }),
            ),
            |_| Ok(()),
        )
        .unwrap()
        .token_ids
    };
    assert_eq!(run(7), run(7));
    let distinct: std::collections::HashSet<Vec<u32>> = (0..6).map(run).collect();
    assert!(
        distinct.len() > 1,
        "different seeds should give different outputs"
    );
}

#[test]
fn draws_at_one_step_follow_softmax_of_similarity_over_temperature() {
    let lm = lm();
    let scorer = scorer("clip-tiny-quickgelu");
    let target = target_of(&scorer, "crop32.png");
    let temperature = 0.01;
    // The similarities of the first step's candidates, as the loop sees them.
    let prompt = "An image of ";
    use clipsteer::steer::CausalLm;
    let ids = lm.encode(prompt).unwrap();
    let logits = lm.next_logits(&ids, &mut lm.new_cache()).unwrap();
    let candidates = top_k(&logits, 6).unwrap();
    let phrases: Vec<String> = candidates
        .iter()
        .map(|&c| lm.decode(&[ids.clone(), vec![c]].concat()).unwrap())
        .collect();
    let sims = scorer
        .similarities(&scorer.prefix(prompt, None).unwrap(), &phrases, &target)
        .unwrap()
        .similarities;
    let max = sims.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let weights: Vec<f64> = sims
        .iter()
        .map(|s| ((*s as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let expected: Vec<f64> = weights.iter().map(|w| w / total).collect();

    // Many first-step draws through the whole loop, one seed each.
    let draws = 1500;
    let mut counts = vec![0usize; candidates.len()];
    let opts = |seed| DescribeOptions {
        prompt: prompt.into(),
        top_k: candidates.len(),
        max_tokens: 1,
        strategy: Strategy::Seed,
        sampling: Some(Sampling { temperature, seed }),
        prefilter: None,
        blocklist: Default::default(),
        magic: Default::default(),
        stop_at_sentence_end: false,
        beam: Default::default(),
        scored_text: clipsteer::steer::describe::ScoredText::Full,
    };
    for seed in 0..draws {
        let result = describe(&lm, &scorer, &target, &opts(seed), |_| Ok(())).unwrap();
        let index = candidates
            .iter()
            .position(|&c| c == result.token_ids[0])
            .unwrap();
        counts[index] += 1;
    }
    // Pearson's chi-square over cells with enough expected mass; df ≤ 5, 99.9% quantile 20.5.
    let mut chi2 = 0.0;
    for (count, p) in counts.iter().zip(&expected) {
        let e = p * draws as f64;
        if e >= 5.0 {
            chi2 += (*count as f64 - e).powi(2) / e;
        } else {
            assert!(
                (*count as f64) < 5.0 + 4.0 * e.max(1.0),
                "rare cell drawn {count} times, expected {e}"
            );
        }
    }
    assert!(
        chi2 < 20.5,
        "chi2 {chi2}: counts {counts:?} expected {expected:?}"
    );
    assert!(
        expected
            .iter()
            .filter(|p| **p * draws as f64 >= 5.0)
            .count()
            >= 2,
        "test needs spread: {expected:?}"
    );

    // The sampler alone, with many more draws.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut counts = vec![0usize; sims.len()];
    let n = 200_000;
    for _ in 0..n {
        counts[sample_softmax(&sims, temperature, &mut rng)] += 1;
    }
    for (count, p) in counts.iter().zip(&expected) {
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (*count as f64 / n as f64 - p).abs() <= 5.0 * sd + 1e-9,
            "{count} vs {p}"
        );
    }
}

#[test]
fn invalid_options_are_clear_errors() {
    let lm = lm();
    let scorer = scorer("clip-tiny-quickgelu");
    let target = vec![0.0; scorer.model.config().projection_dim];
    let base = DescribeOptions {
        prompt: "An image of ".into(),
        top_k: 5,
        max_tokens: 3,
        strategy: Strategy::Seed,
        sampling: None,
        prefilter: None,
        blocklist: Default::default(),
        magic: Default::default(),
        stop_at_sentence_end: false,
        beam: Default::default(),
        scored_text: clipsteer::steer::describe::ScoredText::Full,
    };
    let err = |o: DescribeOptions| {
        describe(&lm, &scorer, &target, &o, |_| Ok(()))
            .err()
            .unwrap()
            .to_string()
    };
    assert!(err(DescribeOptions {
        top_k: 0,
        ..base.clone()
    })
    .contains("--top-k"));
    assert!(err(DescribeOptions {
        top_k: 60_000,
        ..base.clone()
    })
    .contains("--top-k"));
    assert!(err(DescribeOptions {
        max_tokens: 64,
        ..base.clone()
    })
    .contains("context"));
    assert!(err(DescribeOptions {
        prompt: String::new(),
        ..base.clone()
    })
    .contains("prompt is empty"));
    assert!(err(DescribeOptions {
        sampling: Some(Sampling {
            temperature: 0.0,
            seed: 1
        }),
        ..base.clone()
    })
    .contains("--temperature"));
    let beam = |width, fluency| DescribeOptions {
        strategy: Strategy::Beam,
        beam: clipsteer::steer::describe::BeamParams {
            width,
            fluency,
            ..Default::default()
        },
        ..base.clone()
    };
    assert!(err(beam(0, 0.1)).contains("--beam-width"));
    assert!(err(beam(2, -1.0)).contains("--beam-fluency"));
    assert!(err(beam(2, f32::NAN)).contains("--beam-fluency"));
}

/// Only positions that differ are computed: per step, each distinct CLIP sequence costs its
/// positions after what it shares with the text so far, up to its pooled one (never less than
/// that one), and positions that candidates agree on past the text so far are computed once (a
/// prefix tree). A count, not a time.
#[test]
fn positions_computed_per_step_are_only_the_differing_ones() {
    use clipsteer::steer::CausalLm;
    let lm = lm();
    let case = &cases()[2];
    let scorer = scorer(case["clip"].as_str().unwrap());
    let image = fixture(&format!("images/{}", case["image"].as_str().unwrap()));
    let target = image_target(&scorer, &image, DecodeLimits::default()).unwrap();
    let opts = options(case, None);
    let mut ids = lm.encode(&opts.prompt).unwrap();
    let mut total_full = 0;
    let mut total_cached = 0;
    describe(&lm, &scorer, &target, &opts, |event| {
        let mut prefix = scorer.tokenizer.encode(&lm.decode(&ids)?)?;
        prefix.pop();
        let mut distinct = std::collections::HashSet::new();
        // A position is (where its sequence starts computing, the ids up to and including it).
        let mut positions = std::collections::HashSet::new();
        for (candidate, _) in &event.scored {
            let clip_ids = scorer
                .tokenizer
                .encode(&lm.decode(&[ids.clone(), vec![*candidate]].concat())?)?;
            if distinct.insert(clip_ids.clone()) {
                let common = prefix
                    .iter()
                    .zip(&clip_ids)
                    .take_while(|(a, b)| a == b)
                    .count();
                let pool = scorer.model.pool_position(&clip_ids);
                let start = common.min(pool);
                for j in start..=pool {
                    positions.insert((start, clip_ids[..=j].to_vec()));
                }
                total_full += clip_ids.len();
            }
        }
        assert_eq!(
            event.positions_computed,
            positions.len(),
            "step {}",
            event.step
        );
        total_cached += event.positions_computed;
        ids.push(event.token_id);
        Ok(())
    })
    .unwrap();
    assert!(
        total_cached * 3 < total_full,
        "cached {total_cached} vs full {total_full}"
    );
}

#[test]
fn prefilter_scores_only_m_candidates_and_equals_exact_when_m_is_k() {
    let lm = lm();
    let case = &cases()[0];
    let scorer = scorer(case["clip"].as_str().unwrap());
    let target = target_of(&scorer, "crop32.png");
    let exact = describe(&lm, &scorer, &target, &options(case, None), |_| Ok(())).unwrap();
    let mut all = options(case, None);
    all.prefilter = Some(all.top_k);
    assert_eq!(
        describe(&lm, &scorer, &target, &all, |_| Ok(()))
            .unwrap()
            .token_ids,
        exact.token_ids
    );
    let mut few = options(case, None);
    few.prefilter = Some(4);
    let mut counts = Vec::new();
    describe(&lm, &scorer, &target, &few, |event| {
        counts.push(event.scored.len());
        Ok(())
    })
    .unwrap();
    assert!(counts.iter().all(|&n| n == 4), "{counts:?}");
    few.prefilter = Some(0);
    assert!(describe(&lm, &scorer, &target, &few, |_| Ok(())).is_err());
}
