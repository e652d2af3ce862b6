//! GPT-2 with its tokenizer behind [`CausalLm`].

use super::{After, Branches, CausalLm, TeacherForced};
use crate::models::attention::KvCache;
use crate::models::cpu_kernels::{self, LogSoftmaxPicks};
use crate::models::gpt2::Gpt2;
use crate::tokenize::{encode_plain, load_from_dir, TokenizerKind};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::path::Path;
use tokenizers::Tokenizer;

pub struct Gpt2Lm {
    pub model: Gpt2,
    pub tokenizer: Tokenizer,
}

impl Gpt2Lm {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = Gpt2::load(dir, device)?;
        let tokenizer = load_from_dir(dir, TokenizerKind::Gpt2)?;
        Ok(Self { model, tokenizer })
    }
}

/// A llama-family LM from a GGUF file behind [`CausalLm`].
pub struct GgufLm {
    pub model: crate::models::llama_gguf::LlamaGguf,
    pub tokenizer: Tokenizer,
}

impl GgufLm {
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (model, tokenizer) = crate::models::llama_gguf::LlamaGguf::load(path, device)?;
        Ok(Self { model, tokenizer })
    }
}

/// A Gemma 3 LM from a GGUF file behind [`CausalLm`].
///
/// Gemma expects `<bos>` first (`tokenizer.ggml.add_bos_token`), as transformers' tokenizer and
/// llama.cpp add it: the first call on an empty cache feeds it before the ids unless they begin
/// with it already (a chat template that writes `<bos>` itself). Texts never show it, so the
/// prompt decodes to itself; the cache holds one position more than the ids given.
pub struct Gemma3Lm {
    pub model: crate::models::gemma3_gguf::Gemma3Gguf,
    pub tokenizer: Tokenizer,
}

impl Gemma3Lm {
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (model, tokenizer) = crate::models::gemma3_gguf::Gemma3Gguf::load(path, device)?;
        Ok(Self { model, tokenizer })
    }

    /// The `<bos>` to feed before `ids` on an empty cache, if any.
    fn bos_before(&self, ids: &[u32], cache: &KvCache) -> Option<u32> {
        let c = self.model.config();
        c.bos_token_id
            .filter(|&bos| c.add_bos && cache.is_empty() && ids.first() != Some(&bos))
    }

    fn next_logits_and_hidden_inner(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        want_hidden: bool,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        if ids.is_empty() {
            anyhow::bail!("no tokens to run the LM on");
        }
        let bos = self.bos_before(ids, cache);
        let input: Vec<u32> = bos.iter().chain(ids).copied().collect();
        let input_tensor = Tensor::new(input.as_slice(), self.model.device())?.unsqueeze(0)?;
        let hidden = self.model.hidden_states(&input_tensor, cache)?;
        let last = hidden.narrow(1, input.len() - 1, 1)?;
        let logits = self.model.logits(&last)?.flatten_all()?.to_vec1::<f32>()?;
        let hidden = if want_hidden {
            let mut rows = hidden.squeeze(0)?.to_vec2::<f32>()?;
            if bos.is_some() {
                rows.remove(0);
            }
            rows
        } else {
            Vec::new()
        };
        Ok((logits, hidden))
    }
}

impl CausalLm for Gemma3Lm {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        self.model.new_cache()
    }

    fn next_logits(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        Ok(self.next_logits_and_hidden_inner(ids, cache, false)?.0)
    }

    fn next_logits_and_hidden(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        self.next_logits_and_hidden_inner(ids, cache, true)
    }

    fn branch(&self, cache: &KvCache, candidates: &[u32]) -> Result<Branches<KvCache>> {
        if cache.is_empty() {
            anyhow::bail!("branch needs a cache that holds the prompt");
        }
        let mut branched = cache.fork(&vec![0; candidates.len()])?;
        let input = Tensor::new(candidates, self.model.device())?.unsqueeze(1)?;
        let hidden = self.model.hidden_states(&input, &mut branched)?;
        let logits = self.model.logits(&hidden)?.squeeze(1)?.to_vec2::<f32>()?;
        Ok(Branches {
            hidden: hidden.squeeze(1)?.to_vec2::<f32>()?,
            logits,
            cache: branched,
        })
    }

    fn keep_branch(&self, cache: &KvCache, row: usize) -> Result<KvCache> {
        Ok(cache.fork(&[row])?)
    }

    fn branch_rows(
        &self,
        caches: &[&KvCache],
        parents: &[usize],
        tokens: &[u32],
    ) -> Result<Vec<(Vec<f32>, KvCache)>> {
        if caches.iter().any(|cache| cache.is_empty()) {
            anyhow::bail!("branch needs a cache that holds the prompt");
        }
        branch_rows(
            |input, cache| self.model.hidden_states(input, cache),
            |hidden| self.model.logits(hidden),
            self.model.device(),
            (caches, parents),
            tokens,
        )
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode_plain(&self.tokenizer, text)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot decode tokens")
    }

    /// The model's context less the `<bos>` position.
    fn context_len(&self) -> usize {
        let c = self.model.config();
        c.context - usize::from(c.add_bos && c.bos_token_id.is_some())
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    /// `<end_of_turn>` where the vocabulary has it: the chat template ends the model's turn with
    /// it (transformers' generation config lists it beside `<eos>`); else `<eos>`.
    fn eos_token_id(&self) -> Option<u32> {
        let c = self.model.config();
        c.end_of_turn_id.or(c.eos_token_id)
    }

    fn truncate_cache(&self, cache: &KvCache, len: usize) -> Result<KvCache> {
        truncate_one_row(cache, len)
    }

    /// Right padding is harmless here as in the llama path: the sliding-window layers mask
    /// causally too, so no real position attends to a pad.
    fn continuation_log_probs(
        &self,
        cache: &KvCache,
        cache_rows: &[usize],
        contexts: &[Vec<u32>],
        continuations: &[Vec<u32>],
        after: Option<&[u32]>,
    ) -> Result<Vec<TeacherForced>> {
        continuation_log_probs(
            |input, cache| self.model.hidden_states(input, cache),
            |hidden| self.model.logits(hidden),
            self.model.device(),
            (cache, cache_rows),
            (contexts, continuations),
            after,
        )
    }

    fn extend_rows(&self, cache: &KvCache, ids: &[Vec<u32>]) -> Result<KvCache> {
        extend_rows(
            |input, cache| self.model.hidden_states(input, cache),
            self.model.device(),
            cache,
            ids,
        )
    }

    fn special_token_ids(&self) -> Vec<u32> {
        added_token_ids(&self.tokenizer)
    }
}

/// One implementation of [`CausalLm`] for models that expose `hidden_states` and `logits`.
macro_rules! causal_lm_impl {
    ($ty:ty, $context:expr, $vocab:expr) => {
        impl CausalLm for $ty {
            type Cache = KvCache;

            fn new_cache(&self) -> KvCache {
                self.model.new_cache()
            }

            fn next_logits(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
                Ok(self.next_logits_and_hidden_inner(ids, cache, false)?.0)
            }

            fn next_logits_and_hidden(
                &self,
                ids: &[u32],
                cache: &mut KvCache,
            ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
                self.next_logits_and_hidden_inner(ids, cache, true)
            }

            fn branch(&self, cache: &KvCache, candidates: &[u32]) -> Result<Branches<KvCache>> {
                let mut branched = cache.fork(&vec![0; candidates.len()])?;
                let input = Tensor::new(candidates, self.model.device())?.unsqueeze(1)?;
                let hidden = self.model.hidden_states(&input, &mut branched)?;
                let logits = self.model.logits(&hidden)?.squeeze(1)?.to_vec2::<f32>()?;
                Ok(Branches {
                    hidden: hidden.squeeze(1)?.to_vec2::<f32>()?,
                    logits,
                    cache: branched,
                })
            }

            fn keep_branch(&self, cache: &KvCache, row: usize) -> Result<KvCache> {
                Ok(cache.fork(&[row])?)
            }

            fn branch_rows(
                &self,
                caches: &[&KvCache],
                parents: &[usize],
                tokens: &[u32],
            ) -> Result<Vec<(Vec<f32>, KvCache)>> {
                branch_rows(
                    |input, cache| self.model.hidden_states(input, cache),
                    |hidden| self.model.logits(hidden),
                    self.model.device(),
                    (caches, parents),
                    tokens,
                )
            }

            fn encode(&self, text: &str) -> Result<Vec<u32>> {
                encode_plain(&self.tokenizer, text)
            }

            fn decode(&self, ids: &[u32]) -> Result<String> {
                self.tokenizer
                    .decode(ids, false)
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .context("cannot decode tokens")
            }

            fn context_len(&self) -> usize {
                let f: fn(&$ty) -> usize = $context;
                f(self)
            }

            fn vocab_size(&self) -> usize {
                let f: fn(&$ty) -> usize = $vocab;
                f(self)
            }

            fn eos_token_id(&self) -> Option<u32> {
                self.model.config().eos_token_id
            }

            fn truncate_cache(&self, cache: &KvCache, len: usize) -> Result<KvCache> {
                truncate_one_row(cache, len)
            }

            fn continuation_log_probs(
                &self,
                cache: &KvCache,
                cache_rows: &[usize],
                contexts: &[Vec<u32>],
                continuations: &[Vec<u32>],
                after: Option<&[u32]>,
            ) -> Result<Vec<TeacherForced>> {
                continuation_log_probs(
                    |input, cache| self.model.hidden_states(input, cache),
                    |hidden| self.model.logits(hidden),
                    self.model.device(),
                    (cache, cache_rows),
                    (contexts, continuations),
                    after,
                )
            }

            fn extend_rows(&self, cache: &KvCache, ids: &[Vec<u32>]) -> Result<KvCache> {
                extend_rows(
                    |input, cache| self.model.hidden_states(input, cache),
                    self.model.device(),
                    cache,
                    ids,
                )
            }

            fn special_token_ids(&self) -> Vec<u32> {
                added_token_ids(&self.tokenizer)
            }
        }

        impl $ty {
            fn next_logits_and_hidden_inner(
                &self,
                ids: &[u32],
                cache: &mut KvCache,
                want_hidden: bool,
            ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
                let input = Tensor::new(ids, self.model.device())?.unsqueeze(0)?;
                let hidden = self.model.hidden_states(&input, cache)?;
                let last = hidden.narrow(1, ids.len() - 1, 1)?;
                let logits = self.model.logits(&last)?.flatten_all()?.to_vec1::<f32>()?;
                let hidden = if want_hidden {
                    hidden.squeeze(0)?.to_vec2::<f32>()?
                } else {
                    Vec::new()
                };
                Ok((logits, hidden))
            }
        }
    };
}

/// [`CausalLm::truncate_cache`] for the GGUF models' [`KvCache`].
fn truncate_one_row(cache: &KvCache, len: usize) -> Result<KvCache> {
    if cache.batch_size() > 1 {
        anyhow::bail!(
            "truncate_cache needs a one-row cache, got {} rows",
            cache.batch_size()
        );
    }
    Ok(cache.truncate(len)?)
}

/// [`CausalLm::special_token_ids`]: the tokenizer's special added tokens, sorted. Added tokens
/// that are not special are text (Gemma's runs of newlines and spaces, its HTML tags).
fn added_token_ids(tokenizer: &tokenizers::Tokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = (tokenizer.get_added_tokens_decoder().into_iter())
        .filter(|(_, token)| token.special)
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    ids
}

/// [`CausalLm::continuation_log_probs`] for any model with `hidden_states` [batch, new, hidden]
/// over a [`KvCache`] and `logits` over hidden states.
fn continuation_log_probs(
    hidden_states: impl Fn(&Tensor, &mut KvCache) -> Result<Tensor>,
    logits: impl Fn(&Tensor) -> Result<Tensor>,
    device: &Device,
    (cache, cache_rows): (&KvCache, &[usize]),
    (contexts, continuations): (&[Vec<u32>], &[Vec<u32>]),
    after: Option<&[u32]>,
) -> Result<Vec<TeacherForced>> {
    if contexts.len() != continuations.len() || contexts.len() != cache_rows.len() {
        anyhow::bail!(
            "{} contexts for {} continuations and {} cache rows",
            contexts.len(),
            continuations.len(),
            cache_rows.len()
        );
    }
    if contexts.is_empty() {
        return Ok(Vec::new());
    }
    if contexts.iter().any(|c| c.is_empty()) {
        anyhow::bail!("every row needs at least one context token before its continuation");
    }
    if after.is_some_and(|set| set.is_empty()) {
        anyhow::bail!("the set of tokens after the continuation is empty");
    }
    let rows = contexts.len();
    // The last continuation token is only predicted, never fed, unless the position after it is
    // asked about too.
    let fed_of = |continuation: &[u32]| match after {
        Some(_) => continuation.len(),
        None => continuation.len().saturating_sub(1),
    };
    let fed: Vec<Vec<u32>> = contexts
        .iter()
        .zip(continuations)
        .map(|(context, continuation)| {
            let mut row = context.clone();
            row.extend(&continuation[..fed_of(continuation)]);
            row
        })
        .collect();
    let width = fed.iter().map(Vec::len).max().unwrap_or(1);
    let mut flat = Vec::with_capacity(rows * width);
    for row in &fed {
        flat.extend(row);
        // Right padding: causal attention keeps it from changing any real position.
        flat.extend(std::iter::repeat_n(0, width - row.len()));
    }
    // Per row, its continuation's positions and then, with `after`, the one after them (whose
    // target is a placeholder: only its argmax and the set's mass are read).
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let extra = usize::from(after.is_some());
    for (i, (context, continuation)) in contexts.iter().zip(continuations).enumerate() {
        for j in 0..continuation.len() + extra {
            positions.push((i * width + context.len() - 1 + j) as u32);
            targets.push(continuation.get(j).copied().unwrap_or(0));
        }
    }
    let mut branched = cache.fork(cache_rows)?;
    let input = Tensor::from_vec(flat, (rows, width), device)?;
    let hidden = hidden_states(&input, &mut branched)?;
    let hidden_size = hidden.dim(2)?;
    let picked = hidden
        .reshape((rows * width, hidden_size))?
        .index_select(&Tensor::new(positions.as_slice(), device)?, 0)?;
    let spans: Vec<std::ops::Range<usize>> = continuations
        .iter()
        .scan(0, |at, continuation| {
            let span = *at..*at + continuation.len();
            *at = span.end + extra;
            Some(span)
        })
        .collect();
    let last: Vec<u32> = match after {
        Some(_) => spans.iter().map(|span| span.end as u32).collect(),
        None => Vec::new(),
    };
    let LogSoftmaxPicks {
        picked: chosen,
        argmax,
        set_mass: masses,
    } = log_softmax_picks(&logits(&picked)?, &targets, after, &last)?;
    Ok(spans
        .into_iter()
        .enumerate()
        .map(|(i, span)| TeacherForced {
            log_probs: chosen[span.clone()].to_vec(),
            is_argmax: argmax[span.clone()]
                .iter()
                .zip(&targets[span.clone()])
                .map(|(a, t)| a == t)
                .collect(),
            argmax: argmax[span.clone()].to_vec(),
            after: masses.get(i).map(|&log_mass| After {
                log_mass,
                argmax: argmax[span.end],
            }),
        })
        .collect())
}

/// [`cpu_kernels::log_softmax_picks`] on any device: the fused kernel on the CPU, candle's ops
/// (which it reproduces bit for bit there) elsewhere.
pub(crate) fn log_softmax_picks(
    logits: &Tensor,
    targets: &[u32],
    set: Option<&[u32]>,
    mass_rows: &[u32],
) -> Result<LogSoftmaxPicks> {
    if cpu_kernels::applies(logits) {
        return Ok(cpu_kernels::log_softmax_picks(
            logits, targets, set, mass_rows,
        )?);
    }
    let device = logits.device();
    let log_probs = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    let picked = log_probs
        .gather(&Tensor::new(targets, device)?.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .to_vec1::<f32>()?;
    let argmax = log_probs.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
    let set_mass = match set {
        Some(set) if !mass_rows.is_empty() => log_probs
            .index_select(&Tensor::new(mass_rows, device)?, 0)?
            .index_select(&Tensor::new(set, device)?, 1)?
            .log_sum_exp(1)?
            .to_vec1::<f32>()?,
        _ => Vec::new(),
    };
    Ok(LogSoftmaxPicks {
        picked,
        argmax,
        set_mass,
    })
}

/// [`CausalLm::branch_rows`] for any model with `hidden_states` over a [`KvCache`]: one
/// forward over the stacked parents.
fn branch_rows(
    hidden_states: impl Fn(&Tensor, &mut KvCache) -> Result<Tensor>,
    logits: impl Fn(&Tensor) -> Result<Tensor>,
    device: &Device,
    (caches, parents): (&[&KvCache], &[usize]),
    tokens: &[u32],
) -> Result<Vec<(Vec<f32>, KvCache)>> {
    if parents.len() != tokens.len() {
        anyhow::bail!("{} parents for {} tokens", parents.len(), tokens.len());
    }
    if tokens.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows = KvCache::stack(caches, parents)?;
    let input = Tensor::new(tokens, device)?.unsqueeze(1)?;
    let hidden = hidden_states(&input, &mut rows)?;
    let logits = logits(&hidden)?.squeeze(1)?.to_vec2::<f32>()?;
    logits
        .into_iter()
        .enumerate()
        .map(|(row, logits)| Ok((logits, rows.fork(&[row])?)))
        .collect()
}

/// [`CausalLm::extend_rows`] for any model with `hidden_states` over a [`KvCache`].
fn extend_rows(
    hidden_states: impl Fn(&Tensor, &mut KvCache) -> Result<Tensor>,
    device: &Device,
    cache: &KvCache,
    ids: &[Vec<u32>],
) -> Result<KvCache> {
    let width = ids.first().map(Vec::len).unwrap_or(0);
    if width == 0 || ids.iter().any(|row| row.len() != width) {
        anyhow::bail!("extend_rows needs rows of one non-zero length");
    }
    if cache.batch_size() > 1 {
        anyhow::bail!(
            "extend_rows needs a one-row cache, got {} rows",
            cache.batch_size()
        );
    }
    let mut rows = cache.fork(&vec![0; ids.len()])?;
    let input = Tensor::from_vec(ids.concat(), (ids.len(), width), device)?;
    hidden_states(&input, &mut rows)?;
    Ok(rows)
}

causal_lm_impl!(GgufLm, |lm| lm.model.config().context, |lm| lm
    .model
    .config()
    .vocab_size);

causal_lm_impl!(Gpt2Lm, |lm| lm.model.config().n_positions, |lm| lm
    .model
    .config()
    .vocab_size);

/// The LM behind `--lm`: a GPT-2 directory (or hub id), or a llama-family or Gemma 3 `.gguf`
/// file.
pub enum LanguageModel {
    Gpt2(Box<Gpt2Lm>),
    Gguf(Box<GgufLm>),
    Gemma3(Box<Gemma3Lm>),
}

impl LanguageModel {
    fn inner(&self) -> &dyn CausalLm<Cache = KvCache> {
        match self {
            Self::Gpt2(lm) => lm.as_ref(),
            Self::Gguf(lm) => lm.as_ref(),
            Self::Gemma3(lm) => lm.as_ref(),
        }
    }
}

impl CausalLm for LanguageModel {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        self.inner().new_cache()
    }
    fn next_logits(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        self.inner().next_logits(ids, cache)
    }
    fn next_logits_and_hidden(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        self.inner().next_logits_and_hidden(ids, cache)
    }
    fn branch(&self, cache: &KvCache, candidates: &[u32]) -> Result<Branches<KvCache>> {
        self.inner().branch(cache, candidates)
    }
    fn keep_branch(&self, cache: &KvCache, row: usize) -> Result<KvCache> {
        self.inner().keep_branch(cache, row)
    }
    fn branch_rows(
        &self,
        caches: &[&KvCache],
        parents: &[usize],
        tokens: &[u32],
    ) -> Result<Vec<(Vec<f32>, KvCache)>> {
        self.inner().branch_rows(caches, parents, tokens)
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner().encode(text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner().decode(ids)
    }
    fn context_len(&self) -> usize {
        self.inner().context_len()
    }
    fn vocab_size(&self) -> usize {
        self.inner().vocab_size()
    }
    fn eos_token_id(&self) -> Option<u32> {
        self.inner().eos_token_id()
    }
    fn truncate_cache(&self, cache: &KvCache, len: usize) -> Result<KvCache> {
        self.inner().truncate_cache(cache, len)
    }
    fn continuation_log_probs(
        &self,
        cache: &KvCache,
        cache_rows: &[usize],
        contexts: &[Vec<u32>],
        continuations: &[Vec<u32>],
        after: Option<&[u32]>,
    ) -> Result<Vec<TeacherForced>> {
        self.inner()
            .continuation_log_probs(cache, cache_rows, contexts, continuations, after)
    }
    fn extend_rows(&self, cache: &KvCache, ids: &[Vec<u32>]) -> Result<KvCache> {
        self.inner().extend_rows(cache, ids)
    }
    fn special_token_ids(&self) -> Vec<u32> {
        self.inner().special_token_ids()
    }
}
