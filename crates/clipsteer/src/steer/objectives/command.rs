//! Any scoring function, in any language, as a subprocess (`--scorer-cmd CMD`).
//!
//! The protocol is JSON lines. CMD is started once, through `sh -c`. For each batch clipsteer
//! writes one line `{"items":[{"text": …, "response": …}, …]}` to its stdin and reads one line
//! `{"scores":[…]}` from its stdout: one finite number per item, in the same order, higher is
//! better. `response` (the victim's greedy answer) is present only in `attack`. The program's
//! stderr is passed through. A program that exits, writes a malformed line, returns the wrong
//! number of scores or a non-finite one, or stays silent past the timeout ends the run with a
//! one-line error that names it.

use super::{Objective, ScoreBatch};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// How long a batch may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// One item sent to the program.
#[derive(Debug, Clone, Serialize)]
pub struct Item<'a> {
    pub text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<&'a str>,
    /// For a judge (`attack --judge-cmd`): the behaviour the answer is judged against, as the
    /// behaviour file gives it (HarmBench's and JailbreakBench's classifiers take it apart
    /// from the prompt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behavior: Option<&'a str>,
}

/// Any scoring function of items: one finite number per item, in order, higher is better. A
/// program ([`CommandScorer`]) is one; an in-process function (the Python package's callables)
/// is another.
pub trait ItemScorer {
    fn score_items(&self, items: &[Item]) -> Result<Vec<f32>>;
}

/// A scoring function's answer, checked: exactly `expected` finite numbers. `who` names the
/// function in the one-line error.
pub fn checked_scores(
    who: &str,
    scores: &[serde_json::Value],
    expected: usize,
) -> Result<Vec<f32>> {
    if scores.len() != expected {
        bail!(
            "{who} returned {} scores for {expected} items; answer one score per item, in order",
            scores.len()
        );
    }
    scores
        .iter()
        .enumerate()
        .map(|(i, s)| match s.as_f64() {
            Some(x) if x.is_finite() && (x as f32).is_finite() => Ok(x as f32),
            _ => bail!("{who} returned {s} for item {i}; every score must be a finite number"),
        })
        .collect()
}

/// A running scorer program.
pub struct CommandScorer {
    command: String,
    timeout: Duration,
    /// The run's own time limit (`attack --time-limit`): a batch is waited for no longer.
    deadline: Option<std::time::Instant>,
    /// The flag that sets `timeout`, as messages name it.
    timeout_flag: &'static str,
    state: RefCell<Running>,
}

/// A batch was still unanswered when the run's time limit ran out ([`CommandScorer::with_deadline`]).
/// The search ends with its best so far instead of failing.
#[derive(Debug)]
pub struct TimeLimitReached(pub String);

impl std::fmt::Display for TimeLimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimeLimitReached {}

struct Running {
    child: Child,
    /// Requests for the writer thread, which owns the program's stdin (None once closed).
    requests: Option<Sender<Vec<u8>>>,
    lines: Receiver<std::io::Result<String>>,
}

impl CommandScorer {
    /// Waits for no batch past `deadline` (the run's time limit), besides the per-batch timeout:
    /// a batch unanswered then ends with [`TimeLimitReached`].
    pub fn with_deadline(mut self, deadline: Option<std::time::Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Names the flag that sets the timeout in messages (`--scorer-timeout` unless told).
    pub fn with_timeout_flag(mut self, flag: &'static str) -> Self {
        self.timeout_flag = flag;
        self
    }

    /// Starts `command` with `sh -c`. `timeout` bounds each batch.
    pub fn start(command: &str, timeout: Duration) -> Result<Self> {
        if command.trim().is_empty() {
            bail!("--scorer-cmd is empty: give the program to run, e.g. --scorer-cmd 'python3 score.py'");
        }
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Its own process group, so that ending it ends what `sh` started too (a pipeline, or a
        // program sh did not exec): killing sh alone would orphan a program still holding our
        // terminal's output open. (Ctrl-C then reaches only clipsteer; the program sees its
        // stdin close.)
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut shell, 0);
        let mut child = shell
            .spawn()
            .with_context(|| format!("cannot start scorer command '{command}'"))?;
        let stdin = child
            .stdin
            .take()
            .context("the scorer command has no stdin")?;
        // A thread writes too: a program that stops reading fills the pipe, and a blocked write
        // on this thread would outlast --scorer-timeout (a request of a few thousand items is
        // larger than the pipe). The answer's timeout now covers writing and answering alike.
        let (requests, pending) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut stdin = stdin;
            for request in pending {
                if stdin
                    .write_all(&request)
                    .and_then(|()| stdin.flush())
                    .is_err()
                {
                    break;
                }
            }
        });
        let stdout = child
            .stdout
            .take()
            .context("the scorer command has no stdout")?;
        let (sender, lines) = mpsc::channel();
        // A thread reads, so that a silent program can be timed out instead of blocking.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            while let Some(line) = read_bounded_line(&mut reader).transpose() {
                let failed = line.is_err();
                if sender.send(line).is_err() || failed {
                    break;
                }
            }
        });
        Ok(Self {
            command: command.to_string(),
            timeout,
            deadline: None,
            timeout_flag: "--scorer-timeout",
            state: RefCell::new(Running {
                child,
                requests: Some(requests),
                lines,
            }),
        })
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    /// Scores `items`: one finite number per item, in order.
    pub fn score_items(&self, items: &[Item]) -> Result<Vec<f32>> {
        ItemScorer::score_items(self, items)
    }

    fn parse(&self, line: &str, expected: usize) -> Result<Vec<f32>> {
        let shown: String = line.chars().take(80).collect();
        let malformed = || {
            anyhow::anyhow!(
                "scorer command '{}' wrote a malformed line ({shown:?}); each answer must be one line {{\"scores\":[numbers]}}",
                self.command
            )
        };
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            // Python's json.dumps writes NaN, Infinity and -Infinity for non-finite floats,
            // which JSON lacks; 1e999 parses in Python but is out of an f64's range.
            let non_finite = e.to_string().starts_with("number out of range")
                || ["NaN", "Infinity"].iter().any(|word| line.contains(word));
            if non_finite {
                anyhow::anyhow!(
                    "scorer command '{}' wrote a score that is not a finite number ({shown:?}); every score must be a finite number (Python's json writes NaN and Infinity for non-finite floats)",
                    self.command
                )
            } else {
                malformed()
            }
        })?;
        let scores = value["scores"].as_array().ok_or_else(malformed)?;
        checked_scores(
            &format!("scorer command '{}'", self.command),
            scores,
            expected,
        )
    }

    fn exited(&self, state: &mut Running) -> anyhow::Error {
        // The pipe closes a moment before the process is reaped.
        let mut status = None;
        for _ in 0..50 {
            if let Ok(Some(s)) = state.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let how = match status {
            // sh's codes for a program it could not find or run (POSIX, "Exit Status").
            Some(s) if s.code() == Some(127) => {
                return anyhow::anyhow!(
                    "scorer command '{}' was not found (sh exited with 127); check the program's name and PATH",
                    self.command
                );
            }
            Some(s) if s.code() == Some(126) => {
                return anyhow::anyhow!(
                    "scorer command '{}' could not be run (sh exited with 126); check that it is executable",
                    self.command
                );
            }
            Some(s) => format!("exited ({s})"),
            None => "closed its output".to_string(),
        };
        anyhow::anyhow!(
            "scorer command '{}' {how} before answering; it must keep running and answer every line",
            self.command
        )
    }
}

impl ItemScorer for CommandScorer {
    fn score_items(&self, items: &[Item]) -> Result<Vec<f32>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = self.state.borrow_mut();
        let mut request = serde_json::to_vec(&serde_json::json!({ "items": items }))?;
        request.push(b'\n');
        // The writer thread is gone only after a failed write: the program has closed its input.
        let sent = (state.requests.as_ref()).is_some_and(|writer| writer.send(request).is_ok());
        if !sent {
            return Err(self.exited(&mut state));
        }
        let left = self
            .deadline
            .map(|deadline| deadline.saturating_duration_since(std::time::Instant::now()));
        let wait = left.map_or(self.timeout, |left| left.min(self.timeout));
        let line = match state.lines.recv_timeout(wait) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => bail!("scorer command '{}': cannot read its output: {e}", self.command),
            Err(RecvTimeoutError::Disconnected) => return Err(self.exited(&mut state)),
            Err(RecvTimeoutError::Timeout) if left.is_some_and(|left| left < self.timeout) => {
                // The program still owes this batch's answer, which would be read as the next
                // batch's: its input is closed, so that any later batch fails instead.
                state.requests.take();
                return Err(TimeLimitReached(format!(
                    "time limit reached while scorer command '{}' was scoring a batch",
                    self.command
                ))
                .into());
            }
            Err(RecvTimeoutError::Timeout) => bail!(
                "scorer command '{}' did not answer within {} s; make it print one {{\"scores\":[…]}} line per input line and flush, or raise {}",
                self.command,
                self.timeout.as_secs_f64(),
                self.timeout_flag
            ),
        };
        self.parse(&line, items.len())
    }
}

/// The longest answer line read: a batch's scores take a few kB, and a program that writes
/// without end (`yes`, a runaway loop) would otherwise be read into memory until none is left.
const MAX_LINE_BYTES: u64 = 16 << 20;

/// The next line of the program's output without its line ending (`\n` or `\r\n`, as
/// `BufRead::lines`), None at the end; an error past [`MAX_LINE_BYTES`] or for invalid UTF-8.
fn read_bounded_line(reader: &mut impl BufRead) -> std::io::Result<Option<String>> {
    use std::io::{Error, ErrorKind, Read};
    let mut bytes = Vec::new();
    if reader
        .take(MAX_LINE_BYTES + 1)
        .read_until(b'\n', &mut bytes)?
        == 0
    {
        return Ok(None);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    } else if bytes.len() as u64 > MAX_LINE_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "a line longer than {} MiB; answer each batch with one {{\"scores\":[…]}} line",
                MAX_LINE_BYTES >> 20
            ),
        ));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| Error::new(ErrorKind::InvalidData, "stream did not contain valid UTF-8"))
}

impl Drop for CommandScorer {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        // Closing stdin lets a well-behaved program end on its own; then make sure it has.
        state.requests.take();
        for _ in 0..20 {
            if let Ok(Some(_)) = state.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        #[cfg(unix)]
        if let Ok(group) = libc::pid_t::try_from(state.child.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group made in `start`,
            // whose leader is our child and not yet reaped (so the id is not reused).
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
        let _ = state.child.kill();
        let _ = state.child.wait();
    }
}

/// In describe, the program scores the candidate texts alone.
impl Objective for CommandScorer {
    type Prefix = ();

    fn prefix(&self, _text: &str, _previous: Option<&()>) -> Result<()> {
        Ok(())
    }

    fn score(&self, _prefix: &(), texts: &[String]) -> Result<ScoreBatch> {
        let items: Vec<Item> = texts
            .iter()
            .map(|text| Item {
                text,
                response: None,
                behavior: None,
            })
            .collect();
        Ok(ScoreBatch {
            similarities: self.score_items(&items)?,
            positions_computed: 0,
            distinct: texts.len(),
            greedy_target: Vec::new(),
            teacher_forced_argmax: Vec::new(),
        })
    }
}
