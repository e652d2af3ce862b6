//! `clipsteer merge`: join the part files of a sharded describe run into one file, and say
//! whether they add up to every image described exactly once.
//!
//! - **Order.** With the run's inputs, the output follows their order (the order describe
//!   expands them in); without, images are sorted by path, which is the same order for a run
//!   over one folder.
//! - **One line per image.** Its first `done` line; an image with only `error` lines keeps its
//!   last error. An `error` followed by a `done` (a retry that worked, as `--resume` does) is not
//!   a failure. Lines are copied byte for byte.
//! - **Checks.** Given the inputs: images with no line (missing) and lines for images that are not
//!   inputs (unexpected). Always: images done more than once (duplicated: work was redone, or two
//!   shards overlapped), images that only failed, and lines that are not JSON events. A part
//!   that ends in a partial line (a task killed mid-write, not yet resumed) is noted; the image on
//!   it counts as missing.
//! - **Mixed settings are refused.** Every `done`/`error` line carries its run's settings record
//!   (crate::settings); parts whose records differ are an error and nothing is written.
//! - **Atomic.** The output is written to a temporary file beside it, synced, then renamed over
//!   `output`: readers see the old file or the whole new one.
//!
//! `attack --behaviors` part files merge the same way, one line per behaviour (by
//! `behavior_id`; sorted by id without inputs).
//!
//! Image paths are matched after making them absolute against the current directory (no
//! symlinks resolved; names that are not UTF-8 by their exact bytes, [`crate::pathkey`]): run
//! merge from the directory describe ran in, or give absolute paths.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What a merge found. `complete()` is false when any list but `partial` is non-empty.
#[derive(Debug, Default, Clone)]
pub struct MergeReport {
    pub parts: usize,
    /// Images with a `done` line in the output.
    pub described: usize,
    /// Images given as inputs (0 when no inputs were given).
    pub inputs: usize,
    /// Images whose lines are all errors, with the last error.
    pub failed: Vec<(String, String)>,
    /// Inputs with no line in any part. Only checked when inputs are given.
    pub missing: Vec<String>,
    /// Images with more than one `done` line, with the count.
    pub duplicated: Vec<(String, usize)>,
    /// Images in the parts that are not among the inputs; left out of the output.
    pub unexpected: Vec<String>,
    /// `file:line: why` for lines that are not describe events.
    pub corrupt: Vec<String>,
    /// Parts that end in a partial line (ignored).
    pub partial: Vec<String>,
    /// The settings record shared by every line (null when the lines carry none).
    pub settings: Value,
    /// Whether the parts hold `attack --behaviors` results, not images (for the wording).
    pub behaviors: bool,
}

impl MergeReport {
    /// Every input described exactly once, nothing failed, nothing unreadable.
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
            && self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.corrupt.is_empty()
    }

    /// The report as one JSON object (`clipsteer merge --json`).
    pub fn to_json(&self) -> Value {
        json!({
            "complete": self.complete(),
            "parts": self.parts,
            "inputs": self.inputs,
            "described": self.described,
            "failed": self.failed.iter().map(|(image, error)| json!({"image": image, "error": error})).collect::<Vec<_>>(),
            "missing": self.missing,
            "duplicated": self.duplicated.iter().map(|(image, count)| json!({"image": image, "count": count})).collect::<Vec<_>>(),
            "unexpected": self.unexpected,
            "corrupt": self.corrupt,
            "partial": self.partial,
            "settings": self.settings,
        })
    }
}

/// The fields merge reads from a line; the rest is copied untouched.
#[derive(Deserialize)]
struct LineHead {
    event: Option<String>,
    image: Option<String>,
    image_hex: Option<String>,
    /// `attack --behaviors` results are keyed by behaviour instead of image.
    behavior_id: Option<String>,
    error: Option<String>,
    #[serde(default)]
    settings: Value,
}

/// Where a line lives: part index and byte range.
#[derive(Debug, Clone, Copy)]
struct LineRef {
    part: usize,
    start: u64,
    len: usize,
}

#[derive(Debug, Default)]
struct Entry {
    /// The image as the first line that named it wrote it.
    image: String,
    done: Vec<LineRef>,
    last_error: Option<(LineRef, String)>,
}

/// Opens a part for reading, refusing what is not a regular file and a part that a running
/// `describe --out` still holds (its exclusive lock, [`crate::parts::PartWriter`]): merging it
/// would silently miss the lines still to come.
fn open_part(part: &Path) -> Result<std::fs::File> {
    let file = crate::files::open_regular(part, &format!("part {}", part.display()))?;
    if crate::parts::held_by_writer(&file) {
        bail!(
            "part {} is still being written by a running describe (it holds the file's lock); merge once that task has finished",
            part.display()
        );
    }
    Ok(file)
}

/// Refuses an output that would lose something: one of the parts itself (the merge keeps one
/// line per image, so lines of that part would be gone), a file a running describe still
/// writes (its next lines would go to the replaced file), or an existing file that is not a file
/// of results (an image, notes). A file of `done`/`error` lines, such as an earlier merge, may be
/// replaced.
fn check_output(
    output: &Path,
    what: &str,
    parts: &[PathBuf],
    files: &[std::fs::File],
) -> Result<()> {
    let Ok(existing) = std::fs::metadata(output) else {
        return Ok(()); // new
    };
    for (part, file) in parts.iter().zip(files) {
        if file
            .metadata()
            .is_ok_and(|m| crate::files::identity(&m) == crate::files::identity(&existing))
        {
            crate::usage_bail!(
                "{what} is the part {} itself: write the merged file to a new name",
                part.display()
            );
        }
    }
    let file = crate::files::open_regular(output, what)?;
    if crate::parts::held_by_writer(&file) {
        bail!("{what} is being written by a running describe (it holds the file's lock): write the merged file to another name");
    }
    let mut bytes = Vec::new();
    (&file)
        .take(existing.len().min(64 << 20))
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what}"))?;
    if let Some(why) = crate::parts::not_results(&bytes) {
        crate::usage_bail!(
            "{what} exists and is not a file of clipsteer results ({why}), so it was left as it was: give a new file name, or remove it first"
        );
    }
    Ok(())
}

/// Merges `parts` into `output`. `inputs`, when given, is the run's list of images as describe
/// expanded it (files, in order).
///
/// Errors (nothing written): a part cannot be read, parts carry different settings records, or
/// the output cannot be written. Incompleteness is not an error: it is in the report.
pub fn merge(parts: &[PathBuf], inputs: Option<&[PathBuf]>, output: &Path) -> Result<MergeReport> {
    let mut report = MergeReport {
        parts: parts.len(),
        ..MergeReport::default()
    };
    let what = format!("merge -o {}", output.display());
    let destination = crate::files::destination(output, &what)?;
    let files: Vec<std::fs::File> = parts
        .iter()
        .map(|part| open_part(part))
        .collect::<Result<_>>()?;
    check_output(&destination.path, &what, parts, &files)?;
    let mut index = Index::default();
    for (part_index, (part, file)) in parts.iter().zip(&files).enumerate() {
        index.read_part(part_index, part, file, &mut report)?;
    }
    report.settings = index
        .settings
        .take()
        .map(|(settings, _)| settings)
        .unwrap_or(Value::Null);
    let order = index.order(inputs, &mut report);

    let mut buffer = Vec::new();
    let mut read_error = None;
    crate::files::write_replacing(output, &what, |writer| {
        for image_key in &order {
            let Some(entry) = index.entries.get(image_key) else {
                continue;
            };
            let line = match (entry.done.first(), &entry.last_error) {
                (Some(done), _) => {
                    report.described += 1;
                    if entry.done.len() > 1 {
                        report
                            .duplicated
                            .push((entry.image.clone(), entry.done.len()));
                    }
                    *done
                }
                (None, Some((error, message))) => {
                    report.failed.push((entry.image.clone(), message.clone()));
                    *error
                }
                (None, None) => continue,
            };
            buffer.resize(line.len, 0);
            if let Err(e) = files[line.part].read_exact_at(&mut buffer, line.start) {
                read_error = Some(line.part);
                return Err(e);
            }
            writer.write_all(&buffer)?;
            writer.write_all(b"\n")?;
        }
        Ok(())
    })
    .map_err(|e| match read_error {
        Some(part) => e.context(format!("cannot read part {}", parts[part].display())),
        None => e,
    })?;
    Ok(report)
}

/// Where each image's (or behaviour's) result lines are in the parts, and the settings they
/// share.
#[derive(Default)]
struct Index {
    entries: HashMap<PathBuf, Entry>,
    /// Keys in the order their first line was read.
    first_seen: Vec<PathBuf>,
    /// The first line's settings and where it was.
    settings: Option<(Value, String)>,
}

impl Index {
    /// Indexes every complete line of one part (a last line without its newline is a write
    /// cut short, reported as partial).
    fn read_part(
        &mut self,
        part_index: usize,
        part: &Path,
        mut file: &std::fs::File,
        report: &mut MergeReport,
    ) -> Result<()> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("cannot read part {}", part.display()))?;
        let complete = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |last| last + 1);
        if complete < bytes.len() {
            report.partial.push(part.display().to_string());
        }
        let mut start = 0usize;
        let mut line_number = 0usize;
        while start < complete {
            let end = start
                + bytes[start..complete]
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(complete - start);
            line_number += 1;
            let raw = &bytes[start..end];
            let line = LineRef {
                part: part_index,
                start: start as u64,
                len: end - start,
            };
            start = end + 1;
            if !raw.iter().all(u8::is_ascii_whitespace) {
                let place = format!("{}:{line_number}", part.display());
                self.add(line, raw, place, report)?;
            }
        }
        Ok(())
    }

    /// Indexes one line: a done or error event of an image or a behaviour, with the settings of
    /// every other line. Anything else is reported as corrupt; step events are skipped.
    fn add(
        &mut self,
        line: LineRef,
        raw: &[u8],
        place: String,
        report: &mut MergeReport,
    ) -> Result<()> {
        let head: LineHead = match serde_json::from_slice(raw) {
            Ok(head) => head,
            Err(e) => {
                report
                    .corrupt
                    .push(format!("{place}: not a JSON object ({e})"));
                return Ok(());
            }
        };
        let event = head.event.as_deref().unwrap_or("");
        if event == "step" {
            return Ok(()); // progress from `describe --json`, not a result
        }
        if event != "done" && event != "error" {
            report
                .corrupt
                .push(format!("{place}: not a done or error event"));
            return Ok(());
        }
        // A behaviour's key holds NUL bytes, which no path can: it never meets an image's.
        let (image, behavior_key) = match (head.image, head.behavior_id) {
            (Some(image), _) => (image, None),
            (None, Some(id)) => (
                format!("behaviour {id}"),
                Some(PathBuf::from(format!("\0behavior\0{id}"))),
            ),
            (None, None) => {
                report.corrupt.push(format!(
                    "{place}: no image or behaviour (a text-target run); merge joins image batches and attack --behaviors runs"
                ));
                return Ok(());
            }
        };
        match &self.settings {
            None => self.settings = Some((head.settings.clone(), place)),
            Some((seen, seen_at)) if *seen != head.settings => bail!(
                "parts were made with different settings: {seen_at} vs {place}: {}; merge only parts of one run, or describe again with the same models and flags",
                crate::settings::RunSettings::describe_difference(seen, &head.settings)
            ),
            Some(_) => {}
        }
        let image_key = match behavior_key {
            Some(key) => {
                report.behaviors = true;
                key
            }
            None => {
                let named = json!({"image": image, "image_hex": head.image_hex});
                crate::pathkey::from_line(&named)
                    .unwrap_or_else(|| crate::pathkey::key(Path::new(&image)))
            }
        };
        let first_seen = &mut self.first_seen;
        let entry = self.entries.entry(image_key.clone()).or_insert_with(|| {
            first_seen.push(image_key);
            Entry {
                image,
                ..Entry::default()
            }
        });
        if event == "done" {
            entry.done.push(line);
        } else {
            entry.last_error = Some((line, head.error.unwrap_or_default()));
        }
        Ok(())
    }

    /// The output's order: the input list's (once each, its missing and unexpected images
    /// reported), else the keys sorted.
    fn order(&self, inputs: Option<&[PathBuf]>, report: &mut MergeReport) -> Vec<PathBuf> {
        let Some(inputs) = inputs else {
            let mut all = self.first_seen.clone();
            all.sort();
            return all;
        };
        let mut wanted = Vec::with_capacity(inputs.len());
        let mut seen = HashSet::new();
        for input in inputs {
            let input_key = crate::pathkey::key(input);
            if seen.insert(input_key.clone()) {
                if !self.entries.contains_key(&input_key) {
                    report.missing.push(crate::pathkey::label(input));
                }
                wanted.push(input_key);
            }
        }
        report.inputs = wanted.len();
        report.unexpected = self
            .first_seen
            .iter()
            .filter(|k| !seen.contains(*k))
            .map(|k| self.entries[k].image.clone())
            .collect();
        wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(image: &str, settings: &Value) -> String {
        json!({"event": "done", "image": image, "text": format!("text of {image}"), "settings": settings}).to_string()
    }

    fn error(image: &str, settings: &Value) -> String {
        json!({"event": "error", "image": image, "error": "bad", "settings": settings}).to_string()
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn behaviour_parts_merge_by_behaviour() {
        let dir = tempfile::tempdir().unwrap();
        let s = json!({"attacker": "a", "victim": "a", "options": "0"});
        let line = |event: &str, id: &str| {
            json!({"event": event, "behavior_id": id, "jailbroken": false, "error": "x", "settings": s})
                .to_string()
        };
        let part0 = dir.path().join("part-0.jsonl");
        let part1 = dir.path().join("part-1.jsonl");
        std::fs::write(
            &part0,
            format!("{}\n{}\n", line("done", "2"), line("error", "1")),
        )
        .unwrap();
        std::fs::write(
            &part1,
            format!("{}\n{}\n", line("done", "1"), line("done", "2")),
        )
        .unwrap();
        let out = dir.path().join("all.jsonl");
        let report = merge(&[part0, part1], None, &out).unwrap();
        assert_eq!(report.described, 2);
        assert_eq!(report.duplicated, vec![("behaviour 2".to_string(), 2)]);
        assert!(report.failed.is_empty(), "the retry of 1 succeeded");
        let merged: Vec<String> = lines(&out)
            .iter()
            .map(|l| format!("{} {}", l["event"], l["behavior_id"]))
            .collect();
        assert_eq!(merged, ["\"done\" \"1\"", "\"done\" \"2\""]);
    }

    #[test]
    fn merges_in_input_order_and_reports_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let s = json!({"lm": "a", "encoder": "b", "options": "0"});
        let image = |name: &str| dir.path().join(name).display().to_string();
        let part0 = dir.path().join("part-0.jsonl");
        let part1 = dir.path().join("part-1.jsonl");
        std::fs::write(
            &part0,
            format!(
                "{}\n{}\n{}\n{}\n{{\"event\":\"done\",\"im",
                done(&image("c.png"), &s),
                error(&image("a.png"), &s),
                done(&image("a.png"), &s),
                error(&image("d.png"), &s),
            ),
        )
        .unwrap();
        std::fs::write(
            &part1,
            format!(
                "{}\n{}\nnot json\n{}\n",
                done(&image("b.png"), &s),
                done(&image("c.png"), &s),
                done(&image("z.png"), &s),
            ),
        )
        .unwrap();
        let inputs: Vec<PathBuf> = ["a.png", "b.png", "c.png", "d.png", "e.png"]
            .iter()
            .map(|n| dir.path().join(n))
            .collect();
        let out = dir.path().join("all.jsonl");
        let report = merge(&[part0.clone(), part1.clone()], Some(&inputs), &out).unwrap();
        assert!(!report.complete());
        assert_eq!(report.described, 3);
        assert_eq!(report.inputs, 5);
        assert_eq!(report.missing, vec![image("e.png")]);
        assert_eq!(report.duplicated, vec![(image("c.png"), 2)]);
        assert_eq!(report.failed, vec![(image("d.png"), "bad".to_string())]);
        assert_eq!(report.unexpected, vec![image("z.png")]);
        assert_eq!(report.corrupt.len(), 1);
        assert!(
            report.corrupt[0].contains("part-1.jsonl:3: not a JSON object"),
            "{:?}",
            report.corrupt
        );
        assert_eq!(report.partial, vec![part0.display().to_string()]);
        assert_eq!(report.settings, s);
        let merged = lines(&out);
        let names: Vec<(&str, &str)> = merged
            .iter()
            .map(|l| (l["event"].as_str().unwrap(), l["image"].as_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("done", image("a.png").as_str()),
                ("done", image("b.png").as_str()),
                ("done", image("c.png").as_str()),
                ("error", image("d.png").as_str()),
            ]
        );
        // Byte for byte: the first done line of c.png, from part-0.
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains(&done(&image("c.png"), &s)));

        // Without inputs: path order, and only what the parts themselves show.
        let report = merge(&[part1, part0], None, &out).unwrap();
        assert!(report.missing.is_empty() && report.unexpected.is_empty());
        let order: Vec<String> = lines(&out)
            .iter()
            .map(|l| l["image"].as_str().unwrap().to_string())
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        assert_eq!(order.len(), 5);
    }

    #[test]
    fn relative_and_absolute_paths_match() {
        let dir = tempfile::tempdir().unwrap();
        let s = Value::Null;
        let part = dir.path().join("p.jsonl");
        let cwd = std::env::current_dir().unwrap();
        std::fs::write(&part, format!("{}\n", done("./x/./y.png", &s))).unwrap();
        let report = merge(
            &[part],
            Some(&[cwd.join("x/y.png")]),
            &dir.path().join("o.jsonl"),
        )
        .unwrap();
        assert!(report.complete(), "{report:?}");
    }

    #[test]
    fn mixed_settings_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let a = json!({"lm": "gpt2@aaa", "encoder": "clip", "options": "0"});
        let b = json!({"lm": "gpt2@bbb", "encoder": "clip", "options": "0"});
        let p0 = dir.path().join("p0.jsonl");
        let p1 = dir.path().join("p1.jsonl");
        std::fs::write(&p0, format!("{}\n", done("a.png", &a))).unwrap();
        std::fs::write(&p1, format!("{}\n", error("b.png", &b))).unwrap();
        let out = dir.path().join("all.jsonl");
        let message = merge(&[p0, p1], None, &out).unwrap_err().to_string();
        assert!(message.contains("lm gpt2@aaa vs gpt2@bbb"), "{message}");
        assert!(
            message.contains("p0.jsonl:1") && message.contains("p1.jsonl:1"),
            "{message}"
        );
        assert!(!out.exists());
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary file left");
    }
}
