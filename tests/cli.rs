//! The command line as scripts use it: JSON shapes, batch behaviour, and one-line errors.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A failure that prints exactly one line, starting "error:", containing `needle`.
fn assert_one_line_error(output: &Output, needle: &str) {
    assert!(
        !output.status.success(),
        "expected failure, stdout: {}",
        stdout(output)
    );
    let err = stderr(output);
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("error:"), "{err}");
    assert!(lines[0].contains(needle), "missing {needle:?} in: {err}");
}

fn embedding(output: &Output) -> Vec<f32> {
    assert!(output.status.success(), "{}", stderr(output));
    let text = stdout(output);
    assert_eq!(text.lines().count(), 1, "exactly one JSON object: {text}");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let object = value.as_object().unwrap();
    assert_eq!(object.len(), 1, "only the embedding key: {text}");
    object["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn embed_prints_reference_features() {
    let reference = reference("clip-gelu");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("reference/manifest.json")).unwrap())
            .unwrap();
    let text = manifest["clip_texts"][1].as_str().unwrap();
    let got = embedding(&run(&[
        "embed",
        "--clip",
        &f("clip-tiny-gelu"),
        "--text",
        text,
    ]));
    let want = &reference["text_1_features"];
    let got = candle_core::Tensor::new(got, &candle_core::Device::Cpu).unwrap();
    assert!(rel_err(&got, want) <= 1e-4);

    let got = embedding(&run(&[
        "embed",
        "--clip",
        &f("clip-tiny-gelu"),
        "--image",
        &f("images/crop30.png"),
    ]));
    let got = candle_core::Tensor::new(got, &candle_core::Device::Cpu).unwrap();
    assert!(cosine(&got, &reference["image_crop30_features"]) >= 0.9999);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn broken_model_directories_give_one_line_errors() {
    let tmp = TempDir::new("broken-models");
    let empty = tmp.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_one_line_error(
        &run(&["embed", "--clip", empty.to_str().unwrap(), "--text", "a"]),
        "config.json",
    );

    let no_tokenizer = tmp.0.join("no-tokenizer");
    copy_dir(&fixture("clip-tiny-gelu"), &no_tokenizer);
    std::fs::remove_file(no_tokenizer.join("tokenizer.json")).unwrap();
    assert_one_line_error(
        &run(&[
            "embed",
            "--clip",
            no_tokenizer.to_str().unwrap(),
            "--text",
            "a",
        ]),
        "tokenizer",
    );

    let truncated = tmp.0.join("truncated");
    copy_dir(&fixture("clip-tiny-gelu"), &truncated);
    let weights = truncated.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_one_line_error(
        &run(&[
            "embed",
            "--clip",
            truncated.to_str().unwrap(),
            "--text",
            "a",
        ]),
        "truncated",
    );

    let lm_missing = run(&[
        "describe",
        &f("images/crop32.png"),
        "--lm",
        empty.to_str().unwrap(),
        "--clip",
        &f("clip-tiny-gelu"),
    ]);
    assert_one_line_error(&lm_missing, "config.json");
    // An encoder given as the LM is named as what it is, not by a field it lacks, and the
    // message says where it goes instead.
    for (dir, kind) in [
        ("clip-tiny-gelu", "an image-text encoder ('clip')"),
        ("minilm-tiny", "a text encoder ('bert')"),
    ] {
        assert_one_line_error(
            &run(&[
                "describe",
                &f("images/crop32.png"),
                "--lm",
                &f(dir),
                "--clip",
                &f("clip-tiny-gelu"),
            ]),
            &format!("is {kind}, not a language model: pass it as --encoder"),
        );
    }

    // Weights that do not fit config.json, with RUST_BACKTRACE set: candle's backtrace must
    // not end up in the message.
    let mismatched = tmp.0.join("mismatched");
    copy_dir(&fixture("clip-tiny-gelu"), &mismatched);
    let config_path = mismatched.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let hidden = config["text_config"]["hidden_size"].as_u64().unwrap();
    config["text_config"]["hidden_size"] = (hidden * 2).into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let output = bin()
        .env("RUST_BACKTRACE", "1")
        .args([
            "embed",
            "--clip",
            mismatched.to_str().unwrap(),
            "--text",
            "a",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&output, "shape mismatch");
    assert!(
        !stderr(&output).contains("candle_core::"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unknown_hub_id_offline_names_model_cache_and_remedy() {
    let output = run(&[
        "embed",
        "--clip",
        "no-such-org/no-such-model",
        "--text",
        "a",
    ]);
    assert_one_line_error(&output, "no-such-org/no-such-model");
    let err = stderr(&output);
    assert!(
        err.contains("clipsteer-test-empty-hf-home"),
        "names where it looked: {err}"
    );
    assert!(
        err.contains("local directory"),
        "says how to supply one: {err}"
    );
    // Not offline, but the hub unreachable: the same kind of message, quickly.
    let output = bin()
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .args([
            "embed",
            "--clip",
            "no-such-org/no-such-model",
            "--text",
            "a",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&output, "no-such-org/no-such-model");
}

#[test]
fn bad_images_give_one_line_errors() {
    let tmp = TempDir::new("bad-images");
    let not_image = tmp.0.join("notes.png");
    std::fs::write(&not_image, "this is not a picture").unwrap();
    let clip = f("clip-tiny-gelu");
    assert_one_line_error(
        &run(&[
            "embed",
            "--clip",
            &clip,
            "--image",
            not_image.to_str().unwrap(),
        ]),
        "not an image",
    );

    let huge = tmp.0.join("wide.png");
    image::RgbImage::new(20_000, 1).save(&huge).unwrap();
    assert_one_line_error(
        &run(&["embed", "--clip", &clip, "--image", huge.to_str().unwrap()]),
        "limit",
    );

    let missing = tmp.0.join("missing.png");
    assert_one_line_error(
        &run(&[
            "embed",
            "--clip",
            &clip,
            "--image",
            missing.to_str().unwrap(),
        ]),
        "no image",
    );
}

#[test]
fn unknown_flag_values_are_rejected() {
    let output = run(&[
        "describe",
        &f("images/crop32.png"),
        "--strategy",
        "nonsense",
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("nonsense"));
    let output = run(&["describe", &f("images/crop32.png"), "--shard", "2/2"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("0 ≤ I < N"));
    // bench names its own flag, not the describe flag it maps to.
    assert_one_line_error(
        &run(&["bench", "--steps", "0"]),
        "--steps must be at least 1",
    );
}

fn describe_args(top_k: usize, max_tokens: usize, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "describe".to_string(),
        "--lm".into(),
        f("gpt2-tiny"),
        "--clip".into(),
        f("clip-tiny-quickgelu"),
        "--top-k".into(),
        top_k.to_string(),
        "--max-tokens".into(),
        max_tokens.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

#[test]
fn describe_json_events_have_the_documented_shape() {
    let image = f("images/crop32.png");
    let output = bin()
        .args(describe_args(20, 8, &[&image, "--json"]))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let events = json_lines(&stdout(&output));
    assert_eq!(events.len(), 9);
    for (i, event) in events[..8].iter().enumerate() {
        assert_eq!(event["event"], "step");
        assert_eq!(event["step"], i);
        for key in ["token_id", "token", "text", "similarity", "top"] {
            assert!(event.get(key).is_some(), "step lacks {key}: {event}");
        }
        let top = event["top"].as_array().unwrap();
        assert!(!top.is_empty() && top.len() <= 5);
        assert!(top[0]["token"].is_string() && top[0]["similarity"].is_number());
    }
    let done = &events[8];
    assert_eq!(done["event"], "done");
    assert_eq!(done["image"], image.as_str());
    let reference: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("reference/describe.json")).unwrap())
            .unwrap();
    assert_eq!(done["token_ids"], reference[0]["generated_ids"]);
    assert_eq!(done["text"], reference[0]["text"]);
    assert!(done["similarity"].is_number() && done["seconds"].is_number());
}

#[test]
fn directories_are_searched_for_every_format_the_decoder_reads() {
    let dir = std::env::temp_dir().join(format!("clipsteer-dir-scan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let empty = dir.join("empty");
    // Nothing to describe is an error that says where it looked, not "already done".
    let output = bin()
        .args(describe_args(5, 2, &[empty.to_str().unwrap()]))
        .output()
        .unwrap();
    assert_one_line_error(&output, "no images in");
    assert!(stderr(&output).contains(".gif .bmp"), "{}", stderr(&output));
    // GIF and BMP decode, so a directory of them is described.
    let picture = image::open(f("images/crop32.png")).unwrap().to_rgb8();
    picture.save(dir.join("a.gif")).unwrap();
    picture.save(dir.join("b.BMP")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let output = bin()
        .args(describe_args(5, 2, &[dir.to_str().unwrap(), "--json"]))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let done: Vec<String> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "done")
        .map(|e| e["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        done[0].ends_with("a.gif") && done[1].ends_with("b.BMP"),
        "{done:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reader_that_leaves_ends_the_run_quietly() {
    // `clipsteer describe --json … | head -1`: the pipe closes after the first event.
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    // More events than a pipe buffers (≈ 200 KB), so the writer must meet the closed pipe.
    let image = f("images/crop32.png");
    let mut extra = vec![image.as_str(); 10];
    extra.push("--json");
    let mut child = bin()
        .args(describe_args(20, 40, &extra))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with(r#"{"event":"step""#), "{first}");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(141), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
}

#[test]
fn describe_errors_are_one_line() {
    assert_one_line_error(
        &bin()
            .args(describe_args(0, 8, &[&f("images/crop32.png")]))
            .output()
            .unwrap(),
        "--top-k",
    );
    assert_one_line_error(
        &bin()
            .args(describe_args(20, 100, &[&f("images/crop32.png")]))
            .output()
            .unwrap(),
        "context",
    );
    // A NaN weight would make every MAGIC score NaN and let the first candidate win silently.
    assert_one_line_error(
        &bin()
            .args(describe_args(
                20,
                4,
                &[
                    &f("images/crop32.png"),
                    "--strategy",
                    "magic",
                    "--magic-beta",
                    "nan",
                ],
            ))
            .output()
            .unwrap(),
        "--magic-beta must be a finite number, got NaN",
    );
    let missing = bin()
        .args(describe_args(20, 8, &["/no/such/image.png"]))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = stderr(&missing);
    assert!(
        err.contains("/no/such/image.png") && !err.contains("panicked"),
        "{err}"
    );
}

/// A directory of `n` images (copies of fixtures) plus one unreadable file.
fn image_dir(tmp: &TempDir, n: usize) -> (PathBuf, Vec<String>) {
    let dir = tmp.0.join("images");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    let sources = [
        "crop32.png",
        "odd_47x61.png",
        "wide_90x40.png",
        "grey_40x33.png",
    ];
    let mut names = Vec::new();
    for i in 0..n {
        let sub = if i % 2 == 0 {
            dir.clone()
        } else {
            dir.join("nested")
        };
        let path = sub.join(format!("img{i:02}.png"));
        std::fs::copy(
            fixture(&format!("images/{}", sources[i % sources.len()])),
            &path,
        )
        .unwrap();
        names.push(path.display().to_string());
    }
    std::fs::write(dir.join("broken.png"), "not an image").unwrap();
    std::fs::write(dir.join("readme.txt"), "ignored: not an image extension").unwrap();
    (dir, names)
}

#[test]
fn batch_goes_on_past_a_bad_image_and_fails_at_the_end() {
    let tmp = TempDir::new("batch");
    let (dir, names) = image_dir(&tmp, 3);
    let out = tmp.0.join("results.jsonl");
    let output = bin()
        .args(describe_args(
            20,
            2,
            &[dir.to_str().unwrap(), "--out", out.to_str().unwrap()],
        ))
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a bad image makes the exit code non-zero"
    );
    let lines = json_lines(&std::fs::read_to_string(&out).unwrap());
    let done: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "done")
        .map(|l| l["image"].as_str().unwrap())
        .collect();
    let errors: Vec<&serde_json::Value> = lines.iter().filter(|l| l["event"] == "error").collect();
    assert_eq!(done.len(), 3);
    for name in &names {
        assert!(done.contains(&name.as_str()), "{name} missing");
    }
    assert_eq!(errors.len(), 1);
    assert!(errors[0]["image"].as_str().unwrap().ends_with("broken.png"));
    assert!(
        stdout(&output).lines().count() == 3,
        "one result line per good image"
    );
    // The error line names the file once: "error: DIR/broken.png: not an image …".
    let broken = dir.join("broken.png").display().to_string();
    let err = stderr(&output);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert_eq!(line.matches(&broken).count(), 1, "{line}");
    assert!(line.starts_with(&format!("error: {broken}: ")), "{line}");
    assert_eq!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .matches(&broken)
            .count(),
        1
    );
}

#[test]
fn shards_partition_the_inputs() {
    let tmp = TempDir::new("shards");
    let (dir, _) = image_dir(&tmp, 5);
    let mut seen = Vec::new();
    for shard in ["0/3", "1/3", "2/3"] {
        let output = bin()
            .args(describe_args(
                20,
                1,
                &[dir.to_str().unwrap(), "--json", "--shard", shard],
            ))
            .output()
            .unwrap();
        for event in json_lines(&stdout(&output)) {
            if event["event"] != "step" {
                seen.push(event["image"].as_str().unwrap().to_string());
            }
        }
    }
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(
        seen.len(),
        6,
        "5 images + 1 broken, each exactly once: {seen:?}"
    );
    assert_eq!(unique.len(), 6);
}

#[test]
fn killed_batch_resumes_without_losing_or_redoing_work() {
    let tmp = TempDir::new("resume");
    let (dir, names) = image_dir(&tmp, 16);
    std::fs::remove_file(dir.join("broken.png")).unwrap();
    let out = tmp.0.join("results.jsonl");
    let args = describe_args(
        200,
        40,
        &[dir.to_str().unwrap(), "--out", out.to_str().unwrap()],
    );
    let mut child = bin()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let written = std::fs::read_to_string(&out).unwrap_or_default();
        if written.lines().count() >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = json_lines(
        &std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .filter(|l| l.ends_with('}'))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(
        before.len() < names.len(),
        "the kill must land mid-run ({} done)",
        before.len()
    );

    let mut resume_args = args.clone();
    resume_args.push("--resume".into());
    resume_args.push("--json".into());
    let output = bin().args(&resume_args).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let redone: Vec<String> = json_lines(&stdout(&output))
        .into_iter()
        .filter(|e| e["event"] == "done")
        .map(|e| e["image"].as_str().unwrap().to_string())
        .collect();
    for finished in &before {
        assert!(
            !redone.contains(&finished["image"].as_str().unwrap().to_string()),
            "redone: {finished}"
        );
    }
    let after = json_lines(&std::fs::read_to_string(&out).unwrap());
    let mut done: Vec<String> = after
        .iter()
        .map(|e| e["image"].as_str().unwrap().to_string())
        .collect();
    done.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(done, want, "every image exactly once");
}

#[test]
fn describe_with_only_a_text_target_and_a_blocklist() {
    let args: Vec<String> = [
        "describe",
        "--lm",
        &f("gpt2-tiny"),
        "--encoder",
        &f("clip-tiny-gelu"),
        "--target-text",
        "a photo of a cat",
        "--avoid-text",
        "a dog",
        "--target-weight",
        "1",
        "--target-weight",
        "0.5",
        "--prompt",
        "A picture of",
        "--block",
        "the,an",
        "--strategy",
        "magic",
        "--max-tokens",
        "6",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let output = bin().args(&args).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let events = json_lines(&stdout(&output));
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done");
    assert!(done["image"].is_null());
    assert!(done["text"].as_str().unwrap().starts_with("A picture of"));
    assert!(done["similarity"].is_number());
    for event in &events {
        let text = event["text"].as_str().unwrap_or("");
        for word in text[12.min(text.len())..].split(|c: char| !c.is_alphanumeric()) {
            assert!(
                !word.eq_ignore_ascii_case("the") && !word.eq_ignore_ascii_case("an"),
                "{text:?}"
            );
        }
    }
    // Too many weights for the targets given.
    let mut bad = args.clone();
    bad.extend(["--target-weight".to_string(), "2".to_string()]);
    assert_one_line_error(&bin().args(&bad).output().unwrap(), "--target-weight");
}

#[test]
fn score_prints_clipscore_by_the_published_definitions() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/clipscore.json")).unwrap(),
    )
    .unwrap();
    let clip = f(reference["clip"].as_str().unwrap());
    let find = |convention: &str, prefix: &str, caption: &str| -> f64 {
        reference["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["image"] == "rgba_50x50.png"
                    && c["convention"] == convention
                    && c["prefix"] == prefix
                    && c["caption"] == caption
            })
            .unwrap()["clipscore"]
            .as_f64()
            .unwrap()
    };
    let caption = "zapp starfish gear";
    let image = f("images/rgba_50x50.png");
    for (extra, convention, prefix, scale) in [
        (vec![], "hessel", "A photo depicts ", 2.5),
        (vec!["--prefix", ""], "hessel", "", 2.5),
        (vec!["--torchmetrics"], "torchmetrics", "", 100.0),
    ] {
        let mut args = vec![
            "score",
            &image,
            caption,
            "second caption",
            "--clip",
            &clip,
            "--json",
        ];
        args.extend(extra.iter().copied());
        let output = run(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        let value: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
        assert_eq!(value["convention"], convention);
        assert_eq!(value["prefix"], prefix);
        let scores = value["scores"].as_array().unwrap();
        assert_eq!(scores.len(), 2);
        let got = scores[0]["clipscore"].as_f64().unwrap();
        let want = find(convention, prefix, caption);
        assert!(
            want > 0.0 && (got - want).abs() < 1e-4 * scale,
            "{convention} {prefix:?}: {got} vs {want}"
        );
    }
    let table = run(&["score", &image, caption, "--clip", &clip]);
    assert!(stdout(&table).contains("clipscore") && stdout(&table).contains(caption));
    assert!(stdout(&table).contains("hessel"));
    // torchmetrics' convention has no prefix: clap refuses the pair.
    let both = run(&[
        "score",
        &image,
        caption,
        "--clip",
        &clip,
        "--torchmetrics",
        "--prefix",
        "x",
    ]);
    assert!(!both.status.success() && stderr(&both).contains("--prefix"));
}

/// With an LM whose files carry a chat template and no --prompt, describe asks --instruction
/// through the template and searches by beam, scoring the answer alone: the same run as the
/// explicit flags. The terminal shows the answer, not the markup.
#[test]
fn an_lm_with_a_chat_template_is_asked_the_instruction_by_beam_without_flags() {
    let tmp = TempDir::new("chat-default");
    let lm = tmp.0.join("qwen2-chat");
    copy_dir(&fixture("decoders/qwen2"), &lm);
    std::fs::write(
        lm.join("tokenizer_config.json"),
        serde_json::json!({
            "eos_token": "<|im_end|>",
            "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        })
        .to_string(),
    )
    .unwrap();
    let lm = lm.to_str().unwrap().to_string();
    let encoder = f("minilm-tiny");
    let base = [
        "describe",
        "--lm",
        &lm,
        "--encoder",
        &encoder,
        "--target-text",
        "a red ball",
        "--max-tokens",
        "4",
    ];
    let done = |extra: &[&str]| -> serde_json::Value {
        let mut args = base.to_vec();
        args.extend(extra);
        args.push("--json");
        let output = run(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        serde_json::from_str(stdout(&output).lines().last().unwrap()).unwrap()
    };
    let by_default = done(&[]);
    let prompt = "<|im_start|>user\nWrite one sentence describing a scene.<|im_end|>\n<|im_start|>assistant\n";
    let explicit = done(&[
        "--prompt",
        prompt,
        "--strategy",
        "beam",
        "--score-text",
        "generated",
    ]);
    // JSON carries the answer alone, as the terminal does, and the rendered prompt beside it;
    // a prompt the user typed stays in the text, as with any --prompt.
    let answer = by_default["text"].as_str().unwrap();
    assert!(!answer.contains("<|im_"), "{by_default}");
    assert_eq!(by_default["prompt"], prompt, "{by_default}");
    let typed = explicit["text"].as_str().unwrap().strip_prefix(prompt);
    assert_eq!(typed.map(str::trim_start), Some(answer), "{explicit}");
    assert!(explicit.get("prompt").is_none(), "{explicit}");
    assert_eq!(by_default["token_ids"], explicit["token_ids"]);
    assert_eq!(by_default["similarity"], explicit["similarity"]);
    assert_eq!(by_default["settings"], explicit["settings"]);
    // Another instruction is another prompt; a named search is kept.
    let asked = done(&["--instruction", "Name a toy."]);
    assert!(asked["prompt"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>user\nName a toy.<|im_end|>"));
    let seed = done(&["--strategy", "seed"]);
    assert_ne!(seed["settings"], by_default["settings"]);
    // An instruction for an LM without a template is refused, not ignored.
    assert_one_line_error(
        &run(&[
            "describe",
            "--lm",
            &f("decoders/qwen2"),
            "--encoder",
            &encoder,
            "--target-text",
            "a red ball",
            "--instruction",
            "Name a toy.",
        ]),
        "--instruction needs an LM with a chat template",
    );
    // On a terminal, the answer alone.
    let output = run(&base);
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = stdout(&output);
    assert!(!shown.contains("<|im_start|>"), "{shown}");
    assert_eq!(shown.trim(), answer.trim());
}

#[test]
fn score_with_siglip_prints_its_probability_not_clipscore() {
    // transformers' sigmoid(logits_per_image) for odd_47x61.png × texts[2] and texts[1]
    // (tests/fixtures/siglip-tiny/reference.safetensors, "probs" [0][2] and [0][1]).
    let image = f("images/odd_47x61.png");
    let siglip = f("siglip-tiny");
    let output = run(&[
        "score",
        &image,
        "a photo of a cat",
        "a",
        "--encoder",
        &siglip,
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let value: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(value["convention"], "siglip");
    assert_eq!(value["prefix"], "");
    let scores = value["scores"].as_array().unwrap();
    for (row, want) in [(0, 0.5309651), (1, 0.6063089)] {
        let got = scores[row]["probability"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-5, "row {row}: {got} vs {want}");
        assert!(scores[row].get("clipscore").is_none());
    }
    assert_one_line_error(
        &run(&["score", &image, "a", "--encoder", &siglip, "--torchmetrics"]),
        "--torchmetrics",
    );
    // A text-only encoder cannot score an image.
    assert_one_line_error(
        &run(&["score", &image, "a", "--encoder", &f("minilm-tiny")]),
        "embeds text only",
    );
}

#[test]
fn describe_steers_with_siglip_and_reports_its_cosine() {
    // describe takes SigLIP wherever it takes CLIP: the done event's similarity is SigLIP's cosine
    // of the final text with the image.
    let image = f("images/rgba_50x50.png");
    let siglip = f("siglip2-tiny");
    let output = run(&[
        "describe",
        &image,
        "--lm",
        &f("gpt2-tiny"),
        "--encoder",
        &siglip,
        "--max-tokens",
        "3",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let done: serde_json::Value = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "done")
        .unwrap();
    let encoder = clipsteer::steer::scorer::Encoder::load(
        std::path::Path::new(&siglip),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    use clipsteer::steer::Scorer;
    let target = clipsteer::steer::normalize(
        &encoder
            .image_embedding_from_path(
                std::path::Path::new(&image),
                clipsteer::image::DecodeLimits::default(),
            )
            .unwrap(),
    );
    let text =
        clipsteer::steer::normalize(&encoder.embed_text(done["text"].as_str().unwrap()).unwrap());
    let cosine: f32 = text.iter().zip(&target).map(|(a, b)| a * b).sum();
    let got = done["similarity"].as_f64().unwrap() as f32;
    assert!((got - cosine).abs() < 1e-5, "{got} vs {cosine}");
    // SigLIP 2 NaFlex is refused by name.
    let tmp = TempDir::new("naflex");
    let naflex = &tmp.0;
    std::fs::write(naflex.join("config.json"), r#"{"model_type":"siglip2"}"#).unwrap();
    assert_one_line_error(
        &run(&[
            "embed",
            "--encoder",
            naflex.to_str().unwrap(),
            "--text",
            "a",
        ]),
        "NaFlex",
    );
}

#[test]
fn resume_skips_a_finished_text_target_run() {
    // A text-target run is one input: --resume after its done line does not run it again.
    let tmp = TempDir::new("resume-text");
    let out = tmp.0.join("results.jsonl");
    let args = [
        "describe",
        "--lm",
        &f("gpt2-tiny"),
        "--encoder",
        &f("clip-tiny-gelu"),
        "--target-text",
        "a red fox",
        "--max-tokens",
        "3",
        "--out",
        out.to_str().unwrap(),
    ];
    let first = run(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written.lines().count(), 1);
    let mut resume = args.to_vec();
    resume.push("--resume");
    let again = run(&resume);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), written, "run again");
}

#[test]
fn a_prompt_that_fills_the_encoders_context_is_refused() {
    // Past CLIP's 77 tokens (SigLIP's 64) every continuation is cut to the same tokens: the
    // search would steer blind, so the run is refused before it starts, naming the way out.
    // Digits: one token each for CLIP and SigLIP's fixture, a few to a token for GPT-2, so the
    // prompt still fits gpt2-tiny's 64 positions.
    let long = "1234567890".repeat(9);
    let image = f("images/rgba_50x50.png");
    for encoder in ["clip-tiny-gelu", "siglip-tiny"] {
        let output = run(&[
            "describe",
            &image,
            "--lm",
            &f("gpt2-tiny"),
            "--encoder",
            &f(encoder),
            "--prompt",
            &long,
            "--max-tokens",
            "2",
        ]);
        assert_one_line_error(&output, "--score-text generated");
        assert_eq!(output.status.code(), Some(2), "{encoder}");
    }
    // Scoring only the generated text is fine with the same prompt.
    let output = run(&[
        "describe",
        &image,
        "--lm",
        &f("gpt2-tiny"),
        "--encoder",
        &f("clip-tiny-gelu"),
        "--prompt",
        &long,
        "--score-text",
        "generated",
        "--max-tokens",
        "2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn score_and_embed_name_a_fifo_image_as_such() {
    let tmp = TempDir::new("fifo-image");
    let fifo = tmp.0.join("img.png");
    mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    let clip = f("clip-tiny-gelu");
    for args in [
        vec!["score", fifo, "a cat", "--encoder", &clip],
        vec!["embed", "--encoder", &clip, "--image", fifo],
    ] {
        assert_one_line_error(&run(&args), "is a FIFO, not an image file");
    }
}

/// An encoder directory's missing or unreadable files are named once, as what they are: a
/// newcomer found a missing preprocessor_config.json named twice in one line, and a FIFO named
/// model.safetensors listed as the weights that were not found.
#[test]
fn an_encoder_directorys_missing_or_odd_files_are_named_once_as_what_they_are() {
    let tmp = TempDir::new("encoder-files");
    let image = f("images/crop32.png");
    let copy = |name: &str, skip: &str| {
        let dir = tmp.0.join(name);
        std::fs::create_dir(&dir).unwrap();
        for entry in std::fs::read_dir(fixture("clip-tiny-gelu")).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != skip {
                std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
            }
        }
        dir
    };
    let no_preprocessor = copy("no-preprocessor", "preprocessor_config.json");
    let output = run(&[
        "score",
        &image,
        "a cat",
        "--encoder",
        no_preprocessor.to_str().unwrap(),
    ]);
    let error = stderr(&output);
    assert_one_line_error(&output, "has no preprocessor_config.json");
    assert_eq!(
        error.matches("preprocessor_config.json").count(),
        1,
        "{error}"
    );

    let fifo_weights = copy("fifo-weights", "model.safetensors");
    mkfifo(&fifo_weights.join("model.safetensors"));
    assert_one_line_error(
        &run(&[
            "score",
            &image,
            "a cat",
            "--encoder",
            fifo_weights.to_str().unwrap(),
        ]),
        "it has: model.safetensors (a FIFO)",
    );
    // An empty config.json and a tokenizer.json that is not UTF-8 say what they are, not
    // which JSON character was unexpected.
    let score = |encoder: &std::path::Path| {
        run(&[
            "score",
            &image,
            "a cat",
            "--encoder",
            encoder.to_str().unwrap(),
        ])
    };
    let empty_config = copy("empty-config", "");
    std::fs::write(empty_config.join("config.json"), "").unwrap();
    assert_one_line_error(
        &score(&empty_config),
        "config.json is empty: replace it with the model's own config.json",
    );
    let latin1 = copy("latin1-tokenizer", "");
    std::fs::write(latin1.join("tokenizer.json"), b"{\"caf\xe9\": 1}").unwrap();
    assert_one_line_error(&score(&latin1), "tokenizer.json is not UTF-8 text");
    // A link that loops is a local path gone wrong, not a hub id to look up.
    let looped = tmp.0.join("org").join("looped");
    std::fs::create_dir(tmp.0.join("org")).unwrap();
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    assert_one_line_error(
        &score(&looped),
        "is a symbolic link to nothing (a missing target, or a loop of links)",
    );
}

/// A broken chat template stops only the runs that render it: with --prompt, describe never
/// does (a newcomer could not get past one). Without, the error names the template's file.
#[test]
fn a_broken_chat_template_stops_only_the_runs_that_use_it() {
    let tmp = TempDir::new("broken-template");
    let lm = tmp.0.join("lm");
    std::fs::create_dir(&lm).unwrap();
    for entry in std::fs::read_dir(fixture("gpt2-tiny")).unwrap() {
        let entry = entry.unwrap();
        let to = lm.join(entry.file_name());
        std::fs::copy(entry.path(), to).unwrap();
    }
    std::fs::write(lm.join("chat_template.jinja"), "{% for m in messages %}").unwrap();
    let args = |extra: &[&str]| {
        let mut args = vec![
            "describe".to_string(),
            f("images/crop32.png"),
            "--lm".into(),
            lm.display().to_string(),
            "--encoder".into(),
            f("clip-tiny-gelu"),
            "--max-tokens".into(),
            "2".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let without: Vec<String> = args(&[]);
    let output = run(&without.iter().map(String::as_str).collect::<Vec<_>>());
    assert_one_line_error(
        &output,
        &format!(
            "the chat template in {} does not compile",
            lm.join("chat_template.jinja").display()
        ),
    );
    let with: Vec<String> = args(&["--prompt", "An image of "]);
    let output = run(&with.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(output.status.success(), "{}", stderr(&output));
}
