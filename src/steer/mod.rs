//! Steering: the LM proposes candidates, a scorer rates each "text so far + candidate" against a
//! target embedding, and a selector picks one.
//!
//! Two traits keep this open to other models: [`CausalLm`] and [`Scorer`].

pub mod describe;
pub mod lm;
pub mod scorer;

use anyhow::Result;

pub use describe::{describe, DescribeOptions, StepEvent, Strategy};
pub use lm::Gpt2Lm;
pub use scorer::ClipScorer;

/// A causal language model with an incremental cache.
pub trait CausalLm {
    type Cache: Clone;

    fn new_cache(&self) -> Self::Cache;
    /// Appends `ids` to the cache and returns the next-token logits after the last of them.
    fn next_logits(&self, ids: &[u32], cache: &mut Self::Cache) -> Result<Vec<f32>>;
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Decodes ids to text exactly as transformers' `tokenizer.decode(ids)` (special tokens kept).
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Positions the model can attend over.
    fn context_len(&self) -> usize;
    fn vocab_size(&self) -> usize;
}

/// Scores texts by cosine similarity of their embedding with a target embedding.
pub trait Scorer {
    /// What can be reused between the texts of one step: their shared beginning.
    type Prefix;

    /// Prepares for scoring texts that begin with `text`. `previous`, the prefix of the last
    /// step, lets an implementation reuse the part the two share.
    fn prefix(&self, text: &str, previous: Option<&Self::Prefix>) -> Result<Self::Prefix>;
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
