//! Steering: the LM proposes candidates, a scorer rates each "text so far + candidate" against a
//! target embedding, and a selector picks one.
//!
//! Two traits keep this open to other models: [`CausalLm`] and [`Scorer`].

pub mod constraints;
pub mod describe;
pub mod lm;
pub mod scorer;
pub mod sentence;
pub mod target;

use anyhow::Result;

pub use describe::{describe, DescribeOptions, StepEvent, Strategy};
pub use lm::{Gemma3Lm, GgufLm, Gpt2Lm};
pub use scorer::ClipScorer;
pub use sentence::SentenceScorer;

/// A causal language model with an incremental cache.
pub trait CausalLm {
    type Cache: Clone;

    fn new_cache(&self) -> Self::Cache;
    /// Appends `ids` to the cache and returns the next-token logits after the last of them.
    fn next_logits(&self, ids: &[u32], cache: &mut Self::Cache) -> Result<Vec<f32>>;
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Decodes ids to text exactly as transformers' `tokenizer.decode(ids)` (special tokens kept).
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Like [`CausalLm::next_logits`], also returning the final hidden state of every new position.
    fn next_logits_and_hidden(
        &self,
        ids: &[u32],
        cache: &mut Self::Cache,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)>;
    /// Appends each candidate to its own continuation of `cache` in one batched step. Returns,
    /// per candidate, its final hidden state and the next-token logits after it, and a cache
    /// whose row `i` continues candidate `i`.
    fn branch(&self, cache: &Self::Cache, candidates: &[u32]) -> Result<Branches<Self::Cache>>;
    /// Row `row` of a branched cache, as a one-row cache.
    fn keep_branch(&self, cache: &Self::Cache, row: usize) -> Result<Self::Cache>;
    /// Positions the model can attend over.
    fn context_len(&self) -> usize;
    /// The token that ends a text, if the model has one.
    fn eos_token_id(&self) -> Option<u32> {
        None
    }
    fn vocab_size(&self) -> usize;
}

/// What [`CausalLm::branch`] returns.
pub struct Branches<C> {
    pub hidden: Vec<Vec<f32>>,
    pub logits: Vec<Vec<f32>>,
    pub cache: C,
}

/// Scores texts by cosine similarity of their embedding with a target embedding.
pub trait Scorer {
    /// What can be reused between the texts of one step: their shared beginning.
    type Prefix;

    /// Prepares for scoring texts that begin with `text`. `previous`, the prefix of the last
    /// step, lets an implementation reuse the part the two share.
    fn prefix(&self, text: &str, previous: Option<&Self::Prefix>) -> Result<Self::Prefix>;
    /// The embedding of a text on its own (unnormalised), to build text targets from.
    fn embed_text(&self, text: &str) -> Result<Vec<f32>>;
    /// The temperature of MAGIC's softmax over candidates' similarities: CLIP's trained
    /// exp(logit_scale); a tuned value for encoders trained otherwise.
    fn logit_scale(&self) -> f32 {
        100.0
    }
    /// Cosine similarity of each text with `target` (a unit vector), reusing `prefix`.
    fn similarities(
        &self,
        prefix: &Self::Prefix,
        texts: &[String],
        target: &[f32],
    ) -> Result<ScoreBatch>;
}

/// Similarities of one batch and what computing them cost.
#[derive(Debug, Clone, Default)]
pub struct ScoreBatch {
    pub similarities: Vec<f32>,
    /// Encoder positions computed (padding included).
    pub positions_computed: usize,
    /// Distinct token sequences embedded (identical ones are embedded once).
    pub distinct: usize,
}

/// Scales a vector to unit length.
pub fn normalize(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt() as f32;
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| x / norm).collect()
}
