//! The guided-sampling loop of the original demo (`--strategy seed`), reproduced token for token:
//! each step takes the LM's top-k next tokens, scores "text so far + candidate" for every one,
//! and keeps the most similar (ties to the higher LM rank) or samples from softmax(sim / T).

use super::constraints::Blocklist;
use super::{CausalLm, ScoreBatch, Scorer};
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// The original demo's loop: greedy (or sampled) by similarity among the LM's top-k.
    Seed,
    /// MAGIC (Su et al. 2022): (1−α)·p_LM − α·degeneration + β·softmax(similarity × scale).
    Magic,
    /// Beam search over the LM's top-k, ranked by similarity + fluency × mean log-probability.
    Beam,
}

impl Strategy {
    /// Candidates per step when --top-k is not given: the original demo's 200 for the seed loop,
    /// MAGIC's paper value of 45 for the fluent strategies (they weigh the LM's own ranking in).
    pub fn default_top_k(self) -> usize {
        match self {
            Strategy::Seed => 200,
            Strategy::Magic | Strategy::Beam => 45,
        }
    }

    /// The seed loop scores prompt + text, as the original demo; the fluent strategies score
    /// what they wrote.
    pub fn default_scored_text(self) -> ScoredText {
        match self {
            Strategy::Seed => ScoredText::Full,
            Strategy::Magic | Strategy::Beam => ScoredText::Generated,
        }
    }
}

/// Which text the scorer sees each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScoredText {
    /// The prompt and the generated text, as the original demo scores "An image of …".
    Full,
    /// Only what was generated after the prompt: a chat template or an instruction in the prompt
    /// says nothing about the target, and scoring it would dilute every similarity.
    Generated,
}

/// Beam search settings.
#[derive(Debug, Clone, Copy)]
pub struct BeamParams {
    /// Hypotheses kept each step.
    pub width: usize,
    /// Weight of the mean per-token log-probability (nats) against the similarity, both while
    /// searching and in the final rerank: score = similarity + fluency × mean log p.
    pub fluency: f32,
}

impl Default for BeamParams {
    fn default() -> Self {
        Self {
            width: 4,
            fluency: 0.1,
        }
    }
}

/// MAGIC's weights (the paper's defaults: α = 0.1, β = 2.0 with k = 45).
#[derive(Debug, Clone, Copy)]
pub struct MagicParams {
    /// Weight of the degeneration penalty: the largest cosine between a candidate's hidden
    /// state and those of the text so far.
    pub alpha: f32,
    /// Weight of the target term.
    pub beta: f32,
    /// Temperature of the target softmax; None: the encoder's own (CLIP's exp(logit_scale)).
    pub scale: Option<f32>,
}

impl Default for MagicParams {
    fn default() -> Self {
        Self {
            alpha: 0.1,
            beta: 2.0,
            scale: None,
        }
    }
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
    /// Words no step may write.
    pub blocklist: Blocklist,
    pub magic: MagicParams,
    pub beam: BeamParams,
    /// End at the first token that closes a sentence (., ! or ?).
    pub stop_at_sentence_end: bool,
    pub scored_text: ScoredText,
}

impl DescribeOptions {
    /// `strategy`'s defaults, as the CLI applies them: no blocklist, 25 tokens, greedy, and the
    /// fluent strategies stop at the end of a sentence.
    pub fn for_strategy(prompt: &str, strategy: Strategy) -> Self {
        Self {
            prompt: prompt.to_string(),
            top_k: strategy.default_top_k(),
            max_tokens: 25,
            strategy,
            sampling: None,
            prefilter: None,
            blocklist: Blocklist::default(),
            magic: MagicParams::default(),
            beam: BeamParams::default(),
            stop_at_sentence_end: strategy != Strategy::Seed,
            scored_text: strategy.default_scored_text(),
        }
    }
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
    /// Sum of the generated tokens' log-probabilities under the LM (nats).
    pub log_prob: f64,
    /// Why generation ended before --max-tokens, if it did.
    pub stop_reason: Option<String>,
}

impl DescribeResult {
    /// Mean negative log-likelihood per generated token (nats): how fluent the LM finds the text.
    pub fn mean_nll(&self) -> f64 {
        if self.token_ids.is_empty() {
            return 0.0;
        }
        -self.log_prob / self.token_ids.len() as f64
    }
}

/// A token's log-probability under next-token `logits`.
fn token_log_prob(logits: &[f32], token: u32) -> f64 {
    logits[token as usize] as f64 - log_sum_exp(logits)
}

/// log Σ exp(logits), in f64 around the largest logit so that nothing overflows.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
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
    if let Some(word) = options.blocklist.find_in(&options.prompt) {
        bail!("the prompt contains the blocked word '{word}'; change the prompt or the blocklist");
    }
    if options.prefilter == Some(0) {
        bail!("--prefilter must be at least 1");
    }
    if options.strategy == Strategy::Beam {
        if options.beam.width == 0 {
            bail!("--beam-width must be at least 1");
        }
        if !(options.beam.fluency.is_finite() && options.beam.fluency >= 0.0) {
            bail!(
                "--beam-fluency must be a number ≥ 0, got {}",
                options.beam.fluency
            );
        }
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

/// The candidates a step may take, in LM rank order, with the text each would produce, the
/// part of it the scorer sees, and its index in the ranked list.
struct Allowed {
    ids: Vec<u32>,
    phrases: Vec<String>,
    scored: Vec<String>,
    ranks: Vec<usize>,
}

/// What the scorer sees of a whole text.
struct ScoredPart {
    mode: ScoredText,
    prompt_ids: usize,
    prompt_text: String,
}

impl ScoredPart {
    fn new<L: CausalLm>(lm: &L, prompt_ids: &[u32], mode: ScoredText) -> Result<Self> {
        Ok(Self {
            mode,
            prompt_ids: prompt_ids.len(),
            prompt_text: lm.decode(prompt_ids)?,
        })
    }

    /// `text` is the decoding of `ids`, prompt included.
    fn of<L: CausalLm>(&self, lm: &L, ids: &[u32], text: &str) -> Result<String> {
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

/// Drops every candidate whose text would contain a blocked word. The blocklist sees the whole
/// text, so words completed across token boundaries are caught too.
fn allowed_candidates<L: CausalLm>(
    lm: &L,
    ids: &[u32],
    ranked: &[u32],
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
        *extended.last_mut().expect("extended is non-empty") = candidate;
        let phrase = lm.decode(&extended)?;
        if blocklist.find_in(&phrase).is_none() {
            allowed.ids.push(candidate);
            allowed.scored.push(scored_part.of(lm, &extended, &phrase)?);
            allowed.phrases.push(phrase);
            allowed.ranks.push(rank);
        }
    }
    Ok(allowed)
}

fn all_blocked(step: usize, ranked: usize) -> String {
    format!(
        "stopped after {step} tokens: every one of the top {ranked} candidates would write a blocked word; raise --top-k or change the prompt"
    )
}

/// The event of a greedy step that took `candidates[chosen]`, now at `text`; `seconds` are the
/// step's (LM, scoring) times.
fn chosen_event<L: CausalLm>(
    lm: &L,
    step: usize,
    text: &str,
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
        text: text.to_string(),
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

/// Up to five candidates, most similar first (ties to the higher LM rank).
fn most_similar<L: CausalLm>(lm: &L, candidates: &[u32], sims: &[f32]) -> Result<Vec<Candidate>> {
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

/// Runs the loop toward `target` (a unit vector), calling `on_step` after every step.
pub fn describe<L: CausalLm, S: Scorer>(
    lm: &L,
    scorer: &S,
    target: &[f32],
    options: &DescribeOptions,
    mut on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<DescribeResult> {
    match options.strategy {
        Strategy::Magic => return describe_magic(lm, scorer, target, options, on_step),
        Strategy::Beam => return describe_beam(lm, scorer, target, options, on_step),
        Strategy::Seed => {}
    }
    let prompt_ids = validate(lm, options)?;
    let scored_part = ScoredPart::new(lm, &prompt_ids, options.scored_text)?;
    let mut rng = options
        .sampling
        .map(|s| rand_chacha::ChaCha8Rng::seed_from_u64(s.seed));
    let mut cache = lm.new_cache();
    let mut ids = prompt_ids.clone();
    let mut clock = std::time::Instant::now();
    let mut logits = lm.next_logits(&prompt_ids, &mut cache)?;
    let mut lm_seconds = clock.elapsed().as_secs_f64();
    let mut text = lm.decode(&ids)?;
    let mut scored_text = scored_part.of(lm, &ids, &text)?;
    let mut similarity = f32::NAN;
    let mut log_prob = 0.0;
    let mut prefix: Option<S::Prefix> = None;
    let mut prefilter = options.prefilter.map(TokenPrefilter::new);
    let mut stop_reason = None;
    for step in 0..options.max_tokens {
        let ranked = top_k(&logits, options.top_k)?;
        clock = std::time::Instant::now();
        let Allowed {
            ids: mut candidates,
            mut phrases,
            mut scored,
            ..
        } = allowed_candidates(lm, &ids, &ranked, &options.blocklist, &scored_part)?;
        if candidates.is_empty() {
            stop_reason = Some(all_blocked(step, ranked.len()));
            break;
        }
        if let Some(prefilter) = prefilter.as_mut() {
            let kept = prefilter.select(lm, scorer, &candidates, target)?;
            candidates = kept.iter().map(|&i| candidates[i]).collect();
            phrases = kept
                .iter()
                .map(|&i| std::mem::take(&mut phrases[i]))
                .collect();
            scored = kept
                .iter()
                .map(|&i| std::mem::take(&mut scored[i]))
                .collect();
        }
        let step_prefix = scorer.prefix(&scored_text, prefix.as_ref())?;
        let scores = scorer.similarities(&step_prefix, &scored, target)?;
        prefix = Some(step_prefix);
        let score_seconds = clock.elapsed().as_secs_f64();
        let sims = &scores.similarities;
        let chosen = match (&mut rng, options.sampling) {
            (Some(rng), Some(sampling)) => sample_softmax(sims, sampling.temperature, rng),
            _ => argmax_first(sims),
        };
        let token_id = candidates[chosen];
        ids.push(token_id);
        log_prob += token_log_prob(&logits, token_id);
        text = std::mem::take(&mut phrases[chosen]);
        scored_text = std::mem::take(&mut scored[chosen]);
        similarity = sims[chosen];
        let timing = (lm_seconds, score_seconds);
        on_step(&chosen_event(
            lm,
            step,
            &text,
            &candidates,
            chosen,
            &scores,
            timing,
        )?)?;
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
        log_prob,
        stop_reason,
    })
}

/// Whether a step's token closes a sentence.
pub fn ends_sentence(token_text: &str) -> bool {
    let trimmed = token_text.trim_end();
    trimmed.ends_with(['.', '!', '?']) || token_text.contains('\n') && !trimmed.is_empty()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

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
fn describe_magic<L: CausalLm, S: Scorer>(
    lm: &L,
    scorer: &S,
    target: &[f32],
    options: &DescribeOptions,
    mut on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<DescribeResult> {
    let prompt_ids = validate(lm, options)?;
    let scored_part = ScoredPart::new(lm, &prompt_ids, options.scored_text)?;
    let mut cache = lm.new_cache();
    let mut ids = prompt_ids.clone();
    let mut clock = std::time::Instant::now();
    let (mut logits, mut history) = lm.next_logits_and_hidden(&prompt_ids, &mut cache)?;
    let mut lm_seconds = clock.elapsed().as_secs_f64();
    let mut text = lm.decode(&ids)?;
    let mut scored_text = scored_part.of(lm, &ids, &text)?;
    let mut similarity = f32::NAN;
    let mut log_prob = 0.0;
    let mut prefix: Option<S::Prefix> = None;
    let mut stop_reason = None;
    for step in 0..options.max_tokens {
        let ranked = top_k(&logits, options.top_k)?;
        let log_probs = log_softmax(&logits);
        let probabilities: Vec<f32> = ranked
            .iter()
            .map(|&c| log_probs[c as usize].exp() as f32)
            .collect();
        let Allowed {
            ids: candidates,
            mut phrases,
            mut scored,
            ranks,
        } = allowed_candidates(lm, &ids, &ranked, &options.blocklist, &scored_part)?;
        if candidates.is_empty() {
            stop_reason = Some(all_blocked(step, ranked.len()));
            break;
        }
        let kept_probabilities: Vec<f32> = ranks.iter().map(|&r| probabilities[r]).collect();
        clock = std::time::Instant::now();
        let branches = lm.branch(&cache, &candidates)?;
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
        let step_prefix = scorer.prefix(&scored_text, prefix.as_ref())?;
        let scores = scorer.similarities(&step_prefix, &scored, target)?;
        prefix = Some(step_prefix);
        let score_seconds = clock.elapsed().as_secs_f64();
        let sims = &scores.similarities;
        let scale = options.magic.scale.unwrap_or_else(|| scorer.logit_scale());
        let magic = magic_scores(
            &kept_probabilities,
            &degeneration,
            sims,
            scale,
            options.magic,
        );
        let chosen = argmax_first(&magic);
        let token_id = candidates[chosen];
        if options.stop_at_sentence_end && lm.eos_token_id() == Some(token_id) {
            // The model chose to end the text: nothing more to write.
            break;
        }
        ids.push(token_id);
        log_prob += log_probs[token_id as usize];
        text = std::mem::take(&mut phrases[chosen]);
        scored_text = std::mem::take(&mut scored[chosen]);
        similarity = sims[chosen];
        let timing = (lm_seconds, score_seconds);
        let event = chosen_event(lm, step, &text, &candidates, chosen, &scores, timing)?;
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
    Ok(DescribeResult {
        text,
        token_ids: ids[prompt_ids.len()..].to_vec(),
        similarity,
        log_prob,
        stop_reason,
    })
}

/// Natural-log probabilities of the whole vocabulary.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let log_total = log_sum_exp(logits);
    logits.iter().map(|&l| l as f64 - log_total).collect()
}

/// One hypothesis of the beam.
struct Hypothesis<C> {
    /// Prompt included.
    ids: Vec<u32>,
    text: String,
    scored_text: String,
    /// Sum of the generated tokens' log-probabilities.
    log_prob: f64,
    similarity: f32,
    /// The LM state after `ids`, and its next-token logits; None once finished.
    state: Option<(C, Vec<f32>)>,
}

/// What the beam ranks by, and the final rerank too: similarity plus `fluency` × the mean
/// per-token log-probability of the generated tokens.
pub fn beam_score(similarity: f32, log_prob: f64, generated: usize, fluency: f32) -> f32 {
    similarity + fluency * (log_prob / generated.max(1) as f64) as f32
}

/// One way to extend a live hypothesis.
struct Expansion {
    parent: usize,
    token: u32,
    /// The LM chose to end the text: the parent finishes as it is.
    ends_text: bool,
    phrase: String,
    scored_text: String,
    log_prob: f64,
    similarity: f32,
    score: f32,
}

/// Beam search: every live hypothesis proposes its LM top-k (blocked ones dropped), each
/// extension is scored against the target, and the `width` best by [`beam_score`] go on.
/// Hypotheses finish at the end of a sentence or at the LM's end-of-text token; the result is
/// the best finished one (or the best live one at --max-tokens) by the same score. The streamed
/// text is the current best hypothesis, so unlike the greedy loops it can change more than its
/// last token from one step to the next.
fn describe_beam<L: CausalLm, S: Scorer>(
    lm: &L,
    scorer: &S,
    target: &[f32],
    options: &DescribeOptions,
    mut on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<DescribeResult> {
    let prompt_ids = validate(lm, options)?;
    let scored_part = ScoredPart::new(lm, &prompt_ids, options.scored_text)?;
    let params = options.beam;
    let generated = |h: &Hypothesis<L::Cache>| h.ids.len() - prompt_ids.len();
    let score_of = |h: &Hypothesis<L::Cache>| {
        beam_score(h.similarity, h.log_prob, generated(h), params.fluency)
    };
    let mut clock = std::time::Instant::now();
    let mut cache = lm.new_cache();
    let logits = lm.next_logits(&prompt_ids, &mut cache)?;
    let text = lm.decode(&prompt_ids)?;
    let mut live = vec![Hypothesis {
        scored_text: scored_part.of(lm, &prompt_ids, &text)?,
        ids: prompt_ids.clone(),
        text,
        log_prob: 0.0,
        similarity: f32::NAN,
        state: Some((cache, logits)),
    }];
    let mut lm_seconds = clock.elapsed().as_secs_f64();
    let mut finished: Vec<Hypothesis<L::Cache>> = Vec::new();
    let mut stop_reason = None;
    for step in 0..options.max_tokens {
        clock = std::time::Instant::now();
        let mut expansions = Vec::new();
        let mut positions_computed = 0;
        let mut ranked_total = 0;
        for (parent, hypothesis) in live.iter().enumerate() {
            let Some((_, logits)) = &hypothesis.state else {
                continue;
            };
            let ranked = top_k(logits, options.top_k)?;
            ranked_total += ranked.len();
            let log_probs = log_softmax(logits);
            let eos = lm.eos_token_id();
            // Ending adds no text, so it needs no scoring; an empty text cannot end.
            let ends_text = eos.filter(|e| step > 0 && ranked.contains(e));
            let ranked: Vec<u32> = ranked.into_iter().filter(|&c| Some(c) != eos).collect();
            let allowed = allowed_candidates(
                lm,
                &hypothesis.ids,
                &ranked,
                &options.blocklist,
                &scored_part,
            )?;
            let step_prefix = scorer.prefix(&hypothesis.scored_text, None)?;
            let scores = scorer.similarities(&step_prefix, &allowed.scored, target)?;
            positions_computed += scores.positions_computed;
            let length = generated(hypothesis) + 1;
            for (i, (phrase, scored_text)) in
                allowed.phrases.into_iter().zip(allowed.scored).enumerate()
            {
                let token = allowed.ids[i];
                let log_prob = hypothesis.log_prob + log_probs[token as usize];
                let similarity = scores.similarities[i];
                expansions.push(Expansion {
                    parent,
                    token,
                    ends_text: false,
                    phrase,
                    scored_text,
                    log_prob,
                    similarity,
                    score: beam_score(similarity, log_prob, length, params.fluency),
                });
            }
            if let Some(eos) = ends_text {
                expansions.push(Expansion {
                    parent,
                    token: eos,
                    ends_text: true,
                    phrase: hypothesis.text.clone(),
                    scored_text: hypothesis.scored_text.clone(),
                    log_prob: hypothesis.log_prob,
                    similarity: hypothesis.similarity,
                    score: score_of(hypothesis),
                });
            }
        }
        let score_seconds = clock.elapsed().as_secs_f64();
        if expansions.is_empty() {
            stop_reason = Some(all_blocked(step, ranked_total));
            break;
        }
        // Best first; ties keep the earlier parent and the higher LM rank (a stable sort).
        let mut order: Vec<usize> = (0..expansions.len()).collect();
        order.sort_by(|&a, &b| expansions[b].score.total_cmp(&expansions[a].score));
        let top = {
            let mut by_similarity: Vec<&Expansion> =
                expansions.iter().filter(|e| !e.ends_text).collect();
            by_similarity.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
            // Hypotheses often propose the same token: show each once, at its best.
            let mut top: Vec<Candidate> = Vec::with_capacity(5);
            for expansion in by_similarity {
                let token = lm.decode(&[expansion.token])?;
                if !top.iter().any(|c| c.token == token) {
                    top.push(Candidate {
                        token,
                        similarity: expansion.similarity,
                    });
                }
                if top.len() == 5 {
                    break;
                }
            }
            top
        };
        let scored: Vec<(u32, f32)> = expansions
            .iter()
            .filter(|e| !e.ends_text)
            .map(|e| (e.token, e.similarity))
            .collect();

        // The next beam, grouped by parent so that each parent's children share one LM forward.
        let mut kept: Vec<usize> = Vec::new();
        let mut newly_finished = 0;
        for &i in &order {
            if kept.len() == params.width {
                break;
            }
            let expansion = &expansions[i];
            let token_text = lm.decode(&[expansion.token])?;
            let sentence_done = options.stop_at_sentence_end && ends_sentence(&token_text);
            if expansion.ends_text || sentence_done || step + 1 == options.max_tokens {
                let parent = &live[expansion.parent];
                let mut ids = parent.ids.clone();
                if !expansion.ends_text {
                    ids.push(expansion.token);
                }
                finished.push(Hypothesis {
                    ids,
                    text: expansion.phrase.clone(),
                    scored_text: expansion.scored_text.clone(),
                    log_prob: expansion.log_prob,
                    similarity: expansion.similarity,
                    state: None,
                });
                newly_finished += 1;
                if newly_finished == params.width {
                    break;
                }
            } else {
                kept.push(i);
            }
        }
        clock = std::time::Instant::now();
        let mut next_live = Vec::with_capacity(kept.len());
        let mut parents: Vec<usize> = kept.iter().map(|&i| expansions[i].parent).collect();
        parents.sort_unstable();
        parents.dedup();
        for parent in parents {
            let children: Vec<usize> = kept
                .iter()
                .copied()
                .filter(|&i| expansions[i].parent == parent)
                .collect();
            let tokens: Vec<u32> = children.iter().map(|&i| expansions[i].token).collect();
            let Some((parent_cache, _)) = &live[parent].state else {
                continue;
            };
            let branches = lm.branch(parent_cache, &tokens)?;
            for (row, &i) in children.iter().enumerate() {
                let expansion = &mut expansions[i];
                let mut ids = live[parent].ids.clone();
                ids.push(expansion.token);
                next_live.push(Hypothesis {
                    ids,
                    text: std::mem::take(&mut expansion.phrase),
                    scored_text: std::mem::take(&mut expansion.scored_text),
                    log_prob: expansion.log_prob,
                    similarity: expansion.similarity,
                    state: Some((
                        lm.keep_branch(&branches.cache, row)?,
                        branches.logits[row].clone(),
                    )),
                });
            }
        }
        lm_seconds += clock.elapsed().as_secs_f64();
        live = next_live;

        let leader = live
            .iter()
            .chain(finished.iter())
            .max_by(|a, b| score_of(a).total_cmp(&score_of(b)));
        if let Some(leader) = leader {
            let token_id = *leader.ids.last().expect("the prompt is non-empty");
            on_step(&StepEvent {
                step,
                token_id,
                token: lm.decode(&[token_id])?,
                text: leader.text.clone(),
                similarity: leader.similarity,
                top,
                lm_seconds,
                score_seconds,
                positions_computed,
                scored,
            })?;
        }
        lm_seconds = 0.0;
        // Stop once enough hypotheses have finished and none still live scores better.
        let best_finished = finished
            .iter()
            .map(score_of)
            .fold(f32::NEG_INFINITY, f32::max);
        let best_live = live.iter().map(score_of).fold(f32::NEG_INFINITY, f32::max);
        if live.is_empty() || finished.len() >= params.width && best_finished >= best_live {
            break;
        }
    }
    let best = finished
        .into_iter()
        .chain(live)
        .filter(|h| h.ids.len() > prompt_ids.len())
        .max_by(|a, b| score_of(a).total_cmp(&score_of(b)));
    Ok(match best {
        Some(best) => DescribeResult {
            token_ids: best.ids[prompt_ids.len()..].to_vec(),
            text: best.text,
            similarity: best.similarity,
            log_prob: best.log_prob,
            stop_reason,
        },
        None => DescribeResult {
            text: lm.decode(&prompt_ids)?,
            token_ids: Vec::new(),
            similarity: f32::NAN,
            log_prob: 0.0,
            stop_reason,
        },
    })
}
