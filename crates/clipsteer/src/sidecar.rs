//! Caption files for training data (`describe --write-txt`): `photo.jpg` gets `photo.txt` beside
//! it, holding the caption on one line, the layout that kohya_ss / sd-scripts and other LoRA and
//! fine-tuning tools read (`os.path.splitext(image)[0] + caption_extension`, UTF-8, first line).
//!
//! - **The caption is the generated text only.** The prompt ("An image of ") steers the LM; it is
//!   not part of what the image shows, and a training set wants "a cat on a sofa", not the same
//!   opening on every file. Whitespace runs (newlines included) fold to one space and the ends
//!   are trimmed, since sd-scripts reads only the first line.
//! - **Trigger words:** `prefix` and `suffix` are joined to the caption with one space, as
//!   sd-scripts joins its own `caption_prefix`/`caption_suffix`: `--txt-prefix "sks,"` gives
//!   `sks, a cat on a sofa`.
//! - **Never overwritten without `overwrite`.** An existing caption file (a person's caption, or
//!   one from an earlier run) is an error for that image, found before any work is spent on it.
//!   Images whose caption files would collide (`a.jpg` and `a.png` both map to `a.txt`) are
//!   errors too, decided over the whole input list so that every shard agrees.
//! - **Resumed runs know their own captions.** A run killed after writing a caption file but
//!   before its `done` line leaves the file behind; `--resume` describes the image again and, if
//!   the caption file holds exactly the caption it makes (same settings, same text), takes it as
//!   its own instead of failing. A caption file with other text is still never replaced.
//! - **Atomic.** The caption goes to a temporary file in the same folder, is synced, then linked
//!   into place without replacing anything (or renamed over the old one with `overwrite`), so a
//!   killed run leaves either no caption file or a whole one, never a truncated caption.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// How `--write-txt` writes caption files.
#[derive(Debug, Clone, Default)]
pub struct CaptionFiles {
    /// Text put before the caption, joined with one space (trigger words).
    pub prefix: Option<String>,
    /// Text put after the caption, joined with one space.
    pub suffix: Option<String>,
    /// Replace caption files that already exist.
    pub overwrite: bool,
    /// Take an existing caption file that holds exactly the caption made as this run's own
    /// (set by `--resume`: a run killed between its caption file and its `done` line).
    pub adopt_identical: bool,
}

/// The caption file of `image`: its extension replaced by `.txt` (added when it has none).
pub fn caption_path(image: &Path) -> PathBuf {
    image.with_extension("txt")
}

/// The text after `prompt` in `text` (a describe result, prompt included); `decode_generated`
/// gives it when a tokenizer did not reproduce the prompt byte for byte.
pub fn generated_part(
    text: &str,
    prompt: &str,
    decode_generated: impl FnOnce() -> Result<String>,
) -> Result<String> {
    match text.strip_prefix(prompt) {
        Some(rest) => Ok(rest.to_string()),
        None => decode_generated(),
    }
}

impl CaptionFiles {
    /// The line written for a generated text: folded to one line, trimmed, with prefix and
    /// suffix. Errors when nothing would be written (an empty caption file is an error in
    /// sd-scripts).
    pub fn caption(&self, generated: &str) -> Result<String> {
        let parts: Vec<String> = [
            self.prefix.as_deref(),
            Some(generated),
            self.suffix.as_deref(),
        ]
        .into_iter()
        .flatten()
        .map(|part| part.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|part| !part.is_empty())
        .collect();
        if parts.is_empty() {
            bail!("the description is empty, so there is no caption to write");
        }
        Ok(parts.join(" "))
    }

    /// Why `image`'s caption file cannot be written, if it cannot: it exists (without
    /// `overwrite`), or it is the image itself.
    pub fn refusal(&self, image: &Path) -> Option<String> {
        self.refusal_for(image, self.adopt_identical)
    }

    /// [`Self::refusal`]; `defer_existing`: an existing caption file is not refused yet (a
    /// resumed run compares it with the caption it makes, in [`Self::write`]).
    fn refusal_for(&self, image: &Path, defer_existing: bool) -> Option<String> {
        let target = caption_path(image);
        if target == image {
            return Some(format!(
                "{} would be its own caption file; give images an image extension",
                image.display()
            ));
        }
        if self.overwrite {
            // A FIFO, folder or dangling link in its place is refused before any work, as is a
            // link back to the image itself, which replacing would destroy.
            let what = format!("caption file {}", target.display());
            return match crate::files::destination(&target, &what) {
                Err(e) => Some(crate::error_line(&e)),
                Ok(destination)
                    if crate::files::file_identity(&destination.path).is_some()
                        && crate::files::file_identity(&destination.path)
                            == crate::files::file_identity(image) => Some(format!(
                    "{what} is a link to the image itself, which writing the caption would destroy; remove the link"
                )),
                Ok(_) => None,
            };
        }
        if !defer_existing && target.symlink_metadata().is_ok() {
            return Some(format!(
                "caption file {} exists; pass --overwrite to replace it",
                target.display()
            ));
        }
        None
    }

    /// Writes `caption` (one line, a newline added) to `image`'s caption file atomically
    /// ([`crate::files`]: a link is written through, a replaced file keeps its mode, a new one
    /// follows the umask). Returns the path written.
    ///
    /// With `adopt_identical` (a resumed run), an existing caption file that already holds
    /// exactly this caption is taken as the one a killed run wrote before its `done` line:
    /// the same settings give the same caption, so nothing is written and it is not an error.
    pub fn write(&self, image: &Path, caption: &str) -> Result<PathBuf> {
        let target = caption_path(image);
        // An existing file is found by the no-clobber link below, which cannot race.
        if let Some(why) = self.refusal_for(image, true) {
            bail!(why);
        }
        let line = format!("{caption}\n");
        let what = format!("caption file {}", target.display());
        if self.overwrite {
            return crate::files::write_bytes_replacing(&target, &what, line.as_bytes());
        }
        match crate::files::write_new(&target, &what, |w| w.write_all(line.as_bytes())) {
            Err(e) if e.is::<crate::files::AlreadyExists>() => {
                if self.adopt_identical
                    && crate::files::read_small_regular(&target, line.len())
                        .is_some_and(|existing| existing == line.as_bytes())
                {
                    return Ok(target);
                }
                bail!(
                    "caption file {} exists{}; pass --overwrite to replace it",
                    target.display(),
                    if self.adopt_identical {
                        " with other text"
                    } else {
                        ""
                    }
                )
            }
            other => other,
        }
    }
}

/// Images whose caption files collide (`a.jpg` and `a.png` → `a.txt`), each with the other
/// images sharing its caption file. Decided on the whole input list, before sharding.
pub fn collisions(images: &[PathBuf]) -> HashMap<PathBuf, Vec<PathBuf>> {
    let mut by_caption: HashMap<PathBuf, Vec<&PathBuf>> = HashMap::new();
    for image in images {
        by_caption
            .entry(caption_path(image))
            .or_default()
            .push(image);
    }
    let mut clashes = HashMap::new();
    for (_, sharing) in by_caption.into_iter().filter(|(_, v)| v.len() > 1) {
        for image in &sharing {
            let others = sharing
                .iter()
                .filter(|other| *other != image)
                .map(|other| (*other).clone())
                .collect();
            clashes.insert((*image).clone(), others);
        }
    }
    clashes
}

/// Fails fast, before models load, when a folder that will receive caption files cannot be
/// written to (a read-only dataset mount): one line naming the folder.
pub fn check_writable<'a>(images: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    let dirs: BTreeSet<&Path> = images.into_iter().map(crate::files::parent_dir).collect();
    for dir in dirs {
        tempfile::Builder::new()
            .prefix(".clipsteer-probe-")
            .tempfile_in(dir)
            .with_context(|| {
                format!(
                    "--write-txt cannot write caption files in {}; make the folder writable or leave out --write-txt",
                    dir.display()
                )
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_paths_replace_the_extension() {
        assert_eq!(caption_path(Path::new("a/b.jpg")), PathBuf::from("a/b.txt"));
        assert_eq!(
            caption_path(Path::new("a/b.c.PNG")),
            PathBuf::from("a/b.c.txt")
        );
        assert_eq!(caption_path(Path::new("noext")), PathBuf::from("noext.txt"));
    }

    #[test]
    fn captions_are_one_trimmed_line_with_trigger_words() {
        let plain = CaptionFiles::default();
        assert_eq!(
            plain.caption("  a cat\non a\t sofa \n").unwrap(),
            "a cat on a sofa"
        );
        let trigger = CaptionFiles {
            prefix: Some("sks,".into()),
            suffix: Some(", best quality".into()),
            ..CaptionFiles::default()
        };
        assert_eq!(
            trigger.caption(" a cat").unwrap(),
            "sks, a cat , best quality"
        );
        assert_eq!(trigger.caption("   ").unwrap(), "sks, , best quality");
        assert!(plain.caption(" \n ").is_err());
    }

    #[test]
    fn the_generated_part_leaves_the_prompt_out() {
        let never = || -> Result<String> { panic!("not needed") };
        assert_eq!(
            generated_part("An image of  a cat", "An image of ", never).unwrap(),
            " a cat"
        );
        assert_eq!(
            generated_part("An image of a cat", "An  image", || Ok(" cat".into())).unwrap(),
            " cat"
        );
    }

    #[test]
    fn colliding_captions_are_found() {
        let images: Vec<PathBuf> = ["d/a.jpg", "d/a.png", "d/b.png", "e/a.png"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let clashes = collisions(&images);
        assert_eq!(clashes.len(), 2);
        assert_eq!(clashes[&images[0]], vec![images[1].clone()]);
        assert_eq!(clashes[&images[1]], vec![images[0].clone()]);
    }

    #[test]
    fn writing_never_replaces_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.png");
        let files = CaptionFiles::default();
        assert_eq!(
            files.write(&image, "first").unwrap(),
            dir.path().join("x.txt")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x.txt")).unwrap(),
            "first\n"
        );
        let error = files.write(&image, "second").unwrap_err().to_string();
        assert!(error.contains("--overwrite"), "{error}");
        assert!(files.refusal(&image).is_some());
        let overwrite = CaptionFiles {
            overwrite: true,
            ..files.clone()
        };
        overwrite.write(&image, "second").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x.txt")).unwrap(),
            "second\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
        assert!(files.refusal(Path::new("notes.txt")).is_some());
    }
}
