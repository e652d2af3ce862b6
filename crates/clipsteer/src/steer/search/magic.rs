//! MAGIC (Su et al. 2022, "Language Models Can See"): each candidate scores
//! (1−α)·p_LM − α·degeneration + β·softmax(score × scale).

use super::{all_blocked, argmax_first, cosine, ends_sentence, log_softmax, top_k, Written};
use crate::steer::objectives::Objective;
use crate::steer::options::{DescribeOptions, DescribeResult, MagicParams, StepEvent};
use crate::steer::CausalLm;
use anyhow::Result;

fn softmax(values: &[f32], scale: f32) -> Vec<f32> {
    let max = values.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = values.iter().map(|v| ((v - max) * scale).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

/// MAGIC's per-candidate score.
pub fn magic_scores(
    probabilities: &[f32],
    degeneration: &[f32],
    similarities: &[f32],
    logit_scale: f32,
    params: MagicParams,
) -> Vec<f32> {
    let visual = softmax(similarities, logit_scale);
    probabilities
        .iter()
        .zip(degeneration)
        .zip(&visual)
        .map(|((p, d), v)| (1.0 - params.alpha) * p - params.alpha * d + params.beta * v)
        .collect()
}

/// The MAGIC loop: each step branches the LM on every allowed candidate in one batched forward
/// (for their hidden states, and so that the chosen branch's cache and logits are reused),
/// scores them against the target, and keeps the best MAGIC score.
pub fn run<L: CausalLm, O: Objective>(
    lm: &L,
    objective: &O,
    options: &DescribeOptions,
    mut on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<DescribeResult> {
    let mut written = Written::start(lm, options)?;
    let mut cache = lm.new_cache();
    let mut clock = std::time::Instant::now();
    let (mut logits, mut history) = lm.next_logits_and_hidden(written.ids(), &mut cache)?;
    let mut lm_seconds = clock.elapsed().as_secs_f64();
    for step in 0..options.max_tokens {
        let ranked = top_k(&logits, options.top_k)?;
        let log_probs = log_softmax(&logits);
        let probabilities: Vec<f32> = ranked
            .iter()
            .map(|&c| log_probs[c as usize].exp() as f32)
            .collect();
        let mut allowed = written.allowed(lm, &ranked, &options.blocklist)?;
        if allowed.ids.is_empty() {
            written.stop_reason = Some(all_blocked(step, ranked.len()));
            break;
        }
        let kept_probabilities: Vec<f32> =
            allowed.ranks.iter().map(|&r| probabilities[r]).collect();
        clock = std::time::Instant::now();
        let branches = lm.branch(&cache, &allowed.ids)?;
        lm_seconds += clock.elapsed().as_secs_f64();
        let degeneration: Vec<f32> = branches
            .hidden
            .iter()
            .map(|h| {
                history
                    .iter()
                    .map(|past| cosine(h, past))
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect();
        clock = std::time::Instant::now();
        let scores = written.score(objective, &allowed.scored)?;
        let score_seconds = clock.elapsed().as_secs_f64();
        let sims = &scores.similarities;
        let scale = options
            .magic
            .scale
            .unwrap_or_else(|| objective.softmax_scale());
        let magic = magic_scores(
            &kept_probabilities,
            &degeneration,
            sims,
            scale,
            options.magic,
        );
        let chosen = argmax_first(&magic);
        let token_id = allowed.ids[chosen];
        if lm.is_eos(token_id) {
            // The model chose to end the text: nothing more to write (--no-sentence-stop goes on
            // past sentence ends, not past the end of the text).
            break;
        }
        written.take(
            &mut allowed,
            chosen,
            log_probs[token_id as usize],
            sims[chosen],
        );
        let timing = (lm_seconds, score_seconds);
        let event = written.step_event(lm, step, &allowed.ids, chosen, &scores, timing)?;
        on_step(&event)?;
        if options.stop_at_sentence_end && ends_sentence(&event.token) {
            break;
        }
        clock = std::time::Instant::now();
        cache = lm.keep_branch(&branches.cache, chosen)?;
        logits = branches.logits[chosen].clone();
        history.push(branches.hidden[chosen].clone());
        lm_seconds = clock.elapsed().as_secs_f64();
    }
    Ok(written.result())
}
