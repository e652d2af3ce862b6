//! Objectives: what a search steers toward. Candidate texts go in, batched; one score per text
//! comes out, higher is better.
//!
//! - [`embedding`]: cosine similarity of a text's embedding (CLIP or a sentence encoder) with a
//!   target embedding ([`embedding::Embedding`] over any [`embedding::Scorer`]).
//! - [`target`]: how image and text targets combine into that target embedding.
//! - [`victim`]: a victim LM's answer to a prompt: the likelihood of a target response
//!   (BEAST), or the similarity of its greedy answer to a text.
//! - [`command`]: any program, over a JSON-lines protocol (`--scorer-cmd`).

pub mod command;
pub mod embedding;
pub mod sentence;
pub mod siglip;
pub mod target;
pub mod victim;

use anyhow::Result;

pub use embedding::{Embedding, Scorer};

/// Scores candidate texts; higher is better.
///
/// A search scores, each step, many texts that share a beginning (the text so far). `prefix`
/// lets an objective compute that beginning once per step (CLIP's text prefix cache, a victim
/// LM's KV cache) and `score` reuse it for every candidate.
pub trait Objective {
    /// What can be reused between the texts of one step: their shared beginning.
    type Prefix;

    /// Prepares for scoring texts that begin with `text`. `previous`, the prefix of the last
    /// step, lets an implementation reuse the part the two share.
    fn prefix(&self, text: &str, previous: Option<&Self::Prefix>) -> Result<Self::Prefix>;

    /// One score per text, in order (`ScoreBatch::similarities` has `texts.len()` entries).
    /// Every text begins with the text `prefix` was made for.
    fn score(&self, prefix: &Self::Prefix, texts: &[String]) -> Result<ScoreBatch>;

    /// [`Self::score`] of several batches, each with its own prefix (a beam step's hypotheses):
    /// one result per batch, in order. An objective with no prefix to reuse scores them in one
    /// call, which runs its encoder over one large batch instead of several small ones.
    fn score_each(&self, batches: &[(&Self::Prefix, &[String])]) -> Result<Vec<ScoreBatch>> {
        batches
            .iter()
            .map(|(prefix, texts)| self.score(prefix, texts))
            .collect()
    }

    /// The temperature MAGIC multiplies scores by before its softmax over candidates: CLIP's
    /// trained exp(logit_scale) for embeddings; 1 for objectives with no such scale.
    fn softmax_scale(&self) -> f32 {
        1.0
    }

    /// The victim token ids the objective teacher-forces after every prompt, when it does
    /// ([`victim::TargetResponse`]): what its [`ScoreBatch::teacher_forced_argmax`] rows follow.
    fn teacher_forced(&self) -> Option<&[u32]> {
        None
    }
}

/// Scores of one batch and what computing them cost.
#[derive(Debug, Clone, Default)]
pub struct ScoreBatch {
    /// One score per text, higher is better: the cosine similarity for embedding objectives
    /// (the name predates other objectives and is kept for the event fields built from it).
    pub similarities: Vec<f32>,
    /// Encoder positions computed (padding included).
    pub positions_computed: usize,
    /// Distinct token sequences embedded (identical ones are embedded once).
    pub distinct: usize,
    /// Per text, whether the victim's greedy answer is known to begin with the target's tokens
    /// (every target token is the argmax under teacher forcing): objectives that teacher-force
    /// a target response fill it for free; empty for the others.
    pub greedy_target: Vec<bool>,
    /// Per text, the victim's most probable token at each position of the teacher-forced target
    /// ([`Objective::teacher_forced`]), and at the position after it where the objective reads
    /// that one too: the start of the greedy answer for as long as it follows the target, and
    /// then its first token off it. [`victim::Victim::greedy_answer_toward`] takes it to skip
    /// its own forward. Empty for objectives that do not teacher-force a target.
    pub teacher_forced_argmax: Vec<Vec<u32>>,
}

/// Scales a vector to unit length.
pub fn normalize(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt() as f32;
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| x / norm).collect()
}

/// [`Objective::score_each`] for a scorer that embeds every text whole: `score_all` scores the
/// batches' texts together, and the result is split back per batch. The cost fields
/// (`positions_computed`, `distinct`) are the whole call's, reported with the first batch.
/// One image's features as a flat vector, as `get_image_features`: `processor`'s pixels for
/// `device`, through the encoder's `image_features` [1, projection].
pub(crate) fn image_features(
    processor: &crate::image::ClipImageProcessor,
    device: &candle_core::Device,
    image: &image::DynamicImage,
    image_features: impl FnOnce(&candle_core::Tensor) -> Result<candle_core::Tensor>,
) -> Result<Vec<f32>> {
    let pixels = processor.preprocess(image, device)?.unsqueeze(0)?;
    Ok(image_features(&pixels)?.flatten_all()?.to_vec1::<f32>()?)
}

pub(crate) fn score_joined(
    batches: &[&[String]],
    score_all: impl FnOnce(&[String]) -> Result<ScoreBatch>,
) -> Result<Vec<ScoreBatch>> {
    let all: Vec<String> = batches
        .iter()
        .flat_map(|texts| texts.iter().cloned())
        .collect();
    let joined = score_all(&all)?;
    let mut similarities = joined.similarities.into_iter();
    Ok(batches
        .iter()
        .enumerate()
        .map(|(i, texts)| ScoreBatch {
            similarities: similarities.by_ref().take(texts.len()).collect(),
            positions_computed: if i == 0 { joined.positions_computed } else { 0 },
            distinct: if i == 0 { joined.distinct } else { 0 },
            greedy_target: Vec::new(),
            teacher_forced_argmax: Vec::new(),
        })
        .collect())
}
