//! Objectives on a victim language model's answer to a prompt.
//!
//! The victim receives what a real deployment would send it: the candidate prompt as the user
//! message, rendered by the victim's own chat template and tokenised by the victim's own
//! tokenizer ([`Victim::prompt_ids`]). Token ids never cross from the attacker to the victim.
//!
//! - [`TargetResponse`]: the victim's mean log-probability of a target response, teacher-forced
//!   after the templated prompt (BEAST's objective). All candidates of a step run in one batched
//!   forward that continues the victim's KV cache of their shared beginning.
//! - [`ResponseSimilarity`]: the cosine of the victim's greedy answer with a text target.
//! - [`ResponseCommand`]: a `--scorer-cmd` program shown each prompt with the victim's answer.

use super::command::{Item, ItemScorer};
use super::{Objective, ScoreBatch, Scorer};
use crate::steer::chat_template::ChatTemplate;
use crate::steer::{CausalLm, TeacherForced};
use anyhow::{bail, Result};
use std::cell::RefCell;

/// A victim: a language model and its chat template.
pub struct Victim<'a, L: CausalLm> {
    pub lm: &'a L,
    pub template: ChatTemplate,
    /// The rendered template before the user message.
    before_user: String,
}

impl<'a, L: CausalLm> Victim<'a, L> {
    pub fn new(lm: &'a L, template: ChatTemplate) -> Result<Self> {
        let (before_user, _) = template.user_slot()?;
        Ok(Self {
            lm,
            template,
            before_user,
        })
    }

    /// The ids the victim receives for the user message `text`: its chat template rendered with
    /// the generation prompt and tokenised without added special tokens, as transformers'
    /// `apply_chat_template([{"role":"user","content":text}], add_generation_prompt=True)`.
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.lm.encode(&self.template.user_prompt(text)?)
    }

    /// The victim's greedy answer to the user message `text`: up to `max_tokens` tokens, ending
    /// before its end-of-text token. Returns the text and its ids.
    pub fn greedy_answer(&self, text: &str, max_tokens: usize) -> Result<(String, Vec<u32>)> {
        self.greedy_from(&self.prompt_ids(text)?, Vec::new(), max_tokens, |_| true)
    }

    /// Greedy decoding, one token at a time, after the prompt `ids` and the answer's first
    /// tokens `answer`, while `go_on(answer so far)` holds, up to `max_tokens` answer tokens,
    /// ending before an end-of-text token. Returns the text and its ids.
    fn greedy_from(
        &self,
        ids: &[u32],
        mut answer: Vec<u32>,
        max_tokens: usize,
        go_on: impl Fn(&str) -> bool,
    ) -> Result<(String, Vec<u32>)> {
        let mut cache = self.lm.new_cache();
        let mut fed = ids.to_vec();
        fed.extend(&answer);
        let mut logits = self.lm.next_logits(&fed, &mut cache)?;
        while answer.len() < max_tokens {
            let token = argmax(&logits)?;
            if self.lm.is_eos(token) || ids.len() + answer.len() >= self.lm.context_len() {
                break;
            }
            answer.push(token);
            if answer.len() == max_tokens || !go_on(&self.lm.decode(&answer)?) {
                break;
            }
            logits = self.lm.next_logits(&[token], &mut cache)?;
        }
        Ok((self.lm.decode(&answer)?, answer))
    }

    /// The start of the victim's greedy answer to the user message `text`, read only as far as
    /// it can still begin with `expected` (the ids of an expected answer): `expected` is checked
    /// in one teacher-forced forward, whose argmax at each position is the greedy token there
    /// for as long as the answer follows `expected` (and one token past it); reading then goes
    /// on one token at a time while `go_on(answer so far)` holds, up to `max_tokens` tokens in
    /// all. An answer that has left `expected` for good costs one forward instead of
    /// `max_tokens` one-token steps. Returns the text and its ids, ending before an
    /// end-of-text token.
    ///
    /// `forced`, when given, is that forward's argmax row already computed: the objective's
    /// scoring forward of this very prompt teacher-forcing `expected`
    /// ([`ScoreBatch::teacher_forced_argmax`] of [`TargetResponse`]), so the check costs no
    /// forward of its own while the answer leaves `expected` within it.
    ///
    /// The batched forward rounds differently from one-token steps, so at a near-tie (logits
    /// equal to about 1e-6) it may pick the other token; [`Self::greedy_answer`] is the plain
    /// loop.
    pub fn greedy_answer_toward(
        &self,
        text: &str,
        max_tokens: usize,
        expected: &[u32],
        forced: Option<&[u32]>,
        go_on: impl Fn(&str) -> bool,
    ) -> Result<(String, Vec<u32>)> {
        let ids = self.prompt_ids(text)?;
        let draft = &expected[..expected.len().min(max_tokens.saturating_sub(1))];
        if max_tokens == 0 || ids.len() + draft.len() + 1 > self.lm.context_len() {
            return self.greedy_from(&ids, Vec::new(), max_tokens, |_| true);
        }
        let forced = match forced {
            Some(forced) => forced.to_vec(),
            None => {
                // The last continuation token is only predicted: its argmax is the token after
                // `draft`.
                let mut continuation = draft.to_vec();
                continuation.push(0);
                self.lm
                    .continuation_log_probs(
                        &self.lm.new_cache(),
                        &[0],
                        std::slice::from_ref(&ids),
                        &[continuation],
                        None,
                    )?
                    .pop()
                    .ok_or_else(|| anyhow::anyhow!("the victim scored no row"))?
                    .argmax
            }
        };
        // The length check above keeps every accepted token within the context.
        let mut answer = Vec::new();
        for (j, &token) in forced.iter().enumerate() {
            if self.lm.is_eos(token) {
                return Ok((self.lm.decode(&answer)?, answer));
            }
            answer.push(token);
            if answer.len() == max_tokens || draft.get(j).is_some_and(|&d| d != token) {
                break;
            }
        }
        if answer.len() == max_tokens || !go_on(&self.lm.decode(&answer)?) {
            return Ok((self.lm.decode(&answer)?, answer));
        }
        self.greedy_from(&ids, answer, max_tokens, go_on)
    }

    /// The victim's KV cache after the beginning of the prompt of `text` that any longer user
    /// message shares with it: the template's head and `text`, less its last token (which a
    /// continuation may merge with).
    fn prefix(
        &self,
        text: &str,
        previous: Option<&VictimPrefix<L::Cache>>,
    ) -> Result<VictimPrefix<L::Cache>> {
        let mut ids = self.lm.encode(&format!("{}{text}", self.before_user))?;
        ids.pop();
        let (mut cache, reused) = match previous {
            Some(previous) => {
                let shared = common_prefix(&previous.ids, &ids);
                (self.lm.truncate_cache(&previous.cache, shared)?, shared)
            }
            None => (self.lm.new_cache(), 0),
        };
        if reused < ids.len() {
            self.lm.next_logits(&ids[reused..], &mut cache)?;
        }
        Ok(VictimPrefix { ids, cache })
    }

    /// Per prompt, the log-probability of each token of `continuation` teacher-forced after the
    /// templated prompt of each text, in batches of rows that continue `prefix` in one forward.
    fn continuation_log_probs(
        &self,
        prefix: &VictimPrefix<L::Cache>,
        texts: &[String],
        continuation: &[u32],
        after: Option<&[u32]>,
    ) -> Result<Vec<TeacherForced>> {
        let prompts: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.prompt_ids(t))
            .collect::<Result<_>>()?;
        // A text whose tokens differ from the prefix's before its end (a merge at the boundary)
        // shortens what all rows reuse; the scores stay exact.
        let shared = prompts
            .iter()
            .map(|p| common_prefix(&prefix.ids, p).min(p.len().saturating_sub(1)))
            .min()
            .unwrap_or(0);
        let cache = if shared == prefix.ids.len() {
            prefix.cache.clone()
        } else {
            self.lm.truncate_cache(&prefix.cache, shared)?
        };
        let mut out: Vec<Option<TeacherForced>> = vec![None; texts.len()];
        // With nothing shared the cache is empty, and a model may add its own <bos> there.
        let groups = if shared == 0 {
            vec![(0, (0..prompts.len()).collect())]
        } else {
            share_groups(&prompts, shared)
        };
        // Groups whose shared beginnings have one length run those beginnings in one forward,
        // and then all their rows together: a group is one beam's candidates (about ten rows),
        // far too few for gemm to run well on their own.
        let mut by_length: std::collections::BTreeMap<usize, Vec<Vec<usize>>> =
            std::collections::BTreeMap::new();
        for (group_shared, rows) in groups {
            by_length.entry(group_shared).or_default().push(rows);
        }
        for (group_shared, groups) in by_length {
            let (group_cache, group_rows): (L::Cache, Vec<usize>) = if group_shared > shared {
                // The group's common beginning past `shared` goes through the victim once, not
                // once per row: in the attack a group is one beam's candidates, which share the
                // suffix.
                let beginnings: Vec<Vec<u32>> = groups
                    .iter()
                    .map(|rows| prompts[rows[0]][shared..group_shared].to_vec())
                    .collect();
                (
                    self.lm.extend_rows(&cache, &beginnings)?,
                    (0..groups.len()).collect(),
                )
            } else {
                (cache.clone(), vec![0; groups.len()])
            };
            let rows: Vec<(usize, usize)> = groups
                .iter()
                .zip(&group_rows)
                .flat_map(|(rows, &cache_row)| rows.iter().map(move |&i| (i, cache_row)))
                .collect();
            for chunk in rows.chunks(ROWS_PER_FORWARD) {
                let contexts: Vec<Vec<u32>> = chunk
                    .iter()
                    .map(|&(i, _)| prompts[i][group_shared..].to_vec())
                    .collect();
                let cache_rows: Vec<usize> = chunk.iter().map(|&(_, row)| row).collect();
                let continuations = vec![continuation.to_vec(); chunk.len()];
                let scored = self.lm.continuation_log_probs(
                    &group_cache,
                    &cache_rows,
                    &contexts,
                    &continuations,
                    after,
                )?;
                for (&(i, _), row) in chunk.iter().zip(scored) {
                    out[i] = Some(row);
                }
            }
        }
        out.into_iter()
            .map(|row| row.ok_or_else(|| anyhow::anyhow!("a prompt was left unscored")))
            .collect()
    }

    /// The ids of `text` as the victim would write it after its generation prompt.
    pub fn response_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.lm.encode(text)
    }

    /// The tokens that cannot continue a word when they follow one: those whose text does not
    /// begin with a letter or digit ([`continues_word`]), special tokens included (their text
    /// begins with a marker such as `<`). A token that decodes to U+FFFD alone (part of a UTF-8
    /// character, which may be a letter) or does not decode counts as continuing. Sorted.
    pub fn word_ending_tokens(&self) -> Result<Vec<u32>> {
        let mut ending = Vec::new();
        for id in 0..self.lm.vocab_size() as u32 {
            if let Ok(text) = self.lm.decode(&[id]) {
                if text
                    .chars()
                    .next()
                    .is_some_and(|c| !continues_word(c) && c != '\u{FFFD}')
                {
                    ending.push(id);
                }
            }
        }
        if ending.is_empty() {
            bail!("the victim's vocabulary has no token that ends a word");
        }
        Ok(ending)
    }
}

/// Whether `c`, written right after a word, continues it: a letter or digit in any script.
/// The attack's success check reads answers with this rule: "… gold is Ag" is not answered by
/// "… gold is Aglithaldehyde".
pub fn continues_word(c: char) -> bool {
    c.is_alphanumeric()
}

/// Whether `text` ends inside a word, so that what follows it must not continue the word.
pub fn ends_inside_word(text: &str) -> bool {
    text.chars().next_back().is_some_and(continues_word)
}

/// Rows of one batched forward: bounds memory (rows × positions × hidden, and rows × target
/// tokens × vocabulary for the logits).
const ROWS_PER_FORWARD: usize = 64;

/// The victim's cache after a shared beginning of the templated prompts.
pub struct VictimPrefix<C> {
    ids: Vec<u32>,
    cache: C,
}

/// Groups rows (`prompts`, each longer than `shared` tokens, all sharing their first `shared`)
/// so that each group's common beginning runs once: returns (tokens the group's rows share, at
/// most each row's length less one; the rows' indices). Rows are taken in id order, and a row
/// joins the group before it when that computes fewer positions than starting its own.
fn share_groups(prompts: &[Vec<u32>], shared: usize) -> Vec<(usize, Vec<usize>)> {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by(|&a, &b| prompts[a].cmp(&prompts[b]));
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        let row = &prompts[i];
        let own = row.len().saturating_sub(1).max(shared);
        if let Some((group_shared, members)) = groups.last_mut() {
            let joint = common_prefix(&prompts[members[0]], row)
                .min(own)
                .min(*group_shared)
                .max(shared);
            // Positions computed either way: the group's prefix plus every row past it.
            let members_past = |at: usize| {
                members
                    .iter()
                    .map(|&m| prompts[m].len() - at)
                    .sum::<usize>()
            };
            let joined = (joint - shared) + members_past(joint) + (row.len() - joint);
            let apart = (*group_shared - shared)
                + members_past(*group_shared)
                + (own - shared)
                + (row.len() - own);
            if joined <= apart {
                *group_shared = joint;
                members.push(i);
                continue;
            }
        }
        groups.push((own, vec![i]));
    }
    groups
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The index of the largest value; the first wins ties.
fn argmax(values: &[f32]) -> Result<u32> {
    if values.iter().any(|v| v.is_nan()) {
        bail!("the victim produced NaN logits");
    }
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// The victim's mean log-probability (nats per token) of answering with `target`,
/// teacher-forced after the templated prompt: BEAST's objective, over whole words. Higher is
/// better.
///
/// Where `target` ends inside a word ([`ends_inside_word`]), the answer must also end that word
/// there to count as the target (the attack's success check), so the token after the target is
/// scored too: the mean runs over the target's n tokens and one more term, ln Σ p(t) over the
/// tokens t that end a word ([`Victim::word_ending_tokens`]). This differs from BEAST, which
/// scores the target's tokens alone; where `target` ends in a space or punctuation the two agree.
/// [`TargetResponse::target_nll`] is the target's tokens alone in both cases.
pub struct TargetResponse<'v, 'a, L: CausalLm> {
    victim: &'v Victim<'a, L>,
    target: String,
    target_ids: Vec<u32>,
    /// The tokens that end the target's last word, when it ends inside one; with them, a mask
    /// over the vocabulary.
    word_end: Option<(Vec<u32>, Vec<bool>)>,
    /// The cache of the first prefix asked for, reused by the others (the instruction's).
    base: RefCell<Option<VictimPrefix<L::Cache>>>,
}

impl<'v, 'a, L: CausalLm> TargetResponse<'v, 'a, L> {
    pub fn new(victim: &'v Victim<'a, L>, target: &str) -> Result<Self> {
        let target_ids = victim.response_ids(target)?;
        // Whitespace alone would be an empty target to the success check, which ignores the
        // answer's leading whitespace: every answer would succeed.
        if target_ids.is_empty() || target.trim().is_empty() {
            bail!("--target-response is empty: give the answer the victim should start with");
        }
        let word_end = if ends_inside_word(target) {
            let ending = victim.word_ending_tokens()?;
            let mut mask = vec![false; victim.lm.vocab_size()];
            for &id in &ending {
                mask[id as usize] = true;
            }
            Some((ending, mask))
        } else {
            None
        };
        Ok(Self {
            victim,
            target: target.to_string(),
            target_ids,
            word_end,
            base: RefCell::new(None),
        })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn target_ids(&self) -> &[u32] {
        &self.target_ids
    }

    /// Mean negative log-likelihood of the target's tokens after the user message `text`
    /// (nats/token): BEAST's loss, without the word-end term of the objective.
    pub fn target_nll(&self, text: &str) -> Result<f64> {
        let prefix = self.prefix(text, None)?;
        // The word-end term is not part of the loss: no position past the target is asked for.
        let rows = self.victim.continuation_log_probs(
            &prefix,
            &[text.to_string()],
            &self.target_ids,
            None,
        )?;
        let lp = &rows[0].log_probs;
        Ok(-lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64)
    }

    fn rows(
        &self,
        prefix: &VictimPrefix<L::Cache>,
        texts: &[String],
    ) -> Result<Vec<TeacherForced>> {
        self.victim.continuation_log_probs(
            prefix,
            texts,
            &self.target_ids,
            self.word_end.as_ref().map(|(ending, _)| ending.as_slice()),
        )
    }
}

impl<L: CausalLm> Objective for TargetResponse<'_, '_, L>
where
    L::Cache: Clone,
{
    type Prefix = VictimPrefix<L::Cache>;

    fn prefix(
        &self,
        text: &str,
        previous: Option<&Self::Prefix>,
    ) -> Result<VictimPrefix<L::Cache>> {
        let mut base = self.base.borrow_mut();
        let prefix = self.victim.prefix(text, previous.or(base.as_ref()))?;
        if base.is_none() {
            *base = Some(VictimPrefix {
                ids: prefix.ids.clone(),
                cache: prefix.cache.clone(),
            });
        }
        Ok(prefix)
    }

    fn teacher_forced(&self) -> Option<&[u32]> {
        Some(&self.target_ids)
    }

    fn score(&self, prefix: &Self::Prefix, texts: &[String]) -> Result<ScoreBatch> {
        let rows = self.rows(prefix, texts)?;
        let similarities = rows
            .iter()
            .map(|row| {
                let terms = row
                    .log_probs
                    .iter()
                    .map(|&x| x as f64)
                    .chain(row.after.as_ref().map(|after| after.log_mass as f64));
                let (sum, count) = terms.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
                (sum / count as f64) as f32
            })
            .collect();
        Ok(ScoreBatch {
            similarities,
            positions_computed: 0,
            distinct: texts.len(),
            // Greedy decoding writes the target, and then a token that ends its word.
            greedy_target: rows
                .iter()
                .map(|r| {
                    r.is_argmax.iter().all(|&a| a)
                        && match (&r.after, &self.word_end) {
                            (Some(after), Some((_, mask))) => {
                                mask.get(after.argmax as usize).copied().unwrap_or(false)
                            }
                            _ => true,
                        }
                })
                .collect(),
            teacher_forced_argmax: rows
                .iter()
                .map(|r| {
                    let mut ids = r.argmax.clone();
                    ids.extend(r.after.as_ref().map(|after| after.argmax));
                    ids
                })
                .collect(),
        })
    }
}

/// The cosine of the victim's greedy answer (`response_tokens` tokens) with a unit-length
/// target embedding in `scorer`'s space (`--target-text T --encoder M`).
pub struct ResponseSimilarity<'v, 'a, L: CausalLm, S: Scorer> {
    pub victim: &'v Victim<'a, L>,
    pub scorer: &'v S,
    pub target: Vec<f32>,
    pub response_tokens: usize,
}

impl<L: CausalLm, S: Scorer> Objective for ResponseSimilarity<'_, '_, L, S> {
    type Prefix = ();

    fn prefix(&self, _text: &str, _previous: Option<&()>) -> Result<()> {
        Ok(())
    }

    fn score(&self, _prefix: &(), texts: &[String]) -> Result<ScoreBatch> {
        let responses = texts
            .iter()
            .map(|t| Ok(self.victim.greedy_answer(t, self.response_tokens)?.0))
            .collect::<Result<Vec<_>>>()?;
        let empty = self.scorer.prefix("", None)?;
        self.scorer.similarities(&empty, &responses, &self.target)
    }
}

/// A scoring function (a `--scorer-cmd` program, a Python callable) scoring each prompt with the
/// victim's greedy answer to it.
pub struct ResponseCommand<'v, 'a, L: CausalLm> {
    pub victim: &'v Victim<'a, L>,
    pub command: &'v dyn ItemScorer,
    pub response_tokens: usize,
}

impl<L: CausalLm> Objective for ResponseCommand<'_, '_, L> {
    type Prefix = ();

    fn prefix(&self, _text: &str, _previous: Option<&()>) -> Result<()> {
        Ok(())
    }

    fn score(&self, _prefix: &(), texts: &[String]) -> Result<ScoreBatch> {
        let responses = texts
            .iter()
            .map(|t| Ok(self.victim.greedy_answer(t, self.response_tokens)?.0))
            .collect::<Result<Vec<_>>>()?;
        let items: Vec<Item> = texts
            .iter()
            .zip(&responses)
            .map(|(text, response)| Item {
                text,
                response: Some(response),
                behavior: None,
            })
            .collect();
        Ok(ScoreBatch {
            similarities: self.command.score_items(&items)?,
            positions_computed: 0,
            distinct: texts.len(),
            greedy_target: Vec::new(),
            teacher_forced_argmax: Vec::new(),
        })
    }
}
