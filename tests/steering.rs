//! Text targets, the blocklist guarantee, MAGIC, and CLIPScore on the tiny fixtures.

mod common;

use candle_core::Device;
use clipsteer::steer::constraints::{first_refused_control, Blocklist, Refusal};
use clipsteer::steer::describe::{
    beam_score, describe, ends_sentence, magic_scores, top_k, BeamParams, DescribeOptions,
    DescribeResult, MagicParams, ScoredText, Strategy,
};
use clipsteer::steer::target::{combine, TargetPart};
use clipsteer::steer::{normalize, CausalLm, ClipScorer, Gpt2Lm, Scorer};
use common::*;
use rand::{Rng, SeedableRng};

fn lm() -> Gpt2Lm {
    Gpt2Lm::load(&fixture("gpt2-tiny"), &Device::Cpu).unwrap()
}

fn scorer() -> ClipScorer {
    ClipScorer::load(&fixture("clip-tiny-quickgelu"), &Device::Cpu).unwrap()
}

fn options(
    prompt: &str,
    top_k: usize,
    max_tokens: usize,
    strategy: Strategy,
    blocklist: Blocklist,
) -> DescribeOptions {
    DescribeOptions {
        prompt: prompt.into(),
        top_k,
        max_tokens,
        strategy,
        sampling: None,
        prefilter: None,
        blocklist,
        magic: MagicParams::default(),
        stop_at_sentence_end: false,
        beam: Default::default(),
        scored_text: ScoredText::Full,
    }
}

/// The blocklist's normalised form, written independently of the product: ICU4X's NFKC, NFD, case
/// folding and property data (the product uses unicode-rs crates), and a confusables table written
/// here from confusables.txt for every character the tests generate (any other is a test error).
mod oracle {
    use icu_casemap::CaseMapper;
    use icu_normalizer::{ComposingNormalizer, DecomposingNormalizer};
    use icu_properties::props::{
        Alphabetic, BidiControl, DefaultIgnorableCodePoint, GeneralCategory, WhiteSpace,
    };
    use icu_properties::{CodePointMapData, CodePointSetData};

    /// confusables.txt prototypes of the characters the tests write (after NFKC and folding). A
    /// character outside the table is a test error when `strict`, and left as it is otherwise (for
    /// texts a random model writes, where the oracle can only under-flag).
    fn prototype(c: char, strict: bool) -> Option<&'static str> {
        Some(match c {
            '0' => "O",
            '1' => "l",
            'I' => "l",
            'm' => "rn",
            '|' => "l",
            '`' => "'",
            '"' => "''",
            'а' => "a",
            'е' => "e",
            'о' => "o",
            'р' => "p",
            'с' => "c",
            'х' => "x",
            'у' => "y",
            'і' => "i",
            'ј' => "j",
            'ѕ' => "s",
            'һ' => "h",
            'ԁ' => "d",
            'ο' => "o",
            'α' => "a",
            'ν' => "v",
            'ı' => "i",
            'ԍ' => "\u{262}",
            _ if c.is_ascii() => return None,
            '\u{336}' => "\u{335}",
            '\u{321}' => "\u{326}",
            '\u{300}'..='\u{30F}' | '\u{334}' | '\u{338}' | '\u{20DD}' => return None, // no prototype
            '\u{80}'..='\u{9F}' => return None, // C1 controls: none
            // Format characters that are not default-ignorable: none in confusables.txt.
            '\u{FFF9}'..='\u{FFFB}' | '\u{13430}'..='\u{1343F}' => return None,
            _ if !strict => return None,
            _ => panic!(
                "the oracle has no confusables entry for {c:?} (U+{:04X})",
                c as u32
            ),
        })
    }

    fn fold(s: &str) -> String {
        CaseMapper::new().fold_string(s).into_owned()
    }

    /// The letter-like symbols named after one Latin letter (tests/fixtures/letter-symbols.tsv,
    /// from Unicode's names), as that letter in lowercase.
    pub fn letter_symbols() -> Vec<(char, char)> {
        include_str!("fixtures/letter-symbols.tsv")
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let (code, letter) = line.split_once('\t').unwrap();
                let c = char::from_u32(u32::from_str_radix(code, 16).unwrap()).unwrap();
                (c, letter.chars().next().unwrap().to_ascii_lowercase())
            })
            .collect()
    }

    fn letters(s: &str) -> (String, bool) {
        let table = letter_symbols();
        let mut changed = false;
        let out = s
            .chars()
            .map(|c| match table.iter().find(|(symbol, _)| *symbol == c) {
                Some(&(_, letter)) => {
                    changed = true;
                    letter
                }
                None => c,
            })
            .collect();
        (out, changed)
    }

    fn skeleton(s: &str, strict: bool) -> String {
        let nfd = DecomposingNormalizer::new_nfd();
        let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
        let mapped: String = nfd
            .normalize(s)
            .chars()
            .filter(|&c| !ignorable.contains(c))
            .map(|c| prototype(c, strict).map_or_else(|| c.to_string(), str::to_string))
            .collect();
        nfd.normalize(&mapped).into_owned()
    }

    pub fn normalize(text: &str, strict: bool) -> String {
        let nfkc = ComposingNormalizer::new_nfkc().normalize(text).into_owned();
        let (lettered, _) = letters(&fold(&nfkc));
        let folded = match letters(&fold(&skeleton(&lettered, strict))) {
            (folded, true) => fold(&skeleton(&folded, strict)),
            (folded, false) => folded,
        };
        let white = CodePointSetData::new::<WhiteSpace>();
        let chars: Vec<char> = folded.chars().collect();
        let mut out = String::new();
        let category = CodePointMapData::<GeneralCategory>::new();
        for &c in &chars {
            if matches!(
                category.get(c),
                GeneralCategory::NonspacingMark
                    | GeneralCategory::EnclosingMark
                    | GeneralCategory::Format
            ) || (category.get(c) == GeneralCategory::Control && !white.contains(c))
            {
                continue;
            }
            if white.contains(c) {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The first character a display may act on instead of drawing it, which a blocklist must
    /// never write: from ICU's data, General_Category Control (but tab and line feed; a CR only
    /// where a line feed follows), Line_Separator and Paragraph_Separator, and Bidi_Control.
    pub fn refused(text: &str) -> Option<char> {
        let category = CodePointMapData::<GeneralCategory>::new();
        let bidi = CodePointSetData::new::<BidiControl>();
        let chars: Vec<char> = text.chars().collect();
        chars.iter().enumerate().find_map(|(i, &c)| {
            let crlf = c == '\r' && chars.get(i + 1) == Some(&'\n');
            let refused = match category.get(c) {
                GeneralCategory::Control => !matches!(c, '\t' | '\n') && !crlf,
                GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => true,
                _ => bidi.contains(c),
            };
            refused.then_some(c)
        })
    }

    /// UTS #18's \w: Alphabetic, numbers, marks, connector punctuation.
    pub fn is_word(c: char) -> bool {
        use GeneralCategory as G;
        let category = CodePointMapData::<GeneralCategory>::new().get(c);
        CodePointSetData::new::<Alphabetic>().contains(c)
            || matches!(
                category,
                G::DecimalNumber
                    | G::LetterNumber
                    | G::OtherNumber
                    | G::NonspacingMark
                    | G::SpacingMark
                    | G::EnclosingMark
                    | G::ConnectorPunctuation
            )
    }
}

/// An oracle written independently of `Blocklist`: both sides through the oracle's normaliser,
/// then every position compared character by character.
fn contains_blocked(text: &str, word: &str, substrings: bool) -> bool {
    oracle_contains(text, word, substrings, false)
}

/// The same, with every character's confusable prototype known to the oracle.
fn contains_blocked_strict(text: &str, word: &str, substrings: bool) -> bool {
    oracle_contains(text, word, substrings, true)
}

fn oracle_contains(text: &str, word: &str, substrings: bool, strict: bool) -> bool {
    let is_word = oracle::is_word;
    let t: Vec<char> = oracle::normalize(text, strict).chars().collect();
    let w: Vec<char> = oracle::normalize(word, strict).trim().chars().collect();
    if w.is_empty() || w.len() > t.len() {
        return false;
    }
    (0..=t.len() - w.len()).any(|i| {
        t[i..i + w.len()] == w[..]
            && (substrings
                || ((i == 0 || !is_word(t[i - 1]) || !is_word(w[0]))
                    && (i + w.len() == t.len()
                        || !is_word(t[i + w.len()])
                        || !is_word(w[w.len() - 1]))))
    })
}

#[test]
fn blocklist_matches_whole_words_case_insensitively() {
    let list = Blocklist::new(["Cat", "new york"], false).unwrap();
    assert_eq!(list.find_in("a CAT sat"), Some("cat"));
    assert_eq!(
        list.find_in("a cat"),
        Some("cat"),
        "the end of the text is a boundary"
    );
    assert_eq!(list.find_in("cat."), Some("cat"));
    assert_eq!(list.find_in("catalogue and bobcat"), None);
    assert_eq!(list.find_in("in New York today"), Some("new york"));
    let substrings = Blocklist::new(["cat"], true).unwrap();
    assert_eq!(substrings.find_in("concatenate"), Some("cat"));
    assert!(
        Blocklist::new(["a", " "], false).is_err(),
        "empty words are an error"
    );
    let tmp = TempDir::new("blocklist-file");
    let file = tmp.0.join("words.txt");
    std::fs::write(&file, "# animals\ncat, dog\n\nbird # comment\n").unwrap();
    assert_eq!(
        Blocklist::read_file(&file).unwrap(),
        vec!["cat", "dog", "bird"]
    );
    // A byte-order mark, as Windows editors write, is not part of the first word.
    std::fs::write(&file, "\u{FEFF}cat\r\ndog\r\n").unwrap();
    assert_eq!(Blocklist::read_file(&file).unwrap(), vec!["cat", "dog"]);
    // A file with no word would block nothing: an error that says so.
    std::fs::write(&file, "# nothing yet\n\n , \n").unwrap();
    let message = Blocklist::read_file(&file).unwrap_err().to_string();
    assert!(message.contains("has no words"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
}

/// The disguises of issue 12: each is refused when the plain word is blocked.
#[test]
fn blocked_words_are_found_in_every_disguise() {
    let cases: &[(&str, &[&str])] = &[
        ("café", &["cafe\u{301}", "CAFÉ", "CAFE\u{301}", "cafe"]),
        // Controls that print as nothing.
        ("dog", &["d\u{1}og", "d\u{7f}og", "do\u{9f}g", "d\u{8}og"]),
        // Accents, strike-through and Zalgo overlays, an enclosing circle.
        (
            "fruit",
            &[
                "f\u{336}r\u{336}u\u{336}i\u{336}t\u{336}",
                "frúít",
                "f\u{334}\u{321}ruit\u{338}",
                "fru\u{20DD}it",
            ],
        ),
        (
            "dog",
            &[
                "ｄｏｇ",
                "𝐝𝐨𝐠",
                "d\u{200B}og",
                "d\u{AD}og",
                "d\u{FFF9}og",
                "d\u{FFFB}og",
                "do\u{13430}g",
                "d\u{E0001}og",
                "d\u{43E}g",
                "DOG",
                "𝒹ℴℊ",
            ],
        ),
        ("straße", &["STRASSE", "strasse", "Straße"]),
        ("strasse", &["straße"]),
        ("istanbul", &["İSTANBUL", "ISTANBUL", "i\u{307}stanbul"]),
        (
            "hot dog",
            &[
                "hot\u{A0}dog",
                "hot\tdog",
                "hot  dog",
                "hot\u{3000}dog",
                "HOT\n DOG",
            ],
        ),
    ];
    for (word, disguises) in cases {
        let list = Blocklist::new([*word], false).unwrap();
        for text in *disguises {
            assert_eq!(
                list.find_in(&format!("a {text} here")),
                Some(*word),
                "{word:?} in {text:?}"
            );
            assert!(
                contains_blocked_strict(text, word, false),
                "oracle: {word:?} in {text:?}"
            );
        }
    }
    // Terminal escape sequences, which a terminal acts on instead of printing.
    let list = Blocklist::new(["dog"], false).unwrap();
    for text in [
        "a d\u{1b}[1mog",
        "a do\u{1b}[0;31mg here",
        "d\u{1b}]0;title\u{7}og",
        "d\u{1b}]8;;http://x\u{1b}\\og",
        "d\u{9b}4mog",
    ] {
        assert_eq!(list.find_in(text), Some("dog"), "{text:?}");
    }
    // Letter-like symbols that NFKC and confusables.txt leave alone, and Cyrillic `ԍ`, whose
    // prototype is the small capital `ɢ`.
    for text in [
        "ᴅᴏɢ",
        "🅓🅞🅖",
        "🅳🅾🅶",
        "🇩🇴🇬",
        "ᴅ\u{200B}ᴏɢ",
        "🅳\u{FE0F}🅾\u{FE0F}🅶\u{FE0F}",
        "do\u{50D}",
        "Doɢ",
    ] {
        assert_eq!(
            list.find_in(&format!("a {text} here")),
            Some("dog"),
            "{text:?}"
        );
        assert!(
            contains_blocked_strict(text, "dog", false),
            "oracle: {text:?}"
        );
    }
    assert_eq!(
        Blocklist::new(["sir"], false).unwrap().find_in("ꜱɪƦ"),
        Some("sir"),
        "`Ʀ` folds to the small capital `ʀ`"
    );
    // The Hangul fillers are drawn as a blank but removed by the skeleton: both readings count.
    for (word, text) in [
        ("dog", "a\u{3164}dog\u{3164}runs"),
        ("dog", "d\u{3164}og"),
        ("dog", "a\u{FFA0}dog"),
        ("hot dog", "hot\u{3164}dog"),
        ("hotdog", "hot\u{3164}dog"),
        ("dog", "dog\u{115F}s"),
    ] {
        let list = Blocklist::new([word], false).unwrap();
        assert_eq!(list.find_in(text), Some(word), "{word:?} in {text:?}");
    }
    assert_eq!(list.find_in("a\u{3164}doge\u{3164}runs"), None);
    // An unterminated sequence swallows the rest, as on a terminal.
    assert_eq!(list.find_in("dog\u{1b}[1"), Some("dog"));
    assert_eq!(list.find_in("d\u{1b}[og"), None);
    // Harmless text stays allowed.
    let list = Blocklist::new(["hot dog", "dog"], false).unwrap();
    for text in [
        "a hotdog stand",
        "such doge",
        "dogs",
        "underdog",
        "hot-dogging",
    ] {
        assert_eq!(list.find_in(text), None, "{text:?}");
    }
    // A blocked word written in disguise blocks the plain word.
    let list = Blocklist::new(["ＤＯＧ", "Straße"], false).unwrap();
    assert_eq!(list.find_in("the dog"), Some("ｄｏｇ"));
    assert_eq!(list.find_in("STRASSE"), Some("straße"));
    // A word that is nothing once invisible characters are removed is an error, not a match-all.
    assert!(Blocklist::new(["\u{200B}\u{AD}"], false).is_err());
}

/// Disguises that leave a text's normalised form unchanged, as a filter evader would write them.
mod disguise {
    use rand::Rng;

    const HOMOGLYPHS: &[(char, &str)] = &[
        ('a', "аα"),
        ('e', "е"),
        ('o', "оο"),
        ('p', "р"),
        ('c', "с"),
        ('x', "х"),
        ('y', "у"),
        ('i', "іı"),
        ('j', "ј"),
        ('s', "ѕ"),
        ('h', "һ"),
        ('d', "ԁ"),
        ('v', "ν"),
    ];
    const INVISIBLE: &[char] = &[
        '\u{200B}',
        '\u{200C}',
        '\u{200D}',
        '\u{2060}',
        '\u{AD}',
        '\u{FEFF}',
        '\u{34F}',
        '\u{FFF9}',
        '\u{FFFA}',
        '\u{FFFB}',
        '\u{13430}',
        '\u{1BCA0}',
    ];
    const MARKS: &[char] = &[
        '\u{336}', '\u{334}', '\u{338}', '\u{301}', '\u{321}', '\u{20DD}',
    ];
    const SPACES: &[&str] = &[
        "\u{A0}", "\t", "  ", "\u{2003}", "\u{3000}", "\u{202F}", "\n", " \t ",
    ];

    fn fullwidth(c: char) -> char {
        if c.is_ascii_graphic() {
            char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap()
        } else {
            c
        }
    }

    fn bold(c: char) -> char {
        let base = match c {
            'a'..='z' => 0x1D41A + (c as u32 - 'a' as u32),
            'A'..='Z' => 0x1D400 + (c as u32 - 'A' as u32),
            '0'..='9' => 0x1D7CE + (c as u32 - '0' as u32),
            _ => return c,
        };
        char::from_u32(base).unwrap()
    }

    /// `c` as a small capital, a negative circled or squared capital, or a regional indicator
    /// (`family` 0–3), when it is a Latin letter that has one.
    fn letter_symbol(c: char, family: usize) -> char {
        if !c.is_ascii_alphabetic() {
            return c;
        }
        let first = [None, Some(0x1F150), Some(0x1F170), Some(0x1F1E6)][family];
        match first {
            Some(first) => {
                char::from_u32(first + (c.to_ascii_lowercase() as u32 - 'a' as u32)).unwrap()
            }
            None => super::oracle::letter_symbols()
                .into_iter()
                .find(|&(symbol, letter)| {
                    letter == c.to_ascii_lowercase()
                        && !(0x1F100..0x1F200).contains(&(symbol as u32))
                })
                .map_or(c, |(symbol, _)| symbol),
        }
    }

    /// What a display acts on instead of drawing (issue 29), which a blocklist refuses to write:
    /// ECMA-48 escape sequences (nF with intermediates, Fp, Fe, Fs finals, single shifts),
    /// control sequences and control strings (DCS, SOS, OSC, PM, APC) in their 7-bit and 8-bit
    /// forms, ended by ST, by BEL or cut short by CAN and SUB; overprinting by BS and CR, cursor
    /// movement and erasure; line breaks that some displays draw as nothing (VT, FF, NEL, IND, RI,
    /// U+2028, U+2029); DEL, NUL and other C0 controls; every bidi control. And CR LF, which a
    /// blocklist allows, so that the oracle and the product must agree on it too.
    const DISPLAY: &[&str] = &[
        "\u{1b}(B",
        "\u{1b}7",
        "\u{1b}8",
        "\u{1b}#8",
        "\u{1b}N",
        "\u{1b}O",
        "\u{1b}c",
        "\u{1b}=",
        "\u{1b}[1m",
        "\u{1b}[D",
        "\u{1b}[2D",
        "\u{1b}[G",
        "\u{1b}[3C",
        "\u{1b}[K",
        "\u{1b}[P",
        "\u{1b}[?25l",
        "\u{1b}[1\u{18}",
        "\u{1b}[2\u{1a}",
        "\u{1b}]0;t\u{7}",
        "\u{1b}]8;;u\u{1b}\\",
        "\u{1b}Pq\u{1b}\\",
        "\u{1b}Xs\u{1b}\\",
        "\u{1b}^p\u{1b}\\",
        "\u{1b}_a\u{1b}\\",
        "\u{90}q\u{9c}",
        "\u{98}s\u{9c}",
        "\u{9d}0;t\u{7}",
        "\u{9d}0;t\u{9c}",
        "\u{9d}0;t\u{1b}\\",
        "\u{9e}p\u{9c}",
        "\u{9f}a\u{9c}",
        "\u{9b}4m",
        "\u{9b}2D",
        "\u{8e}",
        "\u{8f}",
        "\u{85}",
        "\u{84}",
        "\u{8d}",
        "x\u{8}",
        "\u{8}",
        "\r",
        "\u{b}",
        "\u{c}",
        "\u{18}",
        "\u{1a}",
        "\u{7f}",
        "\u{1}",
        "\u{0}",
        "\u{2028}",
        "\u{2029}",
        "\u{202A}",
        "\u{202B}",
        "\u{202C}",
        "\u{202D}",
        "\u{202E}",
        "\u{2066}",
        "\u{2067}",
        "\u{2068}",
        "\u{2069}",
        "\u{200E}",
        "\u{200F}",
        "\u{61C}",
        "\r\n",
        "\r\n",
    ];

    /// `text` with [`DISPLAY`]'s forms put after some of its characters, and sometimes a control
    /// string left open at its end.
    pub fn displayed(text: &str, rng: &mut impl Rng) -> String {
        let p = rng.random_range(0.05..0.5);
        let mut out = String::new();
        for c in text.chars() {
            out.push(c);
            if rng.random_bool(p) {
                out.push_str(DISPLAY[rng.random_range(0..DISPLAY.len())]);
            }
        }
        if rng.random_bool(0.1) {
            out.push_str(["\u{1b}P", "\u{90}", "\u{9d}", "\u{1b}]x"][rng.random_range(0..4)]);
        }
        out
    }

    /// One disguise, chosen at random, applied to each character with probability `p`.
    pub fn apply(text: &str, rng: &mut impl Rng) -> String {
        let kind = rng.random_range(0..10);
        // Kind 9 writes letters as one family of letter-like symbols.
        let family = rng.random_range(0..4);
        let p = rng.random_range(0.2..1.0);
        let mut out = String::new();
        let text = if kind == 2 && rng.random_bool(0.5) {
            text.replace("ss", "ß")
        } else {
            text.to_string()
        };
        let chars: Vec<char> = text.chars().collect();
        for (i, &c) in chars.iter().enumerate() {
            if !rng.random_bool(p) {
                out.push(c);
                continue;
            }
            match kind {
                0 => out.push(fullwidth(c)),
                1 => out.push(bold(c)),
                2 => match c {
                    // Turkish-style capital for i; ß (from a double s above) kept.
                    'i' => out.push('İ'),
                    'ß' => out.push(c),
                    _ => out.extend(c.to_uppercase()),
                },
                3 => {
                    out.push(c);
                    if c.is_alphanumeric() && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric())
                    {
                        out.push(INVISIBLE[rng.random_range(0..INVISIBLE.len())]);
                    }
                }
                4 => match HOMOGLYPHS.iter().find(|(plain, _)| *plain == c) {
                    Some((_, glyphs)) => {
                        let glyphs: Vec<char> = glyphs.chars().collect();
                        out.push(glyphs[rng.random_range(0..glyphs.len())]);
                    }
                    None => out.push(c),
                },
                5 => match c {
                    ' ' => out.push_str(SPACES[rng.random_range(0..SPACES.len())]),
                    _ => out.push(c),
                },
                8 => {
                    // Strike-through, overlays, accents and an enclosing circle after a letter.
                    out.push(c);
                    if c.is_alphanumeric() {
                        out.push(MARKS[rng.random_range(0..MARKS.len())]);
                    }
                }
                6 => match c {
                    'é' => out.push_str("e\u{301}"),
                    'k' => out.push('\u{212A}'), // KELVIN SIGN
                    's' => out.push('ſ'),        // LONG S
                    _ => out.push(c),
                },
                7 => out.extend(c.to_uppercase()),
                9 => out.push(letter_symbol(c, family)),
                _ => out.push(c),
            }
        }
        out
    }
}

/// Every letter-like symbol that Unicode names after one Latin letter reads as that letter, and
/// the other symbols of their blocks stay what they are.
#[test]
fn letter_like_symbols_read_as_the_letter_they_are_named_after() {
    use clipsteer::steer::constraints::normalize_for_matching;
    let table = oracle::letter_symbols();
    assert_eq!(table.len(), 103, "25 small capitals and 3 × 26 symbols");
    for &(symbol, letter) in &table {
        assert_eq!(
            normalize_for_matching(&symbol.to_string()),
            normalize_for_matching(&letter.to_string()),
            "U+{:04X} reads as {letter:?}",
            symbol as u32
        );
    }
    // Neighbours with other names are not read as one letter: CROSSED NEGATIVE SQUARED LATIN
    // CAPITAL LETTER P, NEGATIVE SQUARED IC, LATIN LETTER SMALL CAPITAL OE and AE (which
    // confusables.txt spells "oe" and "ae").
    for c in ['\u{1F18A}', '\u{1F18B}', '\u{0276}', '\u{1D01}'] {
        let normalised = normalize_for_matching(&c.to_string());
        assert!(
            !(normalised.len() == 1 && normalised.chars().all(|n| n.is_ascii_alphabetic())),
            "U+{:04X} became {normalised:?}",
            c as u32
        );
    }
}

/// Random blocklists; random texts of blocked words, near misses and harmless words; every
/// disguise and compositions of them, and what a display acts on instead of drawing. The product
/// refuses exactly what the independent oracle flags, on every prefix of every text (as the
/// describe loops check a text after each token), names the same first refused control, and a
/// disguise that leaves the text drawable never changes the verdict on it.
#[test]
fn the_blocklist_refuses_exactly_what_the_oracle_flags_under_every_disguise() {
    const WORDS: &[&str] = &[
        "dog", "hot dog", "hotdog", "doge", "dogs", "cat", "catalog", "bobcat", "café", "cafe",
        "straße", "strasse", "istanbul", "new york", "york", "corn", "com", "sky", "kid", "dice",
        "pixel", "ice", "jay", "has", "ok", "r2d2", "x-ray", "a.a",
    ];
    const GLUE: &[&str] = &[" ", " ", " ", ", ", ". ", "-", "!", "", " (", ") "];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let (mut flagged, mut disguised_flagged, mut displayed, mut checked) = (0, 0, 0, 0);
    for case in 0..400 {
        let substrings = rng.random_bool(0.2);
        let chosen: Vec<&str> = (0..rng.random_range(1..4))
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        // Sometimes the list itself is written in disguise.
        let blocked: Vec<String> = if rng.random_bool(0.3) {
            chosen
                .iter()
                .map(|w| disguise::apply(w, &mut rng))
                .collect()
        } else {
            chosen.iter().map(|w| w.to_string()).collect()
        };
        let list = Blocklist::new(&blocked, substrings).unwrap();
        let mut plain = String::new();
        for _ in 0..rng.random_range(1..6) {
            // Blocked words often, near misses and other words otherwise.
            plain.push_str(if rng.random_bool(0.3) {
                chosen[rng.random_range(0..chosen.len())]
            } else {
                WORDS[rng.random_range(0..WORDS.len())]
            });
            plain.push_str(GLUE[rng.random_range(0..GLUE.len())]);
        }
        let mut text = plain.clone();
        for _ in 0..rng.random_range(0..4) {
            text = disguise::apply(&text, &mut rng);
        }
        if rng.random_bool(0.3) {
            text = disguise::displayed(&text, &mut rng);
        }
        // What a display acts on is refused outright, whatever it would draw: the product and the
        // oracle must name the same first character, on the text and on every prefix.
        let allowed_by_oracle = |text: &str| {
            oracle::refused(text).is_none()
                && !blocked
                    .iter()
                    .any(|w| contains_blocked_strict(text, w, substrings))
        };
        let control = oracle::refused(&text);
        assert_eq!(
            first_refused_control(&text),
            control,
            "case {case}: {text:?}"
        );
        assert_eq!(
            list.allows(&text),
            allowed_by_oracle(&text),
            "case {case}: {blocked:?} in {text:?} (substrings {substrings})"
        );
        let got = list.refusal(&text);
        if let Some(c) = control {
            assert!(got.is_some(), "case {case}: {text:?} holds {c:?}");
            displayed += 1;
        } else {
            let expected = blocked
                .iter()
                .position(|w| contains_blocked_strict(&text, w, substrings));
            let got = list.find_in(&text);
            assert_eq!(
                got.is_some(),
                expected.is_some(),
                "case {case}: {blocked:?} in {text:?} (from {plain:?}, substrings {substrings}): product {got:?}"
            );
            if let (Some(got), Some(i)) = (got, expected) {
                // Duplicates (by normalised form) keep their first spelling, so this is the list's
                // word.
                assert_eq!(
                    got,
                    blocked[i].trim().to_lowercase(),
                    "case {case}: the first blocked word, in list order"
                );
            }
            // The disguise changes nothing: the plain text gets the same verdict.
            assert_eq!(
                list.find_in(&plain).is_some(),
                got.is_some(),
                "case {case}: {blocked:?}: {plain:?} vs its disguise {text:?}"
            );
        }
        // Every prefix, as the loops see the text grow.
        for (end, _) in text.char_indices().skip(1) {
            let prefix = &text[..end];
            assert_eq!(
                first_refused_control(prefix),
                oracle::refused(prefix),
                "case {case}: {prefix:?}"
            );
            assert_eq!(
                list.allows(prefix),
                allowed_by_oracle(prefix),
                "case {case}: {blocked:?} in prefix {prefix:?}"
            );
            checked += 1;
        }
        if got.is_some() {
            flagged += 1;
            if text != plain {
                disguised_flagged += 1;
            }
        }
    }
    assert!(
        flagged >= 150 && disguised_flagged >= 100 && displayed >= 60,
        "only {flagged} texts flagged ({disguised_flagged} disguised, {displayed} with controls): the test does not exercise the blocklist"
    );
    assert!(checked > 5000);
}

#[test]
fn no_step_ever_writes_a_blocked_word() {
    let lm = lm();
    let scorer = scorer();
    let target = target_of(&scorer, "crop32.png");
    let prompts = ["An image of ", "A photo of", "Here is", "The"];
    // Words the unguided model actually writes, so that blocking bites.
    let mut likely: Vec<String> = Vec::new();
    for prompt in prompts {
        let result = describe(
            &lm,
            &scorer,
            &target,
            &options(prompt, 30, 12, Strategy::Seed, Blocklist::default()),
            |_| Ok(()),
        )
        .unwrap();
        likely.extend(
            result.text[prompt.len()..]
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.len() >= 2)
                .map(String::from),
        );
    }
    assert!(likely.len() >= 5, "{likely:?}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut blocked_steps = 0;
    for case in 0..60 {
        let substrings = rng.random_bool(0.3);
        let mut words = Vec::new();
        for _ in 0..rng.random_range(1..5) {
            if rng.random_bool(0.7) {
                let word = &likely[rng.random_range(0..likely.len())];
                // Sometimes only part of a word, which matters in substring mode.
                let end = if substrings {
                    rng.random_range(1..=word.len())
                } else {
                    word.len()
                };
                words.push(
                    word[..word.char_indices().nth(end).map_or(word.len(), |(i, _)| i)].to_string(),
                );
            } else {
                let len = rng.random_range(1..4);
                words.push(
                    (0..len)
                        .map(|_| rng.random_range(b'a'..=b'z') as char)
                        .collect(),
                );
            }
        }
        // Sometimes the list is written in disguise; it must still block the plain words.
        if rng.random_bool(0.3) {
            words = words.iter().map(|w| disguise::apply(w, &mut rng)).collect();
        }
        let prompt = prompts[rng.random_range(0..prompts.len())];
        if words
            .iter()
            .any(|w| contains_blocked(prompt, w, substrings))
        {
            continue;
        }
        let strategy = [
            Strategy::Seed,
            Strategy::Seed,
            Strategy::Magic,
            Strategy::Beam,
        ][rng.random_range(0..4)];
        let k = rng.random_range(1..40);
        let blocklist = Blocklist::new(&words, substrings).unwrap();
        let mut opts = options(prompt, k, rng.random_range(1..12), strategy, blocklist);
        opts.beam.width = rng.random_range(1..5);
        if rng.random_bool(0.5) {
            opts.scored_text = ScoredText::Generated;
        }
        let mut texts = Vec::new();
        let result = describe(&lm, &scorer, &target, &opts, |event| {
            texts.push(event.text.clone());
            Ok(())
        })
        .unwrap();
        texts.push(result.text.clone());
        for text in &texts {
            for word in &words {
                assert!(
                    !contains_blocked(text, word, substrings),
                    "case {case}: {word:?} in {text:?} (substrings {substrings})"
                );
            }
        }
        // The same run without the blocklist: did blocking bite?
        let mut free_opts = opts.clone();
        free_opts.blocklist = Blocklist::default();
        let mut free_texts = Vec::new();
        describe(&lm, &scorer, &target, &free_opts, |event| {
            free_texts.push(event.text.clone());
            Ok(())
        })
        .unwrap();
        if free_texts
            .iter()
            .any(|t| words.iter().any(|w| contains_blocked(t, w, substrings)))
        {
            blocked_steps += 1;
        }
    }
    assert!(
        blocked_steps >= 5,
        "the blocklist changed only {blocked_steps} runs: the test does not exercise it"
    );
}

#[test]
fn all_candidates_blocked_ends_the_step_with_a_message() {
    let lm = lm();
    let scorer = scorer();
    let target = target_of(&scorer, "crop32.png");
    let ids = lm.encode("An image of ").unwrap();
    let logits = lm.next_logits(&ids, &mut lm.new_cache()).unwrap();
    let best = top_k(&logits, 1).unwrap()[0];
    let word = lm.decode(&[best]).unwrap().trim().to_string();
    let blocklist = Blocklist::new([word.as_str()], true).unwrap();
    let result = describe(
        &lm,
        &scorer,
        &target,
        &options("An image of ", 1, 5, Strategy::Seed, blocklist),
        |_| Ok(()),
    )
    .unwrap();
    assert!(result.token_ids.is_empty());
    assert_eq!(result.text, "An image of ");
    assert!(result.stop_reason.unwrap().contains("blocked word"));
    let err = describe(
        &lm,
        &scorer,
        &target,
        &options(
            "An image of a cat",
            5,
            5,
            Strategy::Seed,
            Blocklist::new(["cat"], false).unwrap(),
        ),
        |_| Ok(()),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("prompt contains the blocked word"));
}

#[test]
fn text_targets_combine_as_weighted_normalised_sum() {
    let scorer = scorer();
    let a = scorer.embed_text("a photo of a cat").unwrap();
    let b = scorer.embed_text("a photo of a dog").unwrap();
    let combined = combine(&[
        TargetPart {
            embedding: a.clone(),
            weight: 2.0,
        },
        TargetPart {
            embedding: b.clone(),
            weight: -1.0,
        },
    ])
    .unwrap();
    let (na, nb) = (normalize(&a), normalize(&b));
    let manual = normalize(
        &na.iter()
            .zip(&nb)
            .map(|(x, y)| 2.0 * x - y)
            .collect::<Vec<_>>(),
    );
    for (x, y) in combined.iter().zip(&manual) {
        assert!((x - y).abs() < 1e-6);
    }
    assert!(combine(&[
        TargetPart {
            embedding: a.clone(),
            weight: 1.0
        },
        TargetPart {
            embedding: a,
            weight: -1.0
        }
    ])
    .is_err());
    assert!(combine(&[]).is_err());
    // Steering toward a text target raises similarity to it over the unguided LM's top-1 choice.
    let lm = lm();
    let target = normalize(&scorer.embed_text("a photo of a cat").unwrap());
    let guided = describe(
        &lm,
        &scorer,
        &target,
        &options("An image of ", 30, 6, Strategy::Seed, Blocklist::default()),
        |_| Ok(()),
    )
    .unwrap();
    let unguided = describe(
        &lm,
        &scorer,
        &target,
        &options("An image of ", 1, 6, Strategy::Seed, Blocklist::default()),
        |_| Ok(()),
    )
    .unwrap();
    assert!(
        guided.similarity > unguided.similarity,
        "{} vs {}",
        guided.similarity,
        unguided.similarity
    );
}

#[test]
fn magic_picks_the_best_magic_score_from_independently_computed_parts() {
    let lm = lm();
    let scorer = scorer();
    let target = target_of(&scorer, "odd_47x61.png");
    let prompt = "An image of ";
    let k = 8;
    // Step 0 from scratch: each candidate run through the whole model on its own.
    let ids = lm.encode(prompt).unwrap();
    let (logits, history) = lm
        .next_logits_and_hidden(&ids, &mut lm.new_cache())
        .unwrap();
    let candidates = top_k(&logits, k).unwrap();
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    let total: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    let probabilities: Vec<f32> = candidates
        .iter()
        .map(|&c| (logits[c as usize] - max).exp() / total)
        .collect();
    let cos = |a: &[f32], b: &[f32]| {
        let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        d / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
            * b.iter().map(|x| x * x).sum::<f32>().sqrt())
    };
    let mut degeneration = Vec::new();
    let mut phrases = Vec::new();
    for &c in &candidates {
        let full = [ids.clone(), vec![c]].concat();
        let (_, hidden) = lm
            .next_logits_and_hidden(&full, &mut lm.new_cache())
            .unwrap();
        let own = hidden.last().unwrap();
        degeneration.push(history.iter().map(|h| cos(own, h)).fold(f32::MIN, f32::max));
        phrases.push(lm.decode(&full).unwrap());
    }
    let sims: Vec<f32> = phrases
        .iter()
        .map(|p| {
            normalize(&scorer.embed_text(p).unwrap())
                .iter()
                .zip(&target)
                .map(|(a, b)| a * b)
                .sum()
        })
        .collect();
    // The encoder's own temperature, and an explicit one (--magic-scale).
    for scale in [None, Some(3.0f32)] {
        let params = MagicParams {
            scale,
            ..MagicParams::default()
        };
        let mut opts = options(prompt, k, 3, Strategy::Magic, Blocklist::default());
        opts.magic = params;
        let result = describe(&lm, &scorer, &target, &opts, |_| Ok(())).unwrap();
        assert_eq!(result.token_ids.len(), 3);
        let used = scale.unwrap_or_else(|| scorer.logit_scale());
        let scores = magic_scores(&probabilities, &degeneration, &sims, used, params);
        let best = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(result.token_ids[0], candidates[best], "scale {scale:?}");
    }
}

#[test]
fn sentence_ends_are_recognised() {
    for token in [".", " end.", "!", "?", " ok!\n", "..."] {
        assert!(ends_sentence(token), "{token:?}");
    }
    for token in [" cat", ",", " e.g"] {
        assert!(!ends_sentence(token), "{token:?}");
    }
}

/// Log-probability of `token` after `ids`, from a fresh forward pass.
fn log_prob_after(lm: &Gpt2Lm, ids: &[u32], token: u32) -> f64 {
    let logits = lm.next_logits(ids, &mut lm.new_cache()).unwrap();
    let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let total: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[token as usize] as f64 - max - total.ln()
}

fn similarity_of(scorer: &ClipScorer, text: &str, target: &[f32]) -> f32 {
    normalize(&scorer.embed_text(text).unwrap())
        .iter()
        .zip(target)
        .map(|(a, b)| a * b)
        .sum()
}

/// With a beam wide enough to keep every path, beam search is exhaustive: its answer must be the
/// best of all k^n texts by similarity + fluency × mean log-prob, each enumerated and scored here
/// from scratch (fresh forward passes, whole-text embeddings).
/// The result reports the similarity of `seen` (the text the encoder saw) and the LM's own
/// log-probability of its tokens, recomputed one token at a time; returns that log-probability.
fn assert_reported_honestly(
    lm: &Gpt2Lm,
    scorer: &ClipScorer,
    target: &[f32],
    prompt_ids: &[u32],
    seen: &str,
    result: &DescribeResult,
    case: &str,
) -> f64 {
    let want = similarity_of(scorer, seen, target);
    assert!(
        (result.similarity - want).abs() < 1e-5,
        "{case}: similarity {} vs {want}",
        result.similarity
    );
    let mut ids = prompt_ids.to_vec();
    let mut log_prob = 0.0;
    for &token in &result.token_ids {
        log_prob += log_prob_after(lm, &ids, token);
        ids.push(token);
    }
    assert!(
        (result.log_prob - log_prob).abs() < 1e-3,
        "{case}: log-prob {} vs {log_prob}",
        result.log_prob
    );
    log_prob
}

#[test]
fn a_beam_with_room_for_every_path_returns_the_best_scoring_text() {
    let lm = lm();
    let scorer = scorer();
    let target = target_of(&scorer, "crop32.png");
    let prompt = "An image of ";
    let (k, depth, fluency) = (3usize, 3usize, 0.02f32);
    let prompt_ids = lm.encode(prompt).unwrap();
    let eos = lm.eos_token_ids();
    // Every path: (generated ids, sum of log-probs).
    let mut leaves: Vec<(Vec<u32>, f64)> = Vec::new();
    let mut frontier: Vec<(Vec<u32>, f64)> = vec![(Vec::new(), 0.0)];
    for level in 0..depth {
        let mut next = Vec::new();
        for (generated, log_prob) in frontier {
            let ids = [prompt_ids.clone(), generated.clone()].concat();
            let logits = lm.next_logits(&ids, &mut lm.new_cache()).unwrap();
            for token in top_k(&logits, k).unwrap() {
                if eos.contains(&token) {
                    // Ending keeps the text as it is; an empty text cannot end.
                    if level > 0 {
                        leaves.push((generated.clone(), log_prob));
                    }
                    continue;
                }
                let extended = [generated.clone(), vec![token]].concat();
                next.push((extended, log_prob + log_prob_after(&lm, &ids, token)));
            }
        }
        frontier = next;
    }
    leaves.extend(frontier);
    let scored: Vec<(Vec<u32>, f32)> = leaves
        .into_iter()
        .map(|(generated, log_prob)| {
            let text = lm.decode(&generated).unwrap();
            let similarity = similarity_of(&scorer, &text, &target);
            let score = similarity + fluency * (log_prob / generated.len() as f64) as f32;
            (generated, score)
        })
        .collect();
    let best = scored.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();

    let mut opts = options(prompt, k, depth, Strategy::Beam, Blocklist::default());
    opts.beam = BeamParams {
        width: k.pow(depth as u32),
        fluency,
        ..BeamParams::default()
    };
    opts.scored_text = ScoredText::Generated;
    let mut steps = 0;
    let result = describe(&lm, &scorer, &target, &opts, |_| {
        steps += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(steps, depth);
    let got = beam_score(
        result.similarity,
        result.log_prob,
        result.token_ids.len(),
        fluency,
    );
    assert!(
        result.token_ids == best.0 || (got - best.1).abs() < 1e-5,
        "beam chose {:?} ({got}), the best is {:?} ({})",
        result.token_ids,
        best.0,
        best.1
    );
    assert!((got - best.1).abs() < 1e-4, "{got} vs {}", best.1);
    // What the result reports about itself holds when recomputed.
    let text = lm.decode(&result.token_ids).unwrap();
    assert_eq!(result.text, format!("{prompt}{text}"));
    let similarity = similarity_of(&scorer, &text, &target);
    assert!((result.similarity - similarity).abs() < 1e-5);
}

/// A narrow beam prunes: it must still return a finished or live hypothesis it really scored,
/// and with width 1 and no fluency term it is the seed loop's greedy choice on generated text.
#[test]
fn a_width_one_beam_without_fluency_is_greedy_by_similarity() {
    let lm = lm();
    let scorer = scorer();
    let target = target_of(&scorer, "odd_47x61.png");
    let mut seed = options("A photo of", 12, 6, Strategy::Seed, Blocklist::default());
    seed.scored_text = ScoredText::Generated;
    let mut beam = seed.clone();
    beam.strategy = Strategy::Beam;
    beam.beam = BeamParams {
        width: 1,
        fluency: 0.0,
        ..BeamParams::default()
    };
    let greedy = describe(&lm, &scorer, &target, &seed, |_| Ok(())).unwrap();
    assert!(
        !greedy.token_ids.contains(&lm.eos_token_ids()[0]),
        "the fixture case must not end the text, or the two loops differ by design"
    );
    let searched = describe(&lm, &scorer, &target, &beam, |_| Ok(())).unwrap();
    assert_eq!(searched.token_ids, greedy.token_ids);
    assert_eq!(searched.text, greedy.text);
    // The seed loop's LM steps run one row through the row-split kernel, the beam's run every
    // candidate through gemm: equal sums in another order, so equal to float rounding (each is
    // held to transformers at 1e-4 by the parity tests), not to the bit.
    let tolerance = 1e-5 * greedy.log_prob.abs().max(1.0);
    assert!(
        (searched.log_prob - greedy.log_prob).abs() <= tolerance,
        "log-prob {} (beam) vs {} (greedy)",
        searched.log_prob,
        greedy.log_prob
    );
}

/// Generated-only scoring leaves the prompt out of what the encoder sees, in every loop, and the
/// reported log-probability is the LM's, recomputed token by token.
#[test]
fn generated_text_scoring_and_log_prob_hold_when_recomputed() {
    let lm = lm();
    let scorer = scorer();
    let target = target_of(&scorer, "crop32.png");
    let prompt = "Here is";
    let prompt_ids = lm.encode(prompt).unwrap();
    for strategy in [Strategy::Seed, Strategy::Magic, Strategy::Beam] {
        for scored_text in [ScoredText::Full, ScoredText::Generated] {
            let mut opts = options(prompt, 10, 5, strategy, Blocklist::default());
            opts.scored_text = scored_text;
            let result = describe(&lm, &scorer, &target, &opts, |_| Ok(())).unwrap();
            let seen = match scored_text {
                ScoredText::Full => result.text.clone(),
                ScoredText::Generated => lm.decode(&result.token_ids).unwrap(),
            };
            let case = format!("{strategy:?} {scored_text:?}");
            let log_prob =
                assert_reported_honestly(&lm, &scorer, &target, &prompt_ids, &seen, &result, &case);
            assert!(
                (result.mean_nll() + log_prob / result.token_ids.len().max(1) as f64).abs() < 1e-3,
                "{case}"
            );
        }
    }
}

/// The beam's diversity penalty and lookahead only change which hypotheses it keeps: the result
/// still reports its own text's similarity and log-probability (not its completion's), the
/// states the lookahead stepped are the ones the beam goes on from, and no text it streams or
/// returns holds a blocked word.
#[test]
fn beam_diversity_and_lookahead_keep_results_honest_and_words_blocked() {
    let lm = lm();
    let scorer = scorer();
    let target = target_of(&scorer, "crop32.png");
    let prompt = "Here is";
    let prompt_ids = lm.encode(prompt).unwrap();
    let free = {
        let opts = options(prompt, 10, 6, Strategy::Beam, Blocklist::default());
        describe(&lm, &scorer, &target, &opts, |_| Ok(())).unwrap()
    };
    // Block a word the unblocked beam writes, so that blocking bites.
    let word = free.text[prompt.len()..]
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| w.len() >= 2)
        .expect("the fixture beam writes a word")
        .to_string();
    for (diversity, lookahead) in [(0.0, 3), (0.05, 0), (0.05, 2)] {
        for blocked in [false, true] {
            let blocklist = if blocked {
                Blocklist::new([&word], false).unwrap()
            } else {
                Blocklist::default()
            };
            let mut opts = options(prompt, 10, 6, Strategy::Beam, blocklist);
            opts.scored_text = ScoredText::Generated;
            opts.beam.width = 3;
            opts.beam.diversity = diversity;
            opts.beam.lookahead = lookahead;
            let mut texts = Vec::new();
            let result = describe(&lm, &scorer, &target, &opts, |event| {
                texts.push(event.text.clone());
                Ok(())
            })
            .unwrap();
            texts.push(result.text.clone());
            let case = format!("diversity {diversity}, lookahead {lookahead}, blocked {blocked}");
            if blocked {
                for text in &texts {
                    assert!(!contains_blocked(text, &word, false), "{case}: {text:?}");
                }
            }
            let seen = lm.decode(&result.token_ids).unwrap();
            assert_reported_honestly(&lm, &scorer, &target, &prompt_ids, &seen, &result, &case);
        }
    }
}

/// With sentences asked for, beam's closing window ends every answer as a sentence (its own
/// sentence mark, the LM's greedy completion to one, or the offered period), and whichever of
/// these the answer is, it reports its own text's similarity and log-probability and writes no
/// blocked word.
#[test]
fn a_beam_asked_for_sentences_ends_its_answer_and_reports_it_honestly() {
    let lm = lm();
    let scorer = scorer();
    let blocklist = Blocklist::new(["the", "and"], false).unwrap();
    for (prompt, image) in [
        ("An image of ", "crop32.png"),
        ("Here is", "odd_47x61.png"),
        ("A photo of", "crop32.png"),
    ] {
        let target = target_of(&scorer, image);
        let prompt_ids = lm.encode(prompt).unwrap();
        let mut opts = options(prompt, 8, 12, Strategy::Beam, blocklist.clone());
        opts.stop_at_sentence_end = true;
        opts.scored_text = ScoredText::Generated;
        opts.beam = BeamParams {
            width: 3,
            close_within: 12,
            ..BeamParams::default()
        };
        let result = describe(&lm, &scorer, &target, &opts, |_| Ok(())).unwrap();
        let case = format!("{prompt:?}: {:?}", result.text);
        let last = *result.token_ids.last().expect("a text");
        let ended_by_eos = result.token_ids.len() < 12;
        assert!(
            ended_by_eos || ends_sentence(&lm.decode(&[last]).unwrap()),
            "{case}: cut at the limit"
        );
        let seen = lm.decode(&result.token_ids).unwrap();
        assert_reported_honestly(&lm, &scorer, &target, &prompt_ids, &seen, &result, &case);
        assert_eq!(
            blocklist.find_in(&result.text[prompt.len()..]),
            None,
            "{case}"
        );
    }
}

/// Issue 29: what a terminal or a bidi-aware display draws from letters that spell no blocked
/// word. Each form is refused (no text holding it is ever written), and where a display would
/// draw the blocked word the refusal names the word, as for a prompt.
#[test]
fn the_blocklist_refuses_what_a_display_acts_on_instead_of_drawing() {
    use clipsteer::steer::constraints::is_refused_control;
    let list = Blocklist::new(["dog"], false).unwrap();
    let drawn_as_dog: &[(&str, &str)] = &[
        // Escape sequences other than CSI and OSC (ECMA-35 nF, ECMA-48 Fp, Fe, Fs).
        ("nF: designate G0", "d\u{1b}(Bog"),
        ("nF: two intermediates", "d\u{1b}$)Aog"),
        ("nF: DECALN", "d\u{1b}#8og"),
        ("Fp: save cursor", "d\u{1b}7og"),
        ("Fp: keypad mode", "d\u{1b}=og"),
        ("Fe: SS2, 7-bit", "d\u{1b}Nog"),
        ("Fe: SS3, 7-bit", "d\u{1b}Oog"),
        ("SS2, 8-bit", "d\u{8e}og"),
        ("SS3, 8-bit", "d\u{8f}og"),
        ("Fs: index", "d\u{1b}`og"),
        // Control sequences, 7-bit and 8-bit.
        ("CSI SGR", "d\u{1b}[1mog"),
        ("CSI, 8-bit", "d\u{9b}4mog"),
        ("CSI private mode", "d\u{1b}[?25log"),
        // Control strings, 7-bit and 8-bit, ended by ST in both forms or by BEL.
        ("DCS 7-bit", "d\u{1b}Pq#0;2\u{1b}\\og"),
        ("DCS 8-bit", "d\u{90}q#0;2\u{9c}og"),
        ("SOS 7-bit", "d\u{1b}Xhidden\u{1b}\\og"),
        ("SOS 8-bit", "d\u{98}hidden\u{9c}og"),
        ("OSC 7-bit, BEL", "d\u{1b}]0;title\u{7}og"),
        ("OSC 8-bit, BEL", "d\u{9d}0;title\u{7}og"),
        ("OSC 8-bit, ST", "d\u{9d}0;title\u{9c}og"),
        ("OSC 8-bit, ESC \\", "d\u{9d}8;;http://x\u{1b}\\og"),
        ("PM 7-bit", "d\u{1b}^private\u{1b}\\og"),
        ("PM 8-bit", "d\u{9e}private\u{9c}og"),
        ("APC 7-bit", "d\u{1b}_app\u{1b}\\og"),
        ("APC 8-bit", "d\u{9f}app\u{9c}og"),
        // CAN and SUB cut a sequence or string short; what follows is drawn.
        ("CAN in CSI", "d\u{1b}[1\u{18}og"),
        ("SUB in OSC", "d\u{1b}]0;t\u{1a}og"),
        ("CAN in DCS", "d\u{90}q\u{18}og"),
        // An unterminated string swallows the rest of the text.
        ("unterminated DCS", "dog\u{1b}Pq never ended"),
        ("unterminated APC, 8-bit", "dog\u{9f}never ended"),
        // Overprinting: backspace, carriage return, cursor movement and erasure.
        ("BS", "dox\u{8}g"),
        ("two BS", "dXg\u{8}\u{8}o"),
        ("CR", "xog\rd"),
        ("CUB", "dxg\u{1b}[2Do"),
        ("CUB default", "dogx\u{1b}[D "),
        ("CUB 8-bit", "dxg\u{9b}2Do"),
        ("CHA", "xog\u{1b}[Gd"),
        ("CHA 1", "xog\u{1b}[1Gd"),
        ("HPA", "xog\u{1b}[1`d"),
        ("CUP", "xog\u{1b}[1;1Hd"),
        ("save and restore", "\u{1b}7xog\u{1b}8d"),
        ("SCOSC/SCORC", "\u{1b}[sxog\u{1b}[ud"),
        ("EL", "dogs\u{8}\u{1b}[K"),
        ("ECH", "dogs\u{8}\u{1b}[X"),
        ("DCH", "doXg\u{1b}[2D\u{1b}[P"),
        ("CUU", "xog\n\u{1b}[Ad"),
        ("RI", "xog\n\u{8d}d"),
        // Line breaks that some displays draw as nothing.
        ("NEL", "do\u{85}g"),
        ("VT", "do\u{b}g"),
        ("FF", "do\u{c}g"),
        ("LINE SEPARATOR", "do\u{2028}g"),
        ("PARAGRAPH SEPARATOR", "do\u{2029}g"),
        // Bidi controls: overrides draw letters in reverse; the marks and isolates draw nothing.
        ("RLO", "\u{202E}god"),
        ("RLO … PDF", "a \u{202E}god\u{202C} here"),
        ("RLO in RLI", "\u{2067}\u{202E}god\u{202C}\u{2069}"),
        ("LRO in RLO", "\u{202E}\u{202D}dog\u{202C}\u{202C}"),
        ("LRE", "d\u{202A}og"),
        ("RLE", "d\u{202B}og"),
        ("LRI", "d\u{2066}og"),
        ("FSI", "d\u{2068}og\u{2069}"),
        ("LRM", "d\u{200E}og"),
        ("RLM", "d\u{200F}og"),
        ("ALM", "d\u{61C}og"),
        // Other C0 controls and DEL.
        ("NUL", "d\u{0}og"),
        ("DEL", "d\u{7f}og"),
    ];
    for (form, text) in drawn_as_dog {
        assert!(!list.allows(text), "{form}: {text:?} allowed");
        assert_eq!(
            list.refusal(text),
            Some(Refusal::Word("dog")),
            "{form}: {text:?}"
        );
        assert!(
            oracle::refused(text).is_some(),
            "{form}: the oracle refuses {text:?} too"
        );
    }
    // Controls with no blocked word drawn: refused all the same, by the first of them.
    for (text, first) in [
        ("a \u{1b}[1mcat", '\u{1b}'),
        ("cat\u{8}", '\u{8}'),
        ("cat\rbat", '\r'),
        ("cat\r", '\r'),
        ("\u{202E}tac", '\u{202E}'),
        ("ca\u{85}t", '\u{85}'),
        ("ca\u{2028}t", '\u{2028}'),
        ("a\u{9b}1mb", '\u{9b}'),
    ] {
        assert_eq!(
            list.refusal(text),
            Some(Refusal::Control(first)),
            "{text:?}"
        );
        assert!(!list.allows(text));
        assert_eq!(first_refused_control(text), oracle::refused(text));
    }
    // What overprints nothing stays allowed: tab, line feed and CR LF.
    for text in [
        "a\tcat",
        "a cat\nand a bird",
        "a cat\r\nand a bird\r\n",
        "do g",
        "do\ng",
    ] {
        assert!(list.allows(text), "{text:?}");
        assert_eq!(first_refused_control(text), None);
    }
    assert_eq!(
        Blocklist::new(["hot dog"], false)
            .unwrap()
            .refusal("a hot\r\ndog"),
        Some(Refusal::Word("hot dog"))
    );
    // A drawn reading never hides the plain text's word, and needs controls to be taken at all.
    assert_eq!(
        list.refusal("a dog\u{8}\u{8}\u{8}cat"),
        Some(Refusal::Word("dog"))
    );
    assert_eq!(
        list.find_in("d\u{1b}[og"),
        None,
        "CSI ends at `o`: `d` `g` drawn"
    );
    // With no blocklist nothing is refused: controls are text like any other.
    assert!(Blocklist::default().allows("d\u{1b}[1mog\u{8}\r\u{202E}"));
    assert!(is_refused_control('\u{1b}') && !is_refused_control('\n'));
}

/// Every code point is refused exactly when ICU's properties say it is a control (but tab and
/// line feed), a line or paragraph separator, or a bidi control.
#[test]
fn refused_characters_are_exactly_the_controls_separators_and_bidi_controls() {
    use clipsteer::steer::constraints::is_refused_control;
    let mut refused = 0;
    for c in (0..=0x10FFFF).filter_map(char::from_u32) {
        let text = c.to_string();
        assert_eq!(
            is_refused_control(c),
            oracle::refused(&text).is_some(),
            "U+{:04X}",
            c as u32
        );
        refused += usize::from(is_refused_control(c));
    }
    // 65 controls less tab and line feed, the two separators, 12 bidi controls.
    assert_eq!(refused, 63 + 2 + 12);
}

/// A prompt is the start of every text describe writes: one that hides a blocked word among
/// controls is refused for the word, as a plain one is, and one with controls but no such word
/// is refused for the control it holds, before any model runs; without a blocklist both pass.
#[test]
fn prompts_holding_controls_are_refused_with_the_word_or_the_control() {
    let lm = lm();
    let scorer = scorer();
    let target = target_of(&scorer, "crop32.png");
    let block = || Blocklist::new(["dog"], false).unwrap();
    for prompt in [
        "A dox\u{8}g",
        "A d\u{1b}(Bog",
        "A \u{202E}god\u{202C}",
        "A d\u{90}q\u{9c}og",
        "A xog\u{1b}[3Dd",
    ] {
        let err = describe(
            &lm,
            &scorer,
            &target,
            &options(prompt, 5, 2, Strategy::Seed, block()),
            |_| Ok(()),
        )
        .err()
        .unwrap_or_else(|| panic!("{prompt:?} accepted"));
        assert_eq!(
            err.to_string(),
            "the prompt contains the blocked word 'dog'; change the prompt or the blocklist",
            "{prompt:?}"
        );
    }
    let err = describe(
        &lm,
        &scorer,
        &target,
        &options("A photo\u{1b}[1m of", 5, 2, Strategy::Seed, block()),
        |_| Ok(()),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.starts_with("the prompt contains U+001B (ESCAPE), which a terminal"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    // A CR LF in the prompt is a plain line break.
    let result = describe(
        &lm,
        &scorer,
        &target,
        &options("A photo\r\nof", 5, 2, Strategy::Seed, block()),
        |_| Ok(()),
    )
    .unwrap();
    assert!(result.text.starts_with("A photo\r\nof"));
    describe(
        &lm,
        &scorer,
        &target,
        &options(
            "A photo\u{1b}[1m of",
            5,
            2,
            Strategy::Seed,
            Blocklist::default(),
        ),
        |_| Ok(()),
    )
    .unwrap();
}

/// Through the CLI, over GPT-2's whole vocabulary: a `--scorer-cmd` program that wants control
/// characters (GPT-2 has a byte token for each C0 control and DEL, and writes C1 and bidi controls
/// as two or three) and the word itself. Unblocked, describe writes controls; with `--block dog`
/// no streamed or final text holds a control or the word, by the oracle, in every strategy.
#[test]
fn describe_over_the_whole_vocabulary_never_writes_controls_or_the_word() {
    let program = r#"import json, re, sys
def refused(c):
    o = ord(c)
    return (o < 32 and c not in "\t\n") or 0x7f <= o <= 0x9f or c in "\u2028\u2029\u061c\u200e\u200f" or 0x202a <= o <= 0x202e or 0x2066 <= o <= 0x2069
def score(t):
    controls = sum(map(refused, t))
    letters = "".join(c for c in t if not refused(c)).lower()
    words = re.findall(r"\w+", letters)
    return 1000 * controls + 100 * words.count("dog") + sum(letters.count(c) for c in "dog")
for line in sys.stdin:
    items = json.loads(line)["items"]
    print(json.dumps({"scores": [score(t["text"]) for t in items]}), flush=True)
"#;
    let tmp = TempDir::new("display-controls");
    let script = tmp.0.join("score.py");
    std::fs::write(&script, program).unwrap();
    let command = format!("python3 {}", script.display());
    let lm = f("gpt2-tiny");
    let texts_of = |strategy: &str, block: bool| -> Vec<String> {
        let mut args = vec![
            "describe",
            "--json",
            "--scorer-cmd",
            &command,
            "--lm",
            &lm,
            "--prompt",
            "A",
            "--strategy",
            strategy,
            "--max-tokens",
            // Every step decodes and checks all 50257 candidates (the beam's, twice as many).
            if strategy == "beam" { "2" } else { "3" },
            "--top-k",
            "50257",
        ];
        if strategy == "beam" {
            args.extend(["--beam-width", "2"]);
        }
        if block {
            args.extend(["--block", "dog"]);
        }
        let output = run(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
            .lines()
            .filter_map(|l| {
                let line: serde_json::Value = serde_json::from_str(l).unwrap();
                line["text"].as_str().map(String::from)
            })
            .collect()
    };
    for strategy in ["seed", "beam"] {
        let free = texts_of(strategy, false);
        assert!(
            free.iter().any(|t| oracle::refused(t).is_some()),
            "{strategy}: unblocked, the program's choice writes controls: {free:?}"
        );
        let blocked = texts_of(strategy, true);
        assert!(blocked.len() >= 3, "{strategy}: {blocked:?}");
        for text in &blocked {
            assert_eq!(oracle::refused(text), None, "{strategy}: {text:?}");
            assert!(
                !contains_blocked(text, "dog", false),
                "{strategy}: {text:?}"
            );
        }
        // Blocked, the program still steers: the last text holds letters of the word it wants.
        let last = blocked.last().unwrap();
        assert!(
            last.len() > 1 && last.contains(['d', 'o', 'g']),
            "{strategy}: {last:?}"
        );
    }
}
