//! The fuzz targets' harness functions (clipsteer_server::harness, run by fuzz/) over the seed
//! corpora and a set of hostile inputs built here: no input panics, and each is accepted or
//! refused as it should be.

mod serve_support;

use clipsteer_server::harness::{decode_and_preprocess, params};
use serve_support::*;
use std::path::Path;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
        })
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn every_image_seed_decodes_to_clip_pixels() {
    let seeds = seeds("decode_image");
    assert_eq!(
        seeds.len(),
        8,
        "{:?}",
        seeds.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    for (name, bytes) in &seeds {
        assert_eq!(
            decode_and_preprocess(bytes),
            Some(vec![3, 32, 32]),
            "{name}"
        );
    }
}

#[test]
fn hostile_images_are_refused_without_a_panic() {
    let gif_bomb = {
        // A GIF whose logical screen and only frame claim 65535×65535.
        let mut gif = b"GIF89a\xff\xff\xff\xff\x00\x00\x00".to_vec();
        gif.extend_from_slice(b",\x00\x00\x00\x00\xff\xff\xff\xff\x00\x02\x02\x44\x01\x00;");
        gif
    };
    let bmp_bomb = {
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&[0; 12]);
        bmp.extend_from_slice(&40u32.to_le_bytes());
        bmp.extend_from_slice(&100_000i32.to_le_bytes());
        bmp.extend_from_slice(&100_000i32.to_le_bytes());
        bmp.extend_from_slice(&[1, 0, 24, 0]);
        bmp.extend_from_slice(&[0; 24]);
        bmp
    };
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("PNG signature only", b"\x89PNG\r\n\x1a\n".to_vec()),
        ("a text file", b"name,age\nBob,3\n".to_vec()),
        ("30000x30000 PNG header", huge_header_png(30_000, 30_000)),
        ("over the fuzz limit by one", huge_header_png(1025, 1)),
        ("zero-sized PNG", huge_header_png(0, 0)),
        ("truncated PNG", truncated_png()),
        ("GIF claiming 65535x65535", gif_bomb),
        ("BMP claiming 100000x100000", bmp_bomb),
        ("1000x1 strip", png(1000, 1)),
        ("1x150 strip", png(1, 150)),
    ];
    for (what, bytes) in &refused {
        assert_eq!(decode_and_preprocess(bytes), None, "{what}");
    }
    assert_eq!(decode_and_preprocess(&png(1, 1)), Some(vec![3, 32, 32]));
    assert_eq!(
        decode_and_preprocess(&png(99, 1)),
        Some(vec![3, 32, 32]),
        "99:1 is allowed"
    );
}

#[test]
fn every_prefix_and_byte_flip_of_the_image_seeds_is_survived() {
    let mut runs = 0;
    for (_, bytes) in seeds("decode_image") {
        for end in 0..bytes.len() {
            let _ = decode_and_preprocess(&bytes[..end]);
            runs += 1;
        }
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut mutated = bytes.clone();
                mutated[i] ^= flip;
                let _ = decode_and_preprocess(&mutated);
                runs += 1;
            }
        }
    }
    assert!(runs > 5000, "{runs}");
}

#[test]
fn params_seeds_and_hostile_params() {
    let accepted = [
        "seed-all.json",
        "seed-empty.json",
        "seed-magic.json",
        "seed-sample.json",
    ];
    for (name, bytes) in seeds("params") {
        let outcome = params(&bytes);
        assert_eq!(
            outcome.is_ok(),
            accepted.contains(&name.as_str()),
            "{name}: {outcome:?}"
        );
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{{\"block\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8", b"{\"prompt\":\"\xff\xfe\"}".to_vec()),
        ("100000 nested arrays", deep.into_bytes()),
        ("nested arrays in block", deep_object.into_bytes()),
        ("a number past u64", br#"{"top_k":1e400}"#.to_vec()),
        (
            "a negative zero temperature",
            br#"{"temperature":-0.0}"#.to_vec(),
        ),
        ("NaN spelled out", br#"{"temperature":NaN}"#.to_vec()),
        (
            "a seed past u64",
            br#"{"seed":18446744073709551616}"#.to_vec(),
        ),
        ("a lone surrogate", br#"{"prompt":"\ud800"}"#.to_vec()),
        (
            "duplicate keys, the last wrong",
            br#"{"top_k":5,"top_k":"x"}"#.to_vec(),
        ),
        (
            "a blocked word of spaces",
            br#"{"block":["  "," "]}"#.to_vec(),
        ),
        ("a huge document", vec![b' '; 1 << 20]),
    ];
    for (what, bytes) in &hostile {
        let outcome = params(bytes);
        // Blank words are dropped, so only the list of spaces is valid.
        let valid = *what == "a blocked word of spaces";
        assert_eq!(outcome.is_ok(), valid, "{what}: {outcome:?}");
    }
    assert_eq!(params(br#"{"seed":18446744073709551615}"#), Ok(()));
    assert_eq!(
        params("{\"prompt\":\"Ein Bild von 🐈 \"}".as_bytes()),
        Ok(())
    );
}
