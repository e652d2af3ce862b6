//! A sentence-transformers BERT encoder as a text-only [`Scorer`]. Attention is bidirectional,
//! so there is no prefix to reuse: each candidate text is embedded whole.

use super::{ScoreBatch, Scorer};
use crate::models::bert::BertModel;
use crate::tokenize::load_tokenizer_json;
use anyhow::Result;
use candle_core::Device;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::Tokenizer;

/// Texts embedded per forward pass: bounds the padded batch.
const CHUNK: usize = 64;

pub struct SentenceScorer {
    pub model: BertModel,
    tokenizer: Tokenizer,
    max_len: usize,
}

impl SentenceScorer {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = BertModel::load(dir, device)?;
        let tokenizer = load_tokenizer_json(&dir.join("tokenizer.json"))?;
        // sentence-transformers truncates at max_seq_length (256 for all-MiniLM-L6-v2).
        let sbert = dir.join("sentence_bert_config.json");
        let configured = crate::files::read_regular_to_string(&sbert, &sbert.display().to_string())
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .map(|v| v as usize);
        let positions = model.config().max_position_embeddings;
        let max_len = configured.map_or(positions, |c| c.min(positions));
        Ok(Self {
            model,
            tokenizer,
            max_len,
        })
    }

    /// The longest text it embeds, in tokens with [CLS]/[SEP]; longer texts are truncated.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The token count of `text` with [CLS]/[SEP], before truncation.
    pub fn token_count(&self, text: &str) -> Result<usize> {
        Ok(self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("cannot tokenize text: {e}"))?
            .len())
    }

    /// Ids with [CLS]/[SEP], truncated with [SEP] kept last.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("cannot tokenize text: {e}"))?
            .get_ids()
            .to_vec();
        if ids.len() <= self.max_len {
            return Ok(ids);
        }
        let mut truncated = ids[..self.max_len - 1].to_vec();
        truncated.push(ids[ids.len() - 1]);
        Ok(truncated)
    }

    /// Normalised sentence embeddings.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        self.embed_ids(&ids)
    }

    /// Normalised sentence embeddings of tokenized texts, in padded batches of [`CHUNK`].
    fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            out.extend(self.model.sentence_embeddings(chunk)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}

impl Scorer for SentenceScorer {
    type Prefix = ();

    fn prefix(&self, _: &str, _: Option<&()>) -> Result<()> {
        Ok(())
    }

    fn embed_text(&self, text: &str) -> Result<Vec<f32>> {
        Ok(self.embed(&[text.to_string()])?.remove(0))
    }

    fn logit_scale(&self) -> f32 {
        // Tuned on the real all-MiniLM-L6-v2 steering SmolLM2 (docs/STEERING.md): its training
        // scale, 20, makes MAGIC's target term too flat to steer (mean cosine 0.39); 100, CLIP's,
        // gives 0.57 at 3.6 nats per token, and 150 costs fluency (4.5 nats).
        100.0
    }

    fn similarities(&self, _: &(), texts: &[String], target: &[f32]) -> Result<ScoreBatch> {
        let mut distinct: Vec<String> = Vec::new();
        let mut slot_of: HashMap<&str, usize> = HashMap::new();
        let slots: Vec<usize> = texts
            .iter()
            .map(|t| {
                *slot_of.entry(t.as_str()).or_insert_with(|| {
                    distinct.push(t.clone());
                    distinct.len() - 1
                })
            })
            .collect();
        let ids = distinct
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        let embeddings = self.embed_ids(&ids)?;
        let positions = ids.iter().map(Vec::len).sum();
        let cosines: Vec<f32> = embeddings
            .iter()
            .map(|e| e.iter().zip(target).map(|(a, b)| a * b).sum())
            .collect();
        Ok(ScoreBatch {
            similarities: slots.iter().map(|&s| cosines[s]).collect(),
            positions_computed: positions,
            distinct: distinct.len(),
            greedy_target: Vec::new(),
            teacher_forced_argmax: Vec::new(),
        })
    }
}
