//! `clipsteer embed` and `clipsteer score` (CLIPScore).

use crate::*;
use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use clipsteer::image::DecodeLimits;
use clipsteer::load::load_clip;
use clipsteer::request::DEFAULT_CLIP;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// CLIP model: a local directory in the HF layout or a hub id.
    #[arg(long, default_value = DEFAULT_CLIP)]
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
    /// CLIP model: a local directory in the HF layout or a hub id.
    #[arg(long = "encoder", visible_alias = "clip", default_value = DEFAULT_CLIP, value_name = "MODEL")]
    pub clip: String,
    /// Text CLIP reads before each caption, as in CLIPScore's reference code; "" for the bare
    /// caption (a space is added to a prefix that does not end in one).
    #[arg(long, default_value = clipsteer::clipscore::HESSEL_PREFIX)]
    pub prefix: String,
    /// torchmetrics' convention instead: 100 · max(cos, 0) on the bare caption.
    #[arg(long, conflicts_with = "prefix")]
    pub torchmetrics: bool,
    /// Print {"image":..,"convention":..,"prefix":..,"scores":[{"caption":..,"clipscore":..,"cosine":..}]}
    /// instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn embed(args: EmbedArgs, device: &Device) -> Result<i32> {
    if let Some(image) = &args.image {
        if !image.is_file() {
            bail!("no image at {}", image.display());
        }
    }
    let scorer = load_clip(&args.clip, device)?;
    let embedding = match (&args.text, &args.image) {
        (Some(text), None) => scorer.text_embedding(text)?,
        (None, Some(image)) => scorer.image_embedding_from_path(image, DecodeLimits::default())?,
        _ => bail!("give exactly one of --text or --image"),
    };
    outln!("{}", json!({ "embedding": embedding }));
    Ok(0)
}

pub(crate) fn score(args: ScoreArgs, device: &Device) -> Result<i32> {
    use clipsteer::clipscore::{clip_scores, Convention};
    if !args.image.is_file() {
        bail!("no image at {}", args.image.display());
    }
    let convention = if args.torchmetrics {
        Convention::Torchmetrics
    } else {
        Convention::Hessel {
            prefix: args.prefix.clone(),
        }
    };
    let scorer = load_clip(&args.clip, device)?;
    let image = scorer.image_embedding_from_path(&args.image, DecodeLimits::default())?;
    let scores = clip_scores(&scorer, &image, &args.captions, &convention)?;
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
