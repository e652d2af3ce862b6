//! `clipsteer bench`'s command line.

use crate::*;
use clap::Args;
use clipsteer::steer::describe::Strategy;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// CLIP architecture.
    #[arg(long, value_enum, default_value_t = clipsteer::bench::ClipArch::B32)]
    pub clip: clipsteer::bench::ClipArch,
    /// Candidates per step [default: describe's for the --strategy: 200 for seed, 45 for magic
    /// and beam].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Steps (tokens) to run.
    #[arg(long, default_value_t = clipsteer::request::DEFAULT_MAX_TOKENS)]
    pub steps: usize,
    /// Compute threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value = clipsteer::request::DEFAULT_PROMPT)]
    pub prompt: String,
    /// Directory with gpt2/encoder.json, gpt2/vocab.bpe and clip/bpe_simple_vocab_16e6.txt.gz.
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// Time the approximate --prefilter M mode instead of the exact loop.
    #[arg(long, value_name = "M")]
    pub prefilter: Option<usize>,
    /// With --prefilter: run the exact loop and report how often the prefilter would have kept
    /// the exact choice (top-1 agreement) instead of timing it.
    #[arg(long, requires = "prefilter")]
    pub check_agreement: bool,
    /// The loop to time; magic and beam also take the LM's hidden states or several hypotheses.
    #[arg(long, value_enum, default_value_t = Strategy::Seed)]
    pub strategy: Strategy,
    /// Load this LM (a GPT-2 directory or a .gguf file) instead of random GPT-2 124M weights;
    /// with --encoder and --image (bench/checkpoints.py writes a set).
    #[arg(long, value_name = "PATH", requires_all = ["encoder", "image"])]
    pub lm: Option<PathBuf>,
    /// Load this CLIP directory instead of random --clip weights.
    #[arg(long, value_name = "DIR", requires_all = ["lm", "image"], conflicts_with = "clip")]
    pub encoder: Option<PathBuf>,
    /// The image to describe (with --lm and --encoder) instead of random pixels.
    #[arg(long, value_name = "FILE", requires_all = ["lm", "encoder"])]
    pub image: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}
