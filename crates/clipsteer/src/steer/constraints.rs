//! The blocklist: no streamed step and no final text ever contains a blocked word, however it is
//! written, and (since issue 29) none contains a character that makes a reader's display draw
//! something other than the text's letters in their order.
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
//!
//! # What a display draws: refused, not emulated
//!
//! A terminal acts on control characters instead of printing them, and a browser or text view
//! reorders text under bidi controls, so letters that spell no blocked word can be *drawn* as one:
//! `dox` BS `g` overprints to `dog` (ECMA-48 §8.3.5), `xyz` CR `dog` and ESC `[D` move the cursor
//! back over earlier letters (§8.3.18), ESC `7` … ESC `8` saves and restores it (DEC), DCS, SOS, PM
//! and APC strings, 7-bit or 8-bit, hide what they enclose (§5.6), and U+202E `god` is drawn as
//! `dog` (UAX #9, X4 and L2). Terminals, browsers and libraries disagree on many of these (NEL,
//! U+2028 and VT are a line break to some and nothing to others; BEL ends an OSC string only in
//! xterm's dialect), so no single emulation is *the* drawing.
//!
//! The blocklist therefore refuses the characters instead of emulating every reader: while a list
//! is in force, no text may contain one of [`is_refused_control`]'s characters, the C0 controls
//! but tab and line feed (a CR is allowed only as the CR of a CR LF pair), DEL, the C1 controls
//! U+0080–U+009F (NEL and the 8-bit CSI, DCS, OSC… among them), the bidi controls (Unicode's
//! Bidi_Control property: U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069) and the line and
//! paragraph separators U+2028 and U+2029. Every ECMA-48 sequence and control string starts with
//! ESC or a C1 control, so none can be written; tab and line feed only move the cursor forward or
//! to a new line, which overprints nothing written before. [`Blocklist::allows`] is the check
//! the steering loops make; a GPT-2 byte token for ESC, BS or CR is simply never a candidate.
//!
//! A user's own prompt (or attack instruction) holding such a character is refused with a
//! message that names it; one that hides a blocked word is reported by its word first, as any
//! prompt with a blocked word is: [`Blocklist::find_in`] reads a text that holds refused
//! characters in each way a reader may draw it ([`readings`]), and a word found in any of them
//! counts. Those readings choose the message; the refusal is the guarantee.

use anyhow::{Context, Result};
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
/// 0. ECMA-48 escape and control sequences and control strings removed, in their 7-bit and 8-bit
///    forms ([`strip_terminal_escapes`]); then the characters a blocklist refuses to write
///    ([`is_refused_control`]: controls but tab and line feed, the bidi controls, U+2028 and
///    U+2029) removed, before confusables.txt can make a space of U+2028: a display that ignores
///    them shows nothing there, so `d` + U+0001 + `og` and `do` + NEL + `g` read as `dog`;
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
/// 5. every nonspacing or enclosing mark and format character (General_Category Mn, Me, Cf)
///    dropped (a Cf such as U+FFF9 inside `d`+U+FFF9+`og` draws nothing, so it reads `dog`): accents (`dóg`,
///    `d` + U+0301 + `og`), strike-through and overlays (`d̶o̶g̶`, U+0336), Zalgo stacks, enclosing
///    circles, and the U+0307 that folding makes of `İ` (so `İSTANBUL` matches `istanbul`).
///    Filters that strip diacritics would read `dóg` as `dog`, so the blocklist does too; the
///    price is that words differing only in such marks are one word to it (`café` blocks `cafe`).
///    Spacing marks (Mc, such as most Indic vowel signs) stay;
/// 6. every run of White_Space characters (tab, newline, the Unicode spaces) becomes one space.
///
/// The crates are unicode-normalization (NFKC), caseless (case folding), unicode-security
/// (skeleton, with the default-ignorable set) and unicode-properties (General_Category), all from
/// the unicode-rs project.
pub fn normalize_for_matching(text: &str) -> String {
    let mut text = strip_terminal_escapes(text);
    if text.contains(is_refused_control) {
        text = std::borrow::Cow::Owned(text.replace(is_refused_control, ""));
    }
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
        // Format characters (Cf) draw nothing either: besides the default-ignorables the
        // skeleton already removed, the interlinear annotation anchors (U+FFF9–U+FFFB) and the
        // hieroglyph format controls (U+13430…) have width 0 in glibc's wcwidth.
        if matches!(
            c.general_category(),
            GeneralCategory::NonspacingMark
                | GeneralCategory::EnclosingMark
                | GeneralCategory::Format
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

/// Whether a blocklist refuses to write `c` anywhere (see the module's documentation): the C0
/// controls but tab and line feed, DEL, the C1 controls, the bidi controls and U+2028/U+2029. A
/// CR is refused too, except as the first half of CR LF, which [`first_refused_control`] allows.
///
/// Sources: ECMA-48 (5th edition) §5.2–5.4 for the C0 and C1 sets, which are the whole of
/// General_Category Cc; PropList.txt's Bidi_Control for the bidi controls; UAX #14 (classes BK)
/// for the separators, which some displays break the line at and others draw as nothing.
pub fn is_refused_control(c: char) -> bool {
    match c {
        '\t' | '\n' => false,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        '\u{061C}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}' => true,
        '\u{2028}' | '\u{2029}' => true,
        _ => false,
    }
}

/// The first character of `text` that a blocklist refuses to write ([`is_refused_control`]), a
/// CR followed by LF excepted: CR LF is the line break of Windows files and of HTTP, and it leaves
/// the cursor at the start of a fresh line, over nothing.
pub fn first_refused_control(text: &str) -> Option<char> {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() == Some(&'\n') {
            continue;
        }
        if is_refused_control(c) {
            return Some(c);
        }
    }
    None
}

/// `c` as a message names it: its code point and, for the refused characters, its name.
pub fn describe_control(c: char) -> String {
    let name = match c {
        '\u{8}' => "BACKSPACE",
        '\r' => "CARRIAGE RETURN",
        '\u{b}' => "LINE TABULATION",
        '\u{c}' => "FORM FEED",
        '\u{18}' => "CANCEL",
        '\u{1a}' => "SUBSTITUTE",
        '\u{1b}' => "ESCAPE",
        '\u{7f}' => "DELETE",
        '\u{85}' => "NEXT LINE",
        '\u{90}' => "DEVICE CONTROL STRING",
        '\u{98}' => "START OF STRING",
        '\u{9b}' => "CONTROL SEQUENCE INTRODUCER",
        '\u{9c}' => "STRING TERMINATOR",
        '\u{9d}' => "OPERATING SYSTEM COMMAND",
        '\u{9e}' => "PRIVACY MESSAGE",
        '\u{9f}' => "APPLICATION PROGRAM COMMAND",
        '\u{061C}' => "ARABIC LETTER MARK",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        '\u{2028}' => "LINE SEPARATOR",
        '\u{2029}' => "PARAGRAPH SEPARATOR",
        _ if c.is_control() => "a control character",
        _ => "",
    };
    if name.is_empty() {
        format!("U+{:04X}", c as u32)
    } else {
        format!("U+{:04X} ({name})", c as u32)
    }
}

/// Why a blocklist refuses a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal<'a> {
    /// It contains this blocked word (as given), by [`Blocklist::find_in`].
    Word(&'a str),
    /// It contains this character, by [`first_refused_control`].
    Control(char),
}

impl std::fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Word(word) => write!(f, "the blocked word '{word}'"),
            Refusal::Control(c) => write!(
                f,
                "{}, which a terminal or a bidi-aware display acts on instead of drawing, so it could draw a blocked word from other letters; no text may hold one while a blocklist is in force",
                describe_control(*c)
            ),
        }
    }
}

/// One unit of an ECMA-48 text: a character to draw, a single control function (C0 or C1), or a
/// whole control sequence or escape sequence. Control strings (DCS, SOS, OSC, PM, APC) leave
/// nothing: a terminal consumes them.
#[derive(Debug, Clone, PartialEq)]
enum Unit {
    Graphic(char),
    Control(char),
    /// CSI P…P I…I F (ECMA-48 §5.4): parameter bytes 0x30–0x3F, intermediates 0x20–0x2F, final.
    Csi {
        parameters: String,
        intermediates: String,
        last: char,
    },
    /// ESC I…I F (ECMA-35 §13, ECMA-48 §5.3): Fe (the 7-bit C1 other than the introducers),
    /// Fp and Fs finals without intermediates, nF escapes such as ESC `(` `B` with them.
    Escape {
        intermediates: String,
        last: char,
    },
}

/// The C1 controls that open a control string: DCS, SOS, OSC, PM, APC (ECMA-48 §8.3).
fn opens_string(c: char) -> bool {
    matches!(c, '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}')
}

/// `text` as ECMA-48 units, in its 7-bit (ESC Fe) and 8-bit (C1 code point) forms alike, the way
/// the DEC/xterm parser (vt100.net's "A parser for DEC's ANSI-compatible video terminals") reads
/// it: CAN and SUB abort a sequence or string; ESC or a C1 control inside one aborts it and starts
/// anew; other C0 controls inside an escape or control sequence take effect there; an unfinished
/// sequence or string at the end of the text swallows the rest, as a terminal waits for its end.
/// A control string ends at ST (ESC `\` or U+009C), and an OSC also at BEL, as in xterm.
fn ecma48(text: &str) -> Vec<Unit> {
    let chars: Vec<char> = text.chars().collect();
    let mut units = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        // What introduces the sequence, in its 8-bit form: CSI, or the string's C1 opener.
        let introducer = match c {
            '\u{1b}' => {
                let mut intermediates = String::new();
                let mut next = None;
                while i < chars.len() {
                    let d = chars[i];
                    i += 1;
                    match d {
                        '\u{18}' | '\u{1a}' => break,
                        '\u{1b}' | '\u{80}'..='\u{9f}' => {
                            i -= 1;
                            break;
                        }
                        '\u{0}'..='\u{1f}' => units.push(Unit::Control(d)),
                        '\u{7f}' => {}
                        ' '..='/' => intermediates.push(d),
                        '0'..='~' => {
                            next = Some(d);
                            break;
                        }
                        // Not a sequence: the ESC is lost and the character drawn.
                        _ => {
                            i -= 1;
                            break;
                        }
                    }
                }
                match (next, intermediates.is_empty()) {
                    (Some('['), true) => '\u{9b}',
                    (Some('P'), true) => '\u{90}',
                    (Some('X'), true) => '\u{98}',
                    (Some(']'), true) => '\u{9d}',
                    (Some('^'), true) => '\u{9e}',
                    (Some('_'), true) => '\u{9f}',
                    (Some(last), _) => {
                        units.push(Unit::Escape {
                            intermediates,
                            last,
                        });
                        continue;
                    }
                    (None, _) => continue,
                }
            }
            '\u{9b}' => c,
            c if opens_string(c) => c,
            c if c.is_control() => {
                units.push(Unit::Control(c));
                continue;
            }
            c => {
                units.push(Unit::Graphic(c));
                continue;
            }
        };
        if introducer == '\u{9b}' {
            let (mut parameters, mut intermediates) = (String::new(), String::new());
            while i < chars.len() {
                let d = chars[i];
                i += 1;
                match d {
                    '\u{18}' | '\u{1a}' => break,
                    '\u{1b}' | '\u{80}'..='\u{9f}' => {
                        i -= 1;
                        break;
                    }
                    '\u{0}'..='\u{1f}' => units.push(Unit::Control(d)),
                    '0'..='?' if intermediates.is_empty() => parameters.push(d),
                    ' '..='/' => intermediates.push(d),
                    '@'..='~' => {
                        units.push(Unit::Csi {
                            parameters,
                            intermediates,
                            last: d,
                        });
                        break;
                    }
                    // A parameter after an intermediate, DEL, or a character outside ASCII: the
                    // sequence is malformed and ignored up to its final byte, as xterm does.
                    _ => parameters.push('\u{7f}'),
                }
            }
            continue;
        }
        // A control string: skipped up to its terminator.
        while i < chars.len() {
            let d = chars[i];
            i += 1;
            match d {
                '\u{9c}' | '\u{18}' | '\u{1a}' => break,
                '\u{7}' if introducer == '\u{9d}' => break,
                '\u{1b}' if chars.get(i) == Some(&'\\') => {
                    i += 1;
                    break;
                }
                '\u{1b}' | '\u{80}'..='\u{9f}' => {
                    i -= 1;
                    break;
                }
                _ => {}
            }
        }
    }
    units
}

/// `text` without ECMA-48 escape and control sequences and control strings ([`ecma48`]), which a
/// terminal acts on instead of printing: "d" + ESC "[1m" + "og" and "d" + ESC "(B" + "og" show as
/// "dog". Single controls stay, for [`normalize_for_matching`] to drop or read as a space.
fn strip_terminal_escapes(text: &str) -> std::borrow::Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c == '\u{1b}' || c == '\u{9b}' || opens_string(c))
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let kept = ecma48(text).into_iter().filter_map(|unit| match unit {
        Unit::Graphic(c) | Unit::Control(c) => Some(c),
        _ => None,
    });
    std::borrow::Cow::Owned(kept.collect())
}

/// The most rows and columns [`drawn_on_terminal`] keeps.
const SCREEN_LIMIT: usize = 512;

/// What a terminal's screen shows after `text`, as lines of cells: graphic characters overwrite
/// the cell under the cursor (or, in insert mode, push the line right), and the cursor moves by
/// BS, CR, HT (stops every 8 columns), LF, VT, FF, IND, NEL, RI, the cursor-moving control
/// sequences (CUU, CUD, CUF, CUB, CNL, CPL, CHA, HPA, HPR, VPA, VPR, CUP, HVP), save and restore
/// (ESC 7/8, CSI s/u), and erasure (EL, ED, ECH, DCH, ICH, RIS) and REP as ECMA-48 §8.3 defines
/// them. Zero-width characters join the cell before the cursor; every cell is one column wide and
/// lines do not wrap, which is what matters for letters overprinting letters. Unlisted functions
/// (SGR and the like) draw nothing. The cursor stays within as many rows and columns as the text
/// has characters (at most [`SCREEN_LIMIT`]): a text cannot draw letters next to each other further
/// out, and `ESC [999999999C` must not allocate a line that long.
fn drawn_on_terminal(text: &str) -> String {
    let limit = text.chars().count().min(SCREEN_LIMIT);
    let mut screen = Screen::default();
    for unit in ecma48(text) {
        match unit {
            Unit::Graphic('\u{2028}' | '\u{2029}') => screen.new_line(),
            Unit::Graphic(c) => screen.draw(c),
            Unit::Control(c) => screen.control(c),
            Unit::Escape {
                intermediates,
                last,
            } if intermediates.is_empty() => screen.escape(last),
            Unit::Escape { .. } => {}
            Unit::Csi {
                parameters,
                intermediates,
                last,
            } => {
                // Private and intermediate forms move nothing that text is drawn with.
                if intermediates.is_empty()
                    && !parameters.contains(['<', '=', '>', '\u{7f}'])
                    && !parameters.starts_with('?')
                {
                    screen.csi(&parameters, last, limit);
                }
            }
        }
        screen.row = screen.row.min(limit);
        screen.col = screen.col.min(limit);
    }
    let lines: Vec<String> = screen.rows.iter().map(|cells| cells.concat()).collect();
    lines.join("\n")
}

/// The cells [`drawn_on_terminal`] draws into: each a grapheme's characters (a base and its
/// zero-width marks), with the cursor, the saved cursor, insert mode and the last character
/// drawn (for REP).
#[derive(Default)]
struct Screen {
    rows: Vec<Vec<String>>,
    row: usize,
    col: usize,
    saved: (usize, usize),
    insert: bool,
    last: Option<char>,
}

impl Screen {
    fn line(&mut self) -> &mut Vec<String> {
        if self.rows.len() <= self.row {
            self.rows.resize(self.row + 1, Vec::new());
        }
        let col = self.col;
        let line = &mut self.rows[self.row];
        if line.len() < col {
            line.resize(col, " ".to_string());
        }
        line
    }

    fn new_line(&mut self) {
        self.row += 1;
        self.col = 0;
    }

    fn draw(&mut self, c: char) {
        let zero_width = c != '\u{AD}'
            && matches!(
                c.general_category(),
                GeneralCategory::NonspacingMark
                    | GeneralCategory::EnclosingMark
                    | GeneralCategory::Format
            );
        let (col, insert) = (self.col, self.insert);
        let line = self.line();
        if zero_width {
            match col.checked_sub(1) {
                Some(before) => line[before].push(c),
                None => line.insert(0, c.to_string()),
            }
            return;
        }
        if insert || col == line.len() {
            line.insert(col, c.to_string());
        } else {
            line[col] = c.to_string();
        }
        self.col += 1;
        self.last = Some(c);
    }

    fn blank(&mut self, range: std::ops::Range<usize>) {
        let line = self.line();
        for cell in line.iter_mut().take(range.end).skip(range.start) {
            *cell = " ".to_string();
        }
    }

    /// C0 and C1 controls that move the cursor.
    fn control(&mut self, c: char) {
        match c {
            '\u{8}' => self.col = self.col.saturating_sub(1),
            '\r' => self.col = 0,
            '\t' => self.col = (self.col / 8 + 1) * 8,
            '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => self.new_line(),
            '\u{b}' | '\u{c}' | '\u{84}' => self.row += 1,
            '\u{8d}' => self.row = self.row.saturating_sub(1),
            _ => {}
        }
    }

    /// ESC sequences without intermediates: save and restore the cursor, index, next line,
    /// reverse index, reset.
    fn escape(&mut self, last: char) {
        match last {
            '7' => self.saved = (self.row, self.col),
            '8' => (self.row, self.col) = self.saved,
            'D' => self.row += 1,
            'E' => self.new_line(),
            'M' => self.row = self.row.saturating_sub(1),
            'c' => *self = Screen::default(),
            _ => {}
        }
    }

    /// A control sequence (CSI): cursor moves, erasing, deleting and inserting characters,
    /// insert mode and REP. Counts are clamped to `limit` so that no parameter grows the
    /// screen past the text's own length.
    fn csi(&mut self, parameters: &str, last: char, limit: usize) {
        let values: Vec<usize> = parameters
            .split([';', ':'])
            .map(|p| p.parse().unwrap_or(0))
            .collect();
        let raw = |i: usize| values.get(i).copied().unwrap_or(0);
        // Most parameters default to 1, and 0 means the default (ECMA-48 §5.4.2).
        let n = |i: usize| raw(i).clamp(1, limit.max(1));
        let (row, col) = (self.row, self.col);
        match last {
            'A' => self.row = row.saturating_sub(n(0)),
            'B' | 'e' => self.row = row + n(0),
            'C' | 'a' => self.col = col + n(0),
            'D' => self.col = col.saturating_sub(n(0)),
            'E' => (self.row, self.col) = (row + n(0), 0),
            'F' => (self.row, self.col) = (row.saturating_sub(n(0)), 0),
            'G' | '`' => self.col = n(0) - 1,
            'd' => self.row = n(0) - 1,
            'H' | 'f' => (self.row, self.col) = (n(0) - 1, n(1) - 1),
            's' => self.saved = (row, col),
            'u' => (self.row, self.col) = self.saved,
            'h' | 'l' if values.contains(&4) => self.insert = last == 'h',
            'K' => {
                let len = self.line().len();
                match raw(0) {
                    0 => self.blank(col..len),
                    1 => self.blank(0..col + 1),
                    _ => self.blank(0..len),
                }
            }
            'X' => self.blank(col..col + n(0)),
            'P' => {
                let line = self.line();
                let end = (col + n(0)).min(line.len());
                line.drain(col.min(end)..end);
            }
            '@' => {
                let line = self.line();
                for _ in 0..n(0) {
                    line.insert(col, " ".to_string());
                }
            }
            'J' => {
                let len = self.line().len();
                match raw(0) {
                    0 => {
                        self.blank(col..len);
                        self.rows.truncate(row + 1);
                    }
                    1 => {
                        self.blank(0..col + 1);
                        for line in self.rows.iter_mut().take(row) {
                            line.clear();
                        }
                    }
                    _ => self.rows.iter_mut().for_each(Vec::clear),
                }
            }
            'b' => {
                if let Some(c) = self.last {
                    for _ in 0..n(0) {
                        self.draw(c);
                    }
                }
            }
            _ => {}
        }
    }
}

/// `text` in the order a bidi-aware display draws it, for the explicit formatting characters
/// (UAX #9 rules X1–X8, then L2) on a left-to-right paragraph: each line break ends a paragraph;
/// under an override every character takes its direction, and elsewhere every character counts
/// as left-to-right (what Latin letters are). So U+202E `god` U+202C reads `dog`. Implicit
/// reordering of right-to-left letters is not modelled: no override is needed for it, and it
/// reorders no Latin letter.
fn reordered_by_bidi_controls(text: &str) -> String {
    let paragraphs: Vec<String> = text
        .split('\n')
        .map(|paragraph| {
            // (embedding level, override to right-to-left?, is an isolate)
            let mut stack: Vec<(u8, Option<bool>, bool)> = vec![(0, None, false)];
            let mut levelled: Vec<(char, u8)> = Vec::new();
            for c in paragraph.chars() {
                let (level, overridden, _) = *stack.last().expect("the paragraph level stays");
                let odd = level + 1 + level % 2;
                let even = level + 2 - level % 2;
                // UAX #9's depth limit is 125; texts past it are not drawn differently here.
                let push = |stack: &mut Vec<_>, entry| {
                    if stack.len() < 125 {
                        stack.push(entry)
                    }
                };
                match c {
                    '\u{202A}' => push(&mut stack, (even, None, false)),
                    '\u{202B}' => push(&mut stack, (odd, None, false)),
                    '\u{202D}' => push(&mut stack, (even, Some(false), false)),
                    '\u{202E}' => push(&mut stack, (odd, Some(true), false)),
                    '\u{2066}' | '\u{2068}' => push(&mut stack, (even, None, true)),
                    '\u{2067}' => push(&mut stack, (odd, None, true)),
                    '\u{202C}' => {
                        if stack.len() > 1 && !stack.last().is_some_and(|e| e.2) {
                            stack.pop();
                        }
                    }
                    '\u{2069}' => {
                        if stack.iter().any(|e| e.2) {
                            while stack.pop().is_some_and(|e| !e.2) {}
                        }
                    }
                    '\u{200E}' | '\u{200F}' | '\u{061C}' => {}
                    _ => {
                        // I1/I2: a right-to-left character on an even level, or a left-to-right
                        // one on an odd level, goes one level up.
                        let rtl = overridden == Some(true);
                        let up = (level % 2 == 1) != rtl;
                        levelled.push((c, level + u8::from(up)));
                    }
                }
            }
            // L2: from the highest level down to 1, reverse every run at that level or above.
            let highest = levelled.iter().map(|&(_, l)| l).max().unwrap_or(0);
            for level in (1..=highest).rev() {
                let mut start = 0;
                while start < levelled.len() {
                    if levelled[start].1 < level {
                        start += 1;
                        continue;
                    }
                    let end = (start..levelled.len())
                        .find(|&j| levelled[j].1 < level)
                        .unwrap_or(levelled.len());
                    levelled[start..end].reverse();
                    start = end;
                }
            }
            levelled.into_iter().map(|(c, _)| c).collect()
        })
        .collect();
    paragraphs.join("\n")
}

/// The explicit directional embeddings, overrides, isolates and their terminators (UAX #9
/// §2.1–2.4).
fn is_bidi_embedding(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The ways a reader may see `text`: the text itself, and when it holds a refused character
/// ([`is_refused_control`]) also with those characters alone removed, as a terminal draws it
/// ([`drawn_on_terminal`]), with each such
/// character shown as a visible mark (as `cat -v` or a font's box does, so `dog` BS BS BS `cat`
/// holds `dog`) and, with bidi controls, as a bidi-aware display orders it
/// ([`reordered_by_bidi_controls`]). The text itself is read with every sequence and refused
/// control removed ([`normalize_for_matching`]), as a display that ignores them shows it.
fn readings(text: &str) -> Vec<std::borrow::Cow<'_, str>> {
    let mut readings = vec![std::borrow::Cow::Borrowed(text)];
    if first_refused_control(text).is_none() {
        return readings;
    }
    // A display that knows no ECMA-48 draws what is between the controls: `do` APC `g` as `dog`,
    // where a terminal would take `g` into the unterminated string.
    readings.push(std::borrow::Cow::Owned(
        text.replace(is_refused_control, ""),
    ));
    readings.push(std::borrow::Cow::Owned(drawn_on_terminal(text)));
    // Where a display shows a control as a visible mark (`^H`, a box), it separates words.
    readings.push(std::borrow::Cow::Owned(
        text.chars()
            .map(|c| if is_refused_control(c) { ' ' } else { c })
            .collect(),
    ));
    if text.chars().any(is_bidi_embedding) {
        // UAX #9's paragraph separators (class B) as line feeds; other refused controls removed.
        let silent: String = strip_terminal_escapes(text)
            .chars()
            .filter_map(|c| match c {
                '\r' | '\u{1c}'..='\u{1e}' | '\u{85}' | '\u{2029}' => Some('\n'),
                c if is_bidi_embedding(c) || !is_refused_control(c) => Some(c),
                _ => None,
            })
            .collect();
        readings.push(std::borrow::Cow::Owned(reordered_by_bidi_controls(&silent)));
    }
    readings
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
                crate::usage_bail!(
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
        // A missing file is NotFound for every face; anything else (a directory, text that is
        // not UTF-8, no permission) is the argument's fault.
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot read blocklist {}", path.display()))
            }
            Err(e) => crate::usage_bail!(
                "cannot read blocklist {}: {e}; pass a UTF-8 text file of words",
                path.display()
            ),
        };
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
            crate::usage_bail!(
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
    /// ([`is_hangul_filler`]), and one holding a refused control in each of its [`readings`].
    pub fn find_in(&self, text: &str) -> Option<&str> {
        if self.words.is_empty() {
            return None;
        }
        let mut normalised = Vec::new();
        for reading in readings(text) {
            if reading.contains(is_hangul_filler) {
                let spaced: String = reading
                    .chars()
                    .map(|c| if is_hangul_filler(c) { ' ' } else { c })
                    .collect();
                normalised.push(normalize_for_matching(&spaced));
            }
            normalised.push(normalize_for_matching(&reading));
        }
        self.keys
            .iter()
            .position(|key| normalised.iter().any(|t| self.contains(t, key)))
            .map(|i| self.words[i].as_str())
    }

    /// Whether a text may be written: with no word in the list, always; otherwise when it holds
    /// no refused character ([`first_refused_control`]) and no blocked word ([`Self::find_in`]).
    /// The steering loops keep exactly the candidates this allows.
    pub fn allows(&self, text: &str) -> bool {
        self.is_empty() || (first_refused_control(text).is_none() && self.find_in(text).is_none())
    }

    /// Why `text` may not be written, if it may not ([`Self::allows`]): its blocked word when it
    /// holds one in any reading, otherwise its first refused character. Prompts are judged by
    /// this, so a blocked word hidden among controls is reported as the word.
    pub fn refusal(&self, text: &str) -> Option<Refusal<'_>> {
        if self.is_empty() {
            return None;
        }
        if let Some(word) = self.find_in(text) {
            return Some(Refusal::Word(word));
        }
        first_refused_control(text).map(Refusal::Control)
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
