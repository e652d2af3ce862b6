//! The describe pipeline behind every face (the command line, `serve`, `evade`, and the Python
//! package to come): defaults, the device, model loading, target building, and the batch loop
//! over inputs (directories, shards, `--resume`, the locked `--out` part file, caption files). A face parses its own
//! arguments into these types and shows progress its own way; what is computed lives here.

use crate::events::{done_json, error_json};
use crate::image::{load_image, DecodeLimits};
use crate::load::{load_encoder, load_lm};
use crate::parts::{PartContents, PartWriter};
use crate::settings::{RunSettings, TargetSettings};
use crate::sidecar::CaptionFiles;
use crate::steer::constraints::Blocklist;
use crate::steer::describe::{
    check_values, describe, describe_with, validate, BeamParams, DescribeOptions, DescribeResult,
    MagicParams, Sampling, ScoredText, StepEvent, Strategy,
};
use crate::steer::lm::LanguageModel;
use crate::steer::objectives::command::CommandScorer;
use crate::steer::scorer::Encoder;
use crate::steer::target::{combine, TargetPart};
use crate::steer::{CausalLm, Scorer};
use anyhow::{bail, Result};
use candle_core::Device;
use image::DynamicImage;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The language model describe uses when none is named.
pub const DEFAULT_LM: &str = "openai-community/gpt2";
/// The encoder describe uses when none is named.
pub const DEFAULT_CLIP: &str = "openai/clip-vit-base-patch32";
/// The original demo's configuration (`--preset seed`).
pub const SEED_CLIP: &str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K";
pub const SEED_TOP_K: usize = 2500;

/// Where models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when this build has it and a GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// The device for `choice`; `Cuda` is an error when no GPU can be used.
pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this clipsteer was built without CUDA or no GPU is visible; rebuild with `cargo build --release --features cuda`");
            }
            Device::new_cuda(0).map_err(|e| {
                anyhow::anyhow!("--device cuda: no usable GPU ({e}); check the NVIDIA driver, or use --device cpu")
            })
        }
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(device) = Device::new_cuda(0) {
                    return Ok(device);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// A named configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The original demo: CLIP ViT-H-14 (LAION) with top-k 2500.
    Seed,
}

impl Preset {
    pub fn encoder(self) -> &'static str {
        match self {
            Preset::Seed => SEED_CLIP,
        }
    }

    pub fn top_k(self) -> usize {
        match self {
            Preset::Seed => SEED_TOP_K,
        }
    }
}

/// The blocklist flags, shared by every face that steers (`--block`, `--blocklist`,
/// `--block-substrings`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BlockArgs {
    /// Words never to write, comma-separated (case-insensitive, whole words).
    #[arg(long, value_delimiter = ',', value_name = "WORDS")]
    pub block: Vec<String>,
    /// A file of words never to write: one per line (or comma-separated), # comments.
    #[arg(long, value_name = "FILE")]
    pub blocklist: Option<PathBuf>,
    /// Block any text containing a blocked word as a substring, not only as a whole word.
    #[arg(long)]
    pub block_substrings: bool,
}

impl BlockArgs {
    /// The words of --block and --blocklist together. Each --block value is comma-separated (the
    /// command line has split it already; options given as data are split here).
    pub fn to_blocklist(&self) -> Result<Blocklist> {
        let mut words: Vec<String> = self
            .block
            .iter()
            .flat_map(|w| w.split(','))
            .map(str::to_string)
            .collect();
        if let Some(path) = &self.blocklist {
            words.extend(Blocklist::read_file(path)?);
        }
        Blocklist::new(words, self.block_substrings)
    }
}

/// Text targets and weights, as given (`--target-text`, `--avoid-text`, `--target-weight`).
#[derive(Debug, Clone, Default)]
pub struct TargetSpec {
    /// Texts to steer toward.
    pub target_text: Vec<String>,
    /// Texts to steer away from.
    pub avoid_text: Vec<String>,
    /// Weights, in order: the image (when there is one), each target text, each avoided text;
    /// unlisted weights are 1.
    pub target_weight: Vec<f32>,
}

impl TargetSpec {
    /// Checks the weights before any model is loaded: at most one per target, each a positive,
    /// finite number (avoiding subtracts its weight, so a negative one would steer toward it).
    pub fn check_values(&self, has_image: bool) -> Result<()> {
        let wanted = usize::from(has_image) + self.target_text.len() + self.avoid_text.len();
        if self.target_weight.len() > wanted {
            crate::usage_bail!(
                "{} --target-weight values for {wanted} targets (the image, then each --target-text, then each --avoid-text)",
                self.target_weight.len()
            );
        }
        if let Some(bad) = self
            .target_weight
            .iter()
            .find(|w| !(w.is_finite() && **w > 0.0))
        {
            crate::usage_bail!("--target-weight must be a positive, finite number, got {bad}; to steer away from a text, give it as --avoid-text");
        }
        Ok(())
    }

    /// The parts of a target that are the same for every image: the text targets, weighted.
    pub fn text_parts<S: Scorer + ?Sized>(
        &self,
        scorer: &S,
        has_image: bool,
    ) -> Result<Vec<TargetPart>> {
        let wanted = usize::from(has_image) + self.target_text.len() + self.avoid_text.len();
        if self.target_weight.len() > wanted {
            bail!(
                "{} --target-weight values for {wanted} targets (the image, then each --target-text, then each --avoid-text)",
                self.target_weight.len()
            );
        }
        let weight = |index: usize| self.target_weight.get(index).copied().unwrap_or(1.0);
        let offset = usize::from(has_image);
        let mut parts = Vec::new();
        for (i, text) in self.target_text.iter().enumerate() {
            parts.push(TargetPart {
                embedding: scorer.embed_text(text)?,
                weight: weight(offset + i),
            });
        }
        for (i, text) in self.avoid_text.iter().enumerate() {
            let w = weight(offset + self.target_text.len() + i);
            parts.push(TargetPart {
                embedding: scorer.embed_text(text)?,
                weight: -w,
            });
        }
        Ok(parts)
    }

    /// The weight of an image target.
    pub fn image_weight(&self) -> f32 {
        self.target_weight.first().copied().unwrap_or(1.0)
    }
}

/// Text targets embedded once, ready to combine with each image.
#[derive(Debug, Clone)]
pub struct Targets {
    pub text_parts: Vec<TargetPart>,
    pub image_weight: f32,
}

impl Targets {
    pub fn prepare<S: Scorer + ?Sized>(
        spec: &TargetSpec,
        scorer: &S,
        has_image: bool,
    ) -> Result<Self> {
        Ok(Self {
            text_parts: spec.text_parts(scorer, has_image)?,
            image_weight: spec.image_weight(),
        })
    }

    /// The unit-length target for one input: the image (if any) and the text parts, combined.
    pub fn for_image(&self, encoder: &Encoder, image: Option<&DynamicImage>) -> Result<Vec<f32>> {
        match image {
            Some(image) => {
                let mut parts = vec![TargetPart {
                    embedding: crate::steer::normalize(&encoder.image_embedding(image)?),
                    weight: self.image_weight,
                }];
                parts.extend(self.text_parts.iter().cloned());
                combine(&parts)
            }
            None => combine(&self.text_parts),
        }
    }
}

/// Everything describe needs to know besides its inputs, with `None` for "the default".
#[derive(Debug, Clone)]
pub struct DescribeSpec {
    /// A GPT-2 directory or hub id, or a llama-family `.gguf` file.
    pub lm: String,
    /// CLIP or a sentence encoder; None: the preset's, else [`DEFAULT_CLIP`].
    pub encoder: Option<String>,
    pub preset: Option<Preset>,
    pub prompt: String,
    /// None: the preset's, else the strategy's ([`Strategy::default_top_k`]).
    pub top_k: Option<usize>,
    pub max_tokens: usize,
    pub strategy: Strategy,
    pub magic: MagicParams,
    pub beam: BeamParams,
    /// Go on to `max_tokens` instead of stopping at the end of a sentence (magic, beam).
    pub no_sentence_stop: bool,
    /// None: the strategy's ([`Strategy::default_scored_text`]).
    pub score_text: Option<ScoredText>,
    /// None: greedy. Seed strategy only.
    pub sampling: Option<Sampling>,
    pub prefilter: Option<usize>,
    pub blocklist: Blocklist,
    /// Steer by this program instead of an embedding (`--scorer-cmd`), with its per-batch
    /// timeout.
    pub scorer_cmd: Option<(String, std::time::Duration)>,
}

impl DescribeSpec {
    /// The CLI's defaults: GPT-2, "An image of ", 25 tokens, the seed strategy.
    pub fn new(prompt: &str, strategy: Strategy) -> Self {
        Self {
            lm: DEFAULT_LM.to_string(),
            encoder: None,
            preset: None,
            prompt: prompt.to_string(),
            top_k: None,
            max_tokens: 25,
            strategy,
            magic: MagicParams::default(),
            beam: BeamParams::default(),
            no_sentence_stop: false,
            score_text: None,
            sampling: None,
            prefilter: None,
            blocklist: Blocklist::default(),
            scorer_cmd: None,
        }
    }

    /// The encoder to load.
    pub fn encoder_spec(&self) -> String {
        self.encoder.clone().unwrap_or_else(|| {
            self.preset
                .map_or(DEFAULT_CLIP, Preset::encoder)
                .to_string()
        })
    }

    /// The settings record this run will carry, made before any model is loaded: hub models are
    /// named by their spec, not yet by commit ([`RunSettings::agrees_with_planned`]).
    pub fn planned_settings(&self, target_spec: &TargetSpec, has_image: bool) -> Result<Value> {
        let scorer = match &self.scorer_cmd {
            Some((command, _)) => format!("scorer-cmd:{command}"),
            None => self.encoder_spec(),
        };
        Ok(RunSettings::for_describe(
            &self.lm,
            &scorer,
            &self.options()?,
            TargetSettings {
                image: has_image,
                target_texts: &target_spec.target_text,
                avoid_texts: &target_spec.avoid_text,
                weights: &target_spec.target_weight,
            },
        )
        .to_json())
    }

    /// The loop's options, defaults filled in, their values checked ([`check_values`]).
    pub fn options(&self) -> Result<DescribeOptions> {
        let defaults = DescribeOptions::for_strategy(&self.prompt, self.strategy);
        let options = DescribeOptions {
            top_k: self
                .top_k
                .unwrap_or_else(|| self.preset.map_or(defaults.top_k, Preset::top_k)),
            max_tokens: self.max_tokens,
            sampling: self.sampling,
            prefilter: self.prefilter,
            blocklist: self.blocklist.clone(),
            magic: self.magic,
            beam: self.beam,
            stop_at_sentence_end: defaults.stop_at_sentence_end && !self.no_sentence_stop,
            scored_text: self.score_text.unwrap_or(defaults.scored_text),
            ..defaults
        };
        if self.sampling.is_some() && self.strategy != Strategy::Seed {
            crate::usage_bail!("--sample applies to --strategy seed only");
        }
        check_values(&options)?;
        Ok(options)
    }
}

/// describe's options by the command line's names (flags with underscores), for faces that take
/// them as data: the Python package's keyword arguments arrive as this JSON object. Unknown names
/// and wrong types are errors; what is left out takes the command line's default.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescribeRequest {
    pub prompt: Option<String>,
    pub strategy: Option<String>,
    pub top_k: Option<usize>,
    pub max_tokens: Option<usize>,
    pub magic_alpha: Option<f32>,
    pub magic_beta: Option<f32>,
    pub magic_scale: Option<f32>,
    pub beam_width: Option<usize>,
    pub beam_fluency: Option<f32>,
    pub beam_diversity: Option<f32>,
    pub beam_lookahead: Option<usize>,
    pub beam_close_within: Option<usize>,
    #[serde(default)]
    pub no_sentence_stop: bool,
    pub score_text: Option<String>,
    #[serde(default)]
    pub sample: bool,
    pub temperature: Option<f64>,
    pub seed: Option<u64>,
    pub prefilter: Option<usize>,
    #[serde(default)]
    pub block: Vec<String>,
    pub blocklist: Option<PathBuf>,
    #[serde(default)]
    pub block_substrings: bool,
    #[serde(default)]
    pub target_text: Vec<String>,
    #[serde(default)]
    pub avoid_text: Vec<String>,
    #[serde(default)]
    pub target_weight: Vec<f32>,
    pub scorer_cmd: Option<String>,
    /// Seconds.
    pub scorer_timeout: Option<f64>,
}

impl DescribeRequest {
    /// Parses a JSON object of options; the error names the offending option.
    pub fn from_json(json: &str) -> Result<Self> {
        options_from_json(json)
    }

    /// The spec and targets these options ask for, over models loaded from `lm` and `encoder`
    /// with `preset` (the defaults the command line applies).
    pub fn to_spec(&self, preset: Option<Preset>) -> Result<(DescribeSpec, TargetSpec)> {
        let strategy = match &self.strategy {
            Some(name) => value_enum::<Strategy>("strategy", name)?,
            None => Strategy::Seed,
        };
        let mut spec =
            DescribeSpec::new(self.prompt.as_deref().unwrap_or("An image of "), strategy);
        spec.preset = preset;
        spec.top_k = self.top_k;
        if let Some(n) = self.max_tokens {
            spec.max_tokens = n;
        }
        let magic = MagicParams::default();
        spec.magic = MagicParams {
            alpha: self.magic_alpha.unwrap_or(magic.alpha),
            beta: self.magic_beta.unwrap_or(magic.beta),
            scale: self.magic_scale.or(magic.scale),
        };
        if let Some(width) = self.beam_width {
            spec.beam.width = width;
        }
        if let Some(fluency) = self.beam_fluency {
            spec.beam.fluency = fluency;
        }
        if let Some(diversity) = self.beam_diversity {
            spec.beam.diversity = diversity;
        }
        if let Some(lookahead) = self.beam_lookahead {
            spec.beam.lookahead = lookahead;
        }
        if let Some(close_within) = self.beam_close_within {
            spec.beam.close_within = close_within;
        }
        spec.no_sentence_stop = self.no_sentence_stop;
        spec.score_text = match &self.score_text {
            Some(name) => Some(value_enum::<ScoredText>("score_text", name)?),
            None => None,
        };
        if !self.sample && (self.temperature.is_some() || self.seed.is_some()) {
            bail!("temperature and seed apply with sample=True only");
        }
        spec.sampling = self.sample.then(|| Sampling {
            temperature: self.temperature.unwrap_or(0.05),
            seed: self.seed.unwrap_or(0),
        });
        spec.prefilter = self.prefilter;
        spec.blocklist = BlockArgs {
            block: self.block.clone(),
            blocklist: self.blocklist.clone(),
            block_substrings: self.block_substrings,
        }
        .to_blocklist()?;
        if let Some(command) = &self.scorer_cmd {
            let timeout = seconds("scorer_timeout", self.scorer_timeout.unwrap_or(60.0))?;
            spec.scorer_cmd = Some((command.clone(), timeout));
        }
        let targets = TargetSpec {
            target_text: self.target_text.clone(),
            avoid_text: self.avoid_text.clone(),
            target_weight: self.target_weight.clone(),
        };
        Ok((spec, targets))
    }
}

/// Options given as a JSON object, parsed into `T`; an error names the option it is about
/// (serde_path_to_error) and says nothing of JSON positions, which the caller never wrote.
pub fn options_from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let inner = e.inner().to_string();
        let inner = inner
            .split(" at line ")
            .next()
            .unwrap_or(&inner)
            .to_string();
        match e.path().to_string().as_str() {
            "." => anyhow::anyhow!("bad option: {inner}"),
            path => anyhow::anyhow!("option {path}: {inner}"),
        }
    })
}

/// The largest time limit or timeout accepted: about 31 years.
pub const MAX_SECONDS: f64 = 1e9;

/// A duration given in seconds by the option `name`: a positive, finite number of at most
/// [`MAX_SECONDS`].
pub fn seconds(name: &str, value: f64) -> Result<std::time::Duration> {
    if !(value.is_finite() && value > 0.0) {
        crate::usage_bail!("{name} must be a positive number of seconds, got {value}");
    }
    // Deadlines are Instant + Duration, which panics past the clock's range: a bound far beyond
    // any run keeps every such sum valid.
    if value > MAX_SECONDS {
        crate::usage_bail!("{name} must be at most {MAX_SECONDS:e} seconds, got {value:e}");
    }
    Ok(std::time::Duration::from_secs_f64(value))
}

/// A value of a command-line enum by its command-line name.
pub fn value_enum<T: clap::ValueEnum>(option: &str, name: &str) -> Result<T> {
    T::from_str(name, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        anyhow::anyhow!("{option} '{name}' is not one of: {}", names.join(", "))
    })
}

/// Preset by its command-line name (`"seed"`).
pub fn preset_named(name: &str) -> Result<Preset> {
    value_enum("preset", name)
}

/// The extensions a directory is searched for, as shown to users.
const IMAGE_EXTENSIONS_SHOWN: &str = ".jpg .jpeg .png .webp .gif .bmp";

/// Expands files and directories (recursively, sorted) into the list of images to describe:
/// files ending in the extensions the image decoder reads, in any case.
pub fn collect_inputs(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut walk = InputWalk::default();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => walk.dir(path, &meta),
            Ok(meta) if meta.is_file() => walk.file(path, &meta),
            // Named by the user but not a regular file (missing, a FIFO, a device): kept once, so
            // that describing it says what is wrong with it, without ever opening it blocking.
            _ => walk.other(path),
        }
    }
    walk.out
}

/// A folder walk that takes every regular image file once, whatever links it holds: files and
/// folders are known by their identity (device and inode), so a file reached by two names, a
/// folder linked into itself or a link loop is visited once. FIFOs, sockets, devices and dangling
/// links in folders are skipped; they are not images.
#[derive(Default)]
struct InputWalk {
    files: HashSet<(u64, u64)>,
    dirs: HashSet<(u64, u64)>,
    others: HashSet<PathBuf>,
    out: Vec<PathBuf>,
}

impl InputWalk {
    fn file(&mut self, path: &Path, meta: &std::fs::Metadata) {
        if self.files.insert(crate::files::identity(meta)) {
            self.out.push(path.to_path_buf());
        }
    }

    fn other(&mut self, path: &Path) {
        if self.others.insert(crate::pathkey::key(path)) {
            self.out.push(path.to_path_buf());
        }
    }

    fn dir(&mut self, dir: &Path, meta: &std::fs::Metadata) {
        if !self.dirs.insert(crate::files::identity(meta)) {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            self.out.push(dir.to_path_buf()); // reported as unreadable later
            return;
        };
        let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for path in entries {
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => self.dir(&path, &meta),
                Ok(meta) if meta.is_file() && has_image_extension(&path) => self.file(&path, &meta),
                _ => {}
            }
        }
    }
}

fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "jpg" | "jpeg" | "png" | "webp" | "gif" | "bmp"
        )
    })
}

/// One job of a batch: an image, or `None` for a job steered by the text targets alone.
pub type Input = Option<PathBuf>;

/// How an input is named in events and in the out file.
pub fn input_label(input: &Input) -> Option<String> {
    input.as_deref().map(crate::pathkey::label)
}

/// Which inputs a batch runs and where its results go.
#[derive(Debug, Clone, Default)]
pub struct InputSpec {
    /// Image files or directories; empty: one job steered by the text targets alone.
    pub images: Vec<PathBuf>,
    /// Take inputs `i` with `i mod N = I` (0-based `(I, N)`).
    pub shard: Option<(usize, usize)>,
    /// The part file each input's `done` or `error` line is appended to (locked while the batch
    /// runs, so that two tasks never write one file).
    pub out: Option<PathBuf>,
    /// Skip inputs that already have a `done` line in `out`.
    pub resume: bool,
    /// Write each image's caption to a `.txt` file beside it (`describe --write-txt`).
    pub captions: Option<CaptionFiles>,
}

impl InputSpec {
    /// The batch to run: directories expanded, the shard taken, the part file locked and
    /// finished inputs skipped, inputs whose caption file cannot be written refused. Its
    /// `inputs` are empty when there is nothing left to do.
    pub fn plan(&self) -> Result<BatchPlan> {
        if self.captions.is_some() && self.images.is_empty() {
            crate::usage_bail!(
                "--write-txt writes a caption file beside each image: give images to describe"
            );
        }
        let out_key = self.out.as_deref().map(crate::pathkey::key);
        let out_identity = self.out.as_deref().and_then(crate::files::file_identity);
        let is_out = |path: &Path| {
            out_key.as_ref() == Some(&crate::pathkey::key(path))
                || (out_identity.is_some() && crate::files::file_identity(path) == out_identity)
        };
        // The part file is a result, never an input (an --out named like an image inside the
        // input folder would otherwise be described, and fail, on every resume).
        let all_images: Vec<PathBuf> = collect_inputs(&self.images)
            .into_iter()
            .filter(|path| !is_out(path))
            .collect();
        if !self.images.is_empty() && all_images.is_empty() {
            let dirs: Vec<String> = self
                .images
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            crate::usage_bail!(
                "no images in {}: directories are searched for {}; give image files by name for other extensions",
                dirs.join(", "),
                IMAGE_EXTENSIONS_SHOWN
            );
        }
        // Refused before any work: caption files that would collide. Decided on the whole
        // input list, so that every shard agrees.
        let mut refused: HashMap<PathBuf, String> = HashMap::new();
        if self.captions.is_some() {
            // A caption file that is the part file, or that is (a link to) an input image, would
            // destroy it when written: refused before any work.
            let inputs: HashSet<(u64, u64)> = all_images
                .iter()
                .filter_map(|p| crate::files::file_identity(p))
                .collect();
            for image in &all_images {
                let caption = crate::sidecar::caption_path(image);
                if is_out(&caption) {
                    crate::usage_bail!(
                        "--out {} is the caption file of {}: give --out another name",
                        caption.display(),
                        image.display()
                    );
                }
                if crate::files::file_identity(&caption).is_some_and(|id| inputs.contains(&id)) {
                    refused.insert(
                        image.clone(),
                        format!(
                            "caption file {} is (a link to) an input image, which writing the caption would destroy; remove or rename it",
                            caption.display()
                        ),
                    );
                }
            }
            for (image, others) in crate::sidecar::collisions(&all_images) {
                let others: Vec<String> = others.iter().map(|o| o.display().to_string()).collect();
                let message = format!(
                    "{} and {} would share the caption file {}; rename one",
                    image.display(),
                    others.join(", "),
                    crate::sidecar::caption_path(&image).display()
                );
                refused.insert(image, message);
            }
        }
        let inputs: Vec<Input> = if self.images.is_empty() {
            vec![None]
        } else {
            all_images.into_iter().map(Some).collect()
        };
        let mut inputs = crate::parts::take_shard(inputs, self.shard);
        // Locked before it is read, so that no other task can write between the read and the run.
        let mut part = match &self.out {
            Some(path) => Some(PartWriter::open(path)?),
            None => None,
        };
        let mut existing = None;
        let mut trimmed_bytes = 0;
        if let Some(part) = part.as_mut() {
            let contents = part.read_existing()?;
            trimmed_bytes = contents.trimmed_bytes;
            if self.resume {
                inputs.retain(|input| match input {
                    Some(path) => !contents.done.contains(&crate::pathkey::key(path)),
                    None => true,
                });
            }
            // Kept with or without --resume: lines appended to a part file must have its
            // settings, or merge would refuse the file later.
            existing = Some(contents);
        }
        if let Some(captions) = &self.captions {
            for image in inputs.iter().flatten() {
                if let Some(why) = captions.refusal(image) {
                    refused.entry(image.clone()).or_insert(why);
                }
            }
            if !inputs.is_empty() {
                crate::sidecar::check_writable(
                    inputs
                        .iter()
                        .flatten()
                        .filter(|image| !refused.contains_key(*image))
                        .map(PathBuf::as_path),
                )?;
            }
        }
        Ok(BatchPlan {
            inputs,
            refused,
            part,
            existing,
            captions: self.captions.clone(),
            trimmed_bytes,
        })
    }
}

/// A batch ready to run (from [`InputSpec::plan`]).
#[derive(Debug)]
pub struct BatchPlan {
    /// The inputs to run, in order.
    pub inputs: Vec<Input>,
    /// Inputs refused before any work, with the reason; each becomes an `error` line.
    pub refused: HashMap<PathBuf, String>,
    part: Option<PartWriter>,
    /// What the part file already holds: its settings must match the run's.
    existing: Option<PartContents>,
    captions: Option<CaptionFiles>,
    /// Bytes of a partial last line cut off the part file (a run killed mid-write).
    pub trimmed_bytes: u64,
}

impl BatchPlan {
    /// The part file, if the batch writes one.
    pub fn part_path(&self) -> Option<&Path> {
        self.part.as_ref().map(PartWriter::path)
    }

    /// Refuses, before any model is loaded, a part file whose lines were made with other
    /// settings than `planned` ([`DescribeSpec::planned_settings`]): the same answer whether inputs remain
    /// or all are done. Hub models are compared by id here and by commit once loaded.
    pub fn check_planned_settings(&self, planned: &Value) -> Result<()> {
        if let (Some(part), Some(existing)) = (&self.part, &self.existing) {
            existing.check_planned(part.path(), planned)?;
        }
        Ok(())
    }
}

/// The models a describer runs, loaded once. Describers with different options share them
/// through an `Arc`: the Python package's `Describer` loads its models once and builds a
/// [`Describer`] per call.
pub struct DescribeModels {
    pub lm: LanguageModel,
    /// CLIP or a sentence encoder; None when a `--scorer-cmd` program steers instead.
    pub encoder: Option<Encoder>,
    /// What each was loaded from (a path, or a hub id with its revision).
    pub lm_spec: String,
    pub encoder_spec: Option<String>,
}

impl DescribeModels {
    /// Loads the LM and, when `encoder` is given, the encoder.
    pub fn load(lm: &str, encoder: Option<&str>, device: &Device) -> Result<Self> {
        let loaded_lm = load_lm(lm, device)?;
        let loaded_encoder = match encoder {
            Some(spec) => Some(load_encoder(spec, device)?),
            None => None,
        };
        Ok(Self {
            lm: loaded_lm,
            encoder: loaded_encoder,
            lm_spec: lm.to_string(),
            encoder_spec: encoder.map(str::to_string),
        })
    }

    /// The encoder, or an error saying these models were loaded without one.
    pub fn encoder(&self) -> Result<&Encoder> {
        self.encoder
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no encoder was loaded: give one to embed or score"))
    }

    /// Where each model came from ([`crate::events::models_json`]), after loading so that hub
    /// models are named by the commit they resolved to.
    pub fn provenance(&self) -> Value {
        match &self.encoder_spec {
            Some(encoder) => {
                crate::events::models_json(&[("lm", &self.lm_spec), ("encoder", encoder)])
            }
            None => crate::events::models_json(&[("lm", &self.lm_spec)]),
        }
    }
}

/// What describe steers toward.
pub enum DescribeObjective {
    /// The cosine with a target embedding under the models' encoder: the image (per input) and
    /// the text targets.
    Embedding(Targets),
    /// A `--scorer-cmd` program scoring the candidate texts alone.
    Command(CommandScorer),
}

/// Loaded models, options and objective: describes one input at a time.
pub struct Describer {
    pub models: Arc<DescribeModels>,
    pub options: DescribeOptions,
    pub objective: DescribeObjective,
    /// Where each model came from (id, revision, resolved commit; or a local path), recorded in
    /// every `done` event so that a result can be reproduced.
    pub provenance: Value,
    /// What decides the text (models by commit, a fingerprint of the options and targets),
    /// recorded in every `done` and `error` line so that `merge` and `--resume` can refuse
    /// parts made with other settings.
    pub settings: Value,
}

impl Describer {
    /// Loads the LM and the encoder (or, with `spec.scorer_cmd`, the LM alone), then
    /// [`Describer::new`].
    pub fn load(
        spec: &DescribeSpec,
        target_spec: &TargetSpec,
        has_image: bool,
        device: &Device,
    ) -> Result<Self> {
        spec.options()?;
        target_spec.check_values(has_image)?;
        check_scorer_cmd(spec, target_spec, has_image)?;
        let encoder = spec.scorer_cmd.is_none().then(|| spec.encoder_spec());
        let models = DescribeModels::load(&spec.lm, encoder.as_deref(), device)?;
        Self::new(Arc::new(models), spec, target_spec, has_image)
    }

    /// A describer over already loaded models: checks the options against the LM, embeds the
    /// text targets (or starts `spec.scorer_cmd`). `spec.lm` and `spec.encoder` are not
    /// consulted: the models' own specs are recorded. `has_image`: whether inputs are images
    /// (the first weight is then the image's).
    pub fn new(
        models: Arc<DescribeModels>,
        spec: &DescribeSpec,
        target_spec: &TargetSpec,
        has_image: bool,
    ) -> Result<Self> {
        let options = spec.options()?;
        target_spec.check_values(has_image)?;
        check_scorer_cmd(spec, target_spec, has_image)?;
        validate(&models.lm, &options)?;
        let (objective, scorer) = match &spec.scorer_cmd {
            Some((command, timeout)) => (
                DescribeObjective::Command(CommandScorer::start(command, *timeout)?),
                format!("scorer-cmd:{command}"),
            ),
            None => {
                let encoder = models.encoder()?;
                if has_image && matches!(encoder, Encoder::Sentence(_)) {
                    // Said once, before the batch, instead of once per image.
                    crate::usage_bail!(
                        "{} embeds text only, so it cannot be steered toward images: give a CLIP model as --encoder, or --target-text without images",
                        models.encoder_spec.as_deref().unwrap_or("the encoder")
                    );
                }
                let targets = Targets::prepare(target_spec, encoder, has_image)?;
                if !has_image {
                    // Checked now, not at the first step: no target, or weights that cancel.
                    combine(&targets.text_parts)?;
                }
                let name = models.encoder_spec.clone().unwrap_or_default();
                (DescribeObjective::Embedding(targets), name)
            }
        };
        // A --scorer-cmd run records the command in place of the encoder.
        let provenance = match &spec.scorer_cmd {
            Some(_) => crate::events::models_json(&[("lm", &models.lm_spec)]),
            None => models.provenance(),
        };
        let settings = RunSettings::for_describe(
            &models.lm_spec,
            &scorer,
            &options,
            TargetSettings {
                image: has_image,
                target_texts: &target_spec.target_text,
                avoid_texts: &target_spec.avoid_text,
                weights: &target_spec.target_weight,
            },
        )
        .to_json();
        Ok(Self {
            models,
            options,
            objective,
            provenance,
            settings,
        })
    }

    pub fn lm(&self) -> &LanguageModel {
        &self.models.lm
    }

    /// Describes one input (an image file, or `None` for the text targets alone), calling
    /// `on_step` after every step.
    pub fn describe(
        &self,
        image: Option<&Path>,
        on_step: impl FnMut(&StepEvent) -> Result<()>,
    ) -> Result<DescribeResult> {
        match image {
            Some(path) => {
                let decoded = load_image(path, DecodeLimits::default())?;
                self.describe_image(Some(&decoded), on_step)
            }
            None => self.describe_image(None, on_step),
        }
    }

    /// Describes a decoded image (pixels as [`crate::image::load_image`] gives them), or the
    /// text targets alone.
    pub fn describe_image(
        &self,
        image: Option<&DynamicImage>,
        on_step: impl FnMut(&StepEvent) -> Result<()>,
    ) -> Result<DescribeResult> {
        match &self.objective {
            DescribeObjective::Embedding(targets) => {
                let encoder = self.models.encoder()?;
                let target = targets.for_image(encoder, image)?;
                describe(&self.models.lm, encoder, &target, &self.options, on_step)
            }
            DescribeObjective::Command(command) => {
                describe_with(&self.models.lm, command, &self.options, on_step)
            }
        }
    }
}

fn check_scorer_cmd(spec: &DescribeSpec, target_spec: &TargetSpec, has_image: bool) -> Result<()> {
    if let Some((command, _)) = &spec.scorer_cmd {
        if has_image || !target_spec.target_text.is_empty() || !target_spec.avoid_text.is_empty() {
            crate::usage_bail!("describe --scorer-cmd steers by the program alone: leave out images, --target-text and --avoid-text (or leave out --scorer-cmd)");
        }
        if command.trim().is_empty() {
            crate::usage_bail!("--scorer-cmd is empty: give the program to run");
        }
    }
    Ok(())
}

/// What a batch reports as it goes.
pub enum BatchEvent<'a> {
    /// A step of the input named `image`.
    Step {
        image: Option<&'a str>,
        event: &'a StepEvent,
    },
    /// An input finished; `line` is its `done` event, as written to the out file.
    Done {
        image: Option<&'a str>,
        result: &'a DescribeResult,
        line: &'a Value,
    },
    /// An input failed; `message` is one line, `line` its `error` event.
    Failed {
        image: Option<&'a str>,
        message: &'a str,
        line: &'a Value,
        /// Whether `message` already names the input (an unreadable image's error does), so
        /// that a face printing "input: message" would say the path twice.
        names_input: bool,
    },
}

/// How a batch went.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchSummary {
    pub described: usize,
    pub failed: usize,
    /// Caption files written (`--write-txt`).
    pub captions_written: usize,
}

/// Describes every input of `plan` in order. A failing input gives a `Failed` event and the
/// batch goes on; the part file (one whole line per input) gets each `done` or `error` line,
/// after the image's caption file when the plan writes them. A resumed part file made with other
/// settings is refused before any work. An error from `observer` or from writing ends the batch.
pub fn run_batch(
    describer: &Describer,
    plan: &mut BatchPlan,
    mut observer: impl FnMut(BatchEvent) -> Result<()>,
) -> Result<BatchSummary> {
    if let (Some(part), Some(existing)) = (&plan.part, &plan.existing) {
        existing.check_settings(part.path(), &describer.settings)?;
    }
    let mut summary = BatchSummary::default();
    for input in &plan.inputs {
        let image = input_label(input);
        let started = std::time::Instant::now();
        let refused = input.as_ref().and_then(|path| plan.refused.get(path));
        let outcome = match refused {
            Some(why) => Err(anyhow::anyhow!("{why}")),
            None => describer.describe(input.as_deref(), |event| {
                observer(BatchEvent::Step {
                    image: image.as_deref(),
                    event,
                })
            }),
        };
        // The caption file is written before the done line, so that a done line means its
        // caption file is in place; a caption that cannot be written makes the image an error.
        let outcome = match (outcome, &plan.captions, input) {
            (Ok(result), Some(captions), Some(path)) => {
                crate::sidecar::generated_part(&result.text, &describer.options.prompt, || {
                    describer.lm().decode(&result.token_ids)
                })
                .and_then(|generated| captions.caption(&generated))
                .and_then(|caption| captions.write(path, &caption))
                .map(|_| {
                    summary.captions_written += 1;
                    result
                })
            }
            (outcome, _, _) => outcome,
        };
        let line = match outcome {
            Ok(result) => {
                summary.described += 1;
                let mut line =
                    done_json(image.as_deref(), &result, started.elapsed().as_secs_f64());
                if let Some(path) = input {
                    crate::pathkey::annotate(&mut line, path);
                }
                line["models"] = describer.provenance.clone();
                line["settings"] = describer.settings.clone();
                observer(BatchEvent::Done {
                    image: image.as_deref(),
                    result: &result,
                    line: &line,
                })?;
                line
            }
            Err(e) => {
                summary.failed += 1;
                let message = crate::error_line(&e);
                let mut line = error_json(image.as_deref(), &message);
                if let Some(path) = input {
                    crate::pathkey::annotate(&mut line, path);
                }
                line["settings"] = describer.settings.clone();
                observer(BatchEvent::Failed {
                    image: image.as_deref(),
                    message: &message,
                    line: &line,
                    names_input: e.downcast_ref::<crate::image::ImageFile>().is_some(),
                })?;
                line
            }
        };
        if let Some(part) = plan.part.as_mut() {
            part.append(&line)?;
        }
    }
    Ok(summary)
}
