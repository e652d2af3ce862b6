//! The attack pipeline behind `clipsteer attack` (and any other face): loads the attacker and
//! the victim, builds the objective, and runs the attack beam ([`crate::steer::search::attack`]).

use crate::load::{load_encoder, load_lm};
use crate::steer::chat_template::ChatTemplate;
use crate::steer::lm::LanguageModel;
use crate::steer::objectives::command::{CommandScorer, ItemScorer};
use crate::steer::objectives::victim::{
    ResponseCommand, ResponseSimilarity, TargetResponse, Victim,
};
use crate::steer::objectives::{normalize, Objective, Scorer};
use crate::steer::search::attack::{
    run, AttackOptions, AttackResult, AttackStep, Proposal, Success,
};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the attack steers toward.
#[derive(Debug, Clone)]
pub enum AttackObjective {
    /// The victim's mean log-probability of this response, teacher-forced (BEAST's objective);
    /// success: the victim's greedy answer starts with it.
    TargetResponse(String),
    /// A `--scorer-cmd` program, shown each prompt and the victim's greedy answer; success: the
    /// score reaches `success_score`, if given.
    Command {
        command: String,
        timeout: Duration,
        success_score: Option<f32>,
    },
    /// The cosine of the victim's greedy answer with `text` under `encoder`; success: the answer
    /// starts with `text`.
    TargetText { text: String, encoder: String },
    /// An in-process scoring function (the Python package's callables), shown what a
    /// `--scorer-cmd` program is shown; success: the score reaches `success_score`, if given.
    Scorer {
        scorer: SharedScorer,
        success_score: Option<f32>,
    },
}

/// An in-process [`ItemScorer`], shared with the caller that made it.
#[derive(Clone)]
pub struct SharedScorer(pub std::sync::Arc<dyn ItemScorer + Send + Sync>);

impl std::fmt::Debug for SharedScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedScorer(..)")
    }
}

/// Everything `attack` needs.
#[derive(Debug, Clone)]
pub struct AttackSpec {
    /// The attacker: a llama-family `.gguf` file or a GPT-2 directory / hub id.
    pub attacker: String,
    /// The victim; None: the attacker (as BEAST).
    pub victim: Option<String>,
    /// The victim's chat template, overriding the one its files carry (a tokenizer_config.json,
    /// a directory holding one, a .gguf file, or a Jinja file).
    pub chat_template: Option<PathBuf>,
    pub objective: AttackObjective,
    pub options: AttackOptions,
}

/// attack's options by the command line's names (flags with underscores), for faces that take
/// them as data (the Python package's keyword arguments, as a JSON object). Unknown names and
/// wrong types are errors; what is left out takes the command line's default.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackRequest {
    pub instruction: String,
    pub target_response: Option<String>,
    pub scorer_cmd: Option<String>,
    /// Seconds.
    pub scorer_timeout: Option<f64>,
    pub success_score: Option<f32>,
    pub target_text: Option<String>,
    pub encoder: Option<String>,
    #[serde(default)]
    pub block: Vec<String>,
    pub blocklist: Option<PathBuf>,
    #[serde(default)]
    pub block_substrings: bool,
    pub beam_width: Option<usize>,
    pub candidates: Option<usize>,
    pub max_tokens: Option<usize>,
    /// "sample" or "top-k".
    pub proposal: Option<String>,
    pub top_p: Option<f32>,
    pub temperature: Option<f32>,
    pub seed: Option<u64>,
    pub readability: Option<f32>,
    pub response_tokens: Option<usize>,
    /// Seconds.
    pub time_limit: Option<f64>,
}

impl AttackRequest {
    /// Parses a JSON object of options; the error names the offending option.
    pub fn from_json(json: &str) -> Result<Self> {
        crate::request::options_from_json(json)
    }

    /// The options and objective these ask for; `scorer`, an in-process scoring function, is
    /// one more way to give the objective.
    pub fn to_spec(
        &self,
        scorer: Option<SharedScorer>,
    ) -> Result<(AttackObjective, AttackOptions)> {
        let given = [
            self.target_response.is_some(),
            self.scorer_cmd.is_some(),
            self.target_text.is_some(),
            scorer.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            bail!("give exactly one objective: target_response, scorer_cmd, target_text (with encoder), or a scoring function");
        }
        if self.success_score.is_some() && self.scorer_cmd.is_none() && scorer.is_none() {
            bail!("success_score applies to a scoring program or function only");
        }
        let objective = if let Some(target) = &self.target_response {
            AttackObjective::TargetResponse(target.clone())
        } else if let Some(command) = &self.scorer_cmd {
            AttackObjective::Command {
                command: command.clone(),
                timeout: crate::request::seconds(
                    "scorer_timeout",
                    self.scorer_timeout.unwrap_or(60.0),
                )?,
                success_score: self.success_score,
            }
        } else if let Some(text) = &self.target_text {
            let Some(encoder) = &self.encoder else {
                bail!("target_text needs an encoder to compare the victim's answer with it");
            };
            AttackObjective::TargetText {
                text: text.clone(),
                encoder: encoder.clone(),
            }
        } else {
            AttackObjective::Scorer {
                scorer: scorer.context("no objective")?,
                success_score: self.success_score,
            }
        };
        let defaults = AttackOptions::new(&self.instruction);
        let proposal = match self.proposal.as_deref() {
            None | Some("sample") => {
                let (top_p, temperature, seed) = crate::steer::search::attack::DEFAULT_SAMPLE;
                Proposal::Sample {
                    top_p: self.top_p.unwrap_or(top_p),
                    temperature: self.temperature.unwrap_or(temperature),
                    seed: self.seed.unwrap_or(seed),
                }
            }
            Some("top-k") => {
                if self.top_p.is_some() || self.temperature.is_some() || self.seed.is_some() {
                    bail!("top_p, temperature and seed apply to proposal='sample' only");
                }
                Proposal::TopK
            }
            Some(other) => bail!("proposal '{other}' is not one of: sample, top-k"),
        };
        let options = AttackOptions {
            beam_width: self.beam_width.unwrap_or(defaults.beam_width),
            candidates: self.candidates.unwrap_or(defaults.candidates),
            max_tokens: self.max_tokens.unwrap_or(defaults.max_tokens),
            proposal,
            readability: self.readability.unwrap_or(defaults.readability),
            time_limit: match self.time_limit {
                Some(s) => Some(crate::request::seconds("time_limit", s)?),
                None => defaults.time_limit,
            },
            blocklist: crate::request::BlockArgs {
                block: self.block.clone(),
                blocklist: self.blocklist.clone(),
                block_substrings: self.block_substrings,
            }
            .to_blocklist()?,
            response_tokens: self.response_tokens.unwrap_or(defaults.response_tokens),
            ..defaults
        };
        crate::steer::search::attack::validate(&options)?;
        Ok((objective, options))
    }
}

/// The result, with the target's likelihood before and after when the objective has a target.
#[derive(Debug, Clone)]
pub struct AttackReport {
    pub result: AttackResult,
    /// Mean NLL per token (nats) of the target response after the found prompt.
    pub target_nll: Option<f64>,
    /// The same after the instruction alone.
    pub baseline_nll: Option<f64>,
    /// Where each model came from ([`crate::hub::models_json`]): attacker, victim, encoder.
    pub models: serde_json::Value,
    /// The instruction, verbatim.
    pub instruction: String,
    /// The answer steered toward (`--target-response` or `--target-text`); None for a command.
    pub target: Option<String>,
}

pub use crate::load::chat_template_of;

/// The attacker's text before its suffix: its chat template's head with the instruction as the
/// start of the user message, or the bare instruction for a model without a template.
pub fn attacker_context(template: Option<&ChatTemplate>, instruction: &str) -> Result<String> {
    Ok(match template {
        Some(template) => format!("{}{instruction}", template.user_slot()?.0),
        None => instruction.to_string(),
    })
}

/// Checks a spec's options and objective before any model loads.
pub fn validate(spec: &AttackSpec) -> Result<()> {
    crate::steer::search::attack::validate(&spec.options)?;
    if let AttackObjective::Command {
        success_score: Some(score),
        ..
    }
    | AttackObjective::Scorer {
        success_score: Some(score),
        ..
    } = &spec.objective
    {
        // NaN compares false forever: the run would spend its whole budget and report failure.
        if !score.is_finite() {
            bail!("--success-score must be a finite number, got {score}");
        }
    }
    Ok(())
}

/// Loads the models, runs the attack, and measures the target's likelihood before and after.
pub fn run_attack(
    spec: &AttackSpec,
    device: &Device,
    on_step: impl FnMut(&AttackStep) -> Result<()>,
) -> Result<AttackReport> {
    validate(spec)?;
    let models = AttackModels::load(
        &spec.attacker,
        spec.victim.as_deref(),
        spec.chat_template.as_deref(),
        device,
    )?;
    models.attack(spec, device, on_step)
}

/// The attacker and the victim with its chat template, loaded once for any number of attacks
/// (the Python package's `Attacker`).
pub struct AttackModels {
    attacker: LanguageModel,
    /// None: the attacker is the victim.
    separate_victim: Option<LanguageModel>,
    attacker_spec: String,
    victim_spec: String,
    template: ChatTemplate,
    attacker_template: Option<ChatTemplate>,
}

impl AttackModels {
    /// `victim` None: the attacker (as BEAST). `chat_template` overrides the victim's own.
    pub fn load(
        attacker: &str,
        victim: Option<&str>,
        chat_template: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        let victim_spec = victim.unwrap_or(attacker);
        let separate = victim_spec != attacker;
        // The templates first, and rendered once: a broken one is reported before the models
        // take seconds and gigabytes to load.
        let template = match chat_template {
            Some(path) => ChatTemplate::from_path(path)?,
            None => chat_template_of(victim_spec)
                .with_context(|| format!("the victim '{victim_spec}' needs a chat template (give one with --chat-template FILE: a .jinja, a tokenizer_config.json or a .gguf)"))?,
        };
        template.user_slot()?;
        // The attacker writes inside its own template when it has one; a broken one is an
        // error, not a silent switch to writing without it.
        let attacker_template = if separate {
            crate::load::chat_template_if_any(attacker)?
        } else {
            Some(template.clone())
        };
        if let Some(attacker_template) = &attacker_template {
            attacker_template.user_slot()?;
        }
        let attacker_lm = load_lm(attacker, device)?;
        let separate_victim = if separate {
            Some(load_lm(victim_spec, device)?)
        } else {
            None
        };
        Ok(Self {
            attacker: attacker_lm,
            separate_victim,
            attacker_spec: attacker.to_string(),
            victim_spec: victim_spec.to_string(),
            template,
            attacker_template,
        })
    }

    /// Runs one attack with these models (`spec`'s model fields are not consulted).
    pub fn attack(
        &self,
        spec: &AttackSpec,
        device: &Device,
        on_step: impl FnMut(&AttackStep) -> Result<()>,
    ) -> Result<AttackReport> {
        validate(spec)?;
        let victim_lm = self.separate_victim.as_ref().unwrap_or(&self.attacker);
        let context = attacker_context(self.attacker_template.as_ref(), &spec.options.instruction)?;
        let victim = Victim::new(victim_lm, self.template.clone())?;
        let mut report = attack_with(&self.attacker, &context, &victim, spec, device, on_step)?;
        let mut models = vec![
            ("attacker", self.attacker_spec.as_str()),
            ("victim", self.victim_spec.as_str()),
        ];
        if let AttackObjective::TargetText { encoder, .. } = &spec.objective {
            models.push(("encoder", encoder.as_str()));
        }
        report.models = crate::hub::models_json(&models);
        report.instruction = spec.options.instruction.clone();
        report.target = match &spec.objective {
            AttackObjective::TargetResponse(text) | AttackObjective::TargetText { text, .. } => {
                Some(text.clone())
            }
            AttackObjective::Command { .. } | AttackObjective::Scorer { .. } => None,
        };
        Ok(report)
    }
}

fn attack_with(
    attacker: &LanguageModel,
    context: &str,
    victim: &Victim<LanguageModel>,
    spec: &AttackSpec,
    device: &Device,
    on_step: impl FnMut(&AttackStep) -> Result<()>,
) -> Result<AttackReport> {
    let options = &spec.options;
    let instruction = options.instruction.as_str();
    match &spec.objective {
        AttackObjective::TargetResponse(target) => {
            let objective = TargetResponse::new(victim, target)?;
            let baseline_nll = objective.target_nll(instruction)?;
            let success = Success::ResponseStartsWith(target.clone());
            let result = run(
                attacker, context, victim, &objective, &success, options, on_step,
            )?;
            let target_nll = objective.target_nll(&result.prompt)?;
            Ok(AttackReport {
                result,
                target_nll: Some(target_nll),
                baseline_nll: Some(baseline_nll),
                models: serde_json::Value::Null,
                instruction: String::new(),
                target: None,
            })
        }
        AttackObjective::Command {
            command,
            timeout,
            success_score,
        } => {
            let command = CommandScorer::start(command, *timeout)?.with_deadline(
                options
                    .time_limit
                    .map(|limit| std::time::Instant::now() + limit),
            );
            scored_by(
                attacker,
                context,
                victim,
                &command,
                *success_score,
                options,
                on_step,
            )
        }
        AttackObjective::Scorer {
            scorer,
            success_score,
        } => scored_by(
            attacker,
            context,
            victim,
            scorer.0.as_ref(),
            *success_score,
            options,
            on_step,
        ),
        AttackObjective::TargetText { text, encoder } => {
            if text.trim().is_empty() {
                bail!("--target-text is empty: give the answer to steer the victim toward");
            }
            let encoder = load_encoder(encoder, device)?;
            let objective = ResponseSimilarity {
                victim,
                scorer: &encoder,
                target: normalize(&encoder.embed_text(text)?),
                response_tokens: options.response_tokens,
            };
            let success = Success::ResponseStartsWith(text.clone());
            let result = run(
                attacker, context, victim, &objective, &success, options, on_step,
            )?;
            let likelihood = TargetResponse::new(victim, text)?;
            let target_nll = likelihood.target_nll(&result.prompt)?;
            let baseline_nll = likelihood.target_nll(instruction)?;
            Ok(AttackReport {
                result,
                target_nll: Some(target_nll),
                baseline_nll: Some(baseline_nll),
                models: serde_json::Value::Null,
                instruction: String::new(),
                target: None,
            })
        }
    }
}

/// An attack scored by a function of each prompt and the victim's greedy answer to it.
fn scored_by(
    attacker: &LanguageModel,
    context: &str,
    victim: &Victim<LanguageModel>,
    scorer: &dyn ItemScorer,
    success_score: Option<f32>,
    options: &AttackOptions,
    on_step: impl FnMut(&AttackStep) -> Result<()>,
) -> Result<AttackReport> {
    let objective = ResponseCommand {
        victim,
        command: scorer,
        response_tokens: options.response_tokens,
    };
    let success = match success_score {
        Some(s) => Success::ScoreAtLeast(s),
        None => Success::Never,
    };
    let result = run(
        attacker, context, victim, &objective, &success, options, on_step,
    )?;
    Ok(AttackReport {
        result,
        target_nll: None,
        baseline_nll: None,
        models: serde_json::Value::Null,
        instruction: String::new(),
        target: None,
    })
}

/// A score of `objective` for one text, for callers that check a single prompt.
pub fn score_one<O: Objective>(objective: &O, text: &str) -> Result<f32> {
    let prefix = objective.prefix(text, None)?;
    Ok(objective.score(&prefix, &[text.to_string()])?.similarities[0])
}
