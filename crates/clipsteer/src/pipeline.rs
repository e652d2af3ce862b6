//! The describe pipeline behind every face (the command line, `serve`, `evade`, `bench` and the
//! Python package): model loading, target building, the [`Describer`] that runs a resolved
//! [`DescribeRequest`](crate::request::DescribeRequest), and the batch loop over inputs
//! (directories, shards, `--resume`, the locked `--out` part file, caption files). A face parses
//! its own arguments into the request and shows progress its own way; what is computed lives here.

use crate::events::{done_json, error_json};
use crate::image::{load_image, DecodeLimits};
use crate::load::{load_encoder, load_lm};
use crate::parts::{PartContents, PartWriter};
use crate::request::{ResolvedDescribe, TargetSpec};
use crate::settings::{RunSettings, TargetSettings};
use crate::sidecar::CaptionFiles;
use crate::steer::chat_template::ChatTemplate;
use crate::steer::describe::{
    describe, describe_with, validate, DescribeOptions, DescribeResult, StepEvent,
};
use crate::steer::lm::LanguageModel;
use crate::steer::objectives::command::CommandScorer;
use crate::steer::scorer::Encoder;
use crate::steer::target::{combine, TargetPart};
use crate::steer::{CausalLm, Scorer};
use anyhow::Result;
use candle_core::Device;
use image::DynamicImage;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Text targets embedded once, ready to combine with each image.
#[derive(Debug, Clone)]
pub struct Targets {
    pub text_parts: Vec<TargetPart>,
    pub image_weight: f32,
}

impl Targets {
    /// Embeds the text targets (the parts that are the same for every image), weighted: each
    /// target text by its weight, each avoided text by minus its weight.
    pub fn prepare<S: Scorer + ?Sized>(
        spec: &TargetSpec,
        scorer: &S,
        has_image: bool,
    ) -> Result<Self> {
        let weight = |index: usize| spec.target_weight.get(index).copied().unwrap_or(1.0);
        let offset = usize::from(has_image);
        let mut text_parts = Vec::new();
        for (i, text) in spec.target_text.iter().enumerate() {
            text_parts.push(TargetPart {
                embedding: scorer.embed_text(text)?,
                weight: weight(offset + i),
            });
        }
        for (i, text) in spec.avoid_text.iter().enumerate() {
            text_parts.push(TargetPart {
                embedding: scorer.embed_text(text)?,
                weight: -weight(offset + spec.target_text.len() + i),
            });
        }
        Ok(Self {
            text_parts,
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
        let mut refused = match self.captions {
            Some(_) => caption_refusals(&all_images, &is_out)?,
            None => HashMap::new(),
        };
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
                // A text-target run is one input: done once its done line is there (the
                // settings check below holds it to the same targets).
                inputs.retain(|input| match input {
                    Some(path) => !contents.done.contains(&crate::pathkey::key(path)),
                    None => !contents.done_text_target,
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

/// The images whose caption file may not be written, and why: it would be (a link to) an input
/// image, or shared with another image. A caption file that is the part file (`is_out`) is an
/// error for the whole batch.
fn caption_refusals(
    all_images: &[PathBuf],
    is_out: &dyn Fn(&Path) -> bool,
) -> Result<HashMap<PathBuf, String>> {
    let mut refused = HashMap::new();
    // A caption file that is the part file, or that is (a link to) an input image, would
    // destroy it when written: refused before any work.
    let inputs: HashSet<(u64, u64)> = all_images
        .iter()
        .filter_map(|p| crate::files::file_identity(p))
        .collect();
    for image in all_images {
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
    for (image, others) in crate::sidecar::collisions(all_images) {
        let others: Vec<String> = others.iter().map(|o| o.display().to_string()).collect();
        let message = format!(
            "{} and {} would share the caption file {}; rename one",
            image.display(),
            others.join(", "),
            crate::sidecar::caption_path(&image).display()
        );
        refused.insert(image, message);
    }
    Ok(refused)
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
    /// settings than `planned` gives ([`planned_settings`]): the same answer whether inputs
    /// remain or all are done. Hub models are compared by id here and by commit once loaded.
    /// `planned` runs only when there are lines to compare: it may read the LM's chat template.
    pub fn check_planned_settings(&self, planned: impl FnOnce() -> Result<Value>) -> Result<()> {
        if let (Some(part), Some(existing)) = (&self.part, &self.existing) {
            existing.check_planned(part.path(), &planned()?)?;
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
    /// The LM's chat template, when its files carry one: without a prompt, describe asks it
    /// the instruction through it ([`ResolvedDescribe::for_lm`]).
    pub chat_template: Option<ChatTemplate>,
}

impl DescribeModels {
    /// Loads the LM and, when `encoder` is given, the encoder.
    pub fn load(lm: &str, encoder: Option<&str>, device: &Device) -> Result<Self> {
        Self::load_with_template(lm, encoder, device, true)
    }

    /// [`DescribeModels::load`], reading the LM's chat template only when `template` says it
    /// will be used: a run given a prompt never renders it, so a broken one must not stop it.
    fn load_with_template(
        lm: &str,
        encoder: Option<&str>,
        device: &Device,
        template: bool,
    ) -> Result<Self> {
        let loaded_lm = load_lm(lm, device)?;
        let chat_template = match template {
            true => crate::load::chat_template_if_any(lm)?,
            false => None,
        };
        let loaded_encoder = match encoder {
            Some(spec) => Some(load_encoder(spec, device)?),
            None => None,
        };
        Ok(Self {
            lm: loaded_lm,
            encoder: loaded_encoder,
            lm_spec: lm.to_string(),
            encoder_spec: encoder.map(str::to_string),
            chat_template,
        })
    }

    /// The encoder, or an error saying these models were loaded without one.
    pub fn encoder(&self) -> Result<&Encoder> {
        self.encoder
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no encoder was loaded: give one to embed or score"))
    }

    /// Where each model came from ([`crate::hub::models_json`]), after loading so that hub
    /// models are named by the commit they resolved to.
    pub fn provenance(&self) -> Value {
        match &self.encoder_spec {
            Some(encoder) => {
                crate::hub::models_json(&[("lm", &self.lm_spec), ("encoder", encoder)])
            }
            None => crate::hub::models_json(&[("lm", &self.lm_spec)]),
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
    /// Whether the prompt is the LM's chat template around the instruction
    /// ([`ResolvedDescribe::chat_prompt`]).
    pub chat_prompt: bool,
}

impl Describer {
    /// Loads the LM and the encoder `encoder` (or, when a `--scorer-cmd` program steers, the LM
    /// alone), then [`Describer::new`].
    pub fn load(
        lm: &str,
        encoder: &str,
        resolved: &ResolvedDescribe,
        device: &Device,
    ) -> Result<Self> {
        let encoder = resolved.scorer_cmd.is_none().then_some(encoder);
        let template = resolved.instruction().is_some();
        let models = DescribeModels::load_with_template(lm, encoder, device, template)?;
        Self::new(Arc::new(models), resolved)
    }

    /// A describer over already loaded models: checks the options against the LM, embeds the
    /// text targets (or starts the scorer program). The models' own specs are recorded.
    pub fn new(models: Arc<DescribeModels>, resolved: &ResolvedDescribe) -> Result<Self> {
        let resolved = &resolved.for_lm(models.chat_template.as_ref())?;
        let ResolvedDescribe {
            options,
            targets: target_spec,
            scorer_cmd,
            has_image,
            ..
        } = resolved;
        let has_image = *has_image;
        validate(&models.lm, options)?;
        let (objective, scorer) = match scorer_cmd {
            Some((command, timeout)) => (
                DescribeObjective::Command(CommandScorer::start(command, *timeout)?),
                format!("scorer-cmd:{command}"),
            ),
            None => {
                let encoder = models.encoder()?;
                if has_image && !encoder.embeds_images() {
                    // Said once, before the batch, instead of once per image.
                    crate::usage_bail!(
                        "{} embeds text only, so it cannot be steered toward images: give a CLIP or SigLIP model as --encoder, or --target-text without images",
                        models.encoder_spec.as_deref().unwrap_or("the encoder")
                    );
                }
                if options.scored_text == crate::steer::options::ScoredText::Full {
                    if let Some(limit) = encoder.fills_context(&options.prompt)? {
                        crate::usage_bail!(
                            "the prompt alone fills the encoder's {limit}-token context, so every candidate would score the same: shorten --prompt, or pass --score-text generated"
                        );
                    }
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
        let provenance = match scorer_cmd {
            Some(_) => crate::hub::models_json(&[("lm", &models.lm_spec)]),
            None => models.provenance(),
        };
        let settings = settings_record(&models.lm_spec, &scorer, resolved).to_json();
        Ok(Self {
            models,
            options: options.clone(),
            objective,
            provenance,
            settings,
            chat_prompt: resolved.chat_prompt,
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
        let target = self.target(image)?;
        self.describe_target(target.as_deref(), on_step)
    }

    /// The unit-length target of one input under the encoder (None when a program steers): the
    /// half of [`Self::describe_image`] that looks at the image, for faces that report a failure
    /// to embed differently from a failure to describe.
    pub fn target(&self, image: Option<&DynamicImage>) -> Result<Option<Vec<f32>>> {
        match &self.objective {
            DescribeObjective::Embedding(targets) => {
                Ok(Some(targets.for_image(self.models.encoder()?, image)?))
            }
            DescribeObjective::Command(_) => Ok(None),
        }
    }

    /// Runs the search toward `target` ([`Self::target`]'s). When the prompt is the LM's chat
    /// template ([`Self::chat_prompt`]), the steps' and the result's `text` are the model's
    /// answer alone: the markup is how the LM was asked, not the description, and every face
    /// (JSON lines, `serve`, Python) would otherwise hand it to the user.
    pub fn describe_target(
        &self,
        target: Option<&[f32]>,
        mut on_step: impl FnMut(&StepEvent) -> Result<()>,
    ) -> Result<DescribeResult> {
        if !self.chat_prompt {
            return self.search(target, on_step);
        }
        let prompt = self.options.prompt.as_str();
        let answer = |text: &str| {
            text.strip_prefix(prompt)
                .map(|rest| rest.trim_start().to_string())
        };
        let mut result = self.search(target, |event| match answer(&event.text) {
            Some(text) => on_step(&StepEvent {
                text,
                ..event.clone()
            }),
            None => on_step(event),
        })?;
        // As caption files take it: the text after the prompt, or the generated ids decoded
        // where the tokenizer does not give the prompt back byte for byte.
        let generated = crate::sidecar::generated_part(&result.text, prompt, || {
            self.models.lm.decode(&result.token_ids)
        })?;
        result.text = generated.trim_start().to_string();
        Ok(result)
    }

    fn search(
        &self,
        target: Option<&[f32]>,
        on_step: impl FnMut(&StepEvent) -> Result<()>,
    ) -> Result<DescribeResult> {
        match (&self.objective, target) {
            (DescribeObjective::Embedding(_), Some(target)) => describe(
                &self.models.lm,
                self.models.encoder()?,
                target,
                &self.options,
                on_step,
            ),
            (DescribeObjective::Command(command), _) => {
                describe_with(&self.models.lm, command, &self.options, on_step)
            }
            (DescribeObjective::Embedding(_), None) => {
                anyhow::bail!("describing toward an embedding needs its target")
            }
        }
    }

    /// The `done` event of one input, as every face sends it: the result, then the models and
    /// the settings record.
    pub fn done_event(&self, image: Option<&str>, result: &DescribeResult, seconds: f64) -> Value {
        let mut done = done_json(image, result, seconds);
        self.record(&mut done);
        done
    }

    /// Adds what every `done` event ends with: the models and the settings record.
    /// On the chat route, also the rendered prompt, which `text` (the answer) leaves out.
    pub fn record(&self, done: &mut Value) {
        if self.chat_prompt && done["event"] == "done" {
            done["prompt"] = Value::from(self.options.prompt.as_str());
        }
        done["models"] = self.provenance.clone();
        done["settings"] = self.settings.clone();
    }
}

/// The settings record of a describe with `resolved`'s options over the LM `lm` and the scorer
/// `scorer` (an encoder, or `scorer-cmd:COMMAND`), named as given or as loaded.
pub fn settings_record(lm: &str, scorer: &str, resolved: &ResolvedDescribe) -> RunSettings {
    RunSettings::for_describe(
        lm,
        scorer,
        &resolved.options,
        TargetSettings {
            image: resolved.has_image,
            target_texts: &resolved.targets.target_text,
            avoid_texts: &resolved.targets.avoid_text,
            weights: &resolved.targets.target_weight,
        },
    )
}

/// The settings record a run will carry, made before any model is loaded: hub models are named
/// by their spec, not yet by commit ([`RunSettings::agrees_with_planned`]). Without a prompt,
/// the LM's chat template is read (its metadata or tokenizer_config.json) for the one it gets.
pub fn planned_settings(lm: &str, encoder: &str, resolved: &ResolvedDescribe) -> Result<Value> {
    let scorer = match &resolved.scorer_cmd {
        Some((command, _)) => format!("scorer-cmd:{command}"),
        None => encoder.to_string(),
    };
    let template = match resolved.instruction() {
        Some(_) => crate::load::chat_template_if_any(lm)?,
        None => None,
    };
    let resolved = resolved.for_lm(template.as_ref())?;
    Ok(settings_record(lm, &scorer, &resolved).to_json())
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
                describer.record(&mut line);
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
