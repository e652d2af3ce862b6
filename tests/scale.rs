//! Batches as a cluster runs them: shards merged and checked, one writer per part file, settings
//! that must not mix, models on read-only storage, and caption files for training data.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn describe_args(extra: &[&str]) -> Vec<String> {
    describe_args_with(20, 3, extra)
}

fn describe_args_with(top_k: usize, max_tokens: usize, extra: &[&str]) -> Vec<String> {
    let (top_k, max_tokens) = (top_k.to_string(), max_tokens.to_string());
    let mut args: Vec<String> = [
        "describe",
        "--lm",
        &f("gpt2-tiny"),
        "--clip",
        &f("clip-tiny-quickgelu"),
        "--top-k",
        &top_k,
        "--max-tokens",
        &max_tokens,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn describe(extra: &[&str]) -> Output {
    bin().args(describe_args(extra)).output().unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

/// `n` images (copies of fixtures) in a folder with a nested one, and their paths in the order
/// describe expands the folder.
fn image_dir(root: &Path, n: usize) -> (PathBuf, Vec<String>) {
    let dir = root.join("images");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let sources = [
        "crop32.png",
        "odd_47x61.png",
        "photo_80x53.jpg",
        "grey_40x33.png",
    ];
    for i in 0..n {
        let source = sources[i % sources.len()];
        let ext = Path::new(source).extension().unwrap().to_str().unwrap();
        let sub = if i % 3 == 2 {
            dir.join("sub")
        } else {
            dir.clone()
        };
        std::fs::copy(
            fixture(&format!("images/{source}")),
            sub.join(format!("i{i:02}.{ext}")),
        )
        .unwrap();
    }
    let mut names: Vec<String> = walk(&dir).iter().map(|p| p.display().to_string()).collect();
    names.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
    (dir, names)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_none_or(|e| e != "txt") {
            out.push(path);
        }
    }
    out
}

fn merge(args: &[&str]) -> Output {
    bin().arg("merge").args(args).output().unwrap()
}

fn report(output: &Output) -> Value {
    serde_json::from_str(stdout(output).trim()).unwrap_or_else(|_| panic!("{}", stderr(output)))
}

#[test]
fn sharded_parts_merge_into_one_file_in_input_order() {
    let tmp = TempDir::new("merge");
    let (dir, names) = image_dir(&tmp.0, 7);
    let dir_arg = dir.to_str().unwrap();
    let mut parts = Vec::new();
    for i in 0..3 {
        let part = tmp.0.join(format!("part-{i}.jsonl"));
        let out = describe(&[
            dir_arg,
            "--shard",
            &format!("{i}/3"),
            "--out",
            part.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        parts.push(part.display().to_string());
    }
    let merged = tmp.0.join("all.jsonl");
    let mut args: Vec<&str> = parts.iter().map(String::as_str).collect();
    args.extend([
        "-o",
        merged.to_str().unwrap(),
        "--inputs",
        dir_arg,
        "--json",
    ]);
    let out = merge(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = report(&out);
    assert_eq!(summary["complete"], true);
    assert_eq!(summary["described"], 7);
    assert_eq!(summary["inputs"], 7);
    assert_eq!(summary["parts"], 3);
    let lines = json_lines(&std::fs::read_to_string(&merged).unwrap());
    let order: Vec<&str> = lines.iter().map(|l| l["image"].as_str().unwrap()).collect();
    assert_eq!(order, names.iter().map(String::as_str).collect::<Vec<_>>());
    // Lines are copied byte for byte from the parts.
    let all_parts: String = parts
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for line in std::fs::read_to_string(&merged).unwrap().lines() {
        assert!(
            all_parts.lines().any(|l| l == line),
            "changed by merge: {line}"
        );
    }
    // Every line records the run's settings, the same in each part.
    let settings = &lines[0]["settings"];
    assert_eq!(settings["lm"], fixture("gpt2-tiny").display().to_string());
    assert_eq!(
        settings["encoder"],
        fixture("clip-tiny-quickgelu").display().to_string()
    );
    assert_eq!(settings["options"].as_str().unwrap().len(), 16);
    assert!(lines.iter().all(|l| l["settings"] == *settings));
    assert_eq!(summary["settings"], *settings);

    // A lost line is reported missing; a line written twice, duplicated: exit 1 either way.
    let part0 = std::fs::read_to_string(&parts[0]).unwrap();
    let mut kept: Vec<&str> = part0.lines().collect();
    let dropped: Value = serde_json::from_str(kept.remove(0)).unwrap();
    std::fs::write(&parts[0], kept.join("\n") + "\n").unwrap();
    let part1 = std::fs::read_to_string(&parts[1]).unwrap();
    let again = part1.lines().next().unwrap().to_string();
    std::fs::write(
        &parts[2],
        std::fs::read_to_string(&parts[2]).unwrap() + &again + "\n",
    )
    .unwrap();
    let out = merge(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary = report(&out);
    assert_eq!(summary["complete"], false);
    assert_eq!(summary["missing"], serde_json::json!([dropped["image"]]));
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(summary["duplicated"][0]["image"], again["image"]);
    assert_eq!(summary["duplicated"][0]["count"], 2);
    assert_eq!(summary["described"], 6);

    // The same as text on stderr.
    args.pop();
    let out = merge(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("6 of 7 inputs described"), "{err}");
    assert!(
        err.contains(&format!("missing: {}", dropped["image"].as_str().unwrap())),
        "{err}"
    );
    assert!(err.contains("(2 done lines)"), "{err}");
}

#[test]
fn parts_made_with_other_settings_are_refused() {
    let tmp = TempDir::new("mixed");
    let (dir, _) = image_dir(&tmp.0, 4);
    let dir_arg = dir.to_str().unwrap();
    let p0 = tmp.0.join("part-0.jsonl");
    let p1 = tmp.0.join("part-1.jsonl");
    let out = describe(&[dir_arg, "--shard", "0/2", "--out", p0.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = bin()
        .args(describe_args_with(
            21,
            3,
            &[dir_arg, "--shard", "1/2", "--out", p1.to_str().unwrap()],
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let merged = tmp.0.join("all.jsonl");
    let out = merge(&[
        p0.to_str().unwrap(),
        p1.to_str().unwrap(),
        "-o",
        merged.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "different settings");
    assert!(stderr(&out).contains("options"), "{}", stderr(&out));
    assert!(!merged.exists(), "nothing written");

    // --resume refuses to extend a part file with other settings (when it has work left: a
    // task with nothing left to do appends nothing).
    let text = std::fs::read_to_string(&p0).unwrap();
    let first = text.lines().next().unwrap();
    std::fs::write(&p0, format!("{first}\n")).unwrap();
    let out = bin()
        .args(describe_args_with(
            20,
            4,
            &[
                dir_arg,
                "--shard",
                "0/2",
                "--out",
                p0.to_str().unwrap(),
                "--resume",
            ],
        ))
        .output()
        .unwrap();
    assert_one_line_error(&out, "other settings");
    assert!(stderr(&out).contains(p0.to_str().unwrap()));
}

fn assert_one_line_error(output: &Output, needle: &str) {
    assert!(
        !output.status.success(),
        "expected failure: {}",
        stdout(output)
    );
    let err = stderr(output);
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(
        lines[0].starts_with("error:") && lines[0].contains(needle),
        "{err}"
    );
}

#[test]
fn two_processes_writing_one_part_file_is_an_error() {
    let tmp = TempDir::new("lock");
    let (dir, _) = image_dir(&tmp.0, 8);
    let part = tmp.0.join("part.jsonl");
    let args = describe_args_with(
        200,
        40,
        &[dir.to_str().unwrap(), "--out", part.to_str().unwrap()],
    );
    let mut first = bin()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The lock is taken as soon as the file is opened: wait for the file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !part.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never opened --out"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let second = bin().args(&args).output().unwrap();
    let still_running = first.try_wait().unwrap().is_none();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(still_running, "the first run must still hold the file");
    assert_one_line_error(&second, "is being written by another clipsteer process");
    let err = stderr(&second);
    assert!(
        err.contains(part.to_str().unwrap()) && err.contains("its own part file"),
        "{err}"
    );
}

/// Paths, sizes, modes and modification times of everything under `root`.
fn snapshot(root: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            rows.push(format!(
                "{} {} {:?} {:?}",
                path.display(),
                meta.len(),
                meta.permissions(),
                meta.modified().unwrap()
            ));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    rows.sort();
    rows
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn set_read_only(root: &Path, read_only: bool) {
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(path) = stack.pop() {
        if path.is_dir() && !path.is_symlink() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
        all.push(path);
    }
    // Files first when locking, directories first when unlocking.
    if !read_only {
        all.reverse();
    }
    for path in all {
        if path.is_symlink() {
            continue;
        }
        let mut permissions = std::fs::metadata(&path).unwrap().permissions();
        permissions.set_readonly(read_only);
        std::fs::set_permissions(&path, permissions).unwrap();
    }
}

#[test]
fn models_on_read_only_storage_are_read_and_never_written() {
    let tmp = TempDir::new("readonly");
    // A CLIP directory on a read-only share, and GPT-2 in a Hugging Face cache filled
    // beforehand (blobs, a snapshot of symlinks, refs/main), as `hf download` leaves it.
    let share = tmp.0.join("share");
    copy_dir(&fixture("clip-tiny-quickgelu"), &share.join("clip"));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = share.join("hub").join("models--ci--gpt2-tiny");
    let snapshot_dir = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot_dir).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();
    for entry in std::fs::read_dir(fixture("gpt2-tiny")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let blob = repo.join("blobs").join(format!("blob-{name}"));
        std::fs::copy(&path, &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob-{name}"), snapshot_dir.join(&name))
            .unwrap();
    }
    let home = tmp.0.join("home");
    std::fs::create_dir_all(&home).unwrap();
    set_read_only(&share, true);
    set_read_only(&home, true);
    let before = snapshot(&tmp.0);

    let image = f("images/crop32.png");
    let out = bin()
        .args([
            "describe",
            &image,
            "--lm",
            "ci/gpt2-tiny",
            "--clip",
            share.join("clip").to_str().unwrap(),
            "--top-k",
            "20",
            "--max-tokens",
            "3",
            "--json",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", share.join("hub"))
        .env("HF_HOME", &home)
        .env("HOME", &home)
        .current_dir(&home)
        .output()
        .unwrap();
    let after = snapshot(&tmp.0);
    set_read_only(&share, false);
    set_read_only(&home, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let events = json_lines(&stdout(&out));
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["settings"]["lm"], format!("ci/gpt2-tiny@{commit}"));
    // The same words as the fixture model loaded from its own directory.
    let direct = describe(&[&image, "--json"]);
    let direct = json_lines(&stdout(&direct));
    assert_eq!(done["token_ids"], direct.last().unwrap()["token_ids"]);
    assert_eq!(
        before, after,
        "nothing under the models, the cache or HOME changed"
    );
}

#[test]
fn write_txt_writes_captions_beside_images_and_never_overwrites() {
    let tmp = TempDir::new("captions");
    let dir = tmp.0.join("set");
    std::fs::create_dir_all(&dir).unwrap();
    for (source, name) in [
        ("crop32.png", "a.png"),
        ("photo_80x53.jpg", "b.jpg"),
        ("odd_47x61.png", "c.png"),
    ] {
        std::fs::copy(fixture(&format!("images/{source}")), dir.join(name)).unwrap();
    }
    let dir_arg = dir.to_str().unwrap();
    let out = describe(&[
        dir_arg,
        "--json",
        "--write-txt",
        "--txt-prefix",
        "sks,",
        "--txt-suffix",
        "by clipsteer",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrote 3 caption files"),
        "{}",
        stderr(&out)
    );
    let done: Vec<Value> = json_lines(&stdout(&out))
        .into_iter()
        .filter(|e| e["event"] == "done")
        .collect();
    assert_eq!(done.len(), 3);
    for event in &done {
        let image = PathBuf::from(event["image"].as_str().unwrap());
        let caption = std::fs::read_to_string(image.with_extension("txt")).unwrap();
        let generated = event["text"]
            .as_str()
            .unwrap()
            .strip_prefix("An image of ")
            .unwrap();
        let want = format!(
            "sks, {} by clipsteer\n",
            generated.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        assert_eq!(caption, want, "{}", image.display());
        assert_eq!(caption.lines().count(), 1);
    }
    let before: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(format!("{n}.txt"))).unwrap())
        .collect();

    // Again without --overwrite: every image is an error, found before any work, and no caption
    // file changes.
    let part = tmp.0.join("part.jsonl");
    let started = std::time::Instant::now();
    let out = describe(&[
        dir_arg,
        "--json",
        "--write-txt",
        "--out",
        part.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let events = json_lines(&stdout(&out));
    assert_eq!(events.len(), 3, "no steps run: {events:?}");
    for event in &events {
        assert_eq!(event["event"], "error");
        let message = event["error"].as_str().unwrap();
        assert!(message.contains("exists; pass --overwrite"), "{message}");
    }
    assert!(started.elapsed().as_secs() < 60);
    let unchanged: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(format!("{n}.txt"))).unwrap())
        .collect();
    assert_eq!(before, unchanged);
    assert_eq!(
        json_lines(&std::fs::read_to_string(&part).unwrap()).len(),
        3
    );

    // With --overwrite the captions are replaced (a different prompt writes other text).
    let out = describe(&[
        dir_arg,
        "--write-txt",
        "--overwrite",
        "--prompt",
        "A photo of",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let replaced = std::fs::read_to_string(dir.join("a.txt")).unwrap();
    assert!(!replaced.starts_with("sks,"), "{replaced}");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        6,
        "only images and captions, no temporary files: {names:?}"
    );

    // a.png and a.jpg would share a.txt: both are errors, whatever the shard.
    std::fs::copy(fixture("images/photo_80x53.jpg"), dir.join("a.jpg")).unwrap();
    let out = describe(&[
        dir_arg,
        "--json",
        "--write-txt",
        "--overwrite",
        "--shard",
        "0/4",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let errors: Vec<Value> = json_lines(&stdout(&out))
        .into_iter()
        .filter(|e| e["event"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "the shard holds a.jpg only");
    assert!(errors[0]["error"]
        .as_str()
        .unwrap()
        .contains("would share the caption file"));

    // Captions need images.
    let out = bin()
        .args(["describe", "--target-text", "a dog", "--write-txt"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "--write-txt");
    // --txt-prefix without --write-txt is refused by the parser.
    let out = describe(&[dir_arg, "--txt-prefix", "sks"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--write-txt"), "{}", stderr(&out));
}
