//! How the library's errors reach Python: one exception class per error kind, in one place.

use clipsteer::HubError;
use pyo3::exceptions::{
    PyConnectionError, PyFileNotFoundError, PyPermissionError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;

/// How an error of no more definite kind reaches Python, by where it arose.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// In the arguments: `ValueError`.
    Value,
    /// In the work: `RuntimeError`.
    Runtime,
}

/// The exception for `error`, carrying the command line's one-line message (flags named as
/// keyword arguments). The library's error kind decides where it has one ([`clipsteer::Error`]):
/// a bad argument is `ValueError`; a missing file, hub repository, revision or file is
/// `FileNotFoundError`; a gated or refused hub model `PermissionError`; a model neither cached nor
/// reachable offline `ConnectionError`. Otherwise `kind`'s.
pub(crate) fn py_err(error: &anyhow::Error, kind: Kind) -> PyErr {
    let classified = clipsteer::Error::classify(error);
    let message = keyword_names(classified.message());
    match classified {
        clipsteer::Error::BadArgument(_) => PyValueError::new_err(message),
        clipsteer::Error::NotFound(_)
        | clipsteer::Error::Hub {
            kind: HubError::Missing,
            ..
        } => PyFileNotFoundError::new_err(message),
        clipsteer::Error::Hub {
            kind: HubError::Gated,
            ..
        } => PyPermissionError::new_err(message),
        clipsteer::Error::Hub {
            kind: HubError::Offline,
            ..
        } => PyConnectionError::new_err(message),
        _ => match kind {
            Kind::Value => PyValueError::new_err(message),
            Kind::Runtime => PyRuntimeError::new_err(message),
        },
    }
}

/// The library's messages name command-line flags (`--max-tokens`); here they are keyword
/// arguments (`max_tokens`), and a switch is what a caller passes to turn it on
/// (`--sample` → `sample=True`), so that "add --sample" reads "add sample=True".
pub(crate) fn keyword_names(message: &str) -> String {
    clipsteer::error::rename_flags(message, |flag| {
        let name = flag.replace('-', "_");
        Some(match SWITCHES.contains(&flag) {
            true => format!("{name}=True"),
            false => name,
        })
    })
}

/// describe's and attack's flags that take no value.
const SWITCHES: &[&str] = &["sample", "block-substrings", "no-sentence-stop"];

pub(crate) fn value_err(error: anyhow::Error) -> PyErr {
    py_err(&error, Kind::Value)
}

pub(crate) fn runtime_err(error: anyhow::Error) -> PyErr {
    py_err(&error, Kind::Runtime)
}
