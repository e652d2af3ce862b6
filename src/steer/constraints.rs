//! The blocklist: no streamed step and no final text ever contains a blocked word, however it is
//! written.
//!
//! Each candidate is checked on the whole text it would produce, so a token that completes a
//! blocked word begun by earlier tokens ("ca" + "t", or "d" + U+200B + "og"), or that carries one in
//! whole, is dropped before scoring. Text and words are compared in a normalised form
//! ([`normalize_for_matching`]) so that a filter which normalises its input, as moderation filters
//! do, finds nothing either: compatibility forms (fullwidth, mathematical letters), case,
//! invisible characters, accents and overlay marks, whitespace runs, confusable letters and
//! letter-like symbols (small capitals, negative squared capitals, regional indicators) all fold
//! away. Matching is on whole words of the normalised text by default (the end of the text counts
//! as a word boundary, so a word is blocked as soon as it is complete), or on any substring with
//! `substrings`.

use anyhow::{bail, Context, Result};
use std::path::Path;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

#[derive(Debug, Clone, Default)]
pub struct Blocklist {
    /// The words as given (trimmed, lowercased), for messages and reports.
    words: Vec<String>,
    /// Their normalised forms, in the same order.
    keys: Vec<String>,
    substrings: bool,
}

/// The form the blocklist compares, applied alike to blocked words and to text:
///
/// 0. terminal control sequences removed ([`strip_terminal_escapes`]);
/// 1. NFKC (UAX #15): fullwidth `ｄｏｇ`, mathematical `𝐝𝐨𝐠`, ligatures and the no-break spaces
///    become their plain forms;
/// 2. full Unicode case folding (CaseFolding.txt, statuses C and F): `STRASSE` and `straße` both
///    become `strasse`, `İ` becomes `i` + U+0307; then letter-like symbols that neither NFKC nor
///    confusables.txt maps become their Latin letter ([`fold_letter_symbol`]: small capitals
///    `ᴅᴏɢ`, negative circled `🅓🅞🅖` and squared `🅳🅾🅶` capitals, regional indicators `🇩🇴🇬`);
/// 3. the UTS #39 skeleton (confusables.txt): NFD, default-ignorable code points (U+200B, the soft
///    hyphen, joiners, variation selectors…) removed, each character replaced by its prototype
///    (Cyrillic `о` → `o`, `0` → `O`, `m` → `rn`), NFD again;
/// 4. full case folding again, since prototypes may be capitals (`0` → `O`);
/// 5. every nonspacing or enclosing mark (General_Category Mn, Me) dropped: accents (`dóg`,
///    `d` + U+0301 + `og`), strike-through and overlays (`d̶o̶g̶`, U+0336), Zalgo stacks, enclosing
///    circles, and the U+0307 that folding makes of `İ` (so `İSTANBUL` matches `istanbul`).
///    Filters that strip diacritics would read `dóg` as `dog`, so the blocklist does too; the
///    price is that words differing only in such marks are one word to it (`café` blocks `cafe`).
///    Spacing marks (Mc, such as most Indic vowel signs) stay;
/// 6. control characters that are not White_Space (U+0001–U+0008, ESC, DEL, the C1 controls)
///    dropped: they print as nothing, so `d` + U+0001 + `og` reads as `dog`;
/// 7. every run of White_Space characters (tab, newline, the Unicode spaces) becomes one space.
///
/// The crates are unicode-normalization (NFKC), caseless (case folding), unicode-security
/// (skeleton, with the default-ignorable set) and unicode-properties (General_Category), all from
/// the unicode-rs project.
pub fn normalize_for_matching(text: &str) -> String {
    let text = strip_terminal_escapes(text);
    // After NFKC and folding, so that `ᶦ` (NFKC: `ɪ`) and `Ʀ` (folds to `ʀ`) are letters too.
    let (folded, _) = fold_letter_symbols(caseless::default_case_fold_str(
        &text.nfkc().collect::<String>(),
    ));
    let skeleton: String = unicode_security::skeleton(&folded).collect();
    // Some prototypes are small capitals themselves (Cyrillic `ԍ` → `ɢ`); their letters take
    // the skeleton once more, which changes nothing that is already a skeleton.
    let folded = match fold_letter_symbols(caseless::default_case_fold_str(&skeleton)) {
        (folded, false) => folded,
        (folded, true) => caseless::default_case_fold_str(
            &unicode_security::skeleton(&folded).collect::<String>(),
        ),
    };
    let mut out = String::with_capacity(folded.len());
    let mut previous: Option<char> = None;
    for c in folded.chars() {
        // Controls that are not white space (U+0001, DEL, C1) print as nothing, so
        // "d" + U+0001 + "og" reads as "dog".
        if c.is_control() && !c.is_whitespace() {
            continue;
        }
        if matches!(
            c.general_category(),
            GeneralCategory::NonspacingMark | GeneralCategory::EnclosingMark
        ) {
            continue;
        }
        if c.is_whitespace() {
            if previous != Some(' ') {
                out.push(' ');
            }
            previous = Some(' ');
            continue;
        }
        out.push(c);
        previous = Some(c);
    }
    out
}

/// The Latin letter (lowercase) that a letter-like symbol is named after, for the symbols that
/// read as that letter but have no compatibility decomposition (so NFKC keeps them) and no
/// prototype in confusables.txt (so the skeleton keeps them): every character whose Unicode name is
/// `LATIN LETTER SMALL CAPITAL X`, `NEGATIVE CIRCLED LATIN CAPITAL LETTER X`, `NEGATIVE SQUARED
/// LATIN CAPITAL LETTER X` or `REGIONAL INDICATOR SYMBOL LETTER X` for a single letter X
/// (UnicodeData.txt; the tests check this table against those names). The circled, squared and
/// parenthesised capitals without "NEGATIVE" decompose under NFKC and need no entry.
fn fold_letter_symbol(c: char) -> Option<char> {
    let offset = |first: u32| char::from_u32('a' as u32 + (c as u32 - first));
    match c {
        '\u{1F150}'..='\u{1F169}' => offset(0x1F150),
        '\u{1F170}'..='\u{1F189}' => offset(0x1F170),
        '\u{1F1E6}'..='\u{1F1FF}' => offset(0x1F1E6),
        // LATIN LETTER SMALL CAPITAL X for each single letter X that has one (there is none for X).
        '\u{1D00}' => Some('a'),
        '\u{0299}' => Some('b'),
        '\u{1D04}' => Some('c'),
        '\u{1D05}' => Some('d'),
        '\u{1D07}' => Some('e'),
        '\u{A730}' => Some('f'),
        '\u{0262}' => Some('g'),
        '\u{029C}' => Some('h'),
        '\u{026A}' => Some('i'),
        '\u{1D0A}' => Some('j'),
        '\u{1D0B}' => Some('k'),
        '\u{029F}' => Some('l'),
        '\u{1D0D}' => Some('m'),
        '\u{0274}' => Some('n'),
        '\u{1D0F}' => Some('o'),
        '\u{1D18}' => Some('p'),
        '\u{A7AF}' => Some('q'),
        '\u{0280}' => Some('r'),
        '\u{A731}' => Some('s'),
        '\u{1D1B}' => Some('t'),
        '\u{1D1C}' => Some('u'),
        '\u{1D20}' => Some('v'),
        '\u{1D21}' => Some('w'),
        '\u{028F}' => Some('y'),
        '\u{1D22}' => Some('z'),
        _ => None,
    }
}

/// `text` with [`fold_letter_symbol`] applied, and whether it changed anything.
fn fold_letter_symbols(text: String) -> (String, bool) {
    if !text.chars().any(|c| fold_letter_symbol(c).is_some()) {
        return (text, false);
    }
    let text = text
        .chars()
        .map(|c| fold_letter_symbol(c).unwrap_or(c))
        .collect();
    (text, true)
}

/// The Hangul fillers (U+115F, U+1160, U+3164, U+FFA0) are default-ignorable, so the skeleton
/// removes them, yet fonts draw them as a blank as wide as a letter: `a`+U+3164+`dog` shows as
/// "a dog". A text holding one is judged on both readings, filler removed and filler as a space.
fn is_hangul_filler(c: char) -> bool {
    matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}')
}

/// `text` without ECMA-48 control sequences (ESC `[` … final byte, or the one-character CSI
/// U+009B …) and operating-system commands (ESC `]` … BEL or ESC `\\`), which a terminal acts on
/// instead of printing: "d" + ESC "[1m" + "og" shows as "dog". An unterminated sequence runs to
/// the end of the text, as a terminal would swallow it.
fn strip_terminal_escapes(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\u{1b}', '\u{9b}']) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let csi = match c {
            '\u{9b}' => true,
            '\u{1b}' if chars.peek() == Some(&'[') => {
                chars.next();
                true
            }
            '\u{1b}' if chars.peek() == Some(&']') => {
                // OSC: up to BEL or ESC \ (string terminator).
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
                continue;
            }
            _ => false,
        };
        if csi {
            // Parameter and intermediate bytes, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    std::borrow::Cow::Owned(out)
}

/// A word character for whole-word matching: letters and numbers (Alphabetic, Numeric), combining
/// marks (which belong to the letter before them in NFD) and connector punctuation, as in UTS #18's
/// `\w`.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
        || unicode_normalization::char::is_combining_mark(c)
        || matches!(c, '_' | '\u{203F}' | '\u{2040}' | '\u{2054}')
}

impl Blocklist {
    /// Words are trimmed; matching ignores case and every difference that
    /// [`normalize_for_matching`] folds away. A word that is empty once normalised is an error.
    pub fn new<I, S>(words: I, substrings: bool) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Self {
            substrings,
            ..Self::default()
        };
        for word in words {
            let word = word.as_ref().trim();
            let key = normalize_for_matching(word).trim().to_string();
            if key.is_empty() {
                bail!(
                    "a blocked word is empty{}: separate words with commas, e.g. --block cat,dog",
                    if word.is_empty() {
                        String::new()
                    } else {
                        format!(" once invisible characters are removed ({word:?})")
                    }
                );
            }
            if !list.keys.contains(&key) {
                list.words.push(word.to_lowercase());
                list.keys.push(key);
            }
        }
        Ok(list)
    }

    /// Reads a blocklist file: UTF-8 (a leading byte-order mark is skipped), one word or phrase
    /// per line, commas also separate, `#` starts a comment.
    ///
    /// Errors: an unreadable file, and a file with no word in it (only comments or blank lines),
    /// which would otherwise block nothing without a word said.
    pub fn read_file(path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read blocklist {}", path.display()))?;
        let words: Vec<String> = text
            .strip_prefix('\u{FEFF}')
            .unwrap_or(&text)
            .lines()
            .map(|line| line.split('#').next().unwrap_or(""))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect();
        if words.is_empty() {
            bail!(
                "blocklist {} has no words (only comments or blank lines): write one word or phrase per line",
                path.display()
            );
        }
        Ok(words)
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The blocked words as given (trimmed and lowercased).
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Whether any substring matches, not only whole words.
    pub fn matches_substrings(&self) -> bool {
        self.substrings
    }

    /// The first blocked word (as given) that `text` contains once both are normalised, if any. A
    /// text holding a Hangul filler is also judged with each filler read as a space
    /// ([`is_hangul_filler`]).
    pub fn find_in(&self, text: &str) -> Option<&str> {
        if self.words.is_empty() {
            return None;
        }
        let normalised = normalize_for_matching(text);
        let spaced = text.contains(is_hangul_filler).then(|| {
            normalize_for_matching(
                &text
                    .chars()
                    .map(|c| if is_hangul_filler(c) { ' ' } else { c })
                    .collect::<String>(),
            )
        });
        self.keys
            .iter()
            .position(|key| {
                self.contains(&normalised, key)
                    || spaced.as_ref().is_some_and(|t| self.contains(t, key))
            })
            .map(|i| self.words[i].as_str())
    }

    fn contains(&self, text: &str, key: &str) -> bool {
        if self.substrings {
            return text.contains(key);
        }
        // A blocked word that itself starts or ends with punctuation needs no boundary there.
        let starts_word = key.chars().next().is_some_and(is_word_char);
        let ends_word = key.chars().next_back().is_some_and(is_word_char);
        // Every start, overlapping ones included: in "ba.a.a" the blocked "a.a" that stands alone is
        // the second occurrence, which a non-overlapping search skips.
        let starts = text.char_indices().map(|(i, _)| i);
        starts.filter(|&i| text[i..].starts_with(key)).any(|start| {
            let before = text[..start].chars().next_back();
            let after = text[start + key.len()..].chars().next();
            (!starts_word || !before.is_some_and(is_word_char))
                && (!ends_word || !after.is_some_and(is_word_char))
        })
    }
}
