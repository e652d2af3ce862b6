//! SigLIP and SigLIP 2 as a [`Scorer`]. The text tower attends in both directions over texts
//! padded to a fixed length, so there is no prefix to reuse: each distinct candidate is embedded
//! whole.

use super::{ScoreBatch, Scorer};
use crate::image::{ClipImageProcessor, DecodeLimits};
use crate::models::siglip::SiglipModel;
use crate::tokenize::{PaddedText, SiglipTokenizer};
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

pub struct SiglipScorer {
    pub model: SiglipModel,
    pub tokenizer: SiglipTokenizer,
    pub processor: ClipImageProcessor,
}

impl SiglipScorer {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = SiglipModel::load(dir, device)?;
        let tokenizer = SiglipTokenizer::load(dir, model.config().text.max_position_embeddings)?;
        // SiglipImageProcessor: resize to size × size, no crop (its config has no crop_size).
        let processor = ClipImageProcessor::load(dir)?;
        Ok(Self {
            model,
            tokenizer,
            processor,
        })
    }

    /// Features of padded texts [n, projection].
    fn features(&self, texts: &[PaddedText]) -> Result<Tensor> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| t.ids.clone()).collect();
        if self.tokenizer.with_mask() {
            let masks: Vec<Vec<u32>> = texts.iter().map(|t| t.mask.clone()).collect();
            self.model.text_features(&ids, Some(&masks))
        } else {
            self.model.text_features(&ids, None)
        }
    }

    /// Unnormalised text features, as `get_text_features` on the processor's padded input.
    pub fn text_embedding(&self, text: &str) -> Result<Vec<f32>> {
        let padded = self.tokenizer.encode(text)?;
        Ok(self.features(&[padded])?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Unnormalised image features, as `get_image_features` (the pooled output).
    pub fn image_embedding(&self, image: &image::DynamicImage) -> Result<Vec<f32>> {
        super::image_features(&self.processor, self.model.device(), image, |pixels| {
            self.model.image_features(pixels)
        })
    }

    pub fn image_embedding_from_path(&self, path: &Path, limits: DecodeLimits) -> Result<Vec<f32>> {
        self.image_embedding(&crate::image::load_image(path, limits)?)
    }
}

impl Scorer for SiglipScorer {
    type Prefix = ();

    fn prefix(&self, _: &str, _: Option<&()>) -> Result<()> {
        Ok(())
    }

    fn embed_text(&self, text: &str) -> Result<Vec<f32>> {
        self.text_embedding(text)
    }

    fn logit_scale(&self) -> f32 {
        self.model.logit_scale()
    }

    fn similarities(&self, _: &(), texts: &[String], target: &[f32]) -> Result<ScoreBatch> {
        // Texts that pad to the same ids are embedded once.
        let mut distinct: Vec<PaddedText> = Vec::new();
        let mut slot_of: HashMap<Vec<u32>, usize> = HashMap::new();
        let mut slots = Vec::with_capacity(texts.len());
        for text in texts {
            let padded = self.tokenizer.encode(text)?;
            let next = distinct.len();
            let slot = *slot_of.entry(padded.ids.clone()).or_insert(next);
            if slot == next {
                distinct.push(padded);
            }
            slots.push(slot);
        }
        let features = self.features(&distinct)?;
        let target = Tensor::new(target, self.model.device())?;
        let cosines = crate::models::clip::cosine_to(&features, &target)?;
        Ok(ScoreBatch {
            similarities: slots.iter().map(|&s| cosines[s]).collect(),
            positions_computed: distinct.len() * self.tokenizer.text_len(),
            distinct: distinct.len(),
            greedy_target: Vec::new(),
            teacher_forced_argmax: Vec::new(),
        })
    }
}
