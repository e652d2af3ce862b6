//! `clipsteer embed` and `clipsteer score` (CLIPScore, or SigLIP's probability).

use crate::*;
use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use clipsteer::image::DecodeLimits;
use clipsteer::load::load_encoder;
use clipsteer::request::DEFAULT_CLIP;
use clipsteer::steer::scorer::Encoder;
use clipsteer::steer::Scorer;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Encoder: CLIP, SigLIP or a sentence encoder (text only); a local directory in the HF
    /// layout or a hub id.
    #[arg(long = "encoder", visible_alias = "clip", default_value = DEFAULT_CLIP, value_name = "MODEL")]
    pub clip: String,
    /// Text to embed.
    #[arg(long, required_unless_present = "image", conflicts_with = "image")]
    pub text: Option<String>,
    /// Image file to embed.
    #[arg(long)]
    pub image: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// The image.
    pub image: PathBuf,
    /// Captions to score.
    #[arg(required = true)]
    pub captions: Vec<String>,
    /// Image-text encoder: CLIP (CLIPScore) or SigLIP / SigLIP 2 (its sigmoid probability); a
    /// local directory in the HF layout or a hub id.
    #[arg(long = "encoder", visible_alias = "clip", default_value = DEFAULT_CLIP, value_name = "MODEL")]
    pub clip: String,
    /// Text read before each caption (a space is added to a prefix that does not end in one).
    /// CLIP: CLIPScore's reference code reads "A photo depicts " unless told otherwise ("" for
    /// the bare caption). SigLIP: none unless given.
    #[arg(long)]
    pub prefix: Option<String>,
    /// torchmetrics' convention instead: 100 · max(cos, 0) on the bare caption (CLIP only).
    #[arg(long, conflicts_with = "prefix")]
    pub torchmetrics: bool,
    /// Print {"image":..,"convention":..,"prefix":..,"scores":[{"caption":..,"clipscore":..,"cosine":..}]}
    /// (SigLIP: {"image":..,"convention":"siglip","prefix":..,"scores":[{"caption":..,"probability":..,"cosine":..}]})
    /// instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn embed(args: EmbedArgs, device: &Device) -> Result<i32> {
    if let Some(image) = &args.image {
        check_image_path(image)?;
    }
    let scorer = load_encoder(&args.clip, device)?;
    let embedding = match (&args.text, &args.image) {
        (Some(text), None) => scorer.embed_text(text)?,
        (None, Some(image)) => scorer.image_embedding_from_path(image, DecodeLimits::default())?,
        _ => bail!("give exactly one of --text or --image"),
    };
    outln!("{}", json!({ "embedding": embedding }));
    Ok(0)
}

pub(crate) fn score(args: ScoreArgs, device: &Device) -> Result<i32> {
    use clipsteer::clipscore::{clip_scores, Convention};
    check_image_path(&args.image)?;
    let scorer = load_encoder(&args.clip, device)?;
    let clip = match &scorer {
        Encoder::Clip(clip) => clip,
        Encoder::Siglip(siglip) => return score_siglip(&args, siglip),
        Encoder::Sentence(_) => clipsteer::usage_bail!(
            "{} embeds text only: score needs an image-text encoder (CLIP or SigLIP) as --encoder",
            args.clip
        ),
    };
    let convention = if args.torchmetrics {
        Convention::Torchmetrics
    } else {
        Convention::Hessel {
            prefix: args
                .prefix
                .clone()
                .unwrap_or_else(|| clipsteer::clipscore::HESSEL_PREFIX.to_string()),
        }
    };
    let image = clip.image_embedding_from_path(&args.image, DecodeLimits::default())?;
    let scores = clip_scores(clip, &image, &args.captions, &convention)?;
    if args.json {
        let rows: Vec<_> = scores
            .iter()
            .map(|s| json!({"caption": s.caption, "clipscore": s.clipscore, "cosine": s.cosine}))
            .collect();
        let prefix = match &convention {
            Convention::Hessel { prefix } => prefix.as_str(),
            Convention::Torchmetrics => "",
        };
        outln!(
            "{}",
            json!({"image": args.image.display().to_string(), "convention": convention.name(),
                   "prefix": prefix, "scores": rows})
        );
    } else {
        outln!(
            "{:>9}  {:>7}  caption ({})",
            "clipscore",
            "cosine",
            convention.name()
        );
        for s in &scores {
            outln!(
                "{:>9.4}  {:>7.4}  {}",
                s.clipscore,
                s.cosine,
                clipsteer::terminal_safe(&s.caption, false)
            );
        }
    }
    Ok(0)
}

/// `score` with SigLIP: its own pair probability, sigmoid(exp(logit_scale) · cos + logit_bias),
/// not CLIPScore (whose scale and clamp were set for CLIP's cosines).
fn score_siglip(args: &ScoreArgs, scorer: &clipsteer::steer::SiglipScorer) -> Result<i32> {
    if args.torchmetrics {
        clipsteer::usage_bail!("--torchmetrics is a CLIPScore convention: SigLIP reports its own probability; leave it out");
    }
    let prefix = args.prefix.clone().unwrap_or_default();
    let image = scorer.image_embedding_from_path(&args.image, DecodeLimits::default())?;
    let scores =
        clipsteer::clipscore::siglip_probabilities(scorer, &image, &args.captions, &prefix)?;
    if args.json {
        let rows: Vec<_> = scores
            .iter()
            .map(
                |s| json!({"caption": s.caption, "probability": s.probability, "cosine": s.cosine}),
            )
            .collect();
        outln!(
            "{}",
            json!({"image": args.image.display().to_string(), "convention": "siglip",
                   "prefix": prefix, "scores": rows})
        );
    } else {
        outln!("{:>11}  {:>7}  caption (siglip)", "probability", "cosine");
        for s in &scores {
            outln!(
                "{:>11.4}  {:>7.4}  {}",
                s.probability,
                s.cosine,
                clipsteer::terminal_safe(&s.caption, false)
            );
        }
    }
    Ok(0)
}

/// An image argument that is no regular file: a FIFO, a directory or a device is named as such
/// (reading a FIFO would block), and a missing path as missing.
fn check_image_path(path: &std::path::Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(meta) => clipsteer::usage_bail!(
            "{} is {}, not an image file: pass a PNG, JPEG, WebP, GIF or BMP file",
            path.display(),
            clipsteer::files::kind_name(&meta.file_type())
        ),
        Err(_) => bail!("no image at {}", path.display()),
    }
}
