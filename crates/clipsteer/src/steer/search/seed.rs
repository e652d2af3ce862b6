//! The guided-sampling loop of the original demo (`--strategy seed`), reproduced token for token:
//! each step takes the LM's top-k next tokens, scores "text so far + candidate" for every one,
//! and keeps the best (ties to the higher LM rank) or samples from softmax(score / T).

use super::{all_blocked, argmax_first, sample_softmax, token_log_prob, top_k, Written};
use crate::steer::objectives::Objective;
use crate::steer::options::{DescribeOptions, DescribeResult, StepEvent};
use crate::steer::CausalLm;
use anyhow::Result;
use rand::SeedableRng;

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
    pub fn select<L: CausalLm, O: Objective>(
        &mut self,
        lm: &L,
        objective: &O,
        candidates: &[u32],
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
            let empty = objective.prefix("", None)?;
            let sims = objective.score(&empty, &texts)?.similarities;
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

/// Runs the seed loop toward `objective`, calling `on_step` after every step.
pub fn run<L: CausalLm, O: Objective>(
    lm: &L,
    objective: &O,
    options: &DescribeOptions,
    mut on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<DescribeResult> {
    let mut written = Written::start(lm, options)?;
    let mut rng = options
        .sampling
        .map(|s| rand_chacha::ChaCha8Rng::seed_from_u64(s.seed));
    let mut cache = lm.new_cache();
    let mut clock = std::time::Instant::now();
    let mut logits = lm.next_logits(written.ids(), &mut cache)?;
    let mut lm_seconds = clock.elapsed().as_secs_f64();
    let mut prefilter = options.prefilter.map(TokenPrefilter::new);
    for step in 0..options.max_tokens {
        let ranked = top_k(&logits, options.top_k)?;
        clock = std::time::Instant::now();
        let mut allowed = written.allowed(lm, &ranked, &options.blocklist)?;
        if allowed.ids.is_empty() {
            written.stop_reason = Some(all_blocked(step, ranked.len()));
            break;
        }
        if let Some(prefilter) = prefilter.as_mut() {
            let kept = prefilter.select(lm, objective, &allowed.ids)?;
            allowed.ids = kept.iter().map(|&i| allowed.ids[i]).collect();
            allowed.phrases = kept
                .iter()
                .map(|&i| std::mem::take(&mut allowed.phrases[i]))
                .collect();
            allowed.scored = kept
                .iter()
                .map(|&i| std::mem::take(&mut allowed.scored[i]))
                .collect();
        }
        let scores = written.score(objective, &allowed.scored)?;
        let score_seconds = clock.elapsed().as_secs_f64();
        let sims = &scores.similarities;
        let chosen = match (&mut rng, options.sampling) {
            (Some(rng), Some(sampling)) => sample_softmax(sims, sampling.temperature, rng),
            _ => argmax_first(sims),
        };
        let token_id = allowed.ids[chosen];
        written.take(
            &mut allowed,
            chosen,
            token_log_prob(&logits, token_id),
            sims[chosen],
        );
        let timing = (lm_seconds, score_seconds);
        on_step(&written.step_event(lm, step, &allowed.ids, chosen, &scores, timing)?)?;
        if step + 1 < options.max_tokens {
            clock = std::time::Instant::now();
            logits = lm.next_logits(&[token_id], &mut cache)?;
            lm_seconds = clock.elapsed().as_secs_f64();
        }
    }
    Ok(written.result())
}
