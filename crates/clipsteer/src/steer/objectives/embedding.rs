//! The embedding objective: cosine similarity of a text's embedding with a target embedding.
//! [`Scorer`] is an encoder that embeds texts (with a prefix cache where it has one); CLIP and
//! sentence encoders implement it, and [`Embedding`] makes any of them an [`Objective`].

use super::{normalize, Objective, ScoreBatch};
use crate::image::{load_image, ClipImageProcessor, DecodeLimits};
use crate::models::clip::{ClipModel, TextPrefix};
use crate::tokenize::{load_from_dir, ClipTokenizer, TokenizerKind};
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Scores texts by cosine similarity of their embedding with a target embedding.
pub trait Scorer {
    /// What can be reused between the texts of one step: their shared beginning.
    type Prefix;

    /// Prepares for scoring texts that begin with `text`. `previous`, the prefix of the last
    /// step, lets an implementation reuse the part the two share.
    fn prefix(&self, text: &str, previous: Option<&Self::Prefix>) -> Result<Self::Prefix>;
    /// The embedding of a text on its own (unnormalised), to build text targets from.
    fn embed_text(&self, text: &str) -> Result<Vec<f32>>;
    /// The temperature of MAGIC's softmax over candidates' similarities: CLIP's trained
    /// exp(logit_scale); a tuned value for encoders trained otherwise.
    fn logit_scale(&self) -> f32 {
        100.0
    }
    /// Cosine similarity of each text with `target` (a unit vector), reusing `prefix`.
    fn similarities(
        &self,
        prefix: &Self::Prefix,
        texts: &[String],
        target: &[f32],
    ) -> Result<ScoreBatch>;

    /// [`Self::similarities`] of several batches with their own prefixes, in order
    /// ([`Objective::score_each`]).
    fn similarities_each(
        &self,
        batches: &[(&Self::Prefix, &[String])],
        target: &[f32],
    ) -> Result<Vec<ScoreBatch>> {
        batches
            .iter()
            .map(|(prefix, texts)| self.similarities(prefix, texts, target))
            .collect()
    }
}

/// A [`Scorer`] and a unit-length target: the objective is the cosine similarity with it.
pub struct Embedding<'a, S: ?Sized> {
    pub scorer: &'a S,
    /// Unit length, the scorer's embedding size.
    pub target: &'a [f32],
}

impl<'a, S: Scorer + ?Sized> Embedding<'a, S> {
    pub fn new(scorer: &'a S, target: &'a [f32]) -> Self {
        Self { scorer, target }
    }
}

impl<S: Scorer + ?Sized> Objective for Embedding<'_, S> {
    type Prefix = S::Prefix;

    fn prefix(&self, text: &str, previous: Option<&S::Prefix>) -> Result<S::Prefix> {
        self.scorer.prefix(text, previous)
    }

    fn score(&self, prefix: &S::Prefix, texts: &[String]) -> Result<ScoreBatch> {
        self.scorer.similarities(prefix, texts, self.target)
    }

    fn score_each(&self, batches: &[(&S::Prefix, &[String])]) -> Result<Vec<ScoreBatch>> {
        self.scorer.similarities_each(batches, self.target)
    }

    fn softmax_scale(&self) -> f32 {
        self.scorer.logit_scale()
    }
}

/// CLIP as a [`Scorer`]: texts are embedded with the text prefix cache and compared with an
/// image (or text) target.
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
        super::image_features(&self.processor, self.model.device(), image, |pixels| {
            self.model.image_features(pixels)
        })
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
        // Equal texts are tokenized once, and texts that tokenize alike are embedded once.
        let mut unique_texts: Vec<&str> = Vec::new();
        let mut text_slot: HashMap<&str, usize> = HashMap::new();
        let text_slots: Vec<usize> = texts
            .iter()
            .map(|text| {
                *text_slot.entry(text.as_str()).or_insert_with(|| {
                    unique_texts.push(text);
                    unique_texts.len() - 1
                })
            })
            .collect();
        let mut distinct: Vec<Vec<u32>> = Vec::new();
        let mut slot_of: HashMap<Vec<u32>, usize> = HashMap::new();
        let id_slots: Vec<usize> = self
            .tokenizer
            .encode_batch(&unique_texts)?
            .into_iter()
            .map(|ids| {
                let next = distinct.len();
                let slot = *slot_of.entry(ids.clone()).or_insert(next);
                if slot == next {
                    distinct.push(ids);
                }
                slot
            })
            .collect();
        let slots: Vec<usize> = text_slots.iter().map(|&t| id_slots[t]).collect();
        let embedded = self.model.text_features_with_prefix(prefix, &distinct)?;
        let target = Tensor::new(target, self.model.device())?;
        let cosines = crate::models::clip::cosine_to(&embedded.features, &target)?;
        Ok(ScoreBatch {
            similarities: slots.iter().map(|&s| cosines[s]).collect(),
            positions_computed: embedded.positions_computed,
            distinct: distinct.len(),
            greedy_target: Vec::new(),
            teacher_forced_argmax: Vec::new(),
        })
    }
}

/// The unit-length target for an image file.
pub fn image_target(scorer: &ClipScorer, path: &Path, limits: DecodeLimits) -> Result<Vec<f32>> {
    Ok(normalize(&scorer.image_embedding_from_path(path, limits)?))
}

/// The scorer behind `--encoder`: CLIP or SigLIP (images and text) or a sentence encoder (text
/// only), chosen by the model's config.json.
pub enum Encoder {
    Clip(Box<ClipScorer>),
    Siglip(Box<super::siglip::SiglipScorer>),
    Sentence(Box<super::sentence::SentenceScorer>),
}

fn text_only() -> anyhow::Error {
    anyhow::anyhow!("this encoder embeds text only: give it texts (--target-text to steer, --text to embed), or an image-text encoder (CLIP, SigLIP) for images")
}

pub enum EncoderPrefix {
    Clip(TextPrefix),
    /// The encoder embeds each text whole (bidirectional attention): nothing to reuse.
    Whole,
}

impl Encoder {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config: serde_json::Value = crate::models::read_config(dir)?;
        match config["model_type"].as_str() {
            Some("clip") => Ok(Self::Clip(Box::new(ClipScorer::load(dir, device)?))),
            Some("siglip") => Ok(Self::Siglip(Box::new(super::siglip::SiglipScorer::load(dir, device)?))),
            Some("bert") => Ok(Self::Sentence(Box::new(super::sentence::SentenceScorer::load(dir, device)?))),
            Some("siglip2") => anyhow::bail!(
                "{}: SigLIP 2 NaFlex (model_type siglip2, variable resolution) is not supported: use a fixed-resolution SigLIP 2 checkpoint (model_type siglip), such as google/siglip2-base-patch16-224",
                dir.display()
            ),
            other => anyhow::bail!(
                "{}: model_type {} is not a supported encoder (clip, siglip, or a sentence-transformers bert)",
                dir.display(),
                other.unwrap_or("(missing)")
            ),
        }
    }

    /// The CLIP model, when this encoder is one.
    pub fn as_clip(&self) -> Option<&ClipScorer> {
        match self {
            Self::Clip(clip) => Some(clip),
            _ => None,
        }
    }

    /// Whether the encoder embeds images (CLIP, SigLIP) and not only text.
    pub fn embeds_images(&self) -> bool {
        !matches!(self, Self::Sentence(_))
    }

    /// SigLIP's pair probability for a cosine similarity, sigmoid(exp(logit_scale) · cos +
    /// logit_bias); `None` for encoders that define none (CLIP's is a softmax over a batch).
    pub fn probability(&self, cosine: f32) -> Option<f32> {
        match self {
            Self::Siglip(siglip) => Some(siglip.model.probability(cosine)),
            _ => None,
        }
    }

    /// Unnormalised image features of a decoded image, as `get_image_features` (CLIP's
    /// projected features, SigLIP's pooled output); only CLIP and SigLIP embed images.
    pub fn image_embedding(&self, image: &image::DynamicImage) -> Result<Vec<f32>> {
        match self {
            Self::Clip(clip) => clip.image_embedding(image),
            Self::Siglip(siglip) => siglip.image_embedding(image),
            Self::Sentence(_) => Err(text_only()),
        }
    }

    /// The encoder's context in tokens, when `text` alone fills it: every continuation of `text`
    /// is then cut to the same tokens and scores the same. None when there is room.
    pub fn fills_context(&self, text: &str) -> Result<Option<usize>> {
        let filled = match self {
            Self::Clip(clip) => {
                let ids = clip
                    .tokenizer
                    .inner()
                    .encode(text, true)
                    .map_err(|e| anyhow::anyhow!("cannot tokenize text for CLIP: {e}"))?;
                // A continuation token goes before <|endoftext|>, which truncation keeps last.
                (ids.len() >= clip.tokenizer.max_len()).then_some(clip.tokenizer.max_len())
            }
            Self::Siglip(siglip) => siglip
                .tokenizer
                .fills(text)?
                .then_some(siglip.tokenizer.text_len()),
            Self::Sentence(sentence) => {
                (sentence.token_count(text)? >= sentence.max_len()).then_some(sentence.max_len())
            }
        };
        Ok(filled)
    }

    /// Embeds a probe image (one white pixel), so that a server refuses at start an encoder that
    /// cannot embed images (a SigLIP tower without its pooling head, a preprocessor whose size is
    /// not the model's) instead of failing every request.
    pub fn check_embeds_images(&self) -> Result<()> {
        let probe = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            1,
            1,
            image::Rgb([255, 255, 255]),
        ));
        self.image_embedding(&probe)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("it cannot embed images: {e:#}"))
    }

    /// [`Self::image_embedding`] of an image file, read under `limits`.
    pub fn image_embedding_from_path(&self, path: &Path, limits: DecodeLimits) -> Result<Vec<f32>> {
        self.image_embedding(&load_image(path, limits)?)
    }
}

impl Scorer for Encoder {
    type Prefix = EncoderPrefix;

    fn prefix(&self, text: &str, previous: Option<&EncoderPrefix>) -> Result<EncoderPrefix> {
        match self {
            Self::Clip(clip) => {
                let previous = match previous {
                    Some(EncoderPrefix::Clip(p)) => Some(p),
                    _ => None,
                };
                Ok(EncoderPrefix::Clip(clip.prefix(text, previous)?))
            }
            Self::Siglip(_) | Self::Sentence(_) => Ok(EncoderPrefix::Whole),
        }
    }

    fn embed_text(&self, text: &str) -> Result<Vec<f32>> {
        match self {
            Self::Clip(clip) => clip.embed_text(text),
            Self::Siglip(siglip) => siglip.embed_text(text),
            Self::Sentence(sentence) => sentence.embed_text(text),
        }
    }

    fn logit_scale(&self) -> f32 {
        match self {
            Self::Clip(clip) => clip.logit_scale(),
            Self::Siglip(siglip) => Scorer::logit_scale(siglip.as_ref()),
            Self::Sentence(sentence) => sentence.logit_scale(),
        }
    }

    fn similarities(
        &self,
        prefix: &EncoderPrefix,
        texts: &[String],
        target: &[f32],
    ) -> Result<ScoreBatch> {
        match (self, prefix) {
            (Self::Clip(clip), EncoderPrefix::Clip(prefix)) => {
                clip.similarities(prefix, texts, target)
            }
            (Self::Siglip(siglip), _) => siglip.similarities(&(), texts, target),
            (Self::Sentence(sentence), _) => sentence.similarities(&(), texts, target),
            (Self::Clip(_), EncoderPrefix::Whole) => {
                anyhow::bail!("a whole-text prefix passed to CLIP")
            }
        }
    }

    fn similarities_each(
        &self,
        batches: &[(&EncoderPrefix, &[String])],
        target: &[f32],
    ) -> Result<Vec<ScoreBatch>> {
        // Encoders that embed each text whole have no prefix to keep apart: one call.
        let texts: Vec<&[String]> = batches.iter().map(|(_, texts)| *texts).collect();
        match self {
            Self::Siglip(siglip) => {
                super::score_joined(&texts, |all| siglip.similarities(&(), all, target))
            }
            Self::Sentence(sentence) => {
                super::score_joined(&texts, |all| sentence.similarities(&(), all, target))
            }
            Self::Clip(_) => batches
                .iter()
                .map(|(prefix, texts)| self.similarities(prefix, texts, target))
                .collect(),
        }
    }
}
