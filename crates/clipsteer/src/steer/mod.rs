//! Steering: a language model proposes candidates, an objective scores each "text so far +
//! candidate", and a search keeps the best.
//!
//! One room per idea:
//! - [`objectives`]: what to steer toward ([`Objective`]; embeddings through [`Scorer`]);
//! - [`search`]: how (the seed loop, MAGIC, beam search, the attack beam), one file each;
//! - [`constraints`]: what may never be written (the blocklist);
//! - [`chat_template`]: chat templates, rendered as transformers renders them;
//! - [`describe`]: the describe API over them (options, events, results);
//! - [`lm`]: language models behind [`CausalLm`].

pub mod chat_template;
pub mod constraints;
pub mod describe;
pub mod lm;
pub mod objectives;
pub mod options;
pub mod search;

// The paths these modules had before objectives got their own room.
pub use objectives::embedding as scorer;
pub use objectives::{sentence, target};

use anyhow::Result;

pub use describe::{describe, describe_with, DescribeOptions, StepEvent, Strategy};
pub use lm::{Gemma3Lm, GgufLm, Gpt2Lm, TransformerLm};
pub use objectives::embedding::{ClipScorer, Embedding, Scorer};
pub use objectives::sentence::SentenceScorer;
pub use objectives::siglip::SiglipScorer;
pub use objectives::{normalize, Objective, ScoreBatch};

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
    /// [`Self::branch`] over several caches at once: row `i` appends `tokens[i]` to the one-row
    /// cache `caches[parents[i]]` (all of one length). Returns, per row, the next-token logits
    /// after its token ([vocab], f32) and its own one-row cache. Models whose caches stack run
    /// every row in one forward (one pass over the weights instead of one per parent); this
    /// default branches each parent on its own.
    fn branch_rows(
        &self,
        caches: &[&Self::Cache],
        parents: &[usize],
        tokens: &[u32],
    ) -> Result<Vec<(Vec<f32>, Self::Cache)>> {
        if parents.len() != tokens.len() {
            anyhow::bail!("{} parents for {} tokens", parents.len(), tokens.len());
        }
        let mut out: Vec<Option<(Vec<f32>, Self::Cache)>> = vec![None; tokens.len()];
        for (parent, cache) in caches.iter().enumerate() {
            let rows: Vec<usize> = (0..parents.len())
                .filter(|&i| parents[i] == parent)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let branch_tokens: Vec<u32> = rows.iter().map(|&i| tokens[i]).collect();
            let branches = self.branch(cache, &branch_tokens)?;
            for (row, &i) in rows.iter().enumerate() {
                out[i] = Some((
                    branches.logits[row].clone(),
                    self.keep_branch(&branches.cache, row)?,
                ));
            }
        }
        out.into_iter()
            .map(|row| row.ok_or_else(|| anyhow::anyhow!("a row names no cache")))
            .collect()
    }
    /// Positions the model can attend over.
    fn context_len(&self) -> usize;
    /// Every token that ends a text, the one a text is closed with first (generation_config.json
    /// may list several, as Llama 3's 128001 and 128009); empty for a model without one.
    fn eos_token_ids(&self) -> Vec<u32> {
        Vec::new()
    }
    /// Whether `token` ends a text.
    fn is_eos(&self, token: u32) -> bool {
        self.eos_token_ids().contains(&token)
    }
    fn vocab_size(&self) -> usize;
    /// A one-row cache holding only the first `len` positions of `cache`.
    fn truncate_cache(&self, cache: &Self::Cache, len: usize) -> Result<Self::Cache>;
    /// Teacher forcing, batched: row `i` continues row `cache_rows[i]` of `cache` with
    /// `contexts[i]` (at least one token) and then `continuations[i]`, all rows in one forward
    /// (right-padded, which causal attention makes harmless). Returns, per row, the natural-log
    /// probability of each continuation token given everything before it, and whether it was the
    /// most probable token there. With `after` (token ids), each row also tells how likely the
    /// token after its whole continuation is to be one of them ([`TeacherForced::after`]), which
    /// costs one more position per row.
    fn continuation_log_probs(
        &self,
        cache: &Self::Cache,
        cache_rows: &[usize],
        contexts: &[Vec<u32>],
        continuations: &[Vec<u32>],
        after: Option<&[u32]>,
    ) -> Result<Vec<TeacherForced>>;
    /// Row `i` of the result continues the one-row `cache` with `ids[i]`; every row has the same
    /// length. One batched forward, and no logits: the cache is what is wanted.
    fn extend_rows(&self, cache: &Self::Cache, ids: &[Vec<u32>]) -> Result<Self::Cache>;
    /// Ids of the tokenizer's special tokens (chat and image markers, end of text): text never
    /// contains them by accident, so a search that writes text a user could type leaves them
    /// out.
    fn special_token_ids(&self) -> Vec<u32>;
}

/// One row of [`CausalLm::continuation_log_probs`]: one entry per continuation token.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherForced {
    /// ln p(token | everything before it), f32.
    pub log_probs: Vec<f32>,
    /// Whether the token was the model's most probable next token there: when every entry is
    /// true, greedy decoding writes the continuation (up to near-ties, which the batched
    /// forward's rounding may break differently from a one-row forward).
    pub is_argmax: Vec<bool>,
    /// The model's most probable token at each continuation position (the first, on ties).
    pub argmax: Vec<u32>,
    /// The position after the whole continuation, when the call named a set of tokens.
    pub after: Option<After>,
}

/// The next token after a teacher-forced continuation ([`TeacherForced::after`]).
#[derive(Debug, Clone, PartialEq)]
pub struct After {
    /// ln Σ p(t | context, continuation) over the tokens t of the set asked about, f32.
    pub log_mass: f32,
    /// The model's most probable token there (the first, on ties), in the set or not.
    pub argmax: u32,
}

/// What [`CausalLm::branch`] returns.
pub struct Branches<C> {
    pub hidden: Vec<Vec<f32>>,
    pub logits: Vec<Vec<f32>>,
    pub cache: C,
}
