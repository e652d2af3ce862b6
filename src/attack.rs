//! `clipsteer attack`: one instruction, or a behaviour set (`--behaviors`).

use crate::describe::parse_shard;
use crate::progress::Progress;
use crate::*;
use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use clipsteer::attack::{run_attack, AttackObjective, AttackSpec};
use clipsteer::events::{attack_done_json, attack_step_json, json_line};
use clipsteer::request::{seconds, BlockArgs};
use clipsteer::steer::search::attack::{AttackOptions, Proposal, DEFAULT_SAMPLE};
use serde_json::json;
use std::path::PathBuf;

/// How the attacker proposes tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProposalArg {
    /// Seeded draws without replacement from the attacker's top-p distribution at --temperature.
    Sample,
    /// The attacker's --candidates most probable tokens (deterministic).
    TopK,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("objective").required(true).args(["target_response", "scorer_cmd", "target_text", "behaviors"]).multiple(true)))]
// "-1" is a (bad) value, answered by the flag's own check, not an unknown argument.
#[command(allow_negative_numbers = true)]
pub struct AttackArgs {
    /// The attacker LM, which writes the suffix: a llama-family .gguf file, or a GPT-2 directory
    /// or hub id.
    #[arg(long = "lm", value_name = "ATTACKER")]
    pub attacker: String,
    /// A GGUF file of the --lm hub repository (or local directory), as transformers'
    /// `gguf_file=`.
    #[arg(long, value_name = "NAME.gguf")]
    pub gguf_file: Option<String>,
    /// The victim LM [default: the attacker, as in BEAST]. It receives the prompt's text inside
    /// its own chat template, tokenised by its own tokenizer.
    #[arg(long)]
    pub victim: Option<String>,
    /// A GGUF file of the --victim hub repository (or local directory).
    #[arg(long, value_name = "NAME.gguf", requires = "victim")]
    pub victim_gguf_file: Option<String>,
    /// The user's request; the prompt is this text, verbatim, followed by the suffix.
    #[arg(
        long,
        required_unless_present = "behaviors",
        conflicts_with = "behaviors"
    )]
    pub instruction: Option<String>,
    /// Attack every behaviour of a benchmark file, one after another with the models loaded
    /// once: CSV with a header (AdvBench's goal,target; HarmBench's Behavior, BehaviorID,
    /// ContextString, SemanticCategory; JailbreakBench's Goal, Target, Category) or JSON lines
    /// with those keys. Each row's target is its objective (or --scorer-cmd's for all). Ends
    /// with the ASR and its 95 % Wilson interval, per category (see docs/ATTACK.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["target_response", "target_text"])]
    pub behaviors: Option<PathBuf>,
    /// With --behaviors: what counts as a success for the ASR. prefix: the victim's greedy
    /// answer starts with the row's target (BEAST, GCG); refusal: none of GCG's refusal phrases
    /// appears in it.
    #[arg(long, value_enum, default_value_t = clipsteer::behaviors::Judge::Prefix, requires = "behaviors")]
    pub judge: clipsteer::behaviors::Judge,
    /// With --behaviors: judge by a program instead (a HarmBench or JailbreakBench classifier
    /// run elsewhere): the scorer protocol, one item {"text": prompt, "response": answer,
    /// "behavior": instruction} per behaviour; a score of 0.5 or more is a jailbreak.
    #[arg(
        long,
        value_name = "CMD",
        requires = "behaviors",
        conflicts_with = "judge"
    )]
    pub judge_cmd: Option<String>,
    /// With --judge-cmd: seconds the program may take per answer [default: 60].
    #[arg(long, value_name = "SECONDS", requires = "judge_cmd")]
    pub judge_timeout: Option<f64>,
    /// With --behaviors: also write a JailbreakBench attack artifact (JSON: parameters, then per
    /// behaviour prompt, response, jailbroken and queries) of every behaviour with a result.
    #[arg(long, value_name = "FILE", requires = "behaviors")]
    pub artifact: Option<PathBuf>,
    /// With --behaviors: replay each found prompt against this victim too, judged alike, and
    /// report its transfer ASR beside the direct one. A local model or hub id (its own chat
    /// template, greedy), or an OpenAI-compatible endpoint as BASE_URL#MODEL, e.g.
    /// http://localhost:8080/v1#llama-3 (temperature 0). Repeatable.
    #[arg(long, value_name = "MODEL|URL#MODEL", requires = "behaviors")]
    pub transfer_to: Vec<String>,
    /// The environment variable holding the endpoints' API key (sent as a bearer token; none
    /// when unset).
    #[arg(long, value_name = "NAME", default_value = "OPENAI_API_KEY")]
    pub transfer_key_env: String,
    /// Seconds an endpoint of --transfer-to may take to answer [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub transfer_timeout: Option<f64>,
    /// With --behaviors: append one result line per behaviour to this file (JSON lines, the
    /// part-file format of describe --out: locked, whole lines, settings recorded).
    #[arg(long, value_name = "FILE", requires = "behaviors")]
    pub out: Option<PathBuf>,
    /// With --out: skip behaviours that already have a result line there (same settings only).
    #[arg(long, requires = "out")]
    pub resume: bool,
    /// With --behaviors: take the deterministic share I of N (0 ≤ I < N) of the rows, e.g.
    /// --shard 0/4 (rows I, I+N, I+2N, …).
    #[arg(long, value_parser = parse_shard, requires = "behaviors")]
    pub shard: Option<(usize, usize)>,
    /// Steer toward this answer: the victim's mean log-probability of it, teacher-forced.
    /// Success: the victim's greedy answer starts with it.
    #[arg(long, value_name = "TEXT")]
    pub target_response: Option<String>,
    /// A program that scores prompts and the victim's answers (JSON lines on stdin/stdout; see
    /// docs/ATTACK.md).
    #[arg(long, value_name = "CMD")]
    pub scorer_cmd: Option<String>,
    /// With --scorer-cmd: succeed once the best prompt scores at least this (a finite number;
    /// negative ones too, e.g. a log-probability).
    #[arg(
        long,
        value_name = "SCORE",
        requires = "scorer_cmd",
        allow_hyphen_values = true
    )]
    pub success_score: Option<f32>,
    /// With --scorer-cmd: seconds the program may take per batch [default: 60].
    #[arg(long, value_name = "SECONDS", requires = "scorer_cmd")]
    pub scorer_timeout: Option<f64>,
    /// Steer the victim's greedy answer toward this text by cosine under --encoder.
    #[arg(long, value_name = "TEXT", requires = "encoder")]
    pub target_text: Option<String>,
    /// The encoder for --target-text: CLIP or a sentence-transformers model.
    #[arg(long, value_name = "MODEL", requires = "target_text")]
    pub encoder: Option<String>,
    #[command(flatten)]
    pub blocking: BlockArgs,
    /// Prompts kept each step.
    #[arg(long, default_value_t = AttackOptions::new("").beam_width)]
    pub beam_width: usize,
    /// Tokens drawn from the attacker per prompt each step.
    #[arg(long, default_value_t = AttackOptions::new("").candidates)]
    pub candidates: usize,
    /// Suffix tokens at most: a bound, not the budget (--time-limit is); the attacker's context
    /// also ends the suffix.
    #[arg(long, default_value_t = AttackOptions::new("").max_tokens)]
    pub max_tokens: usize,
    /// How candidates are drawn.
    #[arg(long, value_enum, default_value_t = ProposalArg::Sample)]
    pub proposal: ProposalArg,
    /// Nucleus mass for --proposal sample.
    #[arg(long, default_value_t = DEFAULT_SAMPLE.0)]
    pub top_p: f32,
    /// Attacker temperature for --proposal sample.
    #[arg(long, default_value_t = DEFAULT_SAMPLE.1)]
    pub temperature: f32,
    /// Random seed for --proposal sample.
    #[arg(long, default_value_t = DEFAULT_SAMPLE.2)]
    pub seed: u64,
    /// Weight of the attacker's mean log-probability of the suffix (nats/token) added to the
    /// objective; higher reads more naturally.
    #[arg(long, default_value_t = AttackOptions::new("").readability)]
    pub readability: f32,
    /// Tokens of the victim's greedy answer to generate and show.
    #[arg(long, default_value_t = AttackOptions::new("").response_tokens)]
    pub response_tokens: usize,
    /// The budget: seconds after which the best prompt so far is the result. The suffix grows
    /// until the target is reached or this time is spent.
    #[arg(long, value_name = "SECONDS", default_value_t = clipsteer::steer::search::attack::DEFAULT_TIME_LIMIT.as_secs_f64())]
    pub time_limit: f64,
    /// The victim's chat template, overriding its own: a tokenizer_config.json, a directory
    /// holding one, a .gguf file, or a Jinja file.
    #[arg(long, value_name = "PATH")]
    pub chat_template: Option<PathBuf>,
    /// JSON lines on stdout: a "step" event per step, then a "done" event.
    #[arg(long)]
    pub json: bool,
}

impl AttackArgs {
    /// The spec of one attack; for --behaviors, of the first row's kind, with each row's
    /// instruction and target set by [`behaviors_command`].
    fn spec(&self) -> Result<AttackSpec> {
        // clap's `requires` lets these through beside the required objective group; a flag
        // that would be silently ignored is an error instead.
        if self.scorer_cmd.is_none() {
            if self.scorer_timeout.is_some() {
                bail!("--scorer-timeout applies only with --scorer-cmd");
            }
            if self.success_score.is_some() {
                bail!("--success-score applies only with --scorer-cmd");
            }
        }
        if self.encoder.is_some() && self.target_text.is_none() {
            bail!("--encoder applies only with --target-text");
        }
        let objective = match (&self.target_response, &self.scorer_cmd, &self.target_text, &self.encoder) {
            (Some(target), None, None, _) => AttackObjective::TargetResponse(target.clone()),
            // Each row's own target, set per behaviour.
            (None, None, None, _) if self.behaviors.is_some() => {
                AttackObjective::TargetResponse(String::new())
            }
            (None, Some(command), None, _) => AttackObjective::Command {
                command: command.clone(),
                timeout: seconds("--scorer-timeout", self.scorer_timeout.unwrap_or(60.0))?,
                success_score: self.success_score,
            },
            (None, None, Some(text), Some(encoder)) => AttackObjective::TargetText {
                text: text.clone(),
                encoder: encoder.clone(),
            },
            _ => bail!("give exactly one objective: --target-response, --scorer-cmd, or --target-text with --encoder"),
        };
        let proposal = match self.proposal {
            ProposalArg::Sample => Proposal::Sample {
                top_p: self.top_p,
                temperature: self.temperature,
                seed: self.seed,
            },
            ProposalArg::TopK => Proposal::TopK,
        };
        let options = AttackOptions {
            beam_width: self.beam_width,
            candidates: self.candidates,
            max_tokens: self.max_tokens,
            proposal,
            readability: self.readability,
            time_limit: Some(seconds("--time-limit", self.time_limit)?),
            blocklist: self.blocking.to_blocklist()?,
            response_tokens: self.response_tokens,
            ..AttackOptions::new(self.instruction.as_deref().unwrap_or_default())
        };
        Ok(AttackSpec {
            attacker: clipsteer::load::lm_argument(&self.attacker, self.gguf_file.as_deref())?,
            victim: self
                .victim
                .as_deref()
                .map(|v| clipsteer::load::lm_argument(v, self.victim_gguf_file.as_deref()))
                .transpose()?,
            chat_template: self.chat_template.clone(),
            objective,
            options,
        })
    }
}

/// `attack`'s exit codes: 0 success, 1 the budget ran out, 2 an error (as grep and diff), so a
/// script tells a failed attack from a failed run.
pub(crate) fn run_attack_command(args: AttackArgs, device: &Device) -> Result<i32> {
    match attack_command(args, device) {
        Ok(code) => Ok(code),
        Err(e) => {
            errln!("error: {}", clipsteer::error_line(&e));
            Ok(2)
        }
    }
}

pub(crate) fn attack_command(args: AttackArgs, device: &Device) -> Result<i32> {
    if args.behaviors.is_some() {
        return behaviors_command(args, device);
    }
    // clap's `requires` does not hold these back beside the objective group: said here, so that
    // none is silently ignored.
    let given = [
        ("--out", args.out.is_some()),
        ("--artifact", args.artifact.is_some()),
        ("--shard", args.shard.is_some()),
        ("--judge-cmd", args.judge_cmd.is_some()),
        ("--transfer-to", !args.transfer_to.is_empty()),
        ("--transfer-timeout", args.transfer_timeout.is_some()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
        clipsteer::usage_bail!("{flag} applies only with --behaviors FILE; for one instruction, --json prints the result");
    }
    let spec = args.spec()?;
    let live = Progress::new(1);
    let report = run_attack(&spec, device, |step| {
        if args.json {
            clipsteer::write_stdout_line(format_args!("{}", json_line(&attack_step_json(step))))?;
        }
        let head = format!(
            "[step {} · score {:.4} · {:.0} s] ",
            step.step + 1,
            step.score,
            step.seconds
        );
        live.line(&head, &step.prompt);
        Ok(())
    })?;
    live.finish();
    let result = &report.result;
    // A failed write is an error (exit 2), not the budget's exit 1.
    if args.json {
        clipsteer::write_stdout_line(format_args!("{}", json_line(&attack_done_json(&report))))?;
    } else {
        clipsteer::write_stdout_line(format_args!(
            "{}",
            clipsteer::terminal_safe(&result.prompt, true)
        ))?;
        errln!(
            "{} after {} step{} in {:.1} s · score {:.4}{}",
            if result.success {
                "success"
            } else {
                "no success"
            },
            result.steps,
            if result.steps == 1 { "" } else { "s" },
            result.seconds,
            result.score,
            match (report.baseline_nll, report.target_nll) {
                (Some(before), Some(after)) =>
                    format!(" · target NLL {before:.3} → {after:.3} nats/token"),
                _ => String::new(),
            }
        );
        errln!("victim: {}", result.response.replace('\n', " "));
        if let Some(reason) = &result.stop_reason {
            errln!("note: {reason}");
        }
    }
    Ok(if result.success { 0 } else { 1 })
}

/// `attack --behaviors`: every row attacked with the models loaded once, one result line each
/// (to stdout with --json, to --out), then the ASR. Exit 0 when every behaviour was attacked
/// (whatever the ASR), 1 when some failed with an error, 2 for a usage error.
pub(crate) fn behaviors_command(args: AttackArgs, device: &Device) -> Result<i32> {
    let spec = args.spec()?;
    let transfer_timeout = seconds("--transfer-timeout", args.transfer_timeout.unwrap_or(60.0))?;
    let Some(file) = args.behaviors.as_deref() else {
        bail!("--behaviors is required here");
    };
    let judge = match &args.judge_cmd {
        Some(command) => {
            if command.trim().is_empty() {
                clipsteer::usage_bail!("--judge-cmd is empty: give the program to run, e.g. --judge-cmd 'python3 judge.py'");
            }
            clipsteer::behaviors::JudgeSpec::Command {
                command: command.clone(),
                timeout: seconds("--judge-timeout", args.judge_timeout.unwrap_or(60.0))?,
            }
        }
        None => clipsteer::behaviors::JudgeSpec::Builtin(args.judge),
    };
    if let Some(path) = &args.artifact {
        clipsteer::behaviors::check_artifact_destination(path)?;
    }
    let run = clipsteer::behaviors::BehaviorRun {
        file,
        spec: &spec,
        judge: judge.clone(),
        out: args.out.as_deref(),
        resume: args.resume,
        shard: args.shard,
        transfer: args
            .transfer_to
            .iter()
            .map(|t| clipsteer::behaviors::TransferTarget::parse(t, &args.transfer_key_env))
            .collect::<Result<_>>()?,
        transfer_timeout,
    };
    let mut failed = 0;
    let outcome = run.run(device, |index, total, line| {
        if args.json {
            clipsteer::write_stdout_line(format_args!("{}", json_line(line)))?;
        }
        let id = line["behavior_id"].as_str().unwrap_or_default();
        if line["event"] == "done" {
            errln!(
                "[{}/{total}] {id}: {} · {:.1} s · {} queries",
                index + 1,
                if line["jailbroken"] == true {
                    "jailbroken"
                } else {
                    "not jailbroken"
                },
                line["seconds"].as_f64().unwrap_or_default(),
                line["queries"]
            );
            for entry in line["transfer"].as_array().into_iter().flatten() {
                if let Some(error) = entry["error"].as_str() {
                    errln!(
                        "  transfer to {}: error: {error}",
                        entry["victim"].as_str().unwrap_or_default()
                    );
                }
            }
        } else {
            failed += 1;
            errln!(
                "[{}/{total}] {id}: error: {}",
                index + 1,
                line["error"].as_str().unwrap_or_default()
            );
        }
        Ok(())
    })?;
    if outcome.lines.is_empty() {
        errln!("nothing to attack: every behaviour is already done or the shard is empty");
    }
    if args.json {
        clipsteer::write_stdout_line(format_args!("{}", json_line(&outcome.summary)))?;
    } else {
        // One call per line: errln! escapes a newline inside a record.
        for line in clipsteer::behaviors::summary_text(&outcome.summary).lines() {
            errln!("{line}");
        }
    }
    if let Some(path) = &args.artifact {
        let options = &spec.options;
        let parameters = json!({
            "attacker": spec.attacker,
            "beam_width": options.beam_width,
            "candidates": options.candidates,
            "max_tokens": options.max_tokens,
            "time_limit_seconds": options.time_limit.map(|t| t.as_secs_f64()),
            "proposal": format!("{:?}", options.proposal),
            "readability": options.readability,
            "response_tokens": options.response_tokens,
            "judge": judge.name(),
        });
        let victim = spec.victim.as_deref().unwrap_or(&spec.attacker);
        let artifact = clipsteer::behaviors::jailbreakbench_artifact(
            &outcome.all,
            &clipsteer::settings::model_identity(victim),
            parameters,
        );
        let text = clipsteer::events::escape_json(serde_json::to_string_pretty(&artifact)?);
        clipsteer::files::write_bytes_replacing(
            path,
            &format!("--artifact {}", path.display()),
            text.as_bytes(),
        )?;
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
