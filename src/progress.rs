//! The terminal's progress display: a bar per batch and the text growing in place.

use crate::*;
use clipsteer::steer::describe::StepEvent;

/// Columns of the terminal on stderr (80 when unknown).
pub(crate) fn terminal_width() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: TIOCGWINSZ only fills the winsize struct passed to it.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0
            && size.ws_col > 0
        {
            return size.ws_col as usize;
        }
    }
    80
}

/// Live terminal output on stderr: the description growing in place and, for batches, a bar with
/// an ETA. Draws nothing when stderr is not a terminal.
pub(crate) struct Progress {
    multi: indicatif::MultiProgress,
    live: indicatif::ProgressBar,
    overall: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub(crate) fn new(images: usize) -> Self {
        let multi =
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
        let overall = (images > 1).then(|| {
            let bar = multi.add(indicatif::ProgressBar::new(images as u64));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} images · {elapsed} elapsed · ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let live = multi.add(indicatif::ProgressBar::new_spinner());
        live.set_style(
            indicatif::ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        Self {
            multi,
            live,
            overall,
        }
    }

    pub(crate) fn step(&self, event: &StepEvent, max_tokens: usize) {
        let head = format!(
            "[{}/{max_tokens} · sim {:.4}] ",
            event.step + 1,
            event.similarity
        );
        self.line(&head, &event.text);
    }

    /// Shows `head` and then as much of the end of `text` as fits on one line.
    pub(crate) fn line(&self, head: &str, text: &str) {
        if self.live.is_hidden() {
            return;
        }
        // One line that never wraps: when the text outgrows the terminal, show its growing end.
        let room = terminal_width()
            .saturating_sub(head.chars().count() + 1)
            .max(10);
        let text =
            clipsteer::terminal_safe(&text.replace(['\n', '\r', '\t'], " "), false).into_owned();
        let count = text.chars().count();
        let shown: String = if count > room {
            std::iter::once('…')
                .chain(text.chars().skip(count - room + 1))
                .collect()
        } else {
            text
        };
        self.live.set_message(format!("{head}{shown}"));
    }

    pub(crate) fn println(&self, line: &str) {
        self.multi.suspend(|| outln!("{line}"));
    }

    pub(crate) fn println_err(&self, line: &str) {
        self.multi.suspend(|| errln!("{line}"));
    }

    pub(crate) fn image_done(&self) {
        self.live.set_message("");
        if let Some(bar) = &self.overall {
            bar.inc(1);
        }
    }

    pub(crate) fn finish(&self) {
        self.live.finish_and_clear();
        if let Some(bar) = &self.overall {
            bar.finish_and_clear();
        }
    }
}
