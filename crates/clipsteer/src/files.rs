//! Writing the user's files without losing anything of theirs.
//!
//! Every file clipsteer writes whole (merge outputs, caption files, generated images, evade's
//! reports) goes through [`write_replacing`] or [`write_new`], which behave as careful tools do
//! (GNU `install`, rsync without `--inplace`, `sed -i --follow-symlinks`):
//! - the new content is written to a temporary file in the destination's folder, synced, then
//!   renamed over the destination, so an interrupted run never leaves half a file under the
//!   final name;
//! - a symbolic link is written through: its target is replaced (atomically, in the target's
//!   folder) and the link itself stays, so the target is never orphaned. A dangling link is
//!   refused, as is a link to anything but a regular file;
//! - a directory, FIFO, socket or device is refused before any work, and never opened, so a FIFO
//!   cannot hang the run;
//! - a replaced file keeps its permission bits (less set-user-ID and set-group-ID) and, where
//!   the process may, its owner and group; a new file gets 0666 less the umask, as `touch` and a
//!   shell's `>` give. A file this process may not write (`chmod 444`) is refused, as `>` would
//!   refuse it.
//!
//! A hard link to the replaced file keeps the old content, as with rsync and `sed -i`.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a write to `path` lands: the regular file to replace (the path itself, or a link's
/// target) and the permission bits the new file gets (`None`: 0666 less the umask).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub path: PathBuf,
    pub mode: Option<u32>,
    /// The replaced file's owner and group, given to the new file where allowed.
    pub owner: Option<(u32, u32)>,
}

/// What kind of file-system object `metadata` describes, in the words `ls -l` users know.
pub fn kind_name(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "a device";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Resolves where writing `path` would land, refusing what must not be replaced. `what` names
/// the path in messages (e.g. "merge -o out.jsonl"). Reads metadata only: nothing is opened.
///
/// Errors (one line each): the path is a directory, FIFO, socket or device; a link that
/// dangles or points at one of those; the folder it would be written in does not exist.
pub fn destination(path: &Path, what: &str) -> Result<Destination> {
    let refuse = |kind: &str, extra: &str| -> anyhow::Error {
        usage(format!(
            "{what} is {kind}{extra}, not a regular file: give the name of a file to create or replace"
        ))
    };
    let target = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = parent_dir(path);
            if !parent.is_dir() {
                return Err(usage(format!(
                    "cannot write {what}: folder {} does not exist; create it first",
                    parent.display()
                )));
            }
            return Ok(Destination {
                path: path.to_path_buf(),
                mode: None,
                owner: None,
            });
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write {what}")),
        Ok(meta) if meta.file_type().is_symlink() => {
            let resolved = std::fs::canonicalize(path).map_err(|e| {
                let target = std::fs::read_link(path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "an unreadable target".into());
                usage(if e.kind() == std::io::ErrorKind::NotFound {
                    format!("{what} is a symbolic link to {target}, which does not exist: create the target or give another file name")
                } else {
                    format!("{what} is a symbolic link to {target}, which cannot be followed ({e}): give another file name")
                })
            })?;
            let meta =
                std::fs::metadata(&resolved).with_context(|| format!("cannot write {what}"))?;
            if !meta.is_file() {
                return Err(refuse(
                    "a symbolic link to ",
                    &format!("{} ({})", kind_name(&meta.file_type()), resolved.display()),
                ));
            }
            (resolved, meta)
        }
        Ok(meta) if !meta.is_file() => return Err(refuse(kind_name(&meta.file_type()), "")),
        Ok(meta) => (path.to_path_buf(), meta),
    };
    let (path, meta) = target;
    if !writable(&path) {
        return Err(usage(format!(
            "{what} is read-only (mode {:o}): make it writable (chmod u+w) to replace it, or give another file name",
            permission_bits(&meta)
        )));
    }
    Ok(Destination {
        path,
        // Set-user-ID and set-group-ID are dropped: a results file runs nothing, and the new
        // file's owner may differ from the old one's.
        mode: Some(permission_bits(&meta) & !0o6000),
        owner: owner_of(&meta),
    })
}

/// Whether this process may write `path` (access(2), W_OK): a file the user made read-only is
/// not replaced behind their back, as `>` would refuse it too.
#[cfg(unix)]
fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access reads a NUL-terminated path we own.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(not(unix))]
fn writable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.permissions().readonly())
}

#[cfg(unix)]
fn owner_of(meta: &std::fs::Metadata) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.uid(), meta.gid()))
}

#[cfg(not(unix))]
fn owner_of(_meta: &std::fs::Metadata) -> Option<(u32, u32)> {
    None
}

#[cfg(unix)]
fn permission_bits(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn permission_bits(_meta: &std::fs::Metadata) -> u32 {
    0o644
}

/// Writes a file through `write` and renames it over `path` (see the module docs). Returns the
/// file actually replaced (a link's target).
pub fn write_replacing(
    path: &Path,
    what: &str,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<PathBuf> {
    let destination = destination(path, what)?;
    let temp = write_temp(&destination, what, write)?;
    temp.persist(&destination.path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {what}"))?;
    Ok(destination.path)
}

/// Like [`write_replacing`], for bytes in memory.
pub fn write_bytes_replacing(path: &Path, what: &str, bytes: &[u8]) -> Result<PathBuf> {
    write_replacing(path, what, |w| w.write_all(bytes))
}

/// Writes a new file at `path` only if nothing is there (not even a dangling link): the file is
/// linked into place, so one that appeared meanwhile is never replaced. Errors with
/// [`AlreadyExists`] when something is.
pub fn write_new(
    path: &Path,
    what: &str,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<PathBuf> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(AlreadyExists(path.to_path_buf()).into());
    }
    let destination = Destination {
        path: path.to_path_buf(),
        mode: None,
        owner: None,
    };
    let temp = write_temp(&destination, what, write)?;
    match temp.persist_noclobber(path) {
        Ok(_) => Ok(path.to_path_buf()),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(AlreadyExists(path.to_path_buf()).into())
        }
        Err(e) => Err(e.error).with_context(|| format!("cannot write {what}")),
    }
}

/// The error of [`write_new`] when the path is taken.
#[derive(Debug)]
pub struct AlreadyExists(pub PathBuf);

impl std::fmt::Display for AlreadyExists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} exists", self.0.display())
    }
}

impl std::error::Error for AlreadyExists {}

fn write_temp(
    destination: &Destination,
    what: &str,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<tempfile::NamedTempFile> {
    let context = || format!("cannot write {what}");
    let mut builder = tempfile::Builder::new();
    builder.prefix(".clipsteer-").suffix(".tmp");
    // open(2) applies the umask to this mode, so a new file gets what `>` would give it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let temp = builder
        .tempfile_in(parent_dir(&destination.path))
        .with_context(context)?;
    #[cfg(unix)]
    if let Some((uid, gid)) = destination.owner {
        use std::os::unix::io::AsRawFd;
        // Keeps the replaced file's owner and group where this process may (root, or a group
        // the user is in); otherwise the new file is the user's own, as any new file would be.
        // SAFETY: fchown takes a descriptor we own and two ids.
        unsafe { libc::fchown(temp.as_file().as_raw_fd(), uid, gid) };
    }
    #[cfg(unix)]
    if let Some(mode) = destination.mode {
        use std::os::unix::fs::PermissionsExt;
        // fchmod, which the umask does not touch: the replaced file's bits exactly.
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(context)?;
    }
    let mut writer = std::io::BufWriter::new(temp);
    write(&mut writer).with_context(context)?;
    let temp = writer
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(context)?;
    temp.as_file().sync_all().with_context(context)?;
    Ok(temp)
}

/// Opens `path` for reading only if it is a regular file (a link to one included): a FIFO is
/// opened without blocking and refused, so that naming one never hangs a run, and a directory or
/// device is refused with what it is. `what` names the path in messages.
pub fn open_regular(path: &Path, what: &str) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one;
        // it changes nothing for the regular files that are all we read.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options
        .open(path)
        .with_context(|| format!("cannot read {what}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {what}"))?;
    if !meta.is_file() {
        return Err(usage(format!(
            "{what} is {}, not a regular file: give a file",
            kind_name(&meta.file_type())
        )));
    }
    Ok(file)
}

/// The whole of `path` if it is a regular file ([`open_regular`]). Model files (config.json,
/// tokenizer.json, tokenizer_config.json, generation_config.json, chat_template.jinja) are read
/// through this: a FIFO in a model folder is refused by name instead of waited on forever.
pub fn read_regular(path: &Path, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_regular(path, what)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what}"))?;
    Ok(bytes)
}

/// Whether a model file is there: false when nothing has the name, true when
/// something does (a FIFO or a directory included, for [`read_regular`] to refuse by name). A
/// symbolic link to nothing is an error, not an absent file: in a hub cache snapshot every file
/// is a link to a blob, and a lost blob must not turn into a silently different run (no chat
/// template, another end-of-text token).
pub fn model_file_present(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        Ok(meta) if meta.file_type().is_symlink() && std::fs::metadata(path).is_err() => {
            Err(usage(format!(
                "{} is a symbolic link to a file that is not there (a hub cache whose blob is gone?): download the model again or remove the link",
                path.display()
            )))
        }
        Ok(_) => Ok(true),
    }
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_to_string(path: &Path, what: &str) -> Result<String> {
    String::from_utf8(read_regular(path, what)?).map_err(|_| {
        usage(format!(
            "{what} is not UTF-8 text: replace it with the file as the model's repository has it"
        ))
    })
}

/// The bytes of `path` if it is a regular file (not a FIFO, never blocking) of at most `limit`
/// bytes; None otherwise.
pub fn read_small_regular(path: &Path, limit: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = open_regular(path, "file").ok()?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() <= limit).then_some(bytes)
}

fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(crate::Error::BadArgument(message))
}

/// A file's identity, device and inode: one per file whatever names and links lead to it.
#[cfg(unix)]
pub fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
pub fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    // No inode numbers: every file counts as new (links are rare there).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let _ = meta;
    (0, NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// The identity (device, inode) of the file `path` leads to, links followed; None when there is
/// none.
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|meta| identity(&meta))
}

/// The folder `path` is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_a_link_keeps_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.jsonl");
        std::fs::write(&file, "old\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_bytes_replacing(&file, "out", b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new\n");
        assert_eq!(mode(&file), 0o640);

        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink("out.jsonl", &link).unwrap();
        let written = write_bytes_replacing(&link, "link", b"through\n").unwrap();
        assert_eq!(written, std::fs::canonicalize(&file).unwrap());
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "through\n");
        assert_eq!(mode(&file), 0o640);
    }

    #[test]
    fn fifos_directories_and_dangling_links_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink("nowhere", &dangling).unwrap();
        let to_dir = dir.path().join("to-dir");
        std::os::unix::fs::symlink(".", &to_dir).unwrap();
        for (path, says) in [
            (&fifo, "is a FIFO"),
            (&dir.path().to_path_buf(), "is a directory"),
            (&dangling, "which does not exist"),
            (&to_dir, "a symbolic link to a directory"),
        ] {
            let message = format!(
                "{:#}",
                write_bytes_replacing(path, "OUT", b"x").unwrap_err()
            );
            assert!(message.contains(says), "{path:?}: {message}");
            assert!(message.starts_with("OUT "), "{message}");
        }
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(std::fs::read_link(&dangling).unwrap(), Path::new("nowhere"));
        // Nothing was left behind in the folder.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn new_files_follow_the_umask_and_write_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        // SAFETY: umask only swaps the process mask; this test restores it.
        let old = unsafe { libc::umask(0o027) };
        let result = write_new(&path, "caption", |w| w.write_all(b"one\n"));
        unsafe { libc::umask(old) };
        result.unwrap();
        assert_eq!(mode(&path), 0o640);
        let error = write_new(&path, "caption", |w| w.write_all(b"two\n")).unwrap_err();
        assert!(error.downcast_ref::<AlreadyExists>().is_some());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
    }
}
