//! CLIP as a [`Scorer`]: texts are embedded with the text prefix cache and compared with an
//! image (or text) target.

use super::{normalize, ScoreBatch, Scorer};
use crate::image::{load_image, ClipImageProcessor, DecodeLimits};
use crate::models::clip::{ClipModel, TextPrefix};
use crate::tokenize::{load_from_dir, ClipTokenizer, TokenizerKind};
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

pub struct ClipScorer {
    pub model: ClipModel,
    pub tokenizer: ClipTokenizer,
    pub processor: ClipImageProcessor,
}

impl ClipScorer {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = ClipModel::load(dir, device)?;
        let tokenizer = ClipTokenizer::new(
            load_from_dir(dir, TokenizerKind::Clip)?,
            model.config().text.max_position_embeddings,
        )?;
        let processor = ClipImageProcessor::load(dir)?;
        Ok(Self {
            model,
            tokenizer,
            processor,
        })
    }

    /// Projected, unnormalised text features, as `get_text_features`.
    pub fn text_embedding(&self, text: &str) -> Result<Vec<f32>> {
        let ids = self.tokenizer.encode(text)?;
        Ok(self
            .model
            .text_features(&[ids])?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// Projected, unnormalised image features of an image file, as `get_image_features`.
    pub fn image_embedding_from_path(&self, path: &Path, limits: DecodeLimits) -> Result<Vec<f32>> {
        let image = load_image(path, limits)?;
        self.image_embedding(&image)
    }

    pub fn image_embedding(&self, image: &image::DynamicImage) -> Result<Vec<f32>> {
        let pixels = self
            .processor
            .preprocess(image, self.model.device())?
            .unsqueeze(0)?;
        Ok(self
            .model
            .image_features(&pixels)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

impl Scorer for ClipScorer {
    type Prefix = TextPrefix;

    fn embed_text(&self, text: &str) -> Result<Vec<f32>> {
        self.text_embedding(text)
    }

    fn logit_scale(&self) -> f32 {
        self.model.logit_scale()
    }

    fn prefix(&self, text: &str, previous: Option<&TextPrefix>) -> Result<TextPrefix> {
        let mut ids = self.tokenizer.encode(text)?;
        // Continuations replace the end token, and may change the last word.
        ids.pop();
        match previous {
            Some(previous) => self.model.extend_text_prefix(previous, &ids),
            None => self.model.text_prefix(&ids),
        }
    }

    fn similarities(
        &self,
        prefix: &TextPrefix,
        texts: &[String],
        target: &[f32],
    ) -> Result<ScoreBatch> {
        let mut distinct: Vec<Vec<u32>> = Vec::new();
        let mut slot_of: HashMap<Vec<u32>, usize> = HashMap::new();
        let mut slots = Vec::with_capacity(texts.len());
        for text in texts {
            let ids = self.tokenizer.encode(text)?;
            let next = distinct.len();
            let slot = *slot_of.entry(ids.clone()).or_insert(next);
            if slot == next {
                distinct.push(ids);
            }
            slots.push(slot);
        }
        let embedded = self.model.text_features_with_prefix(prefix, &distinct)?;
        let target = Tensor::new(target, self.model.device())?;
        let cosines = crate::models::clip::cosine_to(&embedded.features, &target)?;
        Ok(ScoreBatch {
            similarities: slots.iter().map(|&s| cosines[s]).collect(),
            positions_computed: embedded.positions_computed,
            distinct: distinct.len(),
        })
    }
}

/// The unit-length target for an image file.
pub fn image_target(scorer: &ClipScorer, path: &Path, limits: DecodeLimits) -> Result<Vec<f32>> {
    Ok(normalize(&scorer.image_embedding_from_path(path, limits)?))
}
