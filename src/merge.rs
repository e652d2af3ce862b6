//! `clipsteer merge`: joining part files, and its report.

use crate::*;
use anyhow::Result;
use clap::Args;
use clipsteer::merge::merge;
use clipsteer::pipeline::collect_inputs;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Part files written by `describe --out` (e.g. results/part-*.jsonl).
    #[arg(required = true, value_name = "PART")]
    pub parts: Vec<PathBuf>,
    /// The merged file; replaced atomically.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// The run's images, given as to describe (files or folders): checks that each one is
    /// described exactly once and orders the output as describe did.
    #[arg(long, num_args = 1.., value_name = "IMAGE_OR_DIR")]
    pub inputs: Vec<PathBuf>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `clipsteer merge`: the report goes to stderr (or stdout as JSON); exit 1 unless complete.
pub(crate) fn run_merge(args: MergeArgs) -> Result<i32> {
    let inputs = (!args.inputs.is_empty()).then(|| collect_inputs(&args.inputs));
    let report = merge(&args.parts, inputs.as_deref(), &args.output)?;
    if args.json {
        outln!("{}", clipsteer::events::json_line(&report.to_json()));
    } else {
        print_merge_report(&report, &args.output);
    }
    Ok(if report.complete() { 0 } else { 1 })
}

pub(crate) fn print_merge_report(report: &clipsteer::merge::MergeReport, output: &Path) {
    const SHOWN: usize = 20;
    let inputs = if report.inputs > 0 {
        format!("{} of {} inputs described", report.described, report.inputs)
    } else if report.behaviors {
        format!("{} behaviours attacked", report.described)
    } else {
        format!(
            "{} images described (give --inputs to check for missing ones)",
            report.described
        )
    };
    errln!(
        "merged {} parts into {}: {inputs}; {} failed, {} missing, {} duplicated, {} unexpected, {} unreadable lines",
        report.parts,
        output.display(),
        report.failed.len(),
        report.missing.len(),
        report.duplicated.len(),
        report.unexpected.len(),
        report.corrupt.len()
    );
    let list = |kind: &str, items: Vec<String>| {
        for item in items.iter().take(SHOWN) {
            errln!("{kind}: {item}");
        }
        if items.len() > SHOWN {
            errln!(
                "{kind}: … and {} more (--json lists all)",
                items.len() - SHOWN
            );
        }
    };
    list(
        "failed",
        report
            .failed
            .iter()
            .map(|(image, error)| format!("{image}: {error}"))
            .collect(),
    );
    list("missing", report.missing.clone());
    list(
        "duplicated",
        report
            .duplicated
            .iter()
            .map(|(image, count)| format!("{image} ({count} done lines)"))
            .collect(),
    );
    list(
        "unexpected",
        report
            .unexpected
            .iter()
            .map(|image| format!("{image} (not among --inputs; left out)"))
            .collect(),
    );
    list("unreadable", report.corrupt.clone());
    for part in &report.partial {
        errln!("note: {part} ends in a partial line (a task killed mid-write; describe --resume trims it)");
    }
}
