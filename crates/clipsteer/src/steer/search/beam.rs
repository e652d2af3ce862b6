//! Beam search over the LM's top-k, ranked by the objective plus a fluency weight on the mean
//! log-probability.

use super::{
    all_blocked, allowed_candidates, ends_sentence, log_softmax, markup_ids, top_k, ScoredPart,
};
use crate::steer::objectives::Objective;
use crate::steer::options::{validate, Candidate, DescribeOptions, DescribeResult, StepEvent};
use crate::steer::CausalLm;
use anyhow::Result;
use std::collections::HashSet;
use std::rc::Rc;

/// One hypothesis of the beam.
struct Hypothesis<C, P> {
    /// Prompt included.
    ids: Vec<u32>,
    text: String,
    scored_text: String,
    /// Sum of the generated tokens' log-probabilities.
    log_prob: f64,
    similarity: f32,
    /// The LM state after `ids`, and its next-token logits; None once finished.
    state: Option<(C, Vec<f32>)>,
    /// The objective's prefix of the parent's scored text (shared by its children): this
    /// hypothesis's own prefix extends it by the positions the new token changed instead of
    /// encoding the whole text again. None for the root.
    parent_prefix: Option<Rc<P>>,
    /// How it finished; [`Ending::Cut`] while live.
    ending: Ending,
    /// The LM's log-probability of the token that ended it (nats); 0 while live.
    ending_log_prob: f64,
}

/// How a hypothesis finished. With sentences asked for, the final rerank takes the best of the
/// highest kind present: a text the LM ended itself beats one ended by `close_within`'s offer,
/// which beats one cut at --max-tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// Cut at --max-tokens (or still live).
    Cut,
    /// Ended by the period `close_within` offers outside the LM's top-k.
    Offered,
    /// Ended by the LM's end of text or a sentence end from its own top-k.
    Own,
}

impl<C, P> Hypothesis<C, P> {
    /// `expansion` of the hypothesis with `parent_ids`, finished: an expansion that ends the text
    /// adds no token.
    fn finished<E>(expansion: &Expansion<E>, parent_ids: &[u32], ending: Ending) -> Self {
        let mut ids = parent_ids.to_vec();
        if !expansion.ends_text {
            ids.push(expansion.token);
        }
        Hypothesis {
            ids,
            text: expansion.phrase.clone(),
            scored_text: expansion.scored_text.clone(),
            log_prob: expansion.log_prob,
            similarity: expansion.similarity,
            state: None,
            parent_prefix: None,
            ending,
            ending_log_prob: expansion.token_log_prob,
        }
    }
}

impl<C, P> Hypothesis<C, P> {
    /// A finished hypothesis again (finished ones hold no LM state or prefix).
    fn copy_finished(&self) -> Self {
        Hypothesis {
            ids: self.ids.clone(),
            text: self.text.clone(),
            scored_text: self.scored_text.clone(),
            log_prob: self.log_prob,
            similarity: self.similarity,
            state: None,
            parent_prefix: None,
            ending: self.ending,
            ending_log_prob: self.ending_log_prob,
        }
    }
}

/// A live hypothesis's greedy completion in the closing window, kept for its children. Greedy
/// completion is deterministic, so a child that took the completion's first token completes as
/// the rest of it, to the very same text: it reuses the result instead of running the LM and the
/// objective again.
struct GreedyTail<C, P> {
    /// The completion's tokens, in order.
    tokens: Vec<u32>,
    /// The completed text, when the completion ended a sentence.
    ended: Option<Rc<Hypothesis<C, P>>>,
}

impl<C, P> GreedyTail<C, P> {
    /// This completion as the child that took `token` would compute it, if that child's
    /// completion is the rest of this one: `token` is its first token and another follows (a
    /// one-token completion that ended a sentence leaves the child to write a new sentence).
    fn for_child(tail: &Option<Rc<Self>>, token: u32) -> Option<Rc<Self>> {
        let tail = tail.as_ref()?;
        (tail.tokens.len() >= 2 && tail.tokens[0] == token).then(|| {
            Rc::new(GreedyTail {
                tokens: tail.tokens[1..].to_vec(),
                ended: tail.ended.clone(),
            })
        })
    }
}

/// Each live hypothesis's [`GreedyTail`], by position in the beam.
type Tails<C, P> = Vec<Option<Rc<GreedyTail<C, P>>>>;

/// What a completion may write and which part of its text is scored.
struct TextRules<'a> {
    markup: &'a HashSet<u32>,
    blocklist: &'a crate::steer::constraints::Blocklist,
    scored_part: &'a ScoredPart,
}

/// The answer among the hypotheses' `(ending, score)`: the best score. With sentences asked for,
/// only among those of the highest [`Ending`] present: a text cut by --max-tokens mid-clause used
/// to win the rerank by piling on target words, and a text ended by close_within's offer is
/// often a clause cut with a period. Ties go to the later one. None when there are none.
fn pick_answer(endings: &[(Ending, f32)], sentences: bool) -> Option<usize> {
    let wanted = match sentences {
        true => endings.iter().map(|e| e.0).max()?,
        false => Ending::Cut,
    };
    (0..endings.len())
        .filter(|&i| endings[i].0 >= wanted)
        .max_by(|&a, &b| endings[a].1.total_cmp(&endings[b].1))
}

/// Whether `step` (from 0) is in the closing window of `close_within` steps before `max_tokens`:
/// there a period is offered to every live hypothesis, and every sentence end joins the finished
/// ones whether or not it won a beam slot. An empty text cannot end, so step 0 never closes.
fn closing(step: usize, close_within: usize, max_tokens: usize) -> bool {
    step > 0 && step + close_within >= max_tokens
}

/// A finished text's score in the final rerank: its [`beam_score`], and for a text ended by the
/// period close_within offered outside the top-k, plus `fluency` × that period's log-probability
/// (nats). Such a period is a forced stop, and the mean log-probability dilutes its cost n-fold:
/// counted in full, it makes the stop the LM finds most plausible win over a period after a
/// dangling word ("…their machinery he wielding.").
fn answer_score(ending: Ending, score: f32, ending_log_prob: f64, fluency: f32) -> f32 {
    match ending {
        Ending::Offered => score + fluency * ending_log_prob as f32,
        Ending::Cut | Ending::Own => score,
    }
}

/// What the beam ranks by, and the final rerank too: similarity plus `fluency` × the mean
/// per-token log-probability of the generated tokens.
pub fn beam_score(similarity: f32, log_prob: f64, generated: usize, fluency: f32) -> f32 {
    similarity + fluency * (log_prob / generated.max(1) as f64) as f32
}

/// One way to extend a live hypothesis.
struct Expansion<C> {
    parent: usize,
    token: u32,
    /// The period close_within offered outside the LM's top-k.
    offered: bool,
    /// The LM chose to end the text: the parent finishes as it is.
    ends_text: bool,
    /// The LM's log-probability of `token` after the parent (nats).
    token_log_prob: f64,
    phrase: String,
    scored_text: String,
    log_prob: f64,
    similarity: f32,
    score: f32,
    /// What the beam ranks it by: `score`, less the sibling-rank penalty, with its lookahead.
    rank: f32,
    /// The LM state after this token, when the lookahead already computed it.
    state: Option<(C, Vec<f32>)>,
}

/// Beam search: every live hypothesis proposes its LM top-k (blocked ones dropped), each
/// extension is scored against the target, and the `width` best by [`beam_score`] go on.
/// Hypotheses finish at the end of a sentence or at the LM's end-of-text token; the result is
/// the best finished one (or the best live one at --max-tokens) by the same score. The streamed
/// text is the current best hypothesis, so unlike the greedy loops it can change more than its
/// last token from one step to the next.
///
/// Longer than most functions here on purpose: the step loop keeps a step's stages in their
/// order in one place, each stage a function below ([`expand`], [`endings`],
/// [`rerank_by_lookahead`], [`select`], [`next_beam`], [`sentence_completions`], [`answer`]), and
/// what is left is the state carried from one step to the next.
pub fn run<L: CausalLm, O: Objective>(
    lm: &L,
    objective: &O,
    options: &DescribeOptions,
    mut on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<DescribeResult> {
    let prompt_ids = validate(lm, options)?;
    let scored_part = ScoredPart::new(lm, &prompt_ids, options.scored_text)?;
    let markup = markup_ids(lm);
    let params = options.beam;
    let generated = |h: &Hypothesis<L::Cache, O::Prefix>| h.ids.len() - prompt_ids.len();
    let score_of = |h: &Hypothesis<L::Cache, O::Prefix>| {
        beam_score(h.similarity, h.log_prob, generated(h), params.fluency)
    };
    let mut clock = std::time::Instant::now();
    let mut cache = lm.new_cache();
    let logits = lm.next_logits(&prompt_ids, &mut cache)?;
    let text = lm.decode(&prompt_ids)?;
    let mut live = vec![Hypothesis {
        scored_text: scored_part.of(lm, &prompt_ids, &text)?,
        ids: prompt_ids.clone(),
        text,
        log_prob: 0.0,
        similarity: f32::NAN,
        state: Some((cache, logits)),
        parent_prefix: None,
        ending: Ending::Cut,
        ending_log_prob: 0.0,
    }];
    let mut lm_seconds = clock.elapsed().as_secs_f64();
    let mut finished: Vec<Hypothesis<L::Cache, O::Prefix>> = Vec::new();
    // The closing window's greedy completions of `live`, by position; empty outside it.
    let mut tails: Tails<L::Cache, O::Prefix> = Vec::new();
    let mut stop_reason = None;
    // The token a closing hypothesis ends with: "." when it is one token.
    let period = match lm.encode(".")?.as_slice() {
        [id] if params.close_within > 0 && options.stop_at_sentence_end => Some(*id),
        _ => None,
    };
    for step in 0..options.max_tokens {
        clock = std::time::Instant::now();
        let closing_step =
            period.is_some() && closing(step, params.close_within, options.max_tokens);
        let rules = TextRules {
            markup: &markup,
            blocklist: &options.blocklist,
            scored_part: &scored_part,
        };
        let Expanded {
            mut expansions,
            prefixes,
            positions_computed,
            ranked_total,
        } = expand(
            lm,
            objective,
            &live,
            Step {
                index: step,
                closing: closing_step,
                period,
                prompt_len: prompt_ids.len(),
            },
            options,
            &rules,
        )?;
        let score_seconds = clock.elapsed().as_secs_f64();
        if expansions.is_empty() {
            stop_reason = Some(all_blocked(step, ranked_total));
            break;
        }
        // Whether taking an expansion finishes its hypothesis, and how.
        let finishes = endings(lm, &expansions, options, step + 1 == options.max_tokens)?;
        rank_expansions(&mut expansions, params.diversity);
        // Best first; ties keep the earlier parent and the higher LM rank (a stable sort).
        let mut order: Vec<usize> = (0..expansions.len()).collect();
        order.sort_by(|&a, &b| expansions[b].rank.total_cmp(&expansions[a].rank));
        if params.lookahead > 0 {
            let lookahead_clock = std::time::Instant::now();
            rerank_by_lookahead(
                lm,
                objective,
                &live,
                &prefixes,
                &mut expansions,
                &mut order,
                &finishes,
                options,
                &rules,
                prompt_ids.len(),
            )?;
            lm_seconds += lookahead_clock.elapsed().as_secs_f64();
        }
        let (top, scored) = shown_candidates(lm, &expansions)?;

        // The next beam, grouped by parent so that each parent's children share one LM forward.
        let kept = select(
            &expansions,
            &order,
            &finishes,
            &live,
            params.width,
            closing_step,
            &mut finished,
        );
        clock = std::time::Instant::now();
        let (next_live, inherited) =
            next_beam(lm, &live, &mut expansions, &kept, &prefixes, &tails)?;
        live = next_live;
        tails.clear();
        if closing_step {
            let room = options.max_tokens - (step + 1);
            let (ended, live_tails) =
                sentence_completions(lm, objective, &live, inherited, room, &rules)?;
            finished.extend(ended);
            tails = live_tails;
        }
        lm_seconds += clock.elapsed().as_secs_f64();

        let leader = live
            .iter()
            .chain(finished.iter())
            .max_by(|a, b| score_of(a).total_cmp(&score_of(b)));
        if let Some(leader) = leader {
            let token_id = *leader.ids.last().expect("the prompt is non-empty");
            on_step(&StepEvent {
                step,
                token_id,
                token: lm.decode(&[token_id])?,
                text: leader.text.clone(),
                similarity: leader.similarity,
                top,
                lm_seconds,
                score_seconds,
                positions_computed,
                scored,
            })?;
        }
        lm_seconds = 0.0;
        // Stop once enough hypotheses have finished and none still live scores better.
        let best_finished = finished
            .iter()
            .map(score_of)
            .fold(f32::NEG_INFINITY, f32::max);
        let best_live = live.iter().map(score_of).fold(f32::NEG_INFINITY, f32::max);
        if live.is_empty() || finished.len() >= params.width && best_finished >= best_live {
            break;
        }
    }
    answer(lm, finished, live, &prompt_ids, options, stop_reason)
}

/// What a step event shows of the expansions: the five most similar candidates (a token
/// several hypotheses propose once, at its best), and every scored (token, similarity).
#[allow(clippy::type_complexity)]
fn shown_candidates<L: CausalLm, C>(
    lm: &L,
    expansions: &[Expansion<C>],
) -> Result<(Vec<Candidate>, Vec<(u32, f32)>)> {
    let mut by_similarity: Vec<&Expansion<C>> =
        expansions.iter().filter(|e| !e.ends_text).collect();
    by_similarity.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    let mut top: Vec<Candidate> = Vec::with_capacity(5);
    for expansion in by_similarity {
        let token = lm.decode(&[expansion.token])?;
        if !top.iter().any(|c| c.token == token) {
            top.push(Candidate {
                token,
                similarity: expansion.similarity,
            });
        }
        if top.len() == 5 {
            break;
        }
    }
    let scored = expansions
        .iter()
        .filter(|e| !e.ends_text)
        .map(|e| (e.token, e.similarity))
        .collect();
    Ok((top, scored))
}

/// For each expansion, whether taking it finishes its hypothesis (on the last step every one
/// does), and how: the end of text or a sentence mark is the LM's own ending unless the period
/// was offered.
fn endings<L: CausalLm, C>(
    lm: &L,
    expansions: &[Expansion<C>],
    options: &DescribeOptions,
    last_step: bool,
) -> Result<Vec<(bool, Ending)>> {
    expansions
        .iter()
        .map(|expansion| {
            let token_text = lm.decode(&[expansion.token])?;
            let sentence_done = options.stop_at_sentence_end && ends_sentence(&token_text);
            let ending = match (expansion.ends_text || sentence_done, expansion.offered) {
                (false, _) => Ending::Cut,
                (true, true) => Ending::Offered,
                (true, false) => Ending::Own,
            };
            Ok((ending != Ending::Cut || last_step, ending))
        })
        .collect()
}

/// The next beam: the `kept` expansions as live hypotheses, grouped by parent as they always
/// were (ties in later steps keep this order). Every child the lookahead has not stepped runs in
/// one forward over all parents: one pass over the LM's weights per step instead of one per
/// parent. With each child, the closing-window completion it inherits from its parent's `tails`.
#[allow(clippy::type_complexity)]
fn next_beam<L: CausalLm, P>(
    lm: &L,
    live: &[Hypothesis<L::Cache, P>],
    expansions: &mut [Expansion<L::Cache>],
    kept: &[usize],
    prefixes: &[Option<Rc<P>>],
    tails: &Tails<L::Cache, P>,
) -> Result<(Vec<Hypothesis<L::Cache, P>>, Tails<L::Cache, P>)> {
    let mut parents: Vec<usize> = kept.iter().map(|&i| expansions[i].parent).collect();
    parents.sort_unstable();
    parents.dedup();
    let children: Vec<usize> = parents
        .iter()
        .flat_map(|&p| {
            let expansions = &*expansions;
            kept.iter()
                .copied()
                .filter(move |&i| expansions[i].parent == p)
        })
        .collect();
    let caches = parents
        .iter()
        .map(|&p| live_cache(&live[p]))
        .collect::<Result<Vec<_>>>()?;
    let to_step: Vec<usize> = children
        .iter()
        .copied()
        .filter(|&i| expansions[i].state.is_none())
        .collect();
    let rows: Vec<usize> = to_step
        .iter()
        .map(|&i| parents.partition_point(|&p| p < expansions[i].parent))
        .collect();
    let tokens: Vec<u32> = to_step.iter().map(|&i| expansions[i].token).collect();
    for (&i, (logits, cache)) in to_step.iter().zip(lm.branch_rows(&caches, &rows, &tokens)?) {
        expansions[i].state = Some((cache, logits));
    }
    let mut next_live = Vec::with_capacity(children.len());
    let mut inherited = Vec::with_capacity(children.len());
    for &i in &children {
        let expansion = &mut expansions[i];
        let parent = expansion.parent;
        inherited.push(
            tails
                .get(parent)
                .and_then(|tail| GreedyTail::for_child(tail, expansion.token)),
        );
        let state = expansion
            .state
            .take()
            .ok_or_else(|| anyhow::anyhow!("a kept child was not stepped"))?;
        let mut ids = live[parent].ids.clone();
        ids.push(expansion.token);
        next_live.push(Hypothesis {
            ids,
            text: std::mem::take(&mut expansion.phrase),
            scored_text: std::mem::take(&mut expansion.scored_text),
            log_prob: expansion.log_prob,
            similarity: expansion.similarity,
            state: Some(state),
            parent_prefix: prefixes[parent].clone(),
            ending: Ending::Cut,
            ending_log_prob: 0.0,
        });
    }
    Ok((next_live, inherited))
}

/// The expansions that go on (at most `width`, best first by `order`), with those that finish
/// here added to `finished`: a finishing expansion takes a beam slot too, and `width` of them
/// end the step. In the closing window every sentence end (a sentence mark, the LM's or the
/// offered period) joins the finished ones, not only those that won a slot: the final rerank can
/// then prefer a clause the LM closed a few steps back over a period offered after a dangling
/// word at --max-tokens.
fn select<C, P>(
    expansions: &[Expansion<C>],
    order: &[usize],
    finishes: &[(bool, Ending)],
    live: &[Hypothesis<C, P>],
    width: usize,
    closing_step: bool,
    finished: &mut Vec<Hypothesis<C, P>>,
) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    let mut pushed: Vec<usize> = Vec::new();
    for &i in order {
        if kept.len() == width {
            break;
        }
        let expansion = &expansions[i];
        let (finishes_here, ending) = finishes[i];
        if finishes_here {
            finished.push(Hypothesis::finished(
                expansion,
                &live[expansion.parent].ids,
                ending,
            ));
            pushed.push(i);
            if pushed.len() == width {
                break;
            }
        } else {
            kept.push(i);
        }
    }
    if closing_step {
        for (i, expansion) in expansions.iter().enumerate() {
            // The LM's end of text leaves the parent's text as it was, often with no
            // sentence mark: only a slot in the beam makes it an answer.
            if finishes[i].1 == Ending::Cut || expansion.ends_text || pushed.contains(&i) {
                continue;
            }
            finished.push(Hypothesis::finished(
                expansion,
                &live[expansion.parent].ids,
                finishes[i].1,
            ));
        }
    }
    kept
}

/// The search's answer among the finished and still live hypotheses ([`pick_answer`] over
/// [`answer_score`]); the prompt alone when nothing was generated.
fn answer<L: CausalLm, P>(
    lm: &L,
    finished: Vec<Hypothesis<L::Cache, P>>,
    live: Vec<Hypothesis<L::Cache, P>>,
    prompt_ids: &[u32],
    options: &DescribeOptions,
    stop_reason: Option<String>,
) -> Result<DescribeResult> {
    let fluency = options.beam.fluency;
    let score_of = |h: &Hypothesis<L::Cache, P>| {
        beam_score(
            h.similarity,
            h.log_prob,
            h.ids.len() - prompt_ids.len(),
            fluency,
        )
    };
    let mut contenders: Vec<_> = (finished.into_iter().chain(live))
        .filter(|h| h.ids.len() > prompt_ids.len())
        .collect();
    let endings: Vec<(Ending, f32)> = contenders
        .iter()
        .map(|h| {
            let score = answer_score(h.ending, score_of(h), h.ending_log_prob, fluency);
            (h.ending, score)
        })
        .collect();
    let best =
        pick_answer(&endings, options.stop_at_sentence_end).map(|i| contenders.swap_remove(i));
    Ok(match best {
        Some(best) => DescribeResult {
            token_ids: best.ids[prompt_ids.len()..].to_vec(),
            text: best.text,
            similarity: best.similarity,
            log_prob: best.log_prob,
            stop_reason,
        },
        None => DescribeResult {
            text: lm.decode(prompt_ids)?,
            token_ids: Vec::new(),
            similarity: f32::NAN,
            log_prob: 0.0,
            stop_reason,
        },
    })
}

/// The LM cache of a live hypothesis (every hypothesis in the beam has one; finished ones are
/// kept elsewhere).
fn live_cache<C, P>(hypothesis: &Hypothesis<C, P>) -> Result<&C> {
    match &hypothesis.state {
        Some((cache, _)) => Ok(cache),
        None => anyhow::bail!("a finished hypothesis in the beam"),
    }
}

/// Sets each expansion's `rank` to its score less γ × its rank among its parent's expansions
/// (best first, r from 0).
fn rank_expansions<C>(expansions: &mut [Expansion<C>], diversity: f32) {
    for expansion in expansions.iter_mut() {
        expansion.rank = expansion.score;
    }
    if diversity == 0.0 {
        return;
    }
    let mut by_parent: Vec<usize> = (0..expansions.len()).collect();
    by_parent.sort_by(|&a, &b| {
        expansions[a]
            .parent
            .cmp(&expansions[b].parent)
            .then(expansions[b].score.total_cmp(&expansions[a].score))
    });
    let mut sibling = 0;
    for (n, &i) in by_parent.iter().enumerate() {
        if n > 0 && expansions[by_parent[n - 1]].parent != expansions[i].parent {
            sibling = 0;
        }
        expansions[i].rank = expansions[i].score - diversity * sibling as f32;
        sibling += 1;
    }
}

/// What [`look_ahead`] needs besides the beam itself.
struct LookaheadContext<'a> {
    prompt_len: usize,
    tokens: usize,
    fluency: f32,
    diversity: f32,
    blocklist: &'a crate::steer::constraints::Blocklist,
    markup: &'a HashSet<u32>,
    scored_part: &'a ScoredPart,
    stop_at_sentence_end: bool,
}

/// Where a beam step is: its index (from 0), whether it is in the closing window, the period a
/// closing hypothesis may be offered, and the prompt's length.
#[derive(Clone, Copy)]
struct Step {
    index: usize,
    closing: bool,
    period: Option<u32>,
    prompt_len: usize,
}

/// A step's expansions, with each parent's objective prefix and what they cost.
struct Expanded<C, P> {
    expansions: Vec<Expansion<C>>,
    prefixes: Vec<Option<Rc<P>>>,
    positions_computed: usize,
    ranked_total: usize,
}

/// One step's expansions of every live hypothesis: the LM's top-k (with the period offered in
/// the closing window) that may be written, scored for all hypotheses in one
/// [`Objective::score_each`] call, and its end of text when the LM proposes it.
fn expand<L: CausalLm, O: Objective>(
    lm: &L,
    objective: &O,
    live: &[Hypothesis<L::Cache, O::Prefix>],
    step: Step,
    options: &DescribeOptions,
    rules: &TextRules,
) -> Result<Expanded<L::Cache, O::Prefix>> {
    let params = options.beam;
    let mut prefixes: Vec<Option<Rc<O::Prefix>>> = (0..live.len()).map(|_| None).collect();
    let mut ranked_total = 0;
    // Each parent's candidates, before scoring: (parent, log-probs, end of text, offered, allowed).
    let mut pending = Vec::with_capacity(live.len());
    for (parent, hypothesis) in live.iter().enumerate() {
        let Some((_, logits)) = &hypothesis.state else {
            continue;
        };
        let ranked = top_k(logits, options.top_k)?;
        ranked_total += ranked.len();
        let log_probs = log_softmax(logits);
        // Ending adds no text, so it needs no scoring; an empty text cannot end.
        let ends_text = ranked
            .iter()
            .copied()
            .find(|&c| step.index > 0 && lm.is_eos(c));
        let mut ranked: Vec<u32> = ranked.into_iter().filter(|&c| !lm.is_eos(c)).collect();
        let mut offered = None;
        if let Some(period) = step.period {
            if step.closing && !ranked.contains(&period) {
                ranked.push(period);
                offered = Some(period);
            }
        }
        let allowed = allowed_candidates(
            lm,
            &hypothesis.ids,
            &ranked,
            rules.markup,
            rules.blocklist,
            rules.scored_part,
        )?;
        prefixes[parent] = Some(Rc::new(
            objective.prefix(&hypothesis.scored_text, hypothesis.parent_prefix.as_deref())?,
        ));
        pending.push((parent, log_probs, ends_text, offered, allowed));
    }
    let batches: Vec<(&O::Prefix, &[String])> = pending
        .iter()
        .filter_map(|(parent, _, _, _, allowed)| {
            Some((prefixes[*parent].as_deref()?, allowed.scored.as_slice()))
        })
        .collect();
    let scores = objective.score_each(&batches)?;
    drop(batches);
    let mut expansions = Vec::new();
    let mut positions_computed = 0;
    for ((parent, log_probs, ends_text, offered, allowed), scores) in
        pending.into_iter().zip(scores)
    {
        let hypothesis = &live[parent];
        positions_computed += scores.positions_computed;
        let generated = hypothesis.ids.len() - step.prompt_len;
        for (i, (phrase, scored_text)) in
            allowed.phrases.into_iter().zip(allowed.scored).enumerate()
        {
            let token = allowed.ids[i];
            let log_prob = hypothesis.log_prob + log_probs[token as usize];
            let similarity = scores.similarities[i];
            expansions.push(Expansion {
                parent,
                token,
                offered: offered == Some(token),
                ends_text: false,
                token_log_prob: log_probs[token as usize],
                phrase,
                scored_text,
                log_prob,
                similarity,
                score: beam_score(similarity, log_prob, generated + 1, params.fluency),
                rank: f32::NAN,
                state: None,
            });
        }
        if let Some(eos) = ends_text {
            expansions.push(Expansion {
                parent,
                token: eos,
                offered: false,
                ends_text: true,
                token_log_prob: log_probs[eos as usize],
                phrase: hypothesis.text.clone(),
                scored_text: hypothesis.scored_text.clone(),
                log_prob: hypothesis.log_prob,
                similarity: hypothesis.similarity,
                score: beam_score(
                    hypothesis.similarity,
                    hypothesis.log_prob,
                    generated,
                    params.fluency,
                ),
                rank: f32::NAN,
                state: None,
            });
        }
    }
    Ok(Expanded {
        expansions,
        prefixes,
        positions_computed,
        ranked_total,
    })
}

/// [`look_ahead`] on the best `2 × width` expansions that do not finish here, then `order`
/// sorted again by the new ranks.
#[allow(clippy::too_many_arguments)]
fn rerank_by_lookahead<L: CausalLm, O: Objective>(
    lm: &L,
    objective: &O,
    live: &[Hypothesis<L::Cache, O::Prefix>],
    prefixes: &[Option<Rc<O::Prefix>>],
    expansions: &mut [Expansion<L::Cache>],
    order: &mut [usize],
    finishes: &[(bool, Ending)],
    options: &DescribeOptions,
    rules: &TextRules,
    prompt_len: usize,
) -> Result<()> {
    let params = options.beam;
    let contenders: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| !finishes[i].0)
        .take(2 * params.width)
        .collect();
    look_ahead(
        lm,
        objective,
        live,
        prefixes,
        expansions,
        &contenders,
        LookaheadContext {
            prompt_len,
            tokens: params.lookahead,
            fluency: params.fluency,
            diversity: params.diversity,
            blocklist: rules.blocklist,
            markup: rules.markup,
            scored_part: rules.scored_part,
            stop_at_sentence_end: options.stop_at_sentence_end,
        },
    )?;
    order.sort_by(|&a, &b| expansions[b].rank.total_cmp(&expansions[a].rank));
    Ok(())
}

/// Re-ranks `contenders` by their text and its greedy completion together: each is stepped by
/// the LM (its state kept for the beam), completed greedily by up to `tokens` tokens
/// ([`greedy_allowed`]: the best of the LM's top 5 that is no markup and writes no blocked word;
/// the end of a sentence or of the text stops it), and its rank becomes [`beam_score`] of the
/// completed text's similarity and the mean log-probability of its generated tokens with the
/// completion's, less its sibling penalty.
fn look_ahead<L: CausalLm, O: Objective>(
    lm: &L,
    objective: &O,
    live: &[Hypothesis<L::Cache, O::Prefix>],
    prefixes: &[Option<Rc<O::Prefix>>],
    expansions: &mut [Expansion<L::Cache>],
    contenders: &[usize],
    context: LookaheadContext<'_>,
) -> Result<()> {
    let mut parents: Vec<usize> = contenders.iter().map(|&i| expansions[i].parent).collect();
    parents.sort_unstable();
    parents.dedup();
    for parent in parents {
        let children: Vec<usize> = contenders
            .iter()
            .copied()
            .filter(|&i| expansions[i].parent == parent)
            .collect();
        let (Some((parent_cache, _)), Some(prefix)) = (&live[parent].state, &prefixes[parent])
        else {
            continue;
        };
        let tokens: Vec<u32> = children.iter().map(|&i| expansions[i].token).collect();
        let branches = lm.branch(parent_cache, &tokens)?;
        let mut ids: Vec<Vec<u32>> = Vec::with_capacity(children.len());
        let mut states = Vec::with_capacity(children.len());
        for (row, &i) in children.iter().enumerate() {
            let mut child = live[parent].ids.clone();
            child.push(expansions[i].token);
            ids.push(child);
            let state = (
                lm.keep_branch(&branches.cache, row)?,
                branches.logits[row].clone(),
            );
            expansions[i].state = Some(state.clone());
            states.push(state);
        }
        let completions = complete_greedily(
            lm,
            states,
            &mut ids,
            context.tokens,
            context.stop_at_sentence_end,
            context.markup,
            context.blocklist,
        )?;
        let mut completed = Vec::with_capacity(children.len());
        let mut completion_log_probs = Vec::with_capacity(children.len());
        for (ids, completion) in ids.iter().zip(&completions) {
            let text = lm.decode(ids)?;
            completed.push(context.scored_part.of(lm, ids, &text)?);
            completion_log_probs.push((completion.log_prob, ids.len() - context.prompt_len));
        }
        let scores = objective.score(prefix, &completed)?;
        for (n, &i) in children.iter().enumerate() {
            let (extra, length) = completion_log_probs[n];
            let penalty = expansions[i].score - expansions[i].rank;
            debug_assert!(penalty >= 0.0 || context.diversity == 0.0);
            expansions[i].rank = beam_score(
                scores.similarities[n],
                expansions[i].log_prob + extra,
                length,
                context.fluency,
            ) - penalty;
        }
    }
    Ok(())
}

/// The LM's greedy next token after `ids` in a completion: the best of its top 5 by `logits`
/// that is not markup and writes no blocked word. None when its end of text comes first, or none
/// of the five is allowed. `ids` is as it was on return.
fn greedy_allowed<L: CausalLm>(
    lm: &L,
    logits: &[f32],
    ids: &mut Vec<u32>,
    markup: &HashSet<u32>,
    blocklist: &crate::steer::constraints::Blocklist,
) -> Result<Option<u32>> {
    for candidate in top_k(logits, 5)? {
        if lm.is_eos(candidate) {
            return Ok(None);
        }
        if markup.contains(&candidate) {
            continue;
        }
        ids.push(candidate);
        let blocked = !blocklist.allows(&lm.decode(ids)?);
        ids.pop();
        if !blocked {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// What [`complete_greedily`] added to one text.
#[derive(Clone, Default)]
struct Completion {
    /// Sum of the completion's log-probabilities (nats).
    log_prob: f64,
    /// Its last token's log-probability (nats); 0 when it added none.
    last_log_prob: f64,
    /// Whether its last token ends a sentence.
    ended_sentence: bool,
}

/// Extends each of `ids` by its LM's greedy completion from its state in `states` (the cache
/// after those ids and the next logits): up to `tokens` tokens by [`greedy_allowed`], stopping at
/// the LM's end of text or, with `sentences`, after a token that ends a sentence. The texts run
/// in lockstep, one forward for all that go on at each token ([`CausalLm::branch_rows`]: their
/// caches are of one length), where each used to take its own one-row forwards. Lookahead and
/// the closing window's completions both take this.
fn complete_greedily<L: CausalLm>(
    lm: &L,
    states: Vec<(L::Cache, Vec<f32>)>,
    ids: &mut [Vec<u32>],
    tokens: usize,
    sentences: bool,
    markup: &HashSet<u32>,
    blocklist: &crate::steer::constraints::Blocklist,
) -> Result<Vec<Completion>> {
    let mut completions = vec![Completion::default(); ids.len()];
    // (row, cache, next logits) of the texts still going.
    let mut going: Vec<(usize, L::Cache, Vec<f32>)> = states
        .into_iter()
        .enumerate()
        .map(|(row, (cache, logits))| (row, cache, logits))
        .collect();
    for n in 0..tokens {
        let mut stepping: Vec<(usize, L::Cache, u32)> = Vec::with_capacity(going.len());
        for (row, cache, logits) in going.drain(..) {
            let log_probs = log_softmax(&logits);
            let Some(next) = greedy_allowed(lm, &logits, &mut ids[row], markup, blocklist)? else {
                continue;
            };
            ids[row].push(next);
            let completion = &mut completions[row];
            completion.last_log_prob = log_probs[next as usize];
            completion.log_prob += completion.last_log_prob;
            if sentences && ends_sentence(&lm.decode(&[next])?) {
                completion.ended_sentence = true;
                continue;
            }
            if n + 1 < tokens {
                stepping.push((row, cache, next));
            }
        }
        if stepping.is_empty() {
            break;
        }
        let caches: Vec<&L::Cache> = stepping.iter().map(|(_, cache, _)| cache).collect();
        let rows: Vec<usize> = (0..stepping.len()).collect();
        let next: Vec<u32> = stepping.iter().map(|&(_, _, token)| token).collect();
        let stepped = lm.branch_rows(&caches, &rows, &next)?;
        going = stepping
            .iter()
            .zip(stepped)
            .map(|(&(row, _, _), (logits, cache))| (row, cache, logits))
            .collect();
    }
    Ok(completions)
}

/// Each live hypothesis continued by its LM's greedy choice (the best of its top 5 that is
/// neither markup nor its end of text and writes no blocked word) for at most `room` tokens,
/// until a token ends a sentence: the texts that end so, scored, finished as the LM's own
/// ending ([`Ending::Own`]). In the closing window these give the final rerank a sentence the LM
/// itself would end within --max-tokens whenever one exists, where the beam's own hypotheses,
/// ranked by similarity, keep adding words up to the limit. Texts that reach `room` or the end
/// of text without a sentence mark are dropped.
///
/// `inherited[i]`, where set, is live hypothesis i's completion already known from its parent's
/// ([`GreedyTail::for_child`]): its text is reused, not recomputed. The texts completed here are
/// scored in one objective call per parent prefix. Returns the finished texts, in the order of
/// `live`, and each live hypothesis's completion for its own children.
#[allow(clippy::type_complexity)]
fn sentence_completions<L: CausalLm, O: Objective>(
    lm: &L,
    objective: &O,
    live: &[Hypothesis<L::Cache, O::Prefix>],
    inherited: Tails<L::Cache, O::Prefix>,
    room: usize,
    rules: &TextRules,
) -> Result<(
    Vec<Hypothesis<L::Cache, O::Prefix>>,
    Tails<L::Cache, O::Prefix>,
)> {
    let TextRules {
        markup,
        blocklist,
        scored_part,
    } = *rules;
    let mut tails = inherited;
    tails.resize_with(live.len(), || None);
    // A hypothesis has a parent prefix from the first step on, and live ones all have states.
    let (going, states): (Vec<usize>, Vec<_>) = live
        .iter()
        .enumerate()
        .filter(|(i, h)| tails[*i].is_none() && h.parent_prefix.is_some())
        .filter_map(|(i, h)| Some((i, h.state.clone()?)))
        .unzip();
    let mut ids: Vec<Vec<u32>> = going.iter().map(|&i| live[i].ids.clone()).collect();
    let completions = complete_greedily(lm, states, &mut ids, room, true, markup, blocklist)?;
    // The texts that ended a sentence, grouped by the parent prefix they are scored against.
    let mut ended: Vec<Option<Hypothesis<L::Cache, O::Prefix>>> =
        (0..live.len()).map(|_| None).collect();
    let mut groups: Vec<(Rc<O::Prefix>, Vec<usize>)> = Vec::new();
    for ((&index, ids), completion) in going.iter().zip(ids).zip(completions) {
        let hypothesis = &live[index];
        let tokens = ids[hypothesis.ids.len()..].to_vec();
        if !completion.ended_sentence {
            tails[index] = Some(Rc::new(GreedyTail {
                tokens,
                ended: None,
            }));
            continue;
        }
        let Some(prefix) = &hypothesis.parent_prefix else {
            continue;
        };
        let text = lm.decode(&ids)?;
        let scored_text = scored_part.of(lm, &ids, &text)?;
        ended[index] = Some(Hypothesis {
            ids,
            text,
            scored_text,
            log_prob: hypothesis.log_prob + completion.log_prob,
            similarity: f32::NAN,
            state: None,
            parent_prefix: None,
            ending: Ending::Own,
            ending_log_prob: completion.last_log_prob,
        });
        // Tokens are kept for the children; the text is shared once scored.
        tails[index] = Some(Rc::new(GreedyTail {
            tokens,
            ended: None,
        }));
        match groups.iter_mut().find(|(p, _)| Rc::ptr_eq(p, prefix)) {
            Some((_, members)) => members.push(index),
            None => groups.push((prefix.clone(), vec![index])),
        }
    }
    for (prefix, members) in &groups {
        // The parent's prefix: each completed text extends it as the hypothesis's own text does.
        let texts: Vec<String> = members
            .iter()
            .filter_map(|&i| ended[i].as_ref().map(|h| h.scored_text.clone()))
            .collect();
        let scores = objective.score(prefix, &texts)?;
        for (&i, similarity) in members.iter().zip(scores.similarities) {
            if let Some(hypothesis) = ended[i].as_mut() {
                hypothesis.similarity = similarity;
            }
        }
    }
    let mut finished = Vec::new();
    for (index, hypothesis) in ended.into_iter().enumerate() {
        match hypothesis {
            Some(hypothesis) => {
                let hypothesis = Rc::new(hypothesis);
                finished.push(hypothesis.copy_finished());
                if let Some(tail) = tails[index].as_mut() {
                    if let Some(tail) = Rc::get_mut(tail) {
                        tail.ended = Some(hypothesis);
                    }
                }
            }
            // An inherited completion: its text, when it ended one, is the parent's.
            None => {
                if let Some(done) = tails[index].as_ref().and_then(|t| t.ended.as_ref()) {
                    finished.push(done.copy_finished());
                }
            }
        }
    }
    Ok((finished, tails))
}

#[cfg(test)]
mod tests {
    use super::{answer_score, closing, pick_answer, Ending};

    #[test]
    fn a_forced_stop_pays_its_periods_log_probability_in_full() {
        // Two texts ended by an offered period: the one with the likelier period wins the
        // rerank although its mean score is lower; texts that ended otherwise are untouched.
        let dangling = answer_score(Ending::Offered, 0.80, -9.0, 0.1);
        let clause = answer_score(Ending::Offered, 0.75, -4.0, 0.1);
        assert!((dangling - (0.80 - 0.9)).abs() < 1e-6 && (clause - (0.75 - 0.4)).abs() < 1e-6);
        assert_eq!(
            pick_answer(
                &[(Ending::Offered, dangling), (Ending::Offered, clause)],
                true
            ),
            Some(1)
        );
        assert_eq!(answer_score(Ending::Own, 0.8, -9.0, 0.1), 0.8);
        assert_eq!(answer_score(Ending::Cut, 0.8, -9.0, 0.1), 0.8);
        assert_eq!(answer_score(Ending::Offered, 0.8, -9.0, 0.0), 0.8);
    }

    #[test]
    fn the_closing_window_is_the_last_close_within_steps_after_the_first() {
        let window = |close_within, max_tokens| -> Vec<usize> {
            (0..max_tokens)
                .filter(|&step| closing(step, close_within, max_tokens))
                .collect()
        };
        assert_eq!(window(8, 32), (24..32).collect::<Vec<_>>());
        assert_eq!(window(1, 32), vec![31]);
        assert_eq!(window(0, 32), Vec::<usize>::new());
        // A window longer than the text starts at step 1: an empty text cannot end.
        assert_eq!(window(8, 4), vec![1, 2, 3]);
    }

    #[test]
    fn the_answer_is_the_best_of_the_highest_ending_present() {
        use Ending::*;
        let all = [
            (Cut, 0.9),
            (Offered, 0.8),
            (Own, 0.5),
            (Own, 0.6),
            (Cut, 0.95),
        ];
        assert_eq!(pick_answer(&all, true), Some(3));
        assert_eq!(pick_answer(&all, false), Some(4));
        assert_eq!(pick_answer(&all[..2], true), Some(1));
        assert_eq!(pick_answer(&[(Cut, 0.1), (Cut, 0.3)], true), Some(1));
        // Ties go to the later one, as Iterator::max_by does.
        assert_eq!(pick_answer(&[(Own, 0.5), (Own, 0.5)], true), Some(1));
        assert_eq!(pick_answer(&[], true), None);
    }
}
