//! clipsteer: steer a language model's sampling toward an objective (a target embedding, a
//! victim model's answer, any score).
//!
//! The library is the product; the command line (`clipsteer-cli`), `serve` (`clipsteer-server`)
//! and the Python package are crates over it, so no library module can import a face; `evade`
//! and `bench` are faces over [`pipeline`] and [`steer`] kept here. docs/ARCHITECTURE.md.

/// `println!` for a face's results on stdout: when the reader has gone (`clipsteer … | head`),
/// the process ends quietly with 141, as a tool killed by SIGPIPE would, instead of panicking.
/// SIGPIPE itself stays ignored, so that a scoring program that exits is reported as an error.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

/// `eprintln!` that cannot panic: with stderr closed (`clipsteer … 2>&1 | head`) a message is
/// dropped, where `eprintln!` would panic, and a panic while a progress bar is drawn aborts.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::print_err_line(format_args!($($arg)*))
    };
}

/// Returns an [`Error::BadArgument`] from the enclosing function: `usage_bail!("--top-k must be …")`.
#[macro_export]
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::Error::BadArgument(format!($($arg)*))))
    };
}

pub mod error;
pub use error::{Error, HubError};

/// Whether `error` (or any error it wraps) is an [`Error::BadArgument`]: the command line exits
/// 2 for it, as clap does for its own usage errors, and 1 only when the work itself failed.
pub fn is_usage_error(error: &anyhow::Error) -> bool {
    Error::classify(error).is_bad_argument()
}

#[doc(hidden)]
pub fn print_err_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    // Messages quote file names and texts, which may hold terminal escapes: shown, not obeyed.
    let line = args.to_string();
    let mut err = std::io::stderr().lock();
    let _ = err
        .write_all(terminal_safe(&line, false).as_bytes())
        .and_then(|()| err.write_all(b"\n"));
}

/// `text` as a terminal may show it without acting on it: what a blocklist refuses to write
/// ([`steer::constraints::is_refused_control`]: C0 and C1 controls, so every escape sequence,
/// DEL, the bidi controls and U+2028/U+2029) is written as `\u{..}` escapes. With `keep_layout`, tab and newline stay (a
/// caption's own layout); without, they are escaped too, so that one record stays one line.
pub fn terminal_safe(text: &str, keep_layout: bool) -> std::borrow::Cow<'_, str> {
    // The same characters the blocklist refuses to write, and tab and line feed when a record
    // must stay one line.
    let unsafe_char = |c: char| {
        steer::constraints::is_refused_control(c) || (!keep_layout && matches!(c, '\t' | '\n'))
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[doc(hidden)]
pub fn print_line(args: std::fmt::Arguments<'_>) {
    if let Err(e) = write_stdout_line(args) {
        errln!("error: {e}");
        std::process::exit(1);
    }
}

/// Writes one line of a face's results to stdout and flushes it. When the reader has gone
/// (`clipsteer … | head`) the process ends quietly with 141, as a tool killed by SIGPIPE would;
/// any other failure (a full disk, `> /dev/full`) is an error that names stdout, for the face to
/// end with its own error code.
pub fn write_stdout_line(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = (out.write_fmt(args))
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        Err(e) => anyhow::bail!(
            "cannot write to stdout: {e}; check where the output is redirected (a full disk?)"
        ),
    }
}

pub mod attack;
pub mod behaviors;
pub mod bench;
pub mod clipscore;
pub mod diffusion;
pub mod evade;
pub mod events;
pub mod files;
pub mod hub;
pub mod image;
pub mod load;
pub mod merge;
pub mod models;
pub mod parts;
pub mod pathkey;
pub mod pipeline;
pub mod request;
pub mod settings;
pub mod sidecar;
pub mod steer;
pub mod tokenize;

/// An error as one line: the whole context chain, joined by ": ", newlines folded. candle
/// appends a backtrace to its errors when RUST_BACKTRACE is set; that is dropped here, since
/// it would bury the message (it belongs in a debugger, not in a one-line error).
pub fn error_line(error: &anyhow::Error) -> String {
    let parts: Vec<String> = error
        .chain()
        .map(|cause| match cause.downcast_ref::<candle_core::Error>() {
            Some(candle_core::Error::WithBacktrace { inner, .. }) => inner.to_string(),
            _ => cause.to_string(),
        })
        .collect();
    parts.join(": ").replace('\n', " ")
}

/// The number of threads candle computes for itself at each matmul when RAYON_NUM_THREADS is
/// unset (physical cores, by parsing /proc/cpuinfo on Linux, each time), after building rayon's
/// global pool at its default size (logical CPUs) if nothing has built it yet. Setting
/// RAYON_NUM_THREADS to this value afterwards changes no pool's size and spares candle the
/// count.
///
/// [`tune_runtime`] sets it for the command line. The Python package calls this at import and
/// sets the variable through `os.environ` (the host's own way to change its environment, since
/// other threads of an interpreter may read it).
pub fn default_thread_count() -> usize {
    let _ = rayon::ThreadPoolBuilder::new().build_global();
    candle_core::utils::get_num_threads()
}

/// Process-wide settings that decide CPU throughput, as the `clipsteer` binary sets them. Call it
/// first in `main`, before any other thread starts (it sets an environment variable and malloc
/// thresholds), so that a program using the library measures what the binary does.
pub fn tune_runtime() {
    // candle's elementwise thread pool spins 25,000 times before parking after every op; on a
    // small machine that spinning steals a core from the matmul threads. Keep it brief unless
    // the user chose otherwise.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200");
    }
    // candle asks for its thread count at every matmul, and without RAYON_NUM_THREADS it counts
    // physical cores anew each time by parsing /proc/cpuinfo: hundreds of times a forward, on
    // the calling thread while the others wait (7 % of an attack step on a 2-core VM). Its own
    // answer, pinned once, saves that. Rayon's global pool is built first, so that it keeps
    // rayon's default size (logical CPUs) as before.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", default_thread_count().to_string());
    }
    // Activations of a steering step are a few MB each and die within the step: keep freed
    // memory in the heap instead of returning it to the kernel, which then re-zeroes every page.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator thresholds; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
