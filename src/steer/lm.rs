//! GPT-2 with its tokenizer behind [`CausalLm`].

use super::{Branches, CausalLm};
use crate::models::attention::KvCache;
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

impl CausalLm for Gpt2Lm {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        self.model.new_cache()
    }

    fn next_logits(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let input = Tensor::new(ids, self.model.device())?.unsqueeze(0)?;
        let hidden = self.model.hidden_states(&input, cache)?;
        let last = hidden.narrow(1, ids.len() - 1, 1)?;
        let logits = self.model.logits(&last)?;
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }

    fn next_logits_and_hidden(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let input = Tensor::new(ids, self.model.device())?.unsqueeze(0)?;
        let hidden = self.model.hidden_states(&input, cache)?;
        let last = hidden.narrow(1, ids.len() - 1, 1)?;
        let logits = self.model.logits(&last)?.flatten_all()?.to_vec1::<f32>()?;
        Ok((logits, hidden.squeeze(0)?.to_vec2::<f32>()?))
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

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode_plain(&self.tokenizer, text)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot decode GPT-2 tokens")
    }

    fn context_len(&self) -> usize {
        self.model.config().n_positions
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
}
