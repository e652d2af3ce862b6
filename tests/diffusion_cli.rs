//! `generate` and `evade` end to end on the tiny fixtures: sd-tiny for Stable Diffusion, the
//! tiny GPT-2 and CLIP for the description. Offline; no test reaches the hub.

mod common;

use common::*;
use std::path::Path;
use std::process::Output;

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// The one-line error a failed command prints.
fn one_line_error(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected failure: {}",
        stderr(output)
    );
    let err = stderr(output);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const SD: &str = "sd-tiny";

#[test]
fn generate_writes_a_png_of_the_requested_size_and_is_deterministic() {
    let dir = TempDir::new("generate");
    let out = dir.0.join("a.png");
    let again = dir.0.join("b.png");
    for path in [&out, &again] {
        let output = run(&[
            "generate",
            "a red cube",
            "-o",
            &p(path),
            "--model",
            &f(SD),
            "--steps",
            "3",
            "--size",
            "64",
            "--seed",
            "7",
            "--negative",
            "blurry",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let image = image::open(&out).expect("png").to_rgb8();
    assert_eq!(image.dimensions(), (64, 64));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    // Other seeds and schedulers give other images.
    let other = dir.0.join("c.png");
    for scheduler in ["ddim", "euler-a"] {
        let output = run(&[
            "generate",
            "a red cube",
            "-o",
            &p(&other),
            "--model",
            &f(SD),
            "--steps",
            "3",
            "--size",
            "64",
            "--scheduler",
            scheduler,
        ]);
        assert!(output.status.success(), "{scheduler}: {}", stderr(&output));
        assert_ne!(std::fs::read(&other).unwrap(), std::fs::read(&out).unwrap());
    }
    assert_eq!(
        files_in(&dir.0),
        ["a.png", "b.png", "c.png"],
        "no temp files left"
    );
}

#[test]
fn generate_with_missing_weights_says_what_to_do() {
    let dir = TempDir::new("generate-missing");
    // A copy of sd-tiny without the UNet weights.
    let model = dir.0.join("model");
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        std::fs::create_dir_all(model.join(sub)).unwrap();
        for entry in std::fs::read_dir(fixture(SD).join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "diffusion_pytorch_model.safetensors" || sub != "unet" {
                std::fs::copy(entry.path(), model.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
    let out = dir.0.join("out.png");
    let line = one_line_error(&run(&[
        "generate",
        "x",
        "-o",
        &p(&out),
        "--model",
        &p(&model),
        "--size",
        "64",
    ]));
    assert!(
        line.contains("unet/diffusion_pytorch_model.safetensors"),
        "{line}"
    );
    assert!(
        line.contains("huggingface-cli download") && line.contains("--model DIR"),
        "{line}"
    );

    // A hub id that is not cached, offline.
    let line = one_line_error(&run(&[
        "generate",
        "x",
        "-o",
        &p(&out),
        "--model",
        "stabilityai/stable-diffusion-2-base",
    ]));
    assert!(line.contains("HF_HUB_OFFLINE"), "{line}");
    assert!(
        line.contains("huggingface-cli download stabilityai/stable-diffusion-2-base"),
        "{line}"
    );
    assert!(!out.exists());
}

#[test]
fn generate_rejects_sizes_that_are_not_multiples_of_8_and_bad_outputs() {
    let dir = TempDir::new("generate-size");
    let out = dir.0.join("out.png");
    let line = one_line_error(&run(&[
        "generate",
        "x",
        "-o",
        &p(&out),
        "--model",
        &f(SD),
        "--size",
        "60",
    ]));
    assert!(
        line.contains("--size") && line.contains("multiple of 8") && line.contains("56"),
        "{line}"
    );
    let line = one_line_error(&run(&[
        "generate",
        "x",
        "-o",
        &p(&out),
        "--model",
        &f(SD),
        "--size",
        "0",
    ]));
    assert!(line.contains("multiple of 8"), "{line}");
    let line = one_line_error(&run(&[
        "generate",
        "x",
        "-o",
        &p(&dir.0.join("out.gif2")),
        "--model",
        &f(SD),
    ]));
    assert!(line.contains(".png"), "{line}");
    let line = one_line_error(&run(&[
        "generate",
        "x",
        "-o",
        &p(&dir.0.join("missing/out.png")),
        "--model",
        &f(SD),
        "--size",
        "64",
    ]));
    assert!(line.contains("does not exist"), "{line}");
    assert!(files_in(&dir.0).is_empty());
}

/// Runs evade on the tiny models; returns (exit status, report JSON, HTML).
fn evade(dir: &Path, extra: &[&str]) -> (Output, serde_json::Value, String) {
    let report = dir.join("report.html");
    let mut args = vec![
        "evade".to_string(),
        "--report".into(),
        p(&report),
        "--model".into(),
        f(SD),
        "--lm".into(),
        f("gpt2-tiny"),
        "--clip".into(),
        f("clip-tiny-gelu"),
        "--steps".into(),
        "2".into(),
        "--size".into(),
        "64".into(),
        "--max-tokens".into(),
        "8".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let output = bin().args(&args).output().expect("run");
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).expect("json"))
            .expect("report is JSON");
    let stdout_json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is the JSON report");
    assert_eq!(stdout_json, json);
    let html = std::fs::read_to_string(&report).expect("html");
    (output, json, html)
}

fn description_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 2 && w.chars().all(|c| c.is_ascii_alphabetic()))
        .map(str::to_lowercase)
        .collect()
}

fn assert_html_self_contained(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    let sources: Vec<&str> = html.split("src=\"").skip(1).collect();
    assert_eq!(sources.len(), 2, "two images");
    for source in sources {
        assert!(
            source.starts_with("data:image/png;base64,"),
            "image not embedded"
        );
        let data = &source["data:image/png;base64,".len()..source.find('"').unwrap()];
        assert!(
            data.len() > 100
                && data
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        );
    }
    for external in [
        "href=",
        "<link",
        "<script",
        "@import",
        "url(",
        "src=\"http",
        "src='",
    ] {
        assert!(
            !html.contains(external),
            "HTML references something external: {external}"
        );
    }
}

#[test]
fn evade_keeps_blocked_words_out_and_writes_a_self_contained_report() {
    let dir = TempDir::new("evade");
    let image = f("images/photo_80x53.jpg");
    // What the describer writes for this image when nothing is blocked...
    let free = run(&[
        "describe",
        &image,
        "--lm",
        &f("gpt2-tiny"),
        "--clip",
        &f("clip-tiny-gelu"),
        "--strategy",
        "magic",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert!(free.status.success(), "{}", stderr(&free));
    let done: serde_json::Value = String::from_utf8_lossy(&free.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "done")
        .expect("done event");
    let free_text = done["text"].as_str().unwrap().to_string();
    let free_words: Vec<String> =
        description_words(&free_text[free_text.len().min("An image of ".len())..]);
    assert!(
        !free_words.is_empty(),
        "the unconstrained description has no words: {free_text:?}"
    );
    // ...then block those very words, in other cases, and evade.
    let mut blocked: Vec<String> = Vec::new();
    for word in free_words.iter().map(|w| w.to_uppercase()) {
        if blocked.len() < 3 && !blocked.contains(&word) {
            blocked.push(word);
        }
    }
    let block_arg = blocked.join(",");
    let (_, report, html) = evade(
        &dir.0,
        &[
            "--image",
            &image,
            "--prompt",
            &free_words[0],
            "--block",
            &block_arg,
        ],
    );

    let description = report["description"].as_str().expect("description");
    for word in &blocked {
        let lower = word.to_lowercase();
        assert!(
            !description_words(description).contains(&lower),
            "blocked {word:?} appears in {description:?}"
        );
    }
    assert_ne!(description, free_text, "blocking changed nothing");
    assert_eq!(report["blocklist_check"]["passed"], true);
    assert!(report["blocklist_check"]["found"].is_null());
    assert!(report["blocklist_check"]["control"].is_null());
    let expected_blocked: Vec<String> = blocked.iter().map(|w| w.to_lowercase()).collect();
    assert_eq!(report["blocked_words"], serde_json::json!(expected_blocked));
    assert_eq!(
        report["prompt_blocked_words"],
        serde_json::json!([free_words[0]])
    );
    assert_eq!(report["images"]["image1"]["source"]["kind"], "given");
    assert_eq!(report["images"]["image1"]["width"], 80);
    assert_eq!(report["images"]["image2"]["width"], 64);
    assert_eq!(report["images"]["image2"]["source"]["prompt"], description);
    for key in ["image1_description", "image1_image2", "image1_prompt"] {
        let sim = report["similarity"][key].as_f64().expect(key);
        assert!((-1.0..=1.0).contains(&sim), "{key} = {sim}");
    }
    assert_eq!(report["generation"]["scheduler"], "dpm++2m");
    assert_eq!(report["describe"]["strategy"], "beam");
    assert_eq!(report["describe"]["top_k"], 45);
    assert_html_self_contained(&html);
    assert!(html.contains("PASSED"));
    assert_eq!(
        files_in(&dir.0),
        [
            "report-image1.png",
            "report-image2.png",
            "report.html",
            "report.json"
        ]
    );
    let image2 = image::open(dir.0.join("report-image2.png")).unwrap();
    assert_eq!((image2.width(), image2.height()), (64, 64));
}

#[test]
fn evade_generates_image_1_from_the_prompt() {
    let dir = TempDir::new("evade-generated");
    let (_, report, html) = evade(
        &dir.0,
        &[
            "--prompt",
            "a fat squirrel on a tree branch",
            "--block",
            "squirrel,Branch",
        ],
    );
    let description = report["description"].as_str().unwrap().to_lowercase();
    assert!(!description_words(&description)
        .iter()
        .any(|w| w == "squirrel" || w == "branch"));
    assert_eq!(report["images"]["image1"]["source"]["kind"], "generated");
    assert_eq!(
        report["images"]["image1"]["source"]["prompt"],
        "a fat squirrel on a tree branch"
    );
    assert_eq!(
        report["prompt_blocked_words"],
        serde_json::json!(["squirrel", "branch"])
    );
    assert_ne!(
        std::fs::read(dir.0.join("report-image1.png")).unwrap(),
        std::fs::read(dir.0.join("report-image2.png")).unwrap()
    );
    assert_html_self_contained(&html);
}

#[test]
fn evade_needs_blocked_words_and_a_prompt_or_image() {
    let dir = TempDir::new("evade-errors");
    let report = p(&dir.0.join("r.html"));
    let line = one_line_error(&run(&[
        "evade",
        "--prompt",
        "x",
        "--report",
        &report,
        "--model",
        &f(SD),
    ]));
    assert!(line.contains("--block"), "{line}");
    let output = run(&["evade", "--block", "x", "--report", &report]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--prompt"), "{}", stderr(&output));
    assert!(files_in(&dir.0).is_empty());
}
