//! The blocklist: no streamed step and no final text ever contains a blocked word.
//!
//! Each candidate is checked on the whole text it would produce, so a token that completes a
//! blocked word begun by earlier tokens ("ca" + "t"), or that carries one in whole, is dropped
//! before scoring. Matching is case-insensitive; by default on whole words (the end of the text
//! counts as a word boundary, so a word is blocked as soon as it is complete), or on any
//! substring with `substrings`.

use anyhow::{bail, Context, Result};
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct Blocklist {
    words: Vec<String>,
    substrings: bool,
}

impl Blocklist {
    /// Words are trimmed and lowercased; an empty word is an error.
    pub fn new<I, S>(words: I, substrings: bool) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        for word in words {
            let word = word.as_ref().trim();
            if word.is_empty() {
                bail!("a blocked word is empty: separate words with commas, e.g. --block cat,dog");
            }
            let lower = word.to_lowercase();
            if !list.contains(&lower) {
                list.push(lower);
            }
        }
        Ok(Self {
            words: list,
            substrings,
        })
    }

    /// Reads a blocklist file: one word or phrase per line, commas also separate, `#` starts a
    /// comment.
    pub fn read_file(path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read blocklist {}", path.display()))?;
        Ok(text
            .lines()
            .map(|line| line.split('#').next().unwrap_or(""))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect())
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Whether any substring matches, not only whole words.
    pub fn matches_substrings(&self) -> bool {
        self.substrings
    }

    /// The first blocked word that `text` contains, if any.
    pub fn find_in(&self, text: &str) -> Option<&str> {
        if self.words.is_empty() {
            return None;
        }
        let lower = text.to_lowercase();
        self.words
            .iter()
            .map(String::as_str)
            .find(|word| self.contains(&lower, word))
    }

    fn contains(&self, lower: &str, word: &str) -> bool {
        if self.substrings {
            return lower.contains(word);
        }
        let is_word_char = |c: char| c.is_alphanumeric() || c == '_';
        lower.match_indices(word).any(|(start, matched)| {
            let before = lower[..start].chars().next_back();
            let after = lower[start + matched.len()..].chars().next();
            // A blocked word that itself starts or ends with punctuation needs no boundary there.
            let starts_word = word.chars().next().is_some_and(is_word_char);
            let ends_word = word.chars().next_back().is_some_and(is_word_char);
            (!starts_word || !before.is_some_and(is_word_char))
                && (!ends_word || !after.is_some_and(is_word_char))
        })
    }
}
