//! What a user asks for, as one type per job, with every default defined once.
//!
//! [`DescribeRequest`] is describe's options, whichever face they come from: the command line
//! parses it with clap (its `#[arg]` attributes are the defaults), the Python package's keyword
//! arguments and `serve`'s `params` arrive as JSON and deserialize into it (missing keys take the
//! same defaults: [`Default`] is the command line's parse of no flags), and `evade` fills one in
//! (`bench` times the searches on their own options, below this type). [`DescribeRequest::resolve`] turns it into the search's options, checked once.
//! Models, inputs and outputs are not options of a run: each face names them its own way.

use crate::steer::chat_template::ChatTemplate;
use crate::steer::constraints::Blocklist;
use crate::steer::describe::{
    check_values, BeamParams, DescribeOptions, MagicParams, Sampling, ScoredText, Strategy,
};
use anyhow::{bail, Result};
use candle_core::Device;
use std::path::PathBuf;
use std::time::Duration;

/// The language model describe uses when none is named.
pub const DEFAULT_LM: &str = "openai-community/gpt2";
/// The encoder describe uses when none is named.
pub const DEFAULT_CLIP: &str = "openai/clip-vit-base-patch32";
/// The original demo's configuration (`--preset seed`).
pub const SEED_CLIP: &str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K";
pub const SEED_TOP_K: usize = 2500;
/// The original demo's prompt: the prompt of an LM without a chat template.
pub const DEFAULT_PROMPT: &str = "An image of ";
/// What an LM with a chat template is asked when no prompt is given, rendered through its
/// template: the instruction of docs/STEERING.md's held-out figures.
pub const DEFAULT_INSTRUCTION: &str = "Write one sentence describing a scene.";
/// The original demo's length.
pub const DEFAULT_MAX_TOKENS: usize = 25;
/// `--sample`'s temperature T of softmax(similarity / T): the original demo's.
pub const DEFAULT_TEMPERATURE: f64 = 0.05;
/// `--scorer-cmd`'s per-batch timeout, seconds.
pub const DEFAULT_SCORER_TIMEOUT: f64 = 60.0;

/// Where models run.
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
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
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
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

/// The encoder to load: the one named, else the preset's, else [`DEFAULT_CLIP`].
pub fn encoder_for(named: Option<&str>, preset: Option<Preset>) -> String {
    named
        .unwrap_or_else(|| preset.map_or(DEFAULT_CLIP, Preset::encoder))
        .to_string()
}

/// The blocklist flags of the faces that steer but are not describe (`attack`, `evade`):
/// `--block`, `--blocklist`, `--block-substrings`. Describe's are fields of
/// [`DescribeRequest`] with the same names and help.
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[derive(Debug, Clone, Default)]
pub struct BlockArgs {
    /// Words never to write, comma-separated (case-insensitive, whole words).
    #[cfg_attr(
        feature = "clap",
        arg(long, value_delimiter = ',', value_name = "WORDS")
    )]
    pub block: Vec<String>,
    /// A file of words never to write: one per line (or comma-separated), # comments.
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    pub blocklist: Option<PathBuf>,
    /// Block any text containing a blocked word as a substring, not only as a whole word.
    #[cfg_attr(feature = "clap", arg(long))]
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
#[derive(Debug, Clone, Default, PartialEq)]
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

    /// The weight of an image target.
    pub fn image_weight(&self) -> f32 {
        self.target_weight.first().copied().unwrap_or(1.0)
    }
}

/// describe's options: the command line's flags (`--max-tokens`), the Python package's keyword
/// arguments and `serve`'s params (`max_tokens`). As data, unknown names and wrong types are
/// errors that name the option, and what is left out takes the command line's default.
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[derive(serde::Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DescribeRequest {
    /// Steer toward this text (repeatable; with or without images).
    #[cfg_attr(feature = "clap", arg(long, value_name = "TEXT"))]
    pub target_text: Vec<String>,
    /// Steer away from this text (repeatable).
    #[cfg_attr(feature = "clap", arg(long, value_name = "TEXT"))]
    pub avoid_text: Vec<String>,
    /// Weights of the targets, in order: the image (when there is one), each --target-text, then
    /// each --avoid-text (a positive weight; avoiding subtracts it). Unlisted weights are 1.
    #[cfg_attr(feature = "clap", arg(long, value_name = "W"))]
    pub target_weight: Vec<f32>,
    /// Words never to write, comma-separated (case-insensitive, whole words).
    #[cfg_attr(
        feature = "clap",
        arg(long, value_delimiter = ',', value_name = "WORDS")
    )]
    pub block: Vec<String>,
    /// A file of words never to write: one per line (or comma-separated), # comments.
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    pub blocklist: Option<PathBuf>,
    /// Block any text containing a blocked word as a substring, not only as a whole word.
    #[cfg_attr(feature = "clap", arg(long))]
    pub block_substrings: bool,
    /// Text the description starts from, as the LM reads it (chat markup included); a trailing
    /// space stays a token [default: with an LM that has a chat template, --instruction rendered
    /// through it; else "An image of "].
    #[cfg_attr(feature = "clap", arg(long))]
    pub prompt: Option<String>,
    /// With an LM that has a chat template and no --prompt: the user message the template
    /// renders, the description being the model's answer (only the answer is scored)
    /// [default: "Write one sentence describing a scene."]. An LM without a template refuses it.
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "prompt"))]
    pub instruction: Option<String>,
    /// Candidates taken from the LM each step [default: 200; 45 with --strategy magic or beam].
    #[cfg_attr(feature = "clap", arg(long))]
    pub top_k: Option<usize>,
    /// Tokens to generate.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DescribeRequest::default().max_tokens))]
    pub max_tokens: usize,
    /// The search [default: seed, the original demo's loop token for token (the reference the
    /// parity tests pin); beam when the LM is asked --instruction through its chat template,
    /// where seed's greedy-by-similarity text is not fluent (docs/STEERING.md)]. beam is the one
    /// recommended for fluent, on-target text.
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    #[serde(deserialize_with = "value_named_opt")]
    pub strategy: Option<Strategy>,
    /// MAGIC: weight α of the degeneration penalty.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DescribeRequest::default().magic_alpha))]
    pub magic_alpha: f32,
    /// MAGIC: weight β of the target term.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DescribeRequest::default().magic_beta))]
    pub magic_beta: f32,
    /// MAGIC: temperature of the softmax over candidates' similarities [default: the encoder's:
    /// CLIP's trained exp(logit_scale), 100 for OpenAI CLIP; 100 for sentence encoders, tuned].
    #[cfg_attr(feature = "clap", arg(long))]
    pub magic_scale: Option<f32>,
    /// Beam: hypotheses kept each step.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DescribeRequest::default().beam_width))]
    pub beam_width: usize,
    /// Beam: weight of the mean per-token log-probability (nats) against similarity; higher is
    /// more fluent, lower more on target.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DescribeRequest::default().beam_fluency))]
    pub beam_fluency: f32,
    /// Beam: sibling-rank penalty γ; a hypothesis's r-th best child competes at its score − γ·r
    /// (Li et al. 2016). 0 turns it off.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DescribeRequest::default().beam_diversity))]
    pub beam_diversity: f32,
    /// Beam: rank each step's best 2 × width candidates by their text and the LM's greedy
    /// completion of up to this many tokens, scored together. 0 turns it off (about 3× slower
    /// per token; it did not help on docs/STEERING.md's tuning half).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DescribeRequest::default().beam_lookahead))]
    pub beam_lookahead: usize,
    /// Beam: in the last this many steps before --max-tokens, a hypothesis may also end with "."
    /// outside its top-k, and every sentence end there stays a candidate answer, so that the
    /// answer ends as a sentence instead of being cut. 0 turns it off.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DescribeRequest::default().beam_close_within))]
    pub beam_close_within: usize,
    /// With --strategy magic or beam: go on to --max-tokens instead of stopping at the end of a
    /// sentence.
    #[cfg_attr(feature = "clap", arg(long))]
    pub no_sentence_stop: bool,
    /// What the encoder scores: the prompt and the generated text, or only the generated text
    /// [default: full with --strategy seed, as the original demo; generated with magic and beam,
    /// so that an instruction or chat template in the prompt does not dilute the similarity].
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    #[serde(deserialize_with = "value_named_opt")]
    pub score_text: Option<ScoredText>,
    /// Sample from softmax(similarity / T) instead of taking the most similar candidate.
    #[cfg_attr(feature = "clap", arg(long))]
    pub sample: bool,
    /// Sampling temperature T [default: 0.05].
    #[cfg_attr(feature = "clap", arg(long, requires = "sample"))]
    pub temperature: Option<f64>,
    /// Random seed for --sample [default: 0].
    #[cfg_attr(feature = "clap", arg(long, requires = "sample"))]
    pub seed: Option<u64>,
    /// APPROXIMATE: score exactly only the M candidates whose own token is most similar to the
    /// image (token similarities are cached across steps). Faster; may pick differently from
    /// the exact loop.
    #[cfg_attr(feature = "clap", arg(long, value_name = "M"))]
    pub prefilter: Option<usize>,
    /// Steer by a program instead of an embedding: for each step it reads one line
    /// {"items":[{"text":…},…]} (the candidate texts as --score-text says: with the prompt for
    /// seed, the generated text alone for magic and beam) and answers one line {"scores":[…]},
    /// higher is better.
    #[cfg_attr(feature = "clap", arg(long, value_name = "CMD", conflicts_with_all = ["target_text", "avoid_text"]))]
    pub scorer_cmd: Option<String>,
    /// With --scorer-cmd: seconds the program may take per batch.
    #[cfg_attr(feature = "clap", arg(long, value_name = "SECONDS", default_value_t = DescribeRequest::default().scorer_timeout))]
    pub scorer_timeout: f64,
}

impl Default for DescribeRequest {
    /// Every default of describe's options, written once: the command line's `[default: …]`
    /// reads them from here, and options given as data take them for what is left out.
    fn default() -> Self {
        let magic = MagicParams::default();
        let beam = BeamParams::default();
        Self {
            target_text: Vec::new(),
            avoid_text: Vec::new(),
            target_weight: Vec::new(),
            block: Vec::new(),
            blocklist: None,
            block_substrings: false,
            prompt: None,
            instruction: None,
            top_k: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            strategy: None,
            magic_alpha: magic.alpha,
            magic_beta: magic.beta,
            magic_scale: None,
            beam_width: beam.width,
            beam_fluency: beam.fluency,
            beam_diversity: beam.diversity,
            beam_lookahead: beam.lookahead,
            beam_close_within: beam.close_within,
            no_sentence_stop: false,
            score_text: None,
            sample: false,
            temperature: None,
            seed: None,
            prefilter: None,
            scorer_cmd: None,
            scorer_timeout: DEFAULT_SCORER_TIMEOUT,
        }
    }
}

/// A [`DescribeRequest`] resolved: the search's options with every default filled in and every
/// value checked, the targets, and the scorer program if one steers.
#[derive(Debug, Clone)]
pub struct ResolvedDescribe {
    pub options: DescribeOptions,
    pub targets: TargetSpec,
    /// `--scorer-cmd` and its per-batch timeout.
    pub scorer_cmd: Option<(String, Duration)>,
    /// Whether the inputs are images (the first weight is then the image's).
    pub has_image: bool,
    /// Whether the prompt is the instruction rendered through the LM's chat template: faces
    /// that print the text then print the answer alone, not the markup.
    pub chat_prompt: bool,
    /// The request and preset this was resolved from, for [`ResolvedDescribe::for_lm`]'s
    /// choice of search on the chat route.
    pub request: DescribeRequest,
    pub preset: Option<Preset>,
}

impl ResolvedDescribe {
    /// The instruction to render through the LM's chat template when no prompt was given
    /// (--instruction, or its default); `options.prompt` is [`DEFAULT_PROMPT`] until
    /// [`ResolvedDescribe::for_lm`] knows the LM.
    pub fn instruction(&self) -> Option<&str> {
        match self.request.prompt {
            Some(_) => None,
            None => Some(
                self.request
                    .instruction
                    .as_deref()
                    .unwrap_or(DEFAULT_INSTRUCTION),
            ),
        }
    }

    /// The options for an LM whose chat template is `template`: without a given prompt, the
    /// instruction rendered through the template (`apply_chat_template(…, add_generation_prompt
    /// =True)`), scoring only the generated text unless `--score-text` says otherwise; an LM
    /// without a template starts from [`DEFAULT_PROMPT`].
    pub fn for_lm(&self, template: Option<&ChatTemplate>) -> Result<Self> {
        let request = &self.request;
        if template.is_none() && request.prompt.is_none() && request.instruction.is_some() {
            crate::usage_bail!("--instruction needs an LM with a chat template, and this one has none: give the text it should continue as --prompt");
        }
        // Asked through a chat template, with no search named and none of seed's own options
        // (sampling, the prefilter): beam, the search that writes a fluent answer.
        let beam_by_default = self.instruction().is_some()
            && template.is_some()
            && request.strategy.is_none()
            && !request.sample
            && request.prefilter.is_none();
        let mut resolved = match beam_by_default {
            true => {
                // The blocklist file was read once already, and its words carry over: a FIFO or
                // a `<(…)` can be read only once, and a file read again may have changed.
                let mut resolved = DescribeRequest {
                    strategy: Some(Strategy::Beam),
                    block: self.options.blocklist.words().to_vec(),
                    blocklist: None,
                    ..request.clone()
                }
                .resolve(self.preset, self.has_image)?;
                resolved.request.block = request.block.clone();
                resolved.request.blocklist = request.blocklist.clone();
                resolved
            }
            false => self.clone(),
        };
        if let (Some(instruction), Some(template)) = (self.instruction(), template) {
            resolved.options.prompt = template.user_prompt(instruction)?;
            resolved.chat_prompt = true;
            if request.score_text.is_none() {
                resolved.options.scored_text = ScoredText::Generated;
            }
        }
        Ok(resolved)
    }
}

impl DescribeRequest {
    /// Parses a JSON object of options; the error names the offending option.
    pub fn from_json(json: &str) -> Result<Self> {
        options_from_json(json)
    }

    /// The blocklist these options ask for (reads `blocklist`'s file).
    pub fn to_blocklist(&self) -> Result<Blocklist> {
        BlockArgs {
            block: self.block.clone(),
            blocklist: self.blocklist.clone(),
            block_substrings: self.block_substrings,
        }
        .to_blocklist()
    }

    /// The options of a run over images (`has_image`) or the text targets alone, under
    /// `preset`: defaults filled in, every value checked, before any model is loaded. Errors are
    /// usage errors naming the command line's flag; faces that take other names rename them.
    pub fn resolve(&self, preset: Option<Preset>, has_image: bool) -> Result<ResolvedDescribe> {
        if !self.sample && (self.temperature.is_some() || self.seed.is_some()) {
            crate::usage_bail!(
                "--temperature and --seed apply only when sampling: drop them or add --sample"
            );
        }
        let strategy = self.strategy.unwrap_or(Strategy::Seed);
        if self.sample && strategy != Strategy::Seed {
            crate::usage_bail!("--sample applies to --strategy seed only");
        }
        let instruction = self.instruction.as_deref().unwrap_or(DEFAULT_INSTRUCTION);
        if instruction.trim().is_empty() {
            crate::usage_bail!(
                "--instruction is empty: give the request the LM should answer, or a --prompt"
            );
        }
        let prompt = self.prompt.as_deref().unwrap_or(DEFAULT_PROMPT);
        let defaults = DescribeOptions::for_strategy(prompt, strategy);
        let options = DescribeOptions {
            top_k: self
                .top_k
                .unwrap_or_else(|| preset.map_or(defaults.top_k, Preset::top_k)),
            max_tokens: self.max_tokens,
            sampling: self.sample.then(|| Sampling {
                temperature: self.temperature.unwrap_or(DEFAULT_TEMPERATURE),
                seed: self.seed.unwrap_or(0),
            }),
            prefilter: self.prefilter,
            blocklist: self.to_blocklist()?,
            magic: MagicParams {
                alpha: self.magic_alpha,
                beta: self.magic_beta,
                scale: self.magic_scale,
            },
            beam: BeamParams {
                width: self.beam_width,
                fluency: self.beam_fluency,
                diversity: self.beam_diversity,
                lookahead: self.beam_lookahead,
                close_within: self.beam_close_within,
            },
            stop_at_sentence_end: defaults.stop_at_sentence_end && !self.no_sentence_stop,
            scored_text: self.score_text.unwrap_or(defaults.scored_text),
            ..defaults
        };
        check_values(&options)?;
        let targets = TargetSpec {
            target_text: self.target_text.clone(),
            avoid_text: self.avoid_text.clone(),
            target_weight: self.target_weight.clone(),
        };
        targets.check_values(has_image)?;
        let scorer_cmd = match &self.scorer_cmd {
            Some(command) => {
                if has_image || !targets.target_text.is_empty() || !targets.avoid_text.is_empty() {
                    crate::usage_bail!("describe --scorer-cmd steers by the program alone: leave out images, --target-text and --avoid-text (or leave out --scorer-cmd)");
                }
                if command.trim().is_empty() {
                    crate::usage_bail!("--scorer-cmd is empty: give the program to run");
                }
                let timeout = seconds("--scorer-timeout", self.scorer_timeout)?;
                Some((command.clone(), timeout))
            }
            None => None,
        };
        Ok(ResolvedDescribe {
            options,
            targets,
            scorer_cmd,
            has_image,
            chat_prompt: false,
            request: self.clone(),
            preset,
        })
    }
}

/// Options given as a JSON object, parsed into `T`; an error names the option it is about
/// (serde_path_to_error) and says nothing of JSON positions, which the caller never wrote.
pub fn options_from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let inner = e.inner().to_string();
        let mut inner = inner
            .split(" at line ")
            .next()
            .unwrap_or(&inner)
            .to_string();
        // Rust's type names say nothing to a caller writing JSON or Python.
        for (rust, plain) in [
            ("expected usize", "expected a non-negative integer"),
            ("expected u64", "expected a non-negative integer"),
            ("expected u32", "expected a non-negative integer"),
            ("expected f32", "expected a number"),
            ("expected f64", "expected a number"),
            ("expected a boolean", "expected true or false"),
        ] {
            inner = inner.replace(rust, plain);
        }
        match e.path().to_string().as_str() {
            "." => anyhow::anyhow!("bad option: {inner}"),
            // A value that is not one of a list reads as the command line says it:
            // "strategy 'greedy' is not one of: seed, magic, beam".
            path if inner.starts_with('\'') => anyhow::anyhow!("{path} {inner}"),
            path => anyhow::anyhow!("option {path}: {inner}"),
        }
    })
}

/// Deserializes an optional command-line enum from its command-line name.
fn value_named_opt<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    match <Option<String> as serde::Deserialize>::deserialize(deserializer)? {
        Some(name) => named::<T>(&name)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(e.0)),
        None => Ok(None),
    }
}

/// Why a name is not one of an enum's: "'greedy' is not one of: seed, magic, beam", the list
/// being the names serde was given (`rename_all = "kebab-case"`, clap's own rule for
/// `ValueEnum`; a test holds the two equal).
#[derive(Debug)]
struct NotOneOf(String);

impl std::fmt::Display for NotOneOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotOneOf {}

impl serde::de::Error for NotOneOf {
    fn custom<M: std::fmt::Display>(message: M) -> Self {
        NotOneOf(message.to_string())
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        NotOneOf(format!(
            "'{variant}' is not one of: {}",
            expected.join(", ")
        ))
    }
}

/// The enum value whose command-line name is `name`, read through its serde names: the data
/// faces (Python, `serve`) take the names without clap, which the library builds only with its
/// `clap` feature.
fn named<T: serde::de::DeserializeOwned>(name: &str) -> std::result::Result<T, NotOneOf> {
    use serde::de::IntoDeserializer;
    let deserializer: serde::de::value::StrDeserializer<'_, NotOneOf> = name.into_deserializer();
    T::deserialize(deserializer)
}

/// The largest time limit or timeout accepted: about 31 years.
pub const MAX_SECONDS: f64 = 1e9;

/// A duration given in seconds by the option `name`: a positive, finite number of at most
/// [`MAX_SECONDS`].
pub fn seconds(name: &str, value: f64) -> Result<Duration> {
    if !(value.is_finite() && value > 0.0) {
        crate::usage_bail!("{name} must be a positive number of seconds, got {value}");
    }
    // Deadlines are Instant + Duration, which panics past the clock's range: a bound far beyond
    // any run keeps every such sum valid.
    if value > MAX_SECONDS {
        crate::usage_bail!("{name} must be at most {MAX_SECONDS:e} seconds, got {value:e}");
    }
    Ok(Duration::from_secs_f64(value))
}

/// A value of a command-line enum by its command-line name.
pub fn value_enum<T: serde::de::DeserializeOwned>(option: &str, name: &str) -> Result<T> {
    named(name).map_err(|e| anyhow::anyhow!("{option} {e}"))
}

/// Preset by its command-line name (`"seed"`).
pub fn preset_named(name: &str) -> Result<Preset> {
    value_enum("preset", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_defaults_are_the_command_lines() {
        let request = DescribeRequest::default();
        assert_eq!(request.prompt, None);
        assert_eq!(request.instruction, None);
        assert_eq!(request.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(request.strategy, None);
        assert_eq!(
            request.resolve(None, true).unwrap().options.strategy,
            Strategy::Seed
        );
        assert_eq!(request.scorer_timeout, DEFAULT_SCORER_TIMEOUT);
        assert_eq!(request.beam_width, BeamParams::default().width);
        assert_eq!(request.magic_alpha, MagicParams::default().alpha);
        assert_eq!(DescribeRequest::from_json("{}").unwrap(), request);
        let resolved = request.resolve(None, true).unwrap();
        assert_eq!(resolved.options.top_k, 200);
        assert_eq!(resolved.options.prompt, DEFAULT_PROMPT);
        assert_eq!(resolved.instruction(), Some(DEFAULT_INSTRUCTION));
        // Without a chat template the prompt stays the original demo's, scored whole.
        let plain = resolved.for_lm(None).unwrap();
        assert_eq!(plain.options.prompt, DEFAULT_PROMPT);
        assert_eq!(plain.options.scored_text, ScoredText::Full);
        let chatml = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            Default::default(),
        )
        .unwrap();
        let chat = resolved.for_lm(Some(&chatml)).unwrap();
        assert_eq!(
            chat.options.prompt,
            "<|im_start|>user\nWrite one sentence describing a scene.<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(chat.options.scored_text, ScoredText::Generated);
        // ... and searched by beam, with beam's own defaults, unless a search was named.
        assert_eq!(chat.options.strategy, Strategy::Beam);
        assert_eq!(chat.options.top_k, 45);
        let seed = DescribeRequest {
            strategy: Some(Strategy::Seed),
            ..DescribeRequest::default()
        };
        let seed = seed
            .resolve(None, true)
            .unwrap()
            .for_lm(Some(&chatml))
            .unwrap();
        assert_eq!(seed.options.strategy, Strategy::Seed);
        assert_eq!(seed.options.scored_text, ScoredText::Generated);
        assert_eq!(plain.options.strategy, Strategy::Seed);
        assert!(chat.chat_prompt && !plain.chat_prompt);
        // A given prompt is the prompt, template or not.
        let given = DescribeRequest {
            prompt: Some("A photo of".into()),
            ..DescribeRequest::default()
        };
        let given = given
            .resolve(None, true)
            .unwrap()
            .for_lm(Some(&chatml))
            .unwrap();
        assert_eq!(given.options.prompt, "A photo of");
        assert_eq!(given.options.scored_text, ScoredText::Full);
        assert_eq!(
            request
                .resolve(Some(Preset::Seed), true)
                .unwrap()
                .options
                .top_k,
            SEED_TOP_K
        );
    }

    /// The chat route picks beam after the options were resolved once: it must not read
    /// --blocklist's file again (a `<(…)` or a FIFO can be read once; a newcomer's trial found
    /// it read three times, and a process substitution then read as empty).
    #[test]
    fn the_chat_route_reads_the_blocklist_file_once() {
        let path = std::env::temp_dir().join(format!("clipsteer-once-{}", std::process::id()));
        std::fs::write(&path, "dog\n").unwrap();
        let request = DescribeRequest {
            blocklist: Some(path.clone()),
            ..DescribeRequest::default()
        };
        let resolved = request.resolve(None, true).unwrap();
        std::fs::remove_file(&path).unwrap();
        let chatml = ChatTemplate::new(
            "{% for m in messages %}{{ m.content }}{% endfor %}",
            Default::default(),
        )
        .unwrap();
        let chat = resolved.for_lm(Some(&chatml)).unwrap();
        assert_eq!(chat.options.strategy, Strategy::Beam);
        assert_eq!(chat.options.blocklist.words(), ["dog"]);
        assert_eq!(chat.request.blocklist, Some(path));
        assert!(chat.request.block.is_empty());
    }

    /// The command line and the data faces agree without a second list: clap's `[default: …]`
    /// values are `Default`'s, and each enum's names, read through serde, are clap's
    /// `ValueEnum` names, all of them and no others.
    #[cfg(feature = "clap")]
    #[test]
    fn the_command_line_and_the_data_faces_agree() {
        #[derive(clap::Parser)]
        struct NoFlags {
            #[command(flatten)]
            request: DescribeRequest,
        }
        let parsed = <NoFlags as clap::Parser>::try_parse_from(["clipsteer"]).unwrap();
        assert_eq!(parsed.request, DescribeRequest::default());

        fn same_names<T>()
        where
            T: clap::ValueEnum + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
        {
            let names: Vec<String> = T::value_variants()
                .iter()
                .map(|v| {
                    let name = v.to_possible_value().unwrap().get_name().to_string();
                    assert_eq!(&value_enum::<T>("option", &name).unwrap(), v);
                    name
                })
                .collect();
            assert_eq!(
                value_enum::<T>("option", "none-such")
                    .unwrap_err()
                    .to_string(),
                format!("option 'none-such' is not one of: {}", names.join(", "))
            );
        }
        same_names::<Strategy>();
        same_names::<ScoredText>();
        same_names::<DeviceChoice>();
        same_names::<Preset>();
        same_names::<crate::diffusion::SchedulerKind>();
    }

    #[test]
    fn names_not_in_a_list_read_as_on_the_command_line() {
        let error = DescribeRequest::from_json(r#"{"strategy":"greedy"}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "strategy 'greedy' is not one of: seed, magic, beam"
        );
        let error = DescribeRequest::from_json(r#"{"max_tokens":"many"}"#).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("option max_tokens: invalid type: string \"many\""));
    }
}
