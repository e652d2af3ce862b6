//! The guided-sampling loop of the original demo (`--strategy seed`), reproduced token for token:
//! each step takes the LM's top-k next tokens, scores "text so far + candidate" for every one,
//! and keeps the most similar (ties to the higher LM rank) or samples from softmax(sim / T).

use super::{CausalLm, Scorer};
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// The original demo's loop: greedy (or sampled) by similarity among the LM's top-k.
    Seed,
}

#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub temperature: f64,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct DescribeOptions {
    pub prompt: String,
    pub top_k: usize,
    pub max_tokens: usize,
    pub strategy: Strategy,
    /// None: greedy.
    pub sampling: Option<Sampling>,
    /// Approximate mode: score exactly only the `M` candidates whose own token is most similar
    /// to the target (see [`TokenPrefilter`]). None: exact, every candidate scored.
    pub prefilter: Option<usize>,
}

/// One candidate as shown to the user.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Candidate {
    pub token: String,
    pub similarity: f32,
}

/// What happened in one step.
#[derive(Debug, Clone)]
pub struct StepEvent {
    pub step: usize,
    pub token_id: u32,
    pub token: String,
    /// The whole text so far, prompt included.
    pub text: String,
    pub similarity: f32,
    /// The most similar candidates, best first (up to 5).
    pub top: Vec<Candidate>,
    /// Time spent in the LM and in scoring this step, in seconds.
    pub lm_seconds: f64,
    pub score_seconds: f64,
    pub positions_computed: usize,
    /// Every candidate scored this step, in LM rank order, with its similarity.
    pub scored: Vec<(u32, f32)>,
}

#[derive(Debug, Clone)]
pub struct DescribeResult {
    pub text: String,
    /// Generated ids only.
    pub token_ids: Vec<u32>,
    pub similarity: f32,
}

/// Checks options against the LM before any work is done.
pub fn validate<L: CausalLm>(lm: &L, options: &DescribeOptions) -> Result<Vec<u32>> {
    let prompt_ids = lm.encode(&options.prompt)?;
    if prompt_ids.is_empty() {
        bail!("the prompt is empty: give the LM some text to continue, e.g. --prompt \"An image of \"");
    }
    if options.top_k == 0 || options.top_k > lm.vocab_size() {
        bail!(
            "--top-k must be between 1 and the LM's vocabulary size ({}), got {}",
            lm.vocab_size(),
            options.top_k
        );
    }
    if options.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    if prompt_ids.len() + options.max_tokens > lm.context_len() {
        bail!(
            "the prompt ({} tokens) plus --max-tokens ({}) exceeds the LM's context of {} tokens; shorten the prompt or lower --max-tokens",
            prompt_ids.len(),
            options.max_tokens,
            lm.context_len()
        );
    }
    if options.prefilter == Some(0) {
        bail!("--prefilter must be at least 1");
    }
    if let Some(sampling) = options.sampling {
        if !(sampling.temperature.is_finite() && sampling.temperature > 0.0) {
            bail!(
                "--temperature must be a positive number, got {}",
                sampling.temperature
            );
        }
    }
    Ok(prompt_ids)
}

/// Indices of the `k` largest logits, largest first; equal logits keep the lower index first.
pub fn top_k(logits: &[f32], k: usize) -> Result<Vec<u32>> {
    if logits.iter().any(|x| x.is_nan()) {
        bail!("the LM produced NaN logits");
    }
    let order = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let mut indices: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(indices.len());
    if k < indices.len() {
        indices.select_nth_unstable_by(k - 1, order);
        indices.truncate(k);
    }
    indices.sort_by(order);
    Ok(indices)
}

/// Index of the largest similarity; the first (highest LM rank) wins ties.
pub fn argmax_first(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// Draws an index from softmax(values / temperature).
pub fn sample_softmax(values: &[f32], temperature: f64, rng: &mut impl Rng) -> usize {
    let max = values.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = values
        .iter()
        .map(|v| ((*v as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

/// The approximate ranking behind `--prefilter M`: each candidate token's own text (" cat") is
/// embedded once per target and cached across steps, and only the `M` tokens most similar by
/// that measure are scored in context. It is cheap because tokens recur from step to step; it
/// is approximate because a token's similarity alone is not its similarity in context.
pub struct TokenPrefilter {
    keep: usize,
    token_similarity: std::collections::HashMap<u32, f32>,
}

impl TokenPrefilter {
    pub fn new(keep: usize) -> Self {
        Self {
            keep,
            token_similarity: std::collections::HashMap::new(),
        }
    }

    /// Indices into `candidates` of the ones to score, in LM rank order.
    pub fn select<L: CausalLm, S: Scorer>(
        &mut self,
        lm: &L,
        scorer: &S,
        candidates: &[u32],
        target: &[f32],
    ) -> Result<Vec<usize>> {
        if candidates.len() <= self.keep {
            return Ok((0..candidates.len()).collect());
        }
        let missing: Vec<u32> = candidates
            .iter()
            .copied()
            .filter(|id| !self.token_similarity.contains_key(id))
            .collect();
        if !missing.is_empty() {
            let texts = missing
                .iter()
                .map(|&id| lm.decode(&[id]))
                .collect::<Result<Vec<_>>>()?;
            let empty = scorer.prefix("", None)?;
            let sims = scorer.similarities(&empty, &texts, target)?.similarities;
            self.token_similarity.extend(missing.into_iter().zip(sims));
        }
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| {
            self.token_similarity[&candidates[b]]
                .total_cmp(&self.token_similarity[&candidates[a]])
                .then(a.cmp(&b))
        });
        order.truncate(self.keep);
        order.sort_unstable();
        Ok(order)
    }
}

/// Runs the loop toward `target` (a unit vector), calling `on_step` after every step.
pub fn describe<L: CausalLm, S: Scorer>(
    lm: &L,
    scorer: &S,
    target: &[f32],
    options: &DescribeOptions,
    mut on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<DescribeResult> {
    let Strategy::Seed = options.strategy;
    let prompt_ids = validate(lm, options)?;
    let mut rng = options
        .sampling
        .map(|s| rand_chacha::ChaCha8Rng::seed_from_u64(s.seed));
    let mut cache = lm.new_cache();
    let mut ids = prompt_ids.clone();
    let mut clock = std::time::Instant::now();
    let mut logits = lm.next_logits(&prompt_ids, &mut cache)?;
    let mut lm_seconds = clock.elapsed().as_secs_f64();
    let mut text = lm.decode(&ids)?;
    let mut similarity = f32::NAN;
    let mut prefix: Option<S::Prefix> = None;
    let mut prefilter = options.prefilter.map(TokenPrefilter::new);
    for step in 0..options.max_tokens {
        let mut candidates = top_k(&logits, options.top_k)?;
        clock = std::time::Instant::now();
        if let Some(prefilter) = prefilter.as_mut() {
            let kept = prefilter.select(lm, scorer, &candidates, target)?;
            candidates = kept.into_iter().map(|i| candidates[i]).collect();
        }
        let step_prefix = scorer.prefix(&text, prefix.as_ref())?;
        let mut phrases = Vec::with_capacity(candidates.len());
        let mut extended = ids.clone();
        extended.push(0);
        for &candidate in &candidates {
            *extended.last_mut().expect("extended is non-empty") = candidate;
            phrases.push(lm.decode(&extended)?);
        }
        let scores = scorer.similarities(&step_prefix, &phrases, target)?;
        prefix = Some(step_prefix);
        let score_seconds = clock.elapsed().as_secs_f64();
        let sims = &scores.similarities;
        let chosen = match (&mut rng, options.sampling) {
            (Some(rng), Some(sampling)) => sample_softmax(sims, sampling.temperature, rng),
            _ => argmax_first(sims),
        };
        let token_id = candidates[chosen];
        ids.push(token_id);
        text = std::mem::take(&mut phrases[chosen]);
        similarity = sims[chosen];
        let mut ranked: Vec<usize> = (0..candidates.len()).collect();
        ranked.sort_by(|a, b| sims[*b].total_cmp(&sims[*a]).then(a.cmp(b)));
        let top = ranked
            .iter()
            .take(5)
            .map(|&i| {
                Ok(Candidate {
                    token: lm.decode(&[candidates[i]])?,
                    similarity: sims[i],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        on_step(&StepEvent {
            step,
            token_id,
            token: lm.decode(&[token_id])?,
            text: text.clone(),
            similarity,
            top,
            lm_seconds,
            score_seconds,
            positions_computed: scores.positions_computed,
            scored: candidates
                .iter()
                .copied()
                .zip(sims.iter().copied())
                .collect(),
        })?;
        if step + 1 < options.max_tokens {
            clock = std::time::Instant::now();
            logits = lm.next_logits(&[token_id], &mut cache)?;
            lm_seconds = clock.elapsed().as_secs_f64();
        }
    }
    Ok(DescribeResult {
        text,
        token_ids: ids[prompt_ids.len()..].to_vec(),
        similarity,
    })
}
