//! How an image path is named in events and part files, without losing it.
//!
//! File names on Unix are bytes, and need not be UTF-8 (a Latin-1 `M\xfcller.png`). JSON strings
//! are Unicode, so a result line carries:
//! - `image`: the path as given, as text; a byte sequence that is not UTF-8 shows as U+FFFD, so
//!   two such names can read alike (`M�ller.png`, `M�ller.png`);
//! - `image_hex`, only when the path is not UTF-8: the path's exact bytes in lowercase hex, as
//!   given on the command line or found in a folder (Python: `os.fsdecode(bytes.fromhex(h))`).
//!
//! `merge` and `--resume` identify an image by its [`key`]: the exact path (from `image_hex`
//! when present, else `image`) made absolute lexically, so `imgs/x.png` and `./imgs/x.png` are
//! one image and two names that differ in one byte are two.

use serde_json::Value;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The `image` text of `path` (lossy where it is not UTF-8; see the module docs).
pub fn label(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The exact bytes of `path` in hex when it is not UTF-8; None when `image` says it all.
pub fn hex(path: &Path) -> Option<String> {
    if path.to_str().is_some() {
        return None;
    }
    Some(
        path.as_os_str()
            .as_encoded_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Adds `image_hex` to a result line about `path` when its name is not UTF-8.
pub fn annotate(line: &mut Value, path: &Path) {
    if let (Some(hex), Some(object)) = (hex(path), line.as_object_mut()) {
        object.insert("image_hex".into(), Value::String(hex));
    }
}

/// The identity of an image: its path made absolute lexically (no link resolved, `.` removed).
pub fn key(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The path a result line names: from `image_hex` when present and valid, else `image`.
pub fn path_from_line(line: &Value) -> Option<PathBuf> {
    if let Some(bytes) = line
        .get("image_hex")
        .and_then(Value::as_str)
        .and_then(decode_hex)
    {
        return Some(path_from_bytes(bytes));
    }
    line.get("image").and_then(Value::as_str).map(PathBuf::from)
}

/// The [`key`] of the image a result line names.
pub fn from_line(line: &Value) -> Option<PathBuf> {
    path_from_line(line).map(|path| key(&path))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(unix)]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(OsString::from_vec(bytes))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn names_that_are_not_utf8_round_trip_and_stay_apart() {
        let muller = Path::new(std::ffi::OsStr::from_bytes(b"imgs/M\xfcller.png"));
        let moller = Path::new(std::ffi::OsStr::from_bytes(b"imgs/M\xf6ller.png"));
        assert_eq!(label(muller), label(moller), "both read M\u{fffd}ller");
        assert_eq!(
            hex(muller).as_deref(),
            Some("696d67732f4dfc6c6c65722e706e67")
        );
        for path in [muller, moller] {
            let mut line = json!({"event": "done", "image": label(path)});
            annotate(&mut line, path);
            assert_eq!(path_from_line(&line).as_deref(), Some(path));
            assert_eq!(from_line(&line), Some(key(path)));
        }
        assert_ne!(key(muller), key(moller));
        let mut plain = json!({"event": "done", "image": "./imgs/x.png"});
        annotate(&mut plain, Path::new("./imgs/x.png"));
        assert!(plain.get("image_hex").is_none());
        assert_eq!(from_line(&plain), Some(key(Path::new("imgs/x.png"))));
    }
}
