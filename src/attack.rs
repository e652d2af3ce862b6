//! The attack pipeline behind `clipsteer attack` (and any other face): loads the attacker and
//! the victim, builds the objective, and runs the attack beam ([`crate::steer::search::attack`]).

use crate::hub::{self, ModelKind};
use crate::load::{load_encoder, load_lm};
use crate::steer::chat_template::ChatTemplate;
use crate::steer::lm::LanguageModel;
use crate::steer::objectives::command::CommandScorer;
use crate::steer::objectives::victim::{
    ResponseCommand, ResponseSimilarity, TargetResponse, Victim,
};
use crate::steer::objectives::{normalize, Objective, Scorer};
use crate::steer::search::attack::{run, AttackOptions, AttackResult, AttackStep, Success};
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

/// The result, with the target's likelihood before and after when the objective has a target.
#[derive(Debug, Clone)]
pub struct AttackReport {
    pub result: AttackResult,
    /// Mean NLL per token (nats) of the target response after the found prompt.
    pub target_nll: Option<f64>,
    /// The same after the instruction alone.
    pub baseline_nll: Option<f64>,
    /// Where each model came from ([`crate::events::models_json`]): attacker, victim, encoder.
    pub models: serde_json::Value,
    /// The instruction, verbatim.
    pub instruction: String,
    /// The answer steered toward (`--target-response` or `--target-text`); None for a command.
    pub target: Option<String>,
}

/// The chat template a model's files carry: a GGUF's `tokenizer.chat_template`, or the
/// `tokenizer_config.json` of a model directory.
pub fn chat_template_of(spec: &str) -> Result<ChatTemplate> {
    let path = Path::new(spec);
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return ChatTemplate::from_gguf(path);
    }
    let dir = hub::resolve(spec, ModelKind::CausalLm)?;
    ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))
}

/// The attacker's text before its suffix: its chat template's head with the instruction as the
/// start of the user message, or the bare instruction for a model without a template.
pub fn attacker_context(template: Option<&ChatTemplate>, instruction: &str) -> Result<String> {
    Ok(match template {
        Some(template) => format!("{}{instruction}", template.user_slot()?.0),
        None => instruction.to_string(),
    })
}

/// Loads the models, runs the attack, and measures the target's likelihood before and after.
pub fn run_attack(
    spec: &AttackSpec,
    device: &Device,
    on_step: impl FnMut(&AttackStep) -> Result<()>,
) -> Result<AttackReport> {
    crate::steer::search::attack::validate(&spec.options)?;
    let attacker = load_lm(&spec.attacker, device)?;
    let victim_spec = spec.victim.as_deref().unwrap_or(&spec.attacker);
    let separate_victim = match &spec.victim {
        Some(v) if v != &spec.attacker => Some(load_lm(v, device)?),
        _ => None,
    };
    let victim_lm = separate_victim.as_ref().unwrap_or(&attacker);
    let template = match &spec.chat_template {
        Some(path) => ChatTemplate::from_path(path)?,
        None => chat_template_of(victim_spec)
            .with_context(|| format!("the victim '{victim_spec}' needs a chat template"))?,
    };
    // The attacker writes inside its own template when it has one.
    let attacker_template = if spec.victim.is_none() || victim_spec == spec.attacker {
        Some(template.clone())
    } else {
        chat_template_of(&spec.attacker).ok()
    };
    let context = attacker_context(attacker_template.as_ref(), &spec.options.instruction)?;
    let victim = Victim::new(victim_lm, template)?;
    let mut report = attack_with(&attacker, &context, &victim, spec, device, on_step)?;
    let mut models = vec![
        ("attacker", spec.attacker.as_str()),
        ("victim", victim_spec),
    ];
    if let AttackObjective::TargetText { encoder, .. } = &spec.objective {
        models.push(("encoder", encoder.as_str()));
    }
    report.models = crate::events::models_json(&models);
    report.instruction = spec.options.instruction.clone();
    report.target = match &spec.objective {
        AttackObjective::TargetResponse(text) | AttackObjective::TargetText { text, .. } => {
            Some(text.clone())
        }
        AttackObjective::Command { .. } => None,
    };
    Ok(report)
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
            let command = CommandScorer::start(command, *timeout)?;
            let objective = ResponseCommand {
                victim,
                command: &command,
                response_tokens: options.response_tokens,
            };
            let success = match success_score {
                Some(s) => Success::ScoreAtLeast(*s),
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

/// A score of `objective` for one text, for callers that check a single prompt.
pub fn score_one<O: Objective>(objective: &O, text: &str) -> Result<f32> {
    let prefix = objective.prefix(text, None)?;
    Ok(objective.score(&prefix, &[text.to_string()])?.similarities[0])
}
