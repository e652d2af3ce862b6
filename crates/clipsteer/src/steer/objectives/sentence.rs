//! A sentence-transformers BERT encoder as a text-only [`Scorer`]. Attention is bidirectional,
//! so there is no prefix to reuse: each candidate text is embedded whole.

use super::{ScoreBatch, Scorer};
use crate::models::bert::{unit_rows, BertModel, Pooling};
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
    /// The model's pooling, and whether its modules end in Normalize (modules.json).
    pooling: Pooling,
    normalize: bool,
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
        let (pooling, normalize) = read_modules(dir)?;
        Ok(Self {
            model,
            tokenizer,
            max_len,
            pooling,
            normalize,
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

    /// Normalised sentence embeddings (what similarities are computed on, whatever the model's
    /// own modules end with).
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.embed_ids(&self.encode_all(texts)?, true)
    }

    /// The embeddings sentence-transformers' `encode` gives: pooled, then normalised only when
    /// the model's modules end in Normalize.
    pub fn encode_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.embed_ids(&self.encode_all(texts)?, self.normalize)
    }

    fn encode_all(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| self.encode(t)).collect()
    }

    /// Pooled embeddings of tokenized texts, at unit length when `normalize`, in batches of
    /// [`CHUNK`].
    fn embed_ids(&self, ids: &[Vec<u32>], normalize: bool) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let pooled = self.model.pooled(chunk, self.pooling)?;
            let pooled = if normalize {
                unit_rows(&pooled)?
            } else {
                pooled
            };
            out.extend(pooled.to_vec2::<f32>()?);
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
        Ok(self.encode_texts(&[text.to_string()])?.remove(0))
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
        let embeddings = self.embed_ids(&ids, true)?;
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

/// The pooling and normalisation of a sentence-transformers directory, from its modules.json
/// and its Pooling module's config.json (the legacy `pooling_mode_*_token(s)` flags, or
/// sentence-transformers 6's `pooling_mode`). Without modules.json, as sentence-transformers
/// loads a bare transformers model: mean pooling, not normalised. A module or pooling mode
/// clipsteer does not compute is refused by name, so that no model is silently embedded
/// another way.
fn read_modules(dir: &Path) -> Result<(Pooling, bool)> {
    let modules_path = dir.join("modules.json");
    if !crate::files::model_file_present(&modules_path)? {
        return Ok((Pooling::Mean, false));
    }
    let text =
        crate::files::read_regular_to_string(&modules_path, &modules_path.display().to_string())?;
    let modules: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
        crate::Error::BadArgument(format!(
            "{} is not a sentence-transformers module list ({e}); replace it with the model's own",
            modules_path.display()
        ))
    })?;
    let mut pooling = None;
    let mut normalize = false;
    for module in &modules {
        let kind = module["type"].as_str().unwrap_or_default();
        let short = kind.rsplit('.').next().unwrap_or(kind);
        match short {
            "Transformer" => {}
            "Normalize" => normalize = true,
            "Pooling" => {
                let path = dir
                    .join(module["path"].as_str().unwrap_or_default())
                    .join("config.json");
                pooling = Some(read_pooling(&path)?);
            }
            _ => crate::usage_bail!(
                "{} lists a {kind} module, which clipsteer does not run (it runs Transformer, Pooling with mean or CLS pooling, and Normalize); use another sentence encoder",
                modules_path.display()
            ),
        }
    }
    Ok((pooling.unwrap_or(Pooling::Mean), normalize))
}

/// A Pooling module's mode from its config.json. sentence-transformers pools by the mean when
/// no mode is set, and concatenates several modes; clipsteer computes mean and CLS alone.
fn read_pooling(path: &Path) -> Result<Pooling> {
    if !crate::files::model_file_present(path)? {
        crate::usage_bail!(
            "modules.json lists a Pooling module, but there is no {}, which says how it pools; copy it from the model's repository",
            path.display()
        );
    }
    let text = crate::files::read_regular_to_string(path, &path.display().to_string())?;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        crate::Error::BadArgument(format!(
            "{} is not valid JSON ({e}); replace it with the model's own",
            path.display()
        ))
    })?;
    let modes: Vec<String> = match &config["pooling_mode"] {
        serde_json::Value::String(mode) => vec![mode.clone()],
        serde_json::Value::Array(modes) => modes
            .iter()
            .filter_map(|m| m.as_str().map(String::from))
            .collect(),
        _ => [
            ("pooling_mode_cls_token", "cls"),
            ("pooling_mode_max_tokens", "max"),
            ("pooling_mode_mean_tokens", "mean"),
            ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
            ("pooling_mode_weightedmean_tokens", "weightedmean"),
            ("pooling_mode_lasttoken", "lasttoken"),
        ]
        .into_iter()
        .filter(|(key, _)| config[*key] == true)
        .map(|(_, mode)| mode.to_string())
        .collect(),
    };
    match modes.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["mean"] => Ok(Pooling::Mean),
        ["cls"] => Ok(Pooling::Cls),
        _ => crate::usage_bail!(
            "{}: pooling {} is not supported (clipsteer pools by the mean or by [CLS]); use another sentence encoder",
            path.display(),
            modes.join(" + ")
        ),
    }
}
