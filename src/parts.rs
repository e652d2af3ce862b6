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

/// What a part file already holds, as its next run needs it.
#[derive(Debug, Default)]
pub struct PartContents {
    /// Images with a `done` line.
    pub done: HashSet<String>,
    /// Distinct `settings` records of its `done` and `error` lines (`null` for lines written
    /// before records existed), each with the 1-based line it first appears on.
    pub settings: Vec<(Value, usize)>,
    /// Bytes of a partial last line that opening cut off (0 if none).
    pub trimmed_bytes: u64,
}

impl PartContents {
    /// Refuses to extend a part file made with other settings: `--resume` with changed flags or
    /// models would leave a file whose lines disagree.
    pub fn check_settings(&self, path: &Path, current: &Value) -> Result<()> {
        for (settings, line) in &self.settings {
            if settings != current {
                bail!(
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
}

impl PartWriter {
    /// Opens (creating) `path` for appending and takes its exclusive lock.
    ///
    /// Errors: the file cannot be opened, or another process holds the lock (one line that
    /// names the file and says to give each task its own part file).
    pub fn open(path: &Path) -> Result<Self> {
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
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what the file holds, first cutting off a partial last line left by a killed run.
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
        let mut contents = PartContents {
            trimmed_bytes: (bytes.len() - complete) as u64,
            ..PartContents::default()
        };
        if contents.trimmed_bytes > 0 {
            self.file.set_len(complete as u64).with_context(|| {
                format!(
                    "cannot trim the partial last line of {}",
                    self.path.display()
                )
            })?;
        }
        for (index, line) in String::from_utf8_lossy(&bytes[..complete])
            .lines()
            .enumerate()
        {
            let Ok(value) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let event = value.get("event").and_then(Value::as_str);
            if !matches!(event, Some("done" | "error")) {
                continue;
            }
            let settings = value.get("settings").cloned().unwrap_or(Value::Null);
            if !contents.settings.iter().any(|(s, _)| *s == settings) {
                contents.settings.push((settings, index + 1));
            }
            if event == Some("done") {
                if let Some(image) = value.get("image").and_then(Value::as_str) {
                    contents.done.insert(image.to_string());
                }
            }
        }
        Ok(contents)
    }

    /// Appends `line` and a newline with one write, then syncs the data to disk.
    pub fn append(&mut self, line: &Value) -> Result<()> {
        let mut text = line.to_string();
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot write --out {}", self.path.display()))
    }
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
                message.contains("is not a regular file") || message.contains("cannot open"),
                "{path:?}: {message}"
            );
        }
        let error = PartWriter::open(Path::new("/dev/zero")).unwrap_err();
        assert!(format!("{error:#}").contains("is not a regular file"));
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
        assert_eq!(contents.done, HashSet::from(["a.png".to_string()]));
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
