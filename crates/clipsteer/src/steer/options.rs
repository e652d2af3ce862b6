//! What a search is asked and what it reports: the options of one description (every default
//! defined here or in [`crate::request`]), its step events and its result. A leaf of `steer`:
//! the searches ([`super::search`]) and their dispatch ([`super::describe`]) import it, and it
//! imports neither.

use super::constraints::{Blocklist, Refusal};
use super::CausalLm;
use anyhow::Result;

#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
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
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoredText {
    /// The prompt and the generated text, as the original demo scores "An image of …".
    Full,
    /// Only what was generated after the prompt: a chat template or an instruction in the prompt
    /// says nothing about the target, and scoring it would dilute every similarity.
    Generated,
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
    /// to the target (see [`TokenPrefilter`](super::search::seed::TokenPrefilter)). None: exact, every candidate scored.
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

/// Checks options against the LM before any work is done: [`check_values`], then what depends
/// on the LM (its vocabulary and context length).
pub fn validate<L: CausalLm>(lm: &L, options: &DescribeOptions) -> Result<Vec<u32>> {
    check_values(options)?;
    let prompt_ids = lm.encode(&options.prompt)?;
    if prompt_ids.is_empty() {
        crate::usage_bail!("the prompt is empty: give the LM some text to continue, e.g. --prompt \"An image of \"");
    }
    if options.top_k > lm.vocab_size() {
        crate::usage_bail!(
            "--top-k must be between 1 and the LM's vocabulary size ({}), got {}",
            lm.vocab_size(),
            options.top_k
        );
    }
    if prompt_ids.len() + options.max_tokens > lm.context_len() {
        crate::usage_bail!(
            "the prompt ({} tokens) plus --max-tokens ({}) exceeds the LM's context of {} tokens; shorten the prompt or lower --max-tokens",
            prompt_ids.len(),
            options.max_tokens,
            lm.context_len()
        );
    }
    if options.strategy == Strategy::Beam
        && prompt_ids.len() + options.max_tokens + options.beam.lookahead > lm.context_len()
    {
        crate::usage_bail!(
            "the prompt ({} tokens) plus --max-tokens ({}) plus --beam-lookahead ({}) exceeds the LM's context of {} tokens; lower --beam-lookahead",
            prompt_ids.len(),
            options.max_tokens,
            options.beam.lookahead,
            lm.context_len()
        );
    }
    Ok(prompt_ids)
}

/// Checks every option that needs no model: numbers in range and finite, a prompt free of
/// blocked words. Run before any model is loaded, so a bad flag costs no loading time.
pub fn check_values(options: &DescribeOptions) -> Result<()> {
    if options.top_k == 0 {
        crate::usage_bail!("--top-k must be between 1 and the LM's vocabulary size, got 0");
    }
    if options.max_tokens == 0 {
        crate::usage_bail!("--max-tokens must be at least 1");
    }
    match options.blocklist.refusal(&options.prompt) {
        Some(Refusal::Word(word)) => {
            crate::usage_bail!(
                "the prompt contains the blocked word '{word}'; change the prompt or the blocklist"
            )
        }
        // The prompt is the start of every text the loops write, so its controls would be too.
        Some(refusal) => {
            crate::usage_bail!("the prompt contains {refusal}; remove it from the prompt")
        }
        None => {}
    }
    if options.prefilter == Some(0) {
        crate::usage_bail!("--prefilter must be at least 1");
    }
    if options.strategy == Strategy::Beam {
        if options.beam.width == 0 {
            crate::usage_bail!("--beam-width must be at least 1");
        }
        if !(options.beam.fluency.is_finite() && options.beam.fluency >= 0.0) {
            crate::usage_bail!(
                "--beam-fluency must be a number ≥ 0, got {}",
                options.beam.fluency
            );
        }
        if !(options.beam.diversity.is_finite() && options.beam.diversity >= 0.0) {
            crate::usage_bail!(
                "--beam-diversity must be a number ≥ 0, got {}",
                options.beam.diversity
            );
        }
    }
    if options.strategy == Strategy::Magic {
        let magic = &options.magic;
        for (flag, value) in [("--magic-alpha", magic.alpha), ("--magic-beta", magic.beta)]
            .into_iter()
            .chain(magic.scale.map(|scale| ("--magic-scale", scale)))
        {
            // A NaN weight makes every candidate's score NaN, and the first would win silently.
            if !value.is_finite() {
                crate::usage_bail!("{flag} must be a finite number, got {value}");
            }
        }
    }
    if let Some(sampling) = options.sampling {
        if !(sampling.temperature.is_finite() && sampling.temperature > 0.0) {
            crate::usage_bail!(
                "--temperature must be a positive number, got {}",
                sampling.temperature
            );
        }
    }
    Ok(())
}

/// Beam search settings.
#[derive(Debug, Clone, Copy)]
pub struct BeamParams {
    /// Hypotheses kept each step.
    pub width: usize,
    /// Weight of the mean per-token log-probability (nats) against the similarity, both while
    /// searching and in the final rerank: score = similarity + fluency × mean log p.
    pub fluency: f32,
    /// Sibling-rank penalty γ (Li, Monroe & Jurafsky 2016, "A Simple, Fast Diverse Decoding
    /// Algorithm"): the r-th best child (r from 0) of a hypothesis competes for the beam at its
    /// score − γ·r, so that one parent's near-identical children do not fill the beam. 0: off.
    pub diversity: f32,
    /// Lookahead: the 2 × width best candidates of a step are ranked by their text and the LM's
    /// greedy completion of it (up to this many tokens, or to the end of a sentence) scored
    /// together, similarity and mean log-probability alike. The text a hypothesis keeps, and the
    /// final rerank, are its own. 0: off.
    pub lookahead: usize,
    /// In the last this many steps before --max-tokens, every live hypothesis may also end with
    /// a period even when "." is not among its LM top-k (at its true log-probability); every
    /// text that ends with a sentence mark in those steps (its LM's or that period) joins the
    /// finished ones even when it did not win a beam slot, and so does each live hypothesis's
    /// greedy completion to a sentence end within --max-tokens: with sentences asked for, the
    /// answer then ends as a sentence instead of being cut mid-clause. A text ended by the
    /// offered period is the answer only when no hypothesis ended on its own (`Ending` in the beam search), and
    /// among such texts that period's log-probability counts in full (`answer_score`). 0: off.
    pub close_within: usize,
}

impl Default for BeamParams {
    fn default() -> Self {
        Self {
            width: 4,
            fluency: 0.1,
            diversity: 0.0,
            lookahead: 0,
            // Chosen on the tuning half of eval/targets.jsonl and confirmed on the held-out half
            // (docs/STEERING.md): it ends the texts that were cut, at no cost in cosine or NLL.
            close_within: 8,
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
