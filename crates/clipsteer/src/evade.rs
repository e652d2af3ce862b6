//! `clipsteer evade`: the filter-evasion loop in one command. An image (generated from a prompt,
//! or given) is described with a blocklist in force, the description is turned back into an
//! image, and a report (JSON, and one self-contained HTML page) records how much of the image
//! crossed over without a single blocked word: CLIP similarity of the original image to the
//! description and to the regenerated image, next to the original prompt's own similarity.

use crate::diffusion::cli::{
    check_output_dir, encode_image, generate_with_progress, write_atomically, DiffusionArgs,
};
use crate::diffusion::StableDiffusion;
use crate::image::DecodeLimits;
use crate::pipeline::{DescribeModels, Describer};
use crate::request::DescribeRequest;
use crate::steer::constraints::{describe_control, Blocklist, Refusal};
use crate::steer::describe::Strategy;
use crate::steer::options::DescribeResult;
use crate::steer::scorer::Encoder;
use crate::steer::{normalize, ClipScorer};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg_attr(feature = "clap", derive(clap::Args))]
#[derive(Debug)]
pub struct EvadeArgs {
    /// The prompt a filter would block; image 1 is generated from it unless --image is given.
    #[cfg_attr(feature = "clap", arg(long, required_unless_present = "image"))]
    pub prompt: Option<String>,
    /// Start from this image instead of generating one.
    #[cfg_attr(feature = "clap", arg(long))]
    pub image: Option<PathBuf>,
    /// The words the filter blocks.
    #[cfg_attr(feature = "clap", command(flatten))]
    pub blocking: crate::request::BlockArgs,
    /// The HTML report; the JSON report and both images are written next to it
    /// (NAME.json, NAME-image1.png, NAME-image2.png).
    #[cfg_attr(feature = "clap", arg(long, default_value = "evade-report.html"))]
    pub report: PathBuf,
    /// Language model that writes the description (GPT-2 directory, hub id, or .gguf).
    #[cfg_attr(feature = "clap", arg(long, default_value = crate::request::DEFAULT_LM))]
    pub lm: String,
    /// A GGUF file of the --lm hub repository (or local directory) to load, as transformers'
    /// `gguf_file=`: fetched with the repository's revision into the Hugging Face cache.
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME.gguf"))]
    pub gguf_file: Option<String>,
    /// CLIP model that steers the description and measures every similarity in the report.
    #[cfg_attr(feature = "clap", arg(long = "encoder", visible_alias = "clip", default_value = crate::request::DEFAULT_CLIP, value_name = "MODEL"))]
    pub clip: String,
    /// Description strategy; beam and magic keep the text fluent, and beam is the more on target
    /// of the two (docs/STEERING.md).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Strategy::Beam))]
    pub strategy: Strategy,
    /// Candidates per step [default: 45 with magic or beam, 200 with seed].
    #[cfg_attr(feature = "clap", arg(long))]
    pub top_k: Option<usize>,
    /// Most tokens in the description.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = crate::request::DEFAULT_MAX_TOKENS))]
    pub max_tokens: usize,
    /// Text the description starts from [default: with an LM that has a chat template,
    /// --describe-instruction rendered through it; else "An image of "].
    #[cfg_attr(feature = "clap", arg(long))]
    pub describe_prompt: Option<String>,
    /// With an LM that has a chat template and no --describe-prompt: the request it answers.
    /// [default: "Write one sentence describing a scene."]
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "describe_prompt"))]
    pub describe_instruction: Option<String>,
    #[cfg_attr(feature = "clap", command(flatten))]
    pub diffusion: DiffusionArgs,
}

/// Where the report's files go, all derived from --report.
struct ReportPaths {
    html: PathBuf,
    json: PathBuf,
    image1: PathBuf,
    image2: PathBuf,
}

impl ReportPaths {
    fn new(html: &Path) -> Result<Self> {
        let stem = html
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .with_context(|| {
                format!(
                    "--report {}: give a file name such as report.html",
                    html.display()
                )
            })?;
        let sibling = |name: String| html.with_file_name(name);
        Ok(Self {
            html: html.to_path_buf(),
            json: sibling(format!("{stem}.json")),
            image1: sibling(format!("{stem}-image1.png")),
            image2: sibling(format!("{stem}-image2.png")),
        })
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    normalize(a)
        .iter()
        .zip(normalize(b))
        .map(|(x, y)| x * y)
        .sum()
}

pub fn run(mut args: EvadeArgs, device: &Device) -> Result<i32> {
    args.lm = crate::load::lm_argument(&args.lm, args.gguf_file.take().as_deref())?;
    let resolved = describe_request(&args).resolve(None, true)?;
    let blocklist = resolved.options.blocklist.clone();
    if blocklist.is_empty() {
        bail!(
            "evade needs the words a filter blocks: pass --block word1,word2 or --blocklist FILE"
        );
    }
    args.diffusion.validate()?;
    let paths = ReportPaths::new(&args.report)?;
    check_output_dir(&paths.html)?;
    if let Some(image) = &args.image {
        if !image.is_file() {
            bail!("no image at {}", image.display());
        }
    }
    // Every model first, so that a missing one fails before minutes of work.
    let pipeline = args.diffusion.load(device)?;
    let models = Arc::new(DescribeModels {
        lm: crate::load::load_lm(&args.lm, device)?,
        encoder: Some(Encoder::Clip(Box::new(crate::load::load_clip(
            &args.clip, device,
        )?))),
        lm_spec: args.lm.clone(),
        encoder_spec: Some(args.clip.clone()),
        chat_template: crate::load::chat_template_if_any(&args.lm)?,
    });
    let describer = Describer::new(Arc::clone(&models), &resolved)?;
    let clip = models
        .encoder
        .as_ref()
        .and_then(Encoder::as_clip)
        .ok_or_else(|| anyhow::anyhow!("evade needs a CLIP encoder"))?;
    let started = std::time::Instant::now();

    let (image1, image1_source) = first_image(&args, &pipeline)?;
    let image1 = image::DynamicImage::ImageRgb8(image1);
    let image1_embedding = clip.image_embedding(&image1)?;
    let described = describe_with_bar(&describer, &image1, args.max_tokens)?;
    let image1 = image1.into_rgb8();
    let image2 = generate_with_progress(
        &pipeline,
        &args.diffusion.options(&described.text),
        "image 2",
    )?;
    let similarities = Similarities::measure(
        clip,
        &image1_embedding,
        &described.text,
        &image2,
        args.prompt.as_deref(),
    )?;
    let report = report_json(
        &args,
        &blocklist,
        resolved.options.top_k,
        &described,
        &similarities,
        [
            (&paths.image1, &image1, image1_source),
            (
                &paths.image2,
                &image2,
                json!({"kind": "generated", "prompt": described.text}),
            ),
        ],
        started.elapsed().as_secs_f64(),
    );
    let passed = report["blocklist_check"]["passed"] == true;
    write_report(&paths, &report, &image1, &image2)?;
    outln!("{report}");
    errln!(
        "wrote {} and {}: sim(image 1, description) {:.4}, sim(image 1, image 2) {:.4}{}; blocklist check {}",
        paths.html.display(),
        paths.json.display(),
        similarities.image1_description,
        similarities.image1_image2,
        similarities
            .image1_prompt
            .map(|s| format!(", sim(image 1, prompt) {s:.4}"))
            .unwrap_or_default(),
        if passed { "passed" } else { "FAILED" }
    );
    Ok(if passed { 0 } else { 1 })
}

/// The describe request evade makes: describe's own, with evade's strategy and prompt flags.
fn describe_request(args: &EvadeArgs) -> DescribeRequest {
    DescribeRequest {
        prompt: args.describe_prompt.clone(),
        instruction: args.describe_instruction.clone(),
        strategy: Some(args.strategy),
        top_k: args.top_k,
        max_tokens: args.max_tokens,
        block: args.blocking.block.clone(),
        blocklist: args.blocking.blocklist.clone(),
        block_substrings: args.blocking.block_substrings,
        ..DescribeRequest::default()
    }
}

/// Image 1, given or generated from --prompt, and where it came from (for the report).
fn first_image(args: &EvadeArgs, pipeline: &StableDiffusion) -> Result<(image::RgbImage, Value)> {
    Ok(match &args.image {
        Some(path) => (
            crate::image::to_rgb(&crate::image::load_image(path, DecodeLimits::default())?),
            json!({"kind": "given", "path": path.display().to_string()}),
        ),
        None => {
            let prompt = args.prompt.as_deref().unwrap_or_default();
            let image =
                generate_with_progress(pipeline, &args.diffusion.options(prompt), "image 1")?;
            (image, json!({"kind": "generated", "prompt": prompt}))
        }
    })
}

/// The description of `image`, with a progress bar over its tokens.
fn describe_with_bar(
    describer: &Describer,
    image: &image::DynamicImage,
    max_tokens: usize,
) -> Result<DescribeResult> {
    let target = describer.target(Some(image))?;
    let bar = crate::diffusion::cli::step_bar("describing");
    bar.set_length(max_tokens as u64);
    let described = describer.describe_target(target.as_deref(), |event| {
        bar.set_position(event.step as u64 + 1);
        Ok(())
    });
    bar.finish_and_clear();
    described
}

/// The blocked words the original prompt contains (the reason to evade at all).
fn prompt_blocked_words<'a>(args: &EvadeArgs, blocklist: &'a Blocklist) -> Vec<&'a str> {
    let Some(prompt) = &args.prompt else {
        return Vec::new();
    };
    blocklist
        .words()
        .iter()
        .map(String::as_str)
        .filter(|w| {
            Blocklist::new([*w], args.blocking.block_substrings)
                .ok()
                .and_then(|b| b.find_in(prompt).map(|_| ()))
                .is_some()
        })
        .collect()
}

/// The report, as JSON: the settings, the description, the blocklist's guarantee checked again
/// on the final text (independently of the steering loop), the similarities and both images
/// (each its path, pixels and source).
#[allow(clippy::too_many_arguments)]
fn report_json(
    args: &EvadeArgs,
    blocklist: &Blocklist,
    top_k: usize,
    described: &DescribeResult,
    similarities: &Similarities,
    images: [(&PathBuf, &image::RgbImage, Value); 2],
    seconds: f64,
) -> Value {
    let refusal = blocklist.refusal(&described.text);
    let found = match refusal {
        Some(Refusal::Word(word)) => Some(word.to_string()),
        _ => None,
    };
    let control = match refusal {
        Some(Refusal::Control(c)) => Some(describe_control(c)),
        _ => None,
    };
    let [image1, image2] = images.map(|(path, image, source)| {
        json!({
            "file": file_name(path),
            "width": image.width(),
            "height": image.height(),
            "source": source,
        })
    });
    json!({
        "clipsteer_version": env!("CARGO_PKG_VERSION"),
        "created_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "prompt": args.prompt,
        "models": crate::hub::models_json(&[
            ("lm", &args.lm),
            ("encoder", &args.clip),
            ("diffusion", &args.diffusion.model),
        ]),
        "blocked_words": blocklist.words(),
        "block_matching": if args.blocking.block_substrings { "substring, case-insensitive" } else { "whole word, case-insensitive" },
        "prompt_blocked_words": prompt_blocked_words(args, blocklist),
        "description": described.text,
        "description_token_ids": described.token_ids,
        "description_stop_reason": described.stop_reason,
        "blocklist_check": {
            "passed": refusal.is_none(),
            "found": found,
            "control": control,
        },
        "similarity": {
            "measure": "cosine of CLIP embeddings",
            "encoder": args.clip,
            "image1_description": similarities.image1_description,
            "image1_image2": similarities.image1_image2,
            "image1_prompt": similarities.image1_prompt,
        },
        "images": {"image1": image1, "image2": image2},
        "generation": {
            "model": args.diffusion.model,
            "scheduler": args.diffusion.scheduler,
            "steps": args.diffusion.steps,
            "guidance": args.diffusion.guidance,
            "size": args.diffusion.size,
            "seed": args.diffusion.seed,
            "negative_prompt": args.diffusion.negative,
        },
        "describe": {
            "lm": args.lm,
            "encoder": args.clip,
            "strategy": args.strategy,
            "top_k": top_k,
            "max_tokens": args.max_tokens,
            "prompt": args.describe_prompt,
        },
        "seconds": seconds,
    })
}

/// Writes both images, the JSON and the HTML report. Everything was computed before the first
/// write: a failure earlier leaves no files.
fn write_report(
    paths: &ReportPaths,
    report: &Value,
    image1: &image::RgbImage,
    image2: &image::RgbImage,
) -> Result<()> {
    let image1_png = encode_image(image1, image::ImageFormat::Png)?;
    let image2_png = encode_image(image2, image::ImageFormat::Png)?;
    let html = render_html(report, &image1_png, &image2_png);
    write_atomically(&paths.image1, &image1_png)?;
    write_atomically(&paths.image2, &image2_png)?;
    write_atomically(&paths.json, format!("{report:#}\n").as_bytes())?;
    write_atomically(&paths.html, html.as_bytes())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct Similarities {
    image1_description: f32,
    image1_image2: f32,
    image1_prompt: Option<f32>,
}

impl Similarities {
    fn measure(
        clip: &ClipScorer,
        image1: &[f32],
        description: &str,
        image2: &image::RgbImage,
        prompt: Option<&str>,
    ) -> Result<Self> {
        let image2 = clip.image_embedding(&image::DynamicImage::ImageRgb8(image2.clone()))?;
        Ok(Self {
            image1_description: cosine(image1, &clip.text_embedding(description)?),
            image1_image2: cosine(image1, &image2),
            image1_prompt: match prompt {
                Some(prompt) => Some(cosine(image1, &clip.text_embedding(prompt)?)),
                None => None,
            },
        })
    }
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 (RFC 4648, padded), for data: URIs.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn format_sim(value: &Value) -> String {
    value
        .as_f64()
        .map(|v| format!("{v:.4}"))
        .unwrap_or_else(|| "n/a (no prompt)".into())
}

/// One HTML page with no external resource: inline CSS, images as data: URIs.
fn render_html(report: &Value, image1_png: &[u8], image2_png: &[u8]) -> String {
    let text = |v: &Value| escape_html(v.as_str().unwrap_or(""));
    let passed = report["blocklist_check"]["passed"] == true;
    let blocked: Vec<String> = report["blocked_words"]
        .as_array()
        .map(|words| words.iter().map(text).collect())
        .unwrap_or_default();
    let prompt_hits: Vec<String> = report["prompt_blocked_words"]
        .as_array()
        .map(|words| words.iter().map(text).collect())
        .unwrap_or_default();
    let check = if passed {
        format!(
            "<p class=\"pass\">PASSED: no blocked word appears in the description ({}).</p>",
            text(&report["block_matching"])
        )
    } else if report["blocklist_check"]["found"].is_string() {
        format!(
            "<p class=\"fail\">FAILED: the description contains the blocked word “{}”.</p>",
            text(&report["blocklist_check"]["found"])
        )
    } else {
        format!(
            "<p class=\"fail\">FAILED: the description contains the control character {}.</p>",
            text(&report["blocklist_check"]["control"])
        )
    };
    let prompt_row = match report["prompt"].as_str() {
        Some(prompt) => format!(
            "<tr><th>Original prompt</th><td>{}{}</td></tr>",
            escape_html(prompt),
            if prompt_hits.is_empty() {
                String::new()
            } else {
                format!(
                    " <span class=\"hit\">(contains blocked: {})</span>",
                    prompt_hits.join(", ")
                )
            }
        ),
        None => String::new(),
    };
    let generation = &report["generation"];
    let describe = &report["describe"];
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>clipsteer evade report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
.images {{ display: flex; gap: 1.5rem; flex-wrap: wrap; }}
figure {{ margin: 0; flex: 1 1 20rem; }}
figure img {{ width: 100%; image-rendering: auto; border: 1px solid #ccc; }}
figcaption {{ font-size: 0.9rem; color: #555; margin-top: 0.3rem; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ text-align: left; padding: 0.3rem 0.8rem; border-bottom: 1px solid #eee; vertical-align: top; }}
.pass {{ color: #176f2c; font-weight: bold; }}
.fail {{ color: #b00020; font-weight: bold; }}
.hit {{ color: #b00020; }}
code {{ background: #f4f4f4; padding: 0 0.2rem; }}
</style>
</head>
<body>
<h1>Filter evasion report</h1>
<div class="images">
<figure><img alt="image 1" src="data:image/png;base64,{image1}"><figcaption>Image 1 ({image1_source})</figcaption></figure>
<figure><img alt="image 2" src="data:image/png;base64,{image2}"><figcaption>Image 2, generated from the description</figcaption></figure>
</div>
<h2>Description</h2>
<blockquote>{description}</blockquote>
{check}
<table>
<tr><th>Blocked words</th><td>{blocked}</td></tr>
{prompt_row}
<tr><th>CLIP sim(image 1, description)</th><td>{sim_desc}</td></tr>
<tr><th>CLIP sim(image 1, image 2)</th><td>{sim_images}</td></tr>
<tr><th>CLIP sim(image 1, original prompt)</th><td>{sim_prompt}</td></tr>
</table>
<h2>Setup</h2>
<table>
<tr><th>Diffusion model</th><td><code>{model}</code>, {scheduler}, {steps} steps, guidance {guidance}, {size}×{size}, seed {seed}</td></tr>
<tr><th>Description</th><td>LM <code>{lm}</code>, encoder <code>{encoder}</code>, strategy {strategy}, top-k {top_k}, at most {max_tokens} tokens</td></tr>
<tr><th>clipsteer</th><td>{version}</td></tr>
</table>
<p>Similarities are cosines of CLIP embeddings (the encoder above); the prompt's own similarity is the reference for how well a caption can match image 1.</p>
</body>
</html>
"#,
        image1 = base64(image1_png),
        image2 = base64(image2_png),
        image1_source = escape_html(
            report["images"]["image1"]["source"]["kind"]
                .as_str()
                .unwrap_or("")
        ),
        description = text(&report["description"]),
        blocked = blocked.join(", "),
        sim_desc = format_sim(&report["similarity"]["image1_description"]),
        sim_images = format_sim(&report["similarity"]["image1_image2"]),
        sim_prompt = format_sim(&report["similarity"]["image1_prompt"]),
        model = text(&generation["model"]),
        scheduler = text(&generation["scheduler"]),
        steps = generation["steps"],
        guidance = generation["guidance"],
        size = generation["size"],
        seed = generation["seed"],
        lm = text(&describe["lm"]),
        encoder = text(&describe["encoder"]),
        strategy = text(&describe["strategy"]),
        top_k = describe["top_k"],
        max_tokens = describe["max_tokens"],
        version = text(&report["clipsteer_version"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn html_escapes_markup_in_text() {
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
