//! The decoder-only LMs (GPT-2 and the [`Transformer`] families) with their tokenizers behind
//! [`CausalLm`].

use super::{After, Branches, CausalLm, TeacherForced};
use crate::models::attention::KvCache;
use crate::models::cpu_kernels::{self, LogSoftmaxPicks};
use crate::models::decoder::Transformer;
use crate::models::gpt2::Gpt2;
use crate::tokenize::{encode_plain, load_from_dir, TokenizerKind};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::path::Path;
use tokenizers::Tokenizer;

/// What a decoder-only architecture gives the one [`CausalLm`] implementation ([`DecoderLm`]):
/// its forward pass over a [`KvCache`] and a few facts from its config. Everything else (the
/// step, branching, teacher forcing, tokenizing) is the same for every family.
pub trait Decoder: Send + Sync {
    fn new_cache(&self) -> KvCache;
    /// Hidden states [batch, new positions, hidden] of `input` [batch, new positions] after the
    /// cache, which they extend.
    fn hidden_states(&self, input: &Tensor, cache: &mut KvCache) -> Result<Tensor>;
    /// Logits [.., vocab] of hidden states [.., hidden].
    fn logits(&self, hidden: &Tensor) -> Result<Tensor>;
    fn device(&self) -> &Device;
    /// Positions the model was trained on.
    fn context(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// Every id that ends a text, first the one a text is closed with.
    fn eos_token_ids(&self) -> Vec<u32>;
    /// The token fed first on an empty cache, as the model's tokenizer adds it (Gemma's
    /// `<bos>`); None for models that start from the text alone (GPT-2, the llama family as
    /// llama.cpp runs a GGUF without `add_bos_token`).
    fn bos_token(&self) -> Option<u32> {
        None
    }
}

/// A decoder-only LM and its tokenizer behind [`CausalLm`]: GPT-2 ([`Gpt2Lm`]), the llama
/// family from GGUF ([`GgufLm`]), Gemma 3 from GGUF ([`Gemma3Lm`]), and any of them chosen at
/// run time ([`LanguageModel`]).
///
/// With a [`Decoder::bos_token`], the first call on an empty cache feeds it before the ids unless
/// they begin with it already (a chat template that writes `<bos>` itself), as transformers'
/// tokenizer and llama.cpp add it. Texts never show it, so the prompt decodes to itself; the
/// cache holds one position more than the ids given, and the context one less.
pub struct DecoderLm<M> {
    pub model: M,
    pub tokenizer: Tokenizer,
}

/// GPT-2 (a directory in the HF layout).
pub type Gpt2Lm = DecoderLm<Gpt2>;
/// Every other family: a directory in the HF layout ([`Transformer::load_hf`]), or a llama or
/// Gemma 3 GGUF file ([`crate::models::gguf`]).
pub type TransformerLm = DecoderLm<Transformer>;
/// A llama-family LM from a GGUF file (the same type as every [`TransformerLm`]).
pub type GgufLm = TransformerLm;
/// A Gemma 3 LM from a GGUF file (the same type as every [`TransformerLm`]).
pub type Gemma3Lm = TransformerLm;
/// The LM behind `--lm`: GPT-2 or a [`TransformerLm`], chosen at run time.
pub type LanguageModel = DecoderLm<Box<dyn Decoder>>;

impl Gpt2Lm {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = Gpt2::load(dir, device)?;
        let tokenizer = load_from_dir(dir, TokenizerKind::Gpt2)?;
        Ok(Self { model, tokenizer })
    }
}

impl TransformerLm {
    /// A `.gguf` file, or a directory in the HF layout with its tokenizer.json. The BOS fed
    /// first is the one the tokenizer's post-processor adds (transformers' `add_special_tokens`),
    /// so that ids equal transformers' tokenizer(text).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if path.is_file() {
            let (model, tokenizer) = crate::models::gguf::load(path, device)?;
            return Ok(Self { model, tokenizer });
        }
        let mut model = Transformer::load_hf(path, device)?;
        let tokenizer = crate::tokenize::load_tokenizer_json(&path.join("tokenizer.json"))?;
        let bos = tokenizer
            .encode("", true)
            .ok()
            .and_then(|e| e.get_ids().first().copied());
        model.set_bos(bos);
        Ok(Self { model, tokenizer })
    }
}

impl<M: Decoder + 'static> DecoderLm<M> {
    /// The same LM as a [`LanguageModel`].
    pub fn boxed(self) -> LanguageModel {
        DecoderLm {
            model: Box::new(self.model),
            tokenizer: self.tokenizer,
        }
    }
}

impl Decoder for Gpt2 {
    fn new_cache(&self) -> KvCache {
        Gpt2::new_cache(self)
    }
    fn hidden_states(&self, input: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        Gpt2::hidden_states(self, input, cache)
    }
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Gpt2::logits(self, hidden)
    }
    fn device(&self) -> &Device {
        Gpt2::device(self)
    }
    fn context(&self) -> usize {
        self.config().n_positions
    }
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
    fn eos_token_ids(&self) -> Vec<u32> {
        self.config().eos_token_id.into_iter().collect()
    }
}

impl Decoder for Transformer {
    fn new_cache(&self) -> KvCache {
        Self::new_cache(self)
    }
    fn hidden_states(&self, input: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        Self::hidden_states(self, input, cache)
    }
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Self::logits(self, hidden)
    }
    fn device(&self) -> &Device {
        Self::device(self)
    }
    fn context(&self) -> usize {
        self.config().context
    }
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
    fn eos_token_ids(&self) -> Vec<u32> {
        self.config().eos_token_ids.clone()
    }
    fn bos_token(&self) -> Option<u32> {
        let c = self.config();
        c.bos_token_id.filter(|_| c.add_bos)
    }
}

impl Decoder for Box<dyn Decoder> {
    fn new_cache(&self) -> KvCache {
        self.as_ref().new_cache()
    }
    fn hidden_states(&self, input: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.as_ref().hidden_states(input, cache)
    }
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.as_ref().logits(hidden)
    }
    fn device(&self) -> &Device {
        self.as_ref().device()
    }
    fn context(&self) -> usize {
        self.as_ref().context()
    }
    fn vocab_size(&self) -> usize {
        self.as_ref().vocab_size()
    }
    fn eos_token_ids(&self) -> Vec<u32> {
        self.as_ref().eos_token_ids()
    }
    fn bos_token(&self) -> Option<u32> {
        self.as_ref().bos_token()
    }
}

impl<M: Decoder> DecoderLm<M> {
    /// The BOS to feed before `ids` on an empty cache, if any.
    fn bos_before(&self, ids: &[u32], cache: &KvCache) -> Option<u32> {
        self.model
            .bos_token()
            .filter(|&bos| cache.is_empty() && ids.first() != Some(&bos))
    }

    /// Branching continues a cache that holds the prompt: on an empty one the BOS a model needs
    /// first would be skipped.
    fn check_branchable(&self, empty: bool) -> Result<()> {
        if empty && self.model.bos_token().is_some() {
            anyhow::bail!("branch needs a cache that holds the prompt");
        }
        Ok(())
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

impl<M: Decoder> CausalLm for DecoderLm<M> {
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
        self.check_branchable(cache.is_empty())?;
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
        self.check_branchable(caches.iter().any(|cache| cache.is_empty()))?;
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

    /// The model's context, less the BOS position where one is fed first.
    fn context_len(&self) -> usize {
        self.model.context() - usize::from(self.model.bos_token().is_some())
    }

    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    fn eos_token_ids(&self) -> Vec<u32> {
        self.model.eos_token_ids()
    }

    fn truncate_cache(&self, cache: &KvCache, len: usize) -> Result<KvCache> {
        truncate_one_row(cache, len)
    }

    /// Right padding is harmless: attention is causal (Gemma's sliding-window layers too), so no
    /// real position attends to a pad.
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
