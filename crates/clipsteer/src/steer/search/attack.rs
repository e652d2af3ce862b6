//! The attack beam (BEAST: Sadasivan et al., "Fast Adversarial Attacks on Language Models In
//! One GPU Minute", ICML 2024): an attacker LM writes an adversarial suffix after an
//! instruction, token by token. Each step keeps `beam_width` prompts; every prompt draws
//! `candidates` next tokens from the attacker's own distribution (seeded top-p with a
//! temperature, or the deterministic top-k), and the `beam_width` best of all extensions by the
//! objective (plus `readability` × the attacker's mean log-probability of the suffix) go on.
//! After each step the best prompt's greedy answer from the victim is checked, and the search
//! stops as soon as it succeeds.

use super::log_softmax;
use crate::steer::constraints::{Blocklist, Refusal};
use crate::steer::objectives::victim::{continues_word, ends_inside_word, Victim};
use crate::steer::objectives::{Objective, ScoreBatch};
use crate::steer::CausalLm;
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How the attacker proposes each prompt's next tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Proposal {
    /// Draw without replacement from the attacker's distribution, at `temperature`, restricted to
    /// its nucleus of mass `top_p` (BEAST's sampling), from a ChaCha8 stream seeded with `seed`.
    Sample {
        top_p: f32,
        temperature: f32,
        seed: u64,
    },
    /// The attacker's most probable tokens (deterministic).
    TopK,
}

/// The default proposal's (top-p, temperature, seed): BEAST samples the attacker's full
/// distribution.
pub const DEFAULT_SAMPLE: (f32, f32, u64) = (1.0, 1.0, 0);

/// The default budget per prompt. docs/ATTACK.md measures success within 180 s on a 2-core CPU
/// with SmolLM2-135M; a run that reaches its target earlier stops earlier.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(180);

/// The default bound on the suffix's length. A step takes 1.7 s or more on that CPU, so 180 s
/// ends before 256 steps: the bound does not cut the budget short, as 32 did (every miss of the
/// evaluation in issue 32 stopped at 32 tokens with two minutes left). On a GPU, where steps
/// are faster, it keeps a failing search from writing a suffix longer than the victim reads
/// well.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Attack beam settings. Defaults: [`AttackOptions::new`].
#[derive(Debug, Clone)]
pub struct AttackOptions {
    /// The user's request; the prompt is this text followed by the suffix.
    pub instruction: String,
    /// Prompts kept each step (BEAST's k1).
    pub beam_width: usize,
    /// Tokens drawn per prompt each step (BEAST's k2).
    pub candidates: usize,
    /// Suffix tokens at most: an upper bound, not the budget. The search also ends when the
    /// attacker's context is full (a stop reason says so).
    pub max_tokens: usize,
    pub proposal: Proposal,
    /// Weight of the attacker's mean log-probability of the suffix (nats/token) added to the
    /// objective: higher keeps the suffix more readable.
    pub readability: f32,
    /// The budget: the search ends with the best prompt so far once this much time has passed.
    pub time_limit: Option<Duration>,
    /// Words the suffix may not contain (the instruction may not contain them either).
    pub blocklist: Blocklist,
    /// Tokens of the victim's greedy answer the result shows (at least as many as the success
    /// check reads: the target's tokens and one more).
    pub response_tokens: usize,
}

impl AttackOptions {
    /// The defaults: beam width 5, 10 candidates, top-p 1 at temperature 1 (BEAST samples the
    /// attacker's full distribution), seed 0, readability 0, 32 response tokens, and the clock
    /// as the budget: [`DEFAULT_TIME_LIMIT`], with [`DEFAULT_MAX_TOKENS`] as a bound that the
    /// clock reaches first.
    pub fn new(instruction: &str) -> Self {
        Self {
            instruction: instruction.to_string(),
            beam_width: 5,
            candidates: 10,
            max_tokens: DEFAULT_MAX_TOKENS,
            proposal: {
                let (top_p, temperature, seed) = DEFAULT_SAMPLE;
                Proposal::Sample {
                    top_p,
                    temperature,
                    seed,
                }
            },
            readability: 0.0,
            time_limit: Some(DEFAULT_TIME_LIMIT),
            blocklist: Blocklist::default(),
            response_tokens: 32,
        }
    }
}

/// When the attack has succeeded.
#[derive(Debug, Clone)]
pub enum Success {
    /// The victim's greedy answer starts with this text (leading whitespace ignored).
    ResponseStartsWith(String),
    /// The best prompt's objective reaches this score.
    ScoreAtLeast(f32),
    /// Never: run to the budget and keep the best.
    Never,
}

impl Success {
    /// Answer tokens the check needs: the target's own length and one more (so that a longer
    /// first word is not mistaken for the target); None: the whole `--response-tokens`.
    fn tokens_needed<V: CausalLm>(&self, victim: &Victim<V>) -> Result<Option<usize>> {
        Ok(match self {
            Success::ResponseStartsWith(target) => Some(victim.response_ids(target)?.len() + 1),
            _ => None,
        })
    }

    /// Whether an answer that starts with `partial` can still succeed: false once it has left
    /// the target's text for good (a partial UTF-8 character at its end is given the benefit of
    /// the doubt). Always true for the other criteria, which read the whole answer.
    pub fn can_still_succeed(&self, partial: &str) -> bool {
        match self {
            Success::ResponseStartsWith(target) => {
                let (target, partial) = (target.trim_start(), partial.trim_start());
                partial.ends_with('\u{FFFD}')
                    || target.starts_with(partial)
                    || partial.starts_with(target)
            }
            _ => true,
        }
    }

    /// Whether `response` (the victim's greedy answer) or `score` (the objective) succeeds. A
    /// target that ends inside a word must end the answer's word too: "… gold is Ag" is not
    /// answered by "… gold is Aglithaldehyde".
    pub fn check(&self, response: &str, score: f32) -> bool {
        match self {
            Success::ResponseStartsWith(target) => {
                let target = target.trim_start();
                match response.trim_start().strip_prefix(target) {
                    None => false,
                    Some(rest) => {
                        !(ends_inside_word(target)
                            && rest.chars().next().is_some_and(continues_word))
                    }
                }
            }
            Success::ScoreAtLeast(threshold) => score >= *threshold,
            Success::Never => false,
        }
    }
}

/// A candidate of one step, as shown in step events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttackCandidate {
    pub suffix: String,
    /// Objective plus readability term.
    pub score: f32,
}

/// What happened in one step.
#[derive(Debug, Clone)]
pub struct AttackStep {
    pub step: usize,
    /// The best prompt so far: the instruction, then the suffix.
    pub prompt: String,
    pub suffix: String,
    /// Its objective (without the readability term).
    pub score: f32,
    /// The victim's greedy answer to it.
    pub response: String,
    pub success: bool,
    /// The best candidates of this step, best first (up to 5).
    pub top: Vec<AttackCandidate>,
    /// Seconds since the search began.
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct AttackResult {
    /// The instruction, verbatim, then the suffix.
    pub prompt: String,
    pub suffix: String,
    /// The suffix as the attacker wrote it (attacker token ids).
    pub suffix_ids: Vec<u32>,
    /// The victim's greedy answer to `prompt`.
    pub response: String,
    pub success: bool,
    /// The objective of `prompt`.
    pub score: f32,
    pub steps: usize,
    pub seconds: f64,
    /// Why the search ended without success, if it did.
    pub stop_reason: Option<String>,
    /// Prompts the victim was run on: every candidate scored (one teacher-forced forward each,
    /// batched) and every greedy answer read (the success checks and the answer shown). What
    /// JailbreakBench's artifacts call queries.
    pub queries: usize,
}

struct Beam<C> {
    suffix_ids: Vec<u32>,
    suffix: String,
    /// Sum of the attacker's log-probabilities of the suffix tokens.
    log_prob: f64,
    score: f32,
    cache: C,
    logits: Vec<f32>,
}

struct Extension {
    parent: usize,
    token: u32,
    suffix: String,
    log_prob: f64,
    objective: f32,
    total: f32,
    /// The objective knows the victim's greedy answer to it begins with the target.
    greedy_target: bool,
}

/// Checks options before any model runs.
pub fn validate(options: &AttackOptions) -> Result<()> {
    if options.instruction.trim().is_empty() {
        crate::usage_bail!("--instruction is empty: give the request the suffix is appended to");
    }
    match options.blocklist.refusal(&options.instruction) {
        Some(Refusal::Word(word)) => crate::usage_bail!("the instruction contains the blocked word '{word}'; change the instruction or the blocklist"),
        Some(refusal) => crate::usage_bail!("the instruction contains {refusal}; remove it"),
        None => {}
    }
    if options.beam_width == 0 {
        crate::usage_bail!("--beam-width must be at least 1");
    }
    if options.candidates == 0 {
        crate::usage_bail!("--candidates must be at least 1");
    }
    if options.max_tokens == 0 {
        crate::usage_bail!("--max-tokens must be at least 1");
    }
    if options.response_tokens == 0 {
        crate::usage_bail!(
            "--response-tokens must be at least 1: the success check reads the victim's answer"
        );
    }
    if !(options.readability.is_finite() && options.readability >= 0.0) {
        crate::usage_bail!(
            "--readability must be a number ≥ 0, got {}",
            options.readability
        );
    }
    if let Proposal::Sample {
        top_p, temperature, ..
    } = options.proposal
    {
        if !(top_p > 0.0 && top_p <= 1.0) {
            crate::usage_bail!("--top-p must be in (0, 1], got {top_p}");
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            crate::usage_bail!("--temperature must be a positive number, got {temperature}");
        }
    }
    Ok(())
}

/// Draws up to `count` distinct tokens from `logits`, skipping `excluded`.
fn propose(
    logits: &[f32],
    count: usize,
    proposal: Proposal,
    excluded: &HashSet<u32>,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<Vec<u32>> {
    if logits.iter().any(|x| x.is_nan()) {
        bail!("the attacker produced NaN logits");
    }
    let mut order: Vec<u32> = (0..logits.len() as u32)
        .filter(|t| !excluded.contains(t))
        .collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    match proposal {
        Proposal::TopK => Ok(order.into_iter().take(count).collect()),
        Proposal::Sample {
            top_p, temperature, ..
        } => {
            let max = logits[order[0] as usize] as f64;
            let weights: Vec<f64> = order
                .iter()
                .map(|&t| ((logits[t as usize] as f64 - max) / temperature as f64).exp())
                .collect();
            let total: f64 = weights.iter().sum();
            // The nucleus: the most probable tokens whose mass reaches top_p.
            let mut mass = 0.0;
            let mut nucleus = 0;
            for w in &weights {
                nucleus += 1;
                mass += w / total;
                if mass >= top_p as f64 {
                    break;
                }
            }
            let mut pool: Vec<(u32, f64)> =
                order.iter().copied().zip(weights).take(nucleus).collect();
            let mut drawn = Vec::with_capacity(count.min(pool.len()));
            while drawn.len() < count && !pool.is_empty() {
                let total: f64 = pool.iter().map(|(_, w)| w).sum();
                let mut u = rng.random::<f64>() * total;
                let mut pick = pool.len() - 1;
                for (i, (_, w)) in pool.iter().enumerate() {
                    if u < *w {
                        pick = i;
                        break;
                    }
                    u -= w;
                }
                drawn.push(pool.swap_remove(pick).0);
            }
            Ok(drawn)
        }
    }
}

/// Runs the attack beam. `attacker_context` is the attacker's own text before the suffix: its
/// chat template's head with the instruction as the start of the user message. `success`
/// decides when to stop; `on_step` sees every step.
#[allow(clippy::too_many_arguments)]
pub fn run<A: CausalLm, V: CausalLm, O: Objective>(
    attacker: &A,
    attacker_context: &str,
    victim: &Victim<V>,
    objective: &O,
    success: &Success,
    options: &AttackOptions,
    mut on_step: impl FnMut(&AttackStep) -> Result<()>,
) -> Result<AttackResult> {
    validate(options)?;
    let started = Instant::now();
    let context_ids = attacker.encode(attacker_context)?;
    let max_steps = suffix_room(attacker, &context_ids, options)?;
    let mut attack = Attack::new(attacker, victim, objective, success, options, started)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(match options.proposal {
        Proposal::Sample { seed, .. } => seed,
        Proposal::TopK => 0,
    });
    let instruction = options.instruction.as_str();

    let mut cache = attacker.new_cache();
    let logits = attacker.next_logits(&context_ids, &mut cache)?;
    let start_score = objective.score(&attack.base_prefix, &[instruction.to_string()])?;
    attack.queries += 1;
    let mut beams = vec![Beam {
        suffix_ids: Vec::new(),
        suffix: String::new(),
        log_prob: 0.0,
        score: start_score.similarities[0],
        cache,
        logits,
    }];
    let (response, _) = victim.greedy_answer(instruction, attack.shown)?;
    attack.queries += 1;
    let mut best = Best {
        suffix: String::new(),
        suffix_ids: Vec::new(),
        score: start_score.similarities[0],
        response,
    };
    if success.check(&best.response, best.score) {
        return Ok(attack.finish(best, true, 0, None));
    }
    let mut stop_reason = None;
    let mut steps = 0;
    for step in 0..max_steps {
        if let Some(limit) = options
            .time_limit
            .filter(|&limit| started.elapsed() >= limit)
        {
            stop_reason = Some(format!(
                "time limit of {} s reached after {step} step{}",
                limit.as_secs_f64(),
                if step == 1 { "" } else { "s" }
            ));
            break;
        }
        let mut extensions = attack.extensions(&beams, &mut rng)?;
        if extensions.is_empty() {
            stop_reason = Some(format!(
                "stopped after {step} tokens: every candidate would write a blocked word or a refused control character; raise --candidates or change the blocklist"
            ));
            break;
        }
        let batch = match attack.score(&mut extensions, step) {
            Ok(batch) => batch,
            // A scorer program still busy when the time is up: the run ends with what it has,
            // as it would at the top of a step.
            Err(e) if e.is::<crate::steer::objectives::command::TimeLimitReached>() => {
                stop_reason = Some(crate::error_line(&e));
                break;
            }
            Err(e) => return Err(e),
        };
        let (order, top) = attack.rank(&extensions);
        let leader_forced = attack.leader_forced(&batch, order[0]);
        beams = attack.next_beams(&beams, &extensions, &order)?;
        steps = step + 1;

        let leader = &beams[0];
        let prompt = format!("{instruction}{}", leader.suffix);
        let response = attack.check_answer(&prompt, leader_forced.as_deref())?;
        let succeeded = success.check(&response, leader.score);
        if leader.score >= best.score || succeeded {
            best = Best::of(leader, response.clone());
        }
        on_step(&AttackStep {
            step,
            prompt: prompt.clone(),
            suffix: leader.suffix.clone(),
            score: leader.score,
            response,
            success: succeeded,
            top,
            seconds: started.elapsed().as_secs_f64(),
        })?;
        if succeeded {
            let best = attack.with_shown_answer(best)?;
            return Ok(attack.finish(best, true, steps, None));
        }
    }
    let stop_reason = stop_reason.unwrap_or_else(|| {
        if max_steps < options.max_tokens {
            format!(
                "no success when the attacker's context of {} tokens was full, after {max_steps} suffix tokens",
                attacker.context_len()
            )
        } else {
            format!("no success within --max-tokens {}", options.max_tokens)
        }
    });
    let best = attack.with_shown_answer(best)?;
    Ok(attack.finish(best, false, steps, Some(stop_reason)))
}

/// The suffix tokens the search may write: --max-tokens, or fewer when the attacker's context
/// fills first (a stop reason then says so, like the clock's).
fn suffix_room<A: CausalLm>(
    attacker: &A,
    context_ids: &[u32],
    options: &AttackOptions,
) -> Result<usize> {
    if context_ids.is_empty() {
        bail!("the attacker's context is empty");
    }
    if context_ids.len() >= attacker.context_len() {
        bail!(
            "the instruction ({} attacker tokens with the template) fills the attacker's context of {} tokens; shorten it",
            context_ids.len(),
            attacker.context_len()
        );
    }
    Ok(options
        .max_tokens
        .min(attacker.context_len() - context_ids.len()))
}

/// The best prompt so far: its suffix, its objective and the victim's answer to it.
struct Best {
    suffix: String,
    suffix_ids: Vec<u32>,
    score: f32,
    response: String,
}

impl Best {
    fn of<C>(beam: &Beam<C>, response: String) -> Self {
        Self {
            suffix: beam.suffix.clone(),
            suffix_ids: beam.suffix_ids.clone(),
            score: beam.score,
            response,
        }
    }
}

/// What one attack holds fixed from step to step, and its count of victim queries.
struct Attack<'a, A, V: CausalLm, O: Objective> {
    attacker: &'a A,
    victim: &'a Victim<'a, V>,
    objective: &'a O,
    options: &'a AttackOptions,
    success: &'a Success,
    /// Special tokens would let the suffix write the chat template's own markers.
    excluded: HashSet<u32>,
    base_prefix: O::Prefix,
    /// The target's victim tokens when success is the answer's start: the check then reads
    /// the leader's answer only while it can still start with them
    /// (Victim::greedy_answer_toward); most answers leave it within a few tokens.
    target_ids: Option<Vec<u32>>,
    /// Answer tokens the check reads: as many as the target needs, even past
    /// --response-tokens (which only sets what is shown), or a shorter read could never see the
    /// whole target.
    check_tokens: usize,
    /// Answer tokens the result shows: the check's, at least.
    shown: usize,
    started: Instant,
    queries: usize,
}

impl<'a, A: CausalLm, V: CausalLm, O: Objective> Attack<'a, A, V, O> {
    fn new(
        attacker: &'a A,
        victim: &'a Victim<V>,
        objective: &'a O,
        success: &'a Success,
        options: &'a AttackOptions,
        started: Instant,
    ) -> Result<Self> {
        let excluded: HashSet<u32> = attacker.special_token_ids().into_iter().collect();
        // More draws than the attacker has tokens would score its whole vocabulary per beam, a
        // step of hours that the time limit (checked between steps) cannot cut short.
        let proposable = attacker.vocab_size().saturating_sub(excluded.len());
        if options.candidates > proposable {
            bail!(
                "--candidates {} exceeds the {proposable} tokens the attacker can propose; BEAST uses 10-15",
                options.candidates
            );
        }
        let check_tokens = success
            .tokens_needed(victim)?
            .unwrap_or(options.response_tokens);
        let target_ids = match success {
            Success::ResponseStartsWith(target) => Some(victim.response_ids(target)?),
            _ => None,
        };
        Ok(Self {
            attacker,
            victim,
            objective,
            options,
            success,
            excluded,
            base_prefix: objective.prefix(&options.instruction, None)?,
            target_ids,
            check_tokens,
            shown: options.response_tokens.max(check_tokens),
            started,
            queries: 0,
        })
    }

    fn prompt_of(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.options.instruction)
    }

    /// Every beam's drawn next tokens, as suffixes: those that write a blocked word (which may
    /// span the instruction's end and the suffix's start) or repeat a suffix already drawn are
    /// left out.
    fn extensions(
        &self,
        beams: &[Beam<A::Cache>],
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<Vec<Extension>> {
        let mut extensions = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for (parent, beam) in beams.iter().enumerate() {
            let log_probs = log_softmax(&beam.logits);
            let drawn = propose(
                &beam.logits,
                self.options.candidates,
                self.options.proposal,
                &self.excluded,
                rng,
            )?;
            let mut ids = beam.suffix_ids.clone();
            ids.push(0);
            for token in drawn {
                *ids.last_mut().expect("ids is non-empty") = token;
                let suffix = self.attacker.decode(&ids)?;
                if !self.options.blocklist.allows(&self.prompt_of(&suffix))
                    || !seen.insert(suffix.clone())
                {
                    continue;
                }
                extensions.push(Extension {
                    parent,
                    token,
                    suffix,
                    log_prob: beam.log_prob + log_probs[token as usize],
                    objective: f32::NAN,
                    total: f32::NAN,
                    greedy_target: false,
                });
            }
        }
        Ok(extensions)
    }

    /// Scores the extensions of step `step` (0-based) in one objective call: the objective,
    /// plus readability × the attacker's mean log-probability of the suffix.
    fn score(&mut self, extensions: &mut [Extension], step: usize) -> Result<ScoreBatch> {
        let texts: Vec<String> = extensions
            .iter()
            .map(|e| self.prompt_of(&e.suffix))
            .collect();
        let prefix = self
            .objective
            .prefix(&self.options.instruction, Some(&self.base_prefix))?;
        self.queries += texts.len();
        let batch = self.objective.score(&prefix, &texts)?;
        let length = (step + 1) as f64;
        for (k, (extension, &score)) in extensions.iter_mut().zip(&batch.similarities).enumerate() {
            extension.objective = score;
            extension.total =
                score + self.options.readability * (extension.log_prob / length) as f32;
            extension.greedy_target = batch.greedy_target.get(k).copied().unwrap_or(false);
        }
        Ok(batch)
    }

    /// The extensions that go on, best first (at most beam width), and the step's best five as
    /// shown.
    fn rank(&self, extensions: &[Extension]) -> (Vec<usize>, Vec<AttackCandidate>) {
        let mut order: Vec<usize> = (0..extensions.len()).collect();
        // Best first; ties keep the earlier parent and draw (a stable sort).
        order.sort_by(|&a, &b| extensions[b].total.total_cmp(&extensions[a].total));
        let top = order
            .iter()
            .take(5)
            .map(|&i| AttackCandidate {
                suffix: extensions[i].suffix.clone(),
                score: extensions[i].total,
            })
            .collect();
        // Every candidate's greedy answer is known from the scoring forward when the objective
        // teacher-forces the target: the best one that already answers with the target leads,
        // so that the success check (the real greedy decode) sees it even when a candidate
        // with a higher mean log-probability fails on one token.
        if let Some(at) = order.iter().position(|&i| extensions[i].greedy_target) {
            let hit = order.remove(at);
            order.insert(0, hit);
        }
        order.truncate(self.options.beam_width);
        (order, top)
    }

    /// The leader's argmax under teacher forcing of the target the check reads, from the
    /// scoring forward: it spares the check a forward of its own.
    fn leader_forced(&self, batch: &ScoreBatch, leader: usize) -> Option<Vec<u32>> {
        match (&self.target_ids, self.objective.teacher_forced()) {
            (Some(checked), Some(forced)) if checked.as_slice() == forced => {
                batch.teacher_forced_argmax.get(leader).cloned()
            }
            _ => None,
        }
    }

    /// The next beams, in rank order: every parent's children in one attacker forward.
    fn next_beams(
        &self,
        beams: &[Beam<A::Cache>],
        extensions: &[Extension],
        order: &[usize],
    ) -> Result<Vec<Beam<A::Cache>>> {
        let caches: Vec<&A::Cache> = beams.iter().map(|beam| &beam.cache).collect();
        let parents: Vec<usize> = order.iter().map(|&i| extensions[i].parent).collect();
        let tokens: Vec<u32> = order.iter().map(|&i| extensions[i].token).collect();
        let branched = self.attacker.branch_rows(&caches, &parents, &tokens)?;
        Ok(order
            .iter()
            .zip(branched)
            .map(|(&i, (logits, cache))| {
                let extension = &extensions[i];
                let mut suffix_ids = beams[extension.parent].suffix_ids.clone();
                suffix_ids.push(extension.token);
                Beam {
                    suffix_ids,
                    suffix: extension.suffix.clone(),
                    log_prob: extension.log_prob,
                    score: extension.objective,
                    cache,
                    logits,
                }
            })
            .collect())
    }

    /// The victim's greedy answer to the leader's prompt, as far as the success check reads.
    fn check_answer(&mut self, prompt: &str, leader_forced: Option<&[u32]>) -> Result<String> {
        let success = self.success;
        let (response, _) = match &self.target_ids {
            Some(target_ids) => self.victim.greedy_answer_toward(
                prompt,
                self.check_tokens,
                target_ids,
                leader_forced,
                |partial| success.can_still_succeed(partial),
            )?,
            None => self.victim.greedy_answer(prompt, self.check_tokens)?,
        };
        self.queries += 1;
        Ok(response)
    }

    /// `best` with the answer the result shows, when the steps read only the start of it that
    /// the check needed.
    fn with_shown_answer(&mut self, mut best: Best) -> Result<Best> {
        if self.check_tokens != self.shown || self.target_ids.is_some() {
            best.response = self
                .victim
                .greedy_answer(&self.prompt_of(&best.suffix), self.shown)?
                .0;
            self.queries += 1;
        }
        Ok(best)
    }

    fn finish(
        &self,
        best: Best,
        success: bool,
        steps: usize,
        stop_reason: Option<String>,
    ) -> AttackResult {
        AttackResult {
            prompt: self.prompt_of(&best.suffix),
            suffix: best.suffix,
            suffix_ids: best.suffix_ids,
            response: best.response,
            success,
            score: best.score,
            steps,
            seconds: self.started.elapsed().as_secs_f64(),
            stop_reason,
            queries: self.queries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Success;

    #[test]
    fn a_target_must_end_the_answers_word() {
        let gold = Success::ResponseStartsWith("The chemical symbol for gold is Ag".into());
        assert!(gold.check(" The chemical symbol for gold is Ag.", 0.0));
        assert!(gold.check("The chemical symbol for gold is Ag", 0.0));
        assert!(gold.check("The chemical symbol for gold is Ag (silver)", 0.0));
        assert!(!gold.check("The chemical symbol for gold is Aglithaldehyde.", 0.0));
        assert!(!gold.check("The chemical symbol for gold is Au.", 0.0));
        // A target that ends in punctuation may be followed by anything.
        let comma = Success::ResponseStartsWith("Yes,".into());
        assert!(comma.check("Yes,and", 0.0));
    }

    #[test]
    fn an_answer_can_still_succeed_until_it_leaves_the_target() {
        let gold = Success::ResponseStartsWith(" The chemical symbol for gold is Ag".into());
        for partial in ["", " The", "The chemical symbol for gold is A", "The chem"] {
            assert!(gold.can_still_succeed(partial), "{partial:?}");
        }
        // Past the target: the word-boundary check still needs what follows.
        assert!(gold.can_still_succeed("The chemical symbol for gold is Aglith"));
        // A partial UTF-8 character decodes as U+FFFD until its last byte arrives.
        assert!(gold.can_still_succeed("The chemical symbol for gold is \u{FFFD}"));
        for partial in ["The chemical symbol for gold is Au", "A", "The chemistry"] {
            assert!(!gold.can_still_succeed(partial), "{partial:?}");
        }
        assert!(Success::Never.can_still_succeed("anything"));
        assert!(Success::ScoreAtLeast(0.5).can_still_succeed("anything"));
    }
}
