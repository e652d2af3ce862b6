//! Searches: how a language model's candidates are chosen by an objective. One file each:
//! [`seed`] (the original demo's greedy loop), [`magic`] (MAGIC), [`beam`] (beam search),
//! [`attack`] (the attack beam, after BEAST). This module holds what they share: ranking, the
//! blocklist check, and step events.

pub mod attack;
pub mod beam;
pub mod magic;
pub mod seed;

use super::constraints::Blocklist;
use super::objectives::Objective;
use super::objectives::ScoreBatch;
use super::options::{validate, Candidate, DescribeOptions, DescribeResult, ScoredText, StepEvent};
use super::CausalLm;
use anyhow::{bail, Result};
use rand::Rng;
use std::collections::HashSet;

/// A token's log-probability under next-token `logits`.
pub(crate) fn token_log_prob(logits: &[f32], token: u32) -> f64 {
    logits[token as usize] as f64 - log_sum_exp(logits)
}

/// log Σ exp(logits), in f64 around the largest logit so that nothing overflows.
pub(crate) fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
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

/// The candidates a step may take, in LM rank order, with the text each would produce, the
/// part of it the scorer sees, and its index in the ranked list.
pub(crate) struct Allowed {
    pub(crate) ids: Vec<u32>,
    pub(crate) phrases: Vec<String>,
    pub(crate) scored: Vec<String>,
    pub(crate) ranks: Vec<usize>,
}

/// What the scorer sees of a whole text.
pub(crate) struct ScoredPart {
    mode: ScoredText,
    prompt_ids: usize,
    prompt_text: String,
}

impl ScoredPart {
    pub(crate) fn new<L: CausalLm>(lm: &L, prompt_ids: &[u32], mode: ScoredText) -> Result<Self> {
        Ok(Self {
            mode,
            prompt_ids: prompt_ids.len(),
            prompt_text: lm.decode(prompt_ids)?,
        })
    }

    /// `text` is the decoding of `ids`, prompt included.
    pub(crate) fn of<L: CausalLm>(&self, lm: &L, ids: &[u32], text: &str) -> Result<String> {
        if self.mode == ScoredText::Full {
            return Ok(text.to_string());
        }
        match text.strip_prefix(self.prompt_text.as_str()) {
            Some(rest) => Ok(rest.to_string()),
            // A token that merges with the prompt's last bytes: decode the new part alone.
            None => lm.decode(&ids[self.prompt_ids.min(ids.len())..]),
        }
    }
}

/// The LM's special (added) tokens other than its end of text: markup such as ChatML's
/// `<|im_start|>` or Gemma's `<start_of_image>`, which is not text. No description may contain
/// one: decoded, it would be scored by its literal spelling. GPT-2's only special token is its
/// end of text, so the reference loop's candidates are unchanged.
pub(crate) fn markup_ids<L: CausalLm>(lm: &L) -> HashSet<u32> {
    // Only the end a text is closed with: the seed loop may write it as the original demo
    // writes GPT-2's, and the other searches stop at any end before this set is consulted.
    let eos = lm.eos_token_ids().first().copied();
    (lm.special_token_ids().into_iter())
        .filter(|&id| Some(id) != eos)
        .collect()
}

/// Drops every candidate that is `markup` (see [`markup_ids`]) or whose text the blocklist does
/// not allow (a blocked word, or a control character it refuses). The blocklist sees the whole
/// text, so words completed across token boundaries are caught too.
pub(crate) fn allowed_candidates<L: CausalLm>(
    lm: &L,
    ids: &[u32],
    ranked: &[u32],
    markup: &HashSet<u32>,
    blocklist: &Blocklist,
    scored_part: &ScoredPart,
) -> Result<Allowed> {
    let mut allowed = Allowed {
        ids: Vec::new(),
        phrases: Vec::new(),
        scored: Vec::new(),
        ranks: Vec::new(),
    };
    let mut extended = ids.to_vec();
    extended.push(0);
    for (rank, &candidate) in ranked.iter().enumerate() {
        if markup.contains(&candidate) {
            continue;
        }
        *extended.last_mut().expect("extended is non-empty") = candidate;
        let phrase = lm.decode(&extended)?;
        if blocklist.allows(&phrase) {
            allowed.ids.push(candidate);
            allowed.scored.push(scored_part.of(lm, &extended, &phrase)?);
            allowed.phrases.push(phrase);
            allowed.ranks.push(rank);
        }
    }
    Ok(allowed)
}

/// The one text seed and MAGIC write, a token at a time, with what both keep about it from step
/// to step (beam keeps several hypotheses, each its own). `P` is the objective's prefix.
pub(crate) struct Written<P> {
    prompt_len: usize,
    ids: Vec<u32>,
    scored_part: ScoredPart,
    markup: HashSet<u32>,
    /// The decoded text, prompt included, and the part of it the scorer sees.
    text: String,
    scored_text: String,
    similarity: f32,
    log_prob: f64,
    /// The objective's prefix of the text before the last step, reused by the next.
    prefix: Option<P>,
    pub(crate) stop_reason: Option<String>,
}

impl<P> Written<P> {
    /// The checked prompt ([`validate`]) with nothing written after it.
    pub(crate) fn start<L: CausalLm>(lm: &L, options: &DescribeOptions) -> Result<Self> {
        let ids = validate(lm, options)?;
        let scored_part = ScoredPart::new(lm, &ids, options.scored_text)?;
        let text = lm.decode(&ids)?;
        let scored_text = scored_part.of(lm, &ids, &text)?;
        Ok(Self {
            prompt_len: ids.len(),
            markup: markup_ids(lm),
            scored_part,
            ids,
            text,
            scored_text,
            similarity: f32::NAN,
            log_prob: 0.0,
            prefix: None,
            stop_reason: None,
        })
    }

    /// The ids so far, prompt included.
    pub(crate) fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The candidates of `ranked` the text may take next ([`allowed_candidates`]).
    pub(crate) fn allowed<L: CausalLm>(
        &self,
        lm: &L,
        ranked: &[u32],
        blocklist: &Blocklist,
    ) -> Result<Allowed> {
        allowed_candidates(
            lm,
            &self.ids,
            ranked,
            &self.markup,
            blocklist,
            &self.scored_part,
        )
    }

    /// The objective's scores of `scored`, each the text's scored part with one candidate.
    pub(crate) fn score<O: Objective<Prefix = P>>(
        &mut self,
        objective: &O,
        scored: &[String],
    ) -> Result<ScoreBatch> {
        let prefix = objective.prefix(&self.scored_text, self.prefix.as_ref())?;
        let scores = objective.score(&prefix, scored)?;
        self.prefix = Some(prefix);
        Ok(scores)
    }

    /// Takes `allowed`'s candidate `chosen`, of log-probability `log_prob` under the LM and
    /// similarity `similarity`.
    pub(crate) fn take(
        &mut self,
        allowed: &mut Allowed,
        chosen: usize,
        log_prob: f64,
        similarity: f32,
    ) {
        self.ids.push(allowed.ids[chosen]);
        self.log_prob += log_prob;
        self.text = std::mem::take(&mut allowed.phrases[chosen]);
        self.scored_text = std::mem::take(&mut allowed.scored[chosen]);
        self.similarity = similarity;
    }

    /// The event of step `step`, which took `candidates[chosen]` of those `scores` scored;
    /// `seconds` are the step's (LM, scoring) times.
    pub(crate) fn step_event<L: CausalLm>(
        &self,
        lm: &L,
        step: usize,
        candidates: &[u32],
        chosen: usize,
        scores: &ScoreBatch,
        seconds: (f64, f64),
    ) -> Result<StepEvent> {
        let sims = &scores.similarities;
        let token_id = candidates[chosen];
        Ok(StepEvent {
            step,
            token_id,
            token: lm.decode(&[token_id])?,
            text: self.text.clone(),
            similarity: sims[chosen],
            top: most_similar(lm, candidates, sims)?,
            lm_seconds: seconds.0,
            score_seconds: seconds.1,
            positions_computed: scores.positions_computed,
            scored: candidates
                .iter()
                .copied()
                .zip(sims.iter().copied())
                .collect(),
        })
    }

    pub(crate) fn result(self) -> DescribeResult {
        DescribeResult {
            text: self.text,
            token_ids: self.ids[self.prompt_len..].to_vec(),
            similarity: self.similarity,
            log_prob: self.log_prob,
            stop_reason: self.stop_reason,
        }
    }
}

pub(crate) fn all_blocked(step: usize, ranked: usize) -> String {
    format!(
        "stopped after {step} tokens: every one of the top {ranked} candidates would write a blocked word or a refused control character; raise --top-k or change the prompt"
    )
}

/// Up to five candidates, most similar first (ties to the higher LM rank).
pub(crate) fn most_similar<L: CausalLm>(
    lm: &L,
    candidates: &[u32],
    sims: &[f32],
) -> Result<Vec<Candidate>> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|a, b| sims[*b].total_cmp(&sims[*a]).then(a.cmp(b)));
    order
        .iter()
        .take(5)
        .map(|&i| {
            Ok(Candidate {
                token: lm.decode(&[candidates[i]])?,
                similarity: sims[i],
            })
        })
        .collect()
}

/// Whether a step's token closes a sentence.
pub fn ends_sentence(token_text: &str) -> bool {
    let trimmed = token_text.trim_end();
    trimmed.ends_with(['.', '!', '?']) || token_text.contains('\n') && !trimmed.is_empty()
}

pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Natural-log probabilities of the whole vocabulary.
pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let log_total = log_sum_exp(logits);
    logits.iter().map(|&l| l as f64 - log_total).collect()
}
