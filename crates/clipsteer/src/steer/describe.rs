//! The describe API: [`describe_with`] runs the chosen search ([`super::search`]) toward an
//! objective. The options, step events and results are [`super::options`]'s, re-exported here.

use super::objectives::{Embedding, Objective, Scorer};
use super::CausalLm;
use anyhow::Result;

pub use super::options::{
    check_values, validate, BeamParams, Candidate, DescribeOptions, DescribeResult, MagicParams,
    Sampling, ScoredText, StepEvent, Strategy,
};
pub use super::search::beam::beam_score;
pub use super::search::magic::magic_scores;
pub use super::search::seed::TokenPrefilter;
pub use super::search::{argmax_first, ends_sentence, sample_softmax, top_k};

/// Runs `options.strategy` toward `target` (a unit vector in `scorer`'s embedding space),
/// calling `on_step` after every step.
pub fn describe<L: CausalLm, S: Scorer>(
    lm: &L,
    scorer: &S,
    target: &[f32],
    options: &DescribeOptions,
    on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<DescribeResult> {
    describe_with(lm, &Embedding::new(scorer, target), options, on_step)
}

/// Runs `options.strategy` toward any objective, calling `on_step` after every step.
pub fn describe_with<L: CausalLm, O: Objective>(
    lm: &L,
    objective: &O,
    options: &DescribeOptions,
    on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<DescribeResult> {
    match options.strategy {
        Strategy::Seed => super::search::seed::run(lm, objective, options, on_step),
        Strategy::Magic => super::search::magic::run(lm, objective, options, on_step),
        Strategy::Beam => super::search::beam::run(lm, objective, options, on_step),
    }
}
