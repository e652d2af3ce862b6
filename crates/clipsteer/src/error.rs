//! The library's errors as the faces see them: a few kinds, each mapped in one place by each face
//! (the command line's exit code, `serve`'s HTTP status, the Python package's exception).
//!
//! Inside, the library works with `anyhow` and adds context as an error travels up ("cannot load
//! encoder 'x': …"). Where an error's kind is known, it is raised as an [`Error`] (usually through
//! [`usage_bail!`](crate::usage_bail)); [`Error::classify`] finds that kind again under the
//! context, once, for every face.

use std::fmt;

/// What went wrong, by who can fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What was asked for is wrong (a flag's value, options that do not go together), found
    /// before any work: the caller fixes the request. CLI exit 2, HTTP 400, `ValueError`.
    #[error("{0}")]
    BadArgument(String),
    /// A file or directory named by the caller is not there. CLI exit 1, `FileNotFoundError`.
    #[error("{0}")]
    NotFound(String),
    /// The Hugging Face hub (or its cache, offline) cannot give a model.
    #[error("{message}")]
    Hub { kind: HubError, message: String },
    /// A model's files are there but cannot be used (a broken checkpoint, an unsupported
    /// architecture). CLI exit 1, `RuntimeError`.
    #[error("{0}")]
    Model(String),
    /// The work was stopped before it finished: the client left, or a time limit ran out.
    #[error("{0}")]
    Cancelled(String),
    /// Anything else: the work itself failed. CLI exit 1, HTTP 500, `RuntimeError`.
    #[error("{0}")]
    Failed(String),
}

/// Why the hub could not give a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubError {
    /// A gated model whose licence the token's account has not accepted.
    Gated,
    /// No such repository, revision or file (or a private one the token cannot read).
    Missing,
    /// Offline (HF_HUB_OFFLINE, or the hub unreachable) and the cache lacks the model.
    Offline,
}

impl Error {
    /// The kind of `error`: the first [`Error`] in its chain (under any context added on the way
    /// up), else a missing file when an I/O error says so, else [`Error::Failed`]. The message is
    /// always the whole chain on one line ([`crate::error_line`]), so that the context a face
    /// shows is the same whatever the kind.
    pub fn classify(error: &anyhow::Error) -> Error {
        let message = crate::error_line(error);
        for cause in error.chain() {
            if let Some(typed) = cause.downcast_ref::<Error>() {
                return typed.with_message(message);
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::NotFound {
                    return Error::NotFound(message);
                }
            }
        }
        Error::Failed(message)
    }

    /// The same kind with another message.
    fn with_message(&self, message: String) -> Error {
        match self {
            Error::BadArgument(_) => Error::BadArgument(message),
            Error::NotFound(_) => Error::NotFound(message),
            Error::Hub { kind, .. } => Error::Hub {
                kind: *kind,
                message,
            },
            Error::Model(_) => Error::Model(message),
            Error::Cancelled(_) => Error::Cancelled(message),
            Error::Failed(_) => Error::Failed(message),
        }
    }

    /// Whether the caller's request was at fault ([`Error::BadArgument`]).
    pub fn is_bad_argument(&self) -> bool {
        matches!(self, Error::BadArgument(_))
    }

    /// The command line's exit code: 2 for a usage error (as clap's own), else 1.
    pub fn exit_code(&self) -> i32 {
        if self.is_bad_argument() {
            2
        } else {
            1
        }
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        match self {
            Error::BadArgument(m)
            | Error::NotFound(m)
            | Error::Model(m)
            | Error::Cancelled(m)
            | Error::Failed(m) => m,
            Error::Hub { message, .. } => message,
        }
    }
}

/// `message` with each command-line flag (`--max-tokens`) named as `rename` says (Some: the
/// face's name for it, `max_tokens`; None: left as written). Only a flag that stands as a word is
/// one: at the start or after a space or an opening bracket, lower-case letters and hyphens, up
/// to a character that cannot continue it. Paths (`models--org--name`) and quoted user text
/// (`the blocked word '--top-k'`) stay exactly as they are.
pub fn rename_flags(message: &str, rename: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    let mut previous: Option<char> = None;
    while let Some(at) = rest.find("--") {
        let before = rest[..at].chars().next_back().or(previous);
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
            .unwrap_or(after.len());
        let flag = &after[..len];
        let next = after[len..].chars().next();
        let stands_alone = before.is_none_or(|c| c.is_whitespace() || c == '(' || c == '[')
            && flag.starts_with(|c: char| c.is_ascii_lowercase())
            && !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        match stands_alone.then(|| rename(flag)).flatten() {
            Some(name) => out.push_str(&name),
            None => {
                out.push_str("--");
                out.push_str(flag);
            }
        }
        previous = after[..len].chars().next_back().or(Some('-'));
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HubError::Gated => "gated",
            HubError::Missing => "missing",
            HubError::Offline => "offline",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_kind_is_found_under_context_and_the_message_keeps_it() {
        let inner: anyhow::Result<()> =
            Err(Error::BadArgument("--top-k must be at least 1".into()).into());
        let error = inner.context("describe").unwrap_err();
        let classified = Error::classify(&error);
        assert!(classified.is_bad_argument());
        assert_eq!(classified.exit_code(), 2);
        assert_eq!(classified.message(), "describe: --top-k must be at least 1");

        let io = std::fs::read("/nonexistent/clipsteer").context("reading the blocklist");
        let classified = Error::classify(&io.unwrap_err());
        assert!(matches!(classified, Error::NotFound(_)), "{classified:?}");
        assert_eq!(classified.exit_code(), 1);

        let plain = anyhow::anyhow!("the scorer program exited");
        assert!(matches!(Error::classify(&plain), Error::Failed(_)));
    }

    #[test]
    fn only_flags_that_stand_as_words_are_renamed() {
        let keyword = |flag: &str| Some(flag.replace('-', "_"));
        let cases = [
            (
                "the prompt plus --max-tokens (60) exceeds the context; lower --max-tokens",
                "the prompt plus max_tokens (60) exceeds the context; lower max_tokens",
            ),
            ("(--top-k must be at most 50)", "(top_k must be at most 50)"),
            (
                "/cache/models--someone--broken/snapshots/x/config.json is not valid",
                "/cache/models--someone--broken/snapshots/x/config.json is not valid",
            ),
            (
                "cannot read blocklist /tmp/my--block-list.txt",
                "cannot read blocklist /tmp/my--block-list.txt",
            ),
            (
                "the prompt contains the blocked word '--max-tokens'",
                "the prompt contains the blocked word '--max-tokens'",
            ),
            ("--device cuda: no GPU", "device cuda: no GPU"),
            ("see --HELP or --2", "see --HELP or --2"),
        ];
        for (message, expected) in cases {
            assert_eq!(rename_flags(message, keyword), expected);
        }
        let only_top_k = |flag: &str| (flag == "top-k").then(|| "top_k".to_string());
        assert_eq!(
            rename_flags("--top-k and --prefilter", only_top_k),
            "top_k and --prefilter"
        );
    }
}
