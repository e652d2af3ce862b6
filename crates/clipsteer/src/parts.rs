//! Part files: the JSON lines that `describe --out FILE` appends, one `done` or `error` line per
//! image, and that `clipsteer merge` joins.
//!
//! How a part file stays whole on a cluster:
//! - **One writer.** [`PartWriter::open`] takes an exclusive advisory lock (`flock`) on the file
//!   for the life of the process, so two tasks given the same `--out` fail at once with a
//!   one-line error instead of interleaving lines. On NFS, Linux maps `flock` to POSIX locks,
//!   which hold across nodes. Where the file system has no locks at all (Lustre mounted without
//!   `flock`), a one-line note says so and the run goes on.
//! - **Whole lines.** Each line is written with one `write(2)` on a file opened `O_APPEND`
//!   (`write_all` repeats only after a short write), then `fdatasync`, so a line that a later
//!   run sees as finished survives a crash of the node, and a task killed mid-write (scancel,
//!   preemption, OOM) leaves at most a partial last line. Opening trims that partial line
//!   (under the lock), so the file stays valid JSON lines and the image is described again.
//! - **Resume.** Images with a `done` line are finished; `error` lines are not, so a resumed run
//!   retries them.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The deterministic share `index` of `count` of a run's items (`--shard I/N`): items I, I+N,
/// I+2N, … in order, so that N tasks cover the list once. All items without a shard.
pub fn take_shard<T>(items: Vec<T>, shard: Option<(usize, usize)>) -> Vec<T> {
    match shard {
        Some((index, count)) => items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % count == index)
            .map(|(_, item)| item)
            .collect(),
        None => items,
    }
}

/// What a part file already holds, as its next run needs it.
#[derive(Debug, Default)]
pub struct PartContents {
    /// Images with a `done` line, by [`crate::pathkey`] key.
    pub done: HashSet<PathBuf>,
    /// Behaviours (`attack --behaviors`) with a `done` line, by id.
    pub done_behaviors: HashSet<String>,
    /// Whether a text-target run (a `done` line naming no image or behaviour) is finished.
    pub done_text_target: bool,
    /// Distinct `settings` records of its `done` and `error` lines (`null` for lines written
    /// before records existed), each with the 1-based line it first appears on.
    pub settings: Vec<(Value, usize)>,
    /// Bytes of a killed run's partial last line, cut off before the first new line (0 if none).
    pub trimmed_bytes: u64,
}

impl PartContents {
    /// [`Self::check_settings`] before the models are loaded, against a planned record in which
    /// a hub model is named by its id alone (its commit is known only once resolved): a recorded
    /// `id@commit` agrees with `id`.
    pub fn check_planned(&self, path: &Path, planned: &Value) -> Result<()> {
        for (settings, line) in &self.settings {
            if !crate::settings::RunSettings::agrees_with_planned(settings, planned) {
                crate::usage_bail!(
                    "{} was made with other settings ({}, from line {line}); use the same models and flags to add to it, or write to a new --out file",
                    path.display(),
                    crate::settings::RunSettings::describe_difference(settings, planned)
                );
            }
        }
        Ok(())
    }

    /// Refuses to extend a part file made with other settings: `--resume` with changed flags or
    /// models would leave a file whose lines disagree.
    pub fn check_settings(&self, path: &Path, current: &Value) -> Result<()> {
        for (settings, line) in &self.settings {
            if settings != current {
                crate::usage_bail!(
                    "{} was made with other settings ({}, from line {line}); resume with the same models and flags, or write to a new --out file",
                    path.display(),
                    crate::settings::RunSettings::describe_difference(settings, current)
                );
            }
        }
        Ok(())
    }
}

/// A part file opened for appending, locked against other writers until dropped.
#[derive(Debug)]
pub struct PartWriter {
    file: File,
    path: PathBuf,
    /// What the first append must do first: cut a killed run's partial line (the length to keep),
    /// or end a whole last line that lacks its newline. Deferred to the first append, so that a
    /// run refused later (other settings, a model that does not load) leaves the file untouched.
    repair: Repair,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    None,
    TruncateTo(u64),
    AddNewline,
}

impl PartWriter {
    /// Opens (creating) `path` for appending and takes its exclusive lock.
    ///
    /// Errors: the file cannot be opened, or another process holds the lock (one line that
    /// names the file and says to give each task its own part file).
    pub fn open(path: &Path) -> Result<Self> {
        // Checked before opening: a FIFO, socket, folder or dangling link is refused as it is,
        // and nothing is created at a dangling link's target.
        crate::files::destination(path, &format!("--out {}", path.display()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("cannot open --out {}", path.display()))?;
        // The part file is read back (for --resume and the settings check), trimmed and locked:
        // a device, pipe or socket would be read forever (/dev/zero) or refuse the seek.
        let metadata = file
            .metadata()
            .with_context(|| format!("cannot open --out {}", path.display()))?;
        if !metadata.is_file() {
            bail!(
                "--out {} is not a regular file: give the path of a file to create or extend (write the events to stdout with --json instead)",
                path.display()
            );
        }
        lock_exclusive(&file, path)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            repair: Repair::None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what the file holds. A partial last line left by a killed run is cut off at the
    /// first [`Self::append`], not here: a run refused after reading changes nothing.
    ///
    /// Only a part file is ever changed: every whole line must be a `done` or `error` line (no
    /// blank lines: the writer makes none), and a partial last line must be the start of one
    /// after at least one whole line, as [`Self::append`] writes them. A last line that is a
    /// whole `done` or `error` line without its newline is kept. Anything else (a user's notes,
    /// an image, another program's JSON, a file holding only a fragment) is refused before a byte
    /// of it is touched.
    pub fn read_existing(&mut self) -> Result<PartContents> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read --out {}", self.path.display()))?;
        let complete = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |last| last + 1);
        let shown = self.path.display().to_string();
        let not_ours = |why: String| {
            anyhow::Error::new(crate::Error::BadArgument(format!(
                "--out {shown} is not a part file that clipsteer wrote ({why}), so it was left as it was; give a new file name for --out"
            )))
        };
        let mut contents = PartContents::default();
        let mut record = |index: usize, line: &[u8]| -> Result<()> {
            let value = result_line(line).ok_or_else(|| {
                not_ours(format!("line {} is not a done or error line", index + 1))
            })?;
            let settings = value.get("settings").cloned().unwrap_or(Value::Null);
            if !contents.settings.iter().any(|(s, _)| *s == settings) {
                contents.settings.push((settings, index + 1));
            }
            if value.get("event").and_then(Value::as_str) == Some("done") {
                if let Some(id) = value.get("behavior_id").and_then(Value::as_str) {
                    contents.done_behaviors.insert(id.to_string());
                } else if let Some(key) = crate::pathkey::from_line(&value) {
                    contents.done.insert(key);
                } else {
                    contents.done_text_target = true;
                }
            }
            Ok(())
        };
        let whole_lines = if complete == 0 {
            0
        } else {
            bytes[..complete - 1].split(|&b| b == b'\n').count()
        };
        if complete > 0 {
            for (index, line) in bytes[..complete - 1].split(|&b| b == b'\n').enumerate() {
                record(index, line)?;
            }
        }
        let tail = &bytes[complete..];
        self.repair = if tail.is_empty() {
            Repair::None
        } else if result_line(tail).is_some() {
            record(whole_lines, tail)?;
            Repair::AddNewline
        } else if whole_lines > 0 && is_start_of_result_line(tail) {
            Repair::TruncateTo(complete as u64)
        } else if whole_lines == 0 && is_start_of_result_line(tail) {
            return Err(not_ours(
                "it holds only the start of a line; if a run was killed during its first write, delete the file".into(),
            ));
        } else {
            return Err(not_ours(
                "its last line is neither a whole line nor the start of a done or error line"
                    .into(),
            ));
        };
        if let Repair::TruncateTo(_) = self.repair {
            contents.trimmed_bytes = tail.len() as u64;
        }
        Ok(contents)
    }

    /// Appends `line` and a newline with one write, then syncs the data to disk.
    pub fn append(&mut self, line: &Value) -> Result<()> {
        let mut text = String::new();
        match std::mem::replace(&mut self.repair, Repair::None) {
            Repair::None => {}
            Repair::AddNewline => text.push('\n'),
            Repair::TruncateTo(length) => self.file.set_len(length).with_context(|| {
                format!(
                    "cannot trim the partial last line of {}",
                    self.path.display()
                )
            })?,
        }
        text.push_str(&crate::events::json_line(line));
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot write --out {}", self.path.display()))
    }
}

/// Why `bytes` is not a file of results (every line a whole `done` or `error` line, or empty),
/// if it is not: what `merge -o` may replace.
pub fn not_results(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    body.split(|&b| b == b'\n')
        .position(|line| result_line(line).is_none())
        .map(|index| format!("line {} is not a done or error line", index + 1))
}

/// A whole `done` or `error` line as [`PartWriter::append`] writes them (a CR before the
/// newline allowed, as a file that passed through Windows tools has), parsed.
fn result_line(line: &[u8]) -> Option<Value> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    serde_json::from_slice::<Value>(line).ok().filter(|value| {
        matches!(
            value.get("event").and_then(Value::as_str),
            Some("done" | "error")
        )
    })
}

/// Whether `tail` (text after the last newline) can be what a killed [`PartWriter::append`]
/// left: the first bytes of one compact JSON `done` or `error` line.
fn is_start_of_result_line(tail: &[u8]) -> bool {
    const HEADS: [&[u8]; 2] = [b"{\"event\":\"done\",", b"{\"event\":\"error\","];
    HEADS.iter().any(|head| {
        let n = head.len().min(tail.len());
        tail[..n] == head[..n]
    })
}

#[cfg(unix)]
fn lock_exclusive(file: &File, path: &Path) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock only takes a descriptor we own and flags; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.kind() == std::io::ErrorKind::WouldBlock {
        bail!(
            "{} is being written by another clipsteer process; give each task its own part file (e.g. --out results/part-$SLURM_ARRAY_TASK_ID.jsonl)",
            path.display()
        );
    }
    // No lock support here (Lustre without -o flock, NFS without lockd): say so and go on, as
    // refusing would make the file system unusable for batches.
    errln!(
        "note: cannot lock {} ({error}); make sure no other task writes to it",
        path.display()
    );
    Ok(())
}

/// Whether another process holds `file`'s writer lock ([`PartWriter::open`]): a shared lock
/// is tried and, when granted, released at once. False where the file system has no locks.
#[cfg(unix)]
pub fn held_by_writer(file: &File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock only takes a descriptor we own and flags; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return false;
    }
    std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

#[cfg(not(unix))]
pub fn held_by_writer(_file: &File) -> bool {
    false
}

#[cfg(not(unix))]
fn lock_exclusive(_file: &File, _path: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_device_or_directory_is_refused_as_out() {
        let dir = std::env::temp_dir();
        for path in [
            Path::new("/dev/null"),
            Path::new("/dev/zero"),
            dir.as_path(),
        ] {
            if !path.exists() {
                continue;
            }
            let error = PartWriter::open(path).unwrap_err();
            let message = format!("{error:#}");
            assert!(
                message.contains("not a regular file") || message.contains("cannot open"),
                "{path:?}: {message}"
            );
        }
        let error = PartWriter::open(Path::new("/dev/zero")).unwrap_err();
        assert!(format!("{error:#}").contains("is a device, not a regular file"));
    }

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "clipsteer-parts-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ))
    }

    #[test]
    fn a_second_writer_is_refused_with_the_file_named() {
        let path = temp_path("lock");
        let _ = std::fs::remove_file(&path);
        let first = PartWriter::open(&path).unwrap();
        let error = PartWriter::open(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("its own part file"), "{error}");
        drop(first);
        PartWriter::open(&path).expect("free again once the first writer is gone");
        std::fs::remove_file(&path).unwrap();
    }

    const PARTIAL: &str = "{\"event\":\"done\",\"ima";

    #[test]
    fn a_partial_last_line_is_trimmed_and_errors_are_not_finished() {
        let path = temp_path("trim");
        let settings = json!({"lm": "a", "encoder": "b", "options": "0"});
        let done = json!({"event": "done", "image": "a.png", "text": "x", "settings": settings});
        let error =
            json!({"event": "error", "image": "b.png", "error": "bad", "settings": settings});
        std::fs::write(&path, format!("{done}\n{error}\n{PARTIAL}")).unwrap();
        let mut writer = PartWriter::open(&path).unwrap();
        let contents = writer.read_existing().unwrap();
        assert_eq!(contents.trimmed_bytes, PARTIAL.len() as u64);
        assert_eq!(
            contents.done,
            HashSet::from([crate::pathkey::key(Path::new("a.png"))])
        );
        assert_eq!(contents.settings, vec![(settings.clone(), 1)]);
        contents.check_settings(&path, &settings).unwrap();
        let other = json!({"lm": "a", "encoder": "c", "options": "0"});
        let message = contents
            .check_settings(&path, &other)
            .unwrap_err()
            .to_string();
        assert!(message.contains("encoder b vs c"), "{message}");
        writer
            .append(&json!({"event": "done", "image": "b.png"}))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with("{\"event\":\"done\",\"image\":\"b.png\"}\n"));
        std::fs::remove_file(&path).unwrap();
    }
}
