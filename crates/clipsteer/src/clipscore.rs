//! CLIPScore: how well a caption fits an image, by CLIP's cosine similarity.
//!
//! Two published conventions:
//! - [`Convention::Hessel`] (the default): Hessel et al., "CLIPScore: A Reference-free Evaluation
//!   Metric for Image Captioning", EMNLP 2021, and its reference code (github.com/jmhessel/clipscore,
//!   `clipscore.py`): the caption is encoded as `"A photo depicts " + caption` and the score is
//!   w · max(cos, 0) with w = 2.5. This is the number caption papers report.
//! - [`Convention::Torchmetrics`]: torchmetrics' `CLIPScore` (`functional/multimodal/clip_score.py`):
//!   100 · max(cos, 0) on the bare caption, the number text-to-image papers report.
//!
//! Where clipsteer differs from the reference code: images go through transformers'
//! CLIPImageProcessor (as every other clipsteer command; torchmetrics does the same), whereas
//! jmhessel/clipscore uses OpenAI's torchvision transform, whose centre crop rounds an odd margin
//! the other way (a one-pixel shift) and which drops alpha instead of compositing onto white, and
//! runs the model in fp16 on a GPU. torchmetrics clamps the mean over a batch; here each
//! (image, caption) pair is scored on its own, which is the same for one pair.

use crate::steer::{normalize, ClipScorer, SiglipScorer};
use anyhow::Result;

/// jmhessel/clipscore's caption prefix.
pub const HESSEL_PREFIX: &str = "A photo depicts ";
/// jmhessel/clipscore's weight w.
pub const HESSEL_WEIGHT: f32 = 2.5;
/// torchmetrics' scale.
pub const TORCHMETRICS_SCALE: f32 = 100.0;

/// Which CLIPScore.
#[derive(Debug, Clone, PartialEq)]
pub enum Convention {
    /// w · max(cos, 0), w = 2.5, the caption encoded after `prefix` (a space is added to a prefix
    /// that does not end in one, as the reference code does; `""` encodes the bare caption).
    Hessel { prefix: String },
    /// 100 · max(cos, 0), the bare caption.
    Torchmetrics,
}

impl Default for Convention {
    fn default() -> Self {
        Self::Hessel {
            prefix: HESSEL_PREFIX.to_string(),
        }
    }
}

impl Convention {
    /// The text CLIP encodes for `caption`.
    pub fn text_for(&self, caption: &str) -> String {
        match self {
            Self::Hessel { prefix } if prefix.is_empty() => caption.to_string(),
            Self::Hessel { prefix } if prefix.ends_with(' ') => format!("{prefix}{caption}"),
            Self::Hessel { prefix } => format!("{prefix} {caption}"),
            Self::Torchmetrics => caption.to_string(),
        }
    }

    /// The score for a cosine similarity.
    pub fn score(&self, cosine: f32) -> f32 {
        let scale = match self {
            Self::Hessel { .. } => HESSEL_WEIGHT,
            Self::Torchmetrics => TORCHMETRICS_SCALE,
        };
        scale * cosine.max(0.0)
    }

    /// A short name for reports: "hessel" or "torchmetrics".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hessel { .. } => "hessel",
            Self::Torchmetrics => "torchmetrics",
        }
    }
}

/// One caption's CLIPScore.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionScore {
    pub caption: String,
    /// What CLIP encoded (the caption with the convention's prefix).
    pub encoded: String,
    /// Cosine similarity of the image and text features, in [-1, 1].
    pub cosine: f32,
    /// The convention's score: [0, 2.5] (Hessel) or [0, 100] (torchmetrics).
    pub clipscore: f32,
}

/// CLIPScore of each caption against an image's features (`image_embedding`: the projected image
/// features, as `get_image_features`, normalised or not). Errors come from the text tower.
pub fn clip_scores(
    scorer: &ClipScorer,
    image_embedding: &[f32],
    captions: &[String],
    convention: &Convention,
) -> Result<Vec<CaptionScore>> {
    cosines(image_embedding, captions, convention, |text| {
        scorer.text_embedding(text)
    })?
    .into_iter()
    .map(|(caption, encoded, cosine)| {
        Ok(CaptionScore {
            caption,
            encoded,
            cosine,
            clipscore: convention.score(cosine),
        })
    })
    .collect()
}

/// Each caption with the text encoded for it and its cosine with the image's features.
fn cosines(
    image_embedding: &[f32],
    captions: &[String],
    convention: &Convention,
    embed_text: impl Fn(&str) -> Result<Vec<f32>>,
) -> Result<Vec<(String, String, f32)>> {
    let image = normalize(image_embedding);
    captions
        .iter()
        .map(|caption| {
            let encoded = convention.text_for(caption);
            let text = normalize(&embed_text(&encoded)?);
            let cosine: f32 = text.iter().zip(&image).map(|(a, b)| a * b).sum();
            Ok((caption.clone(), encoded, cosine))
        })
        .collect()
}

/// One caption's SigLIP score: the model's own pair probability, not CLIPScore.
#[derive(Debug, Clone, PartialEq)]
pub struct PairProbability {
    pub caption: String,
    /// What SigLIP encoded (the caption, after `prefix` when one is given).
    pub encoded: String,
    /// Cosine similarity of the image and text features, in [-1, 1].
    pub cosine: f32,
    /// sigmoid(exp(logit_scale) · cos + logit_bias), in (0, 1): transformers'
    /// `torch.sigmoid(outputs.logits_per_image)`.
    pub probability: f32,
}

/// SigLIP's probability of each caption for an image's features (`image_embedding`, normalised
/// or not); `prefix` is read before each caption as [`Convention::text_for`] reads it.
pub fn siglip_probabilities(
    scorer: &SiglipScorer,
    image_embedding: &[f32],
    captions: &[String],
    prefix: &str,
) -> Result<Vec<PairProbability>> {
    let convention = Convention::Hessel {
        prefix: prefix.to_string(),
    };
    cosines(image_embedding, captions, &convention, |text| {
        scorer.text_embedding(text)
    })?
    .into_iter()
    .map(|(caption, encoded, cosine)| {
        Ok(PairProbability {
            caption,
            encoded,
            cosine,
            probability: scorer.model.probability(cosine),
        })
    })
    .collect()
}
