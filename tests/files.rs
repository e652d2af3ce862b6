//! Nothing of the user's is lost: every command over every kind of file-system object (regular
//! file, directory, symlink, dangling symlink, link loop, FIFO, socket, unreadable file, a name
//! that is not UTF-8), through the command line. A command may change only what it wrote; it
//! never hangs on a FIFO; each input is described once whatever links lead to it.
#![cfg(unix)]

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// Runs the binary with `args`, failing the test if it runs past `limit` (a hang).
fn run(args: &[&OsStr], limit: Duration) -> Output {
    run_in(args, limit, None)
}

fn run_in(args: &[&OsStr], limit: Duration, umask: Option<u32>) -> Output {
    let mut command = match umask {
        // The umask is set by a shell around the binary, not in this (multi-threaded) test.
        Some(mask) => {
            let mut sh = std::process::Command::new("sh");
            sh.arg("-c")
                .arg(format!("umask {mask:03o} && exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_clipsteer"));
            sh.env("HF_HUB_OFFLINE", "1").env(
                "HF_HOME",
                std::env::temp_dir().join("clipsteer-test-empty-hf-home"),
            );
            sh
        }
        None => bin(),
    };
    let mut child = command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "hung: clipsteer {:?} ran past {limit:?}; stderr: {}",
                args,
                stderr(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LIMIT: Duration = Duration::from_secs(120);

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Everything under `root`, links not followed: kind, permission bits, and the content (files)
/// or target (links). What a command must leave alone is compared through this.
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, String> {
    fn visit(root: &Path, dir: &Path, rows: &mut BTreeMap<Vec<u8>, String>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = meta.file_type();
            let mode = meta.permissions().mode() & 0o7777;
            let row = if kind.is_symlink() {
                format!("link -> {:?}", std::fs::read_link(&path).unwrap())
            } else if kind.is_dir() {
                format!("dir {mode:o}")
            } else if kind.is_fifo() {
                format!("fifo {mode:o}")
            } else if kind.is_socket() {
                format!("socket {mode:o}")
            } else {
                let bytes = std::fs::read(&path).unwrap();
                format!("file {mode:o} {} {:x}", bytes.len(), fnv(&bytes))
            };
            let name = path.strip_prefix(root).unwrap().as_os_str().as_bytes();
            rows.insert(name.to_vec(), row);
            if kind.is_dir() {
                visit(root, &path, rows);
            }
        }
    }
    let mut rows = BTreeMap::new();
    visit(root, root, &mut rows);
    rows
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn mksocket(path: &Path) {
    // The socket file stays after the listener is dropped.
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
}

fn name(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn describe_args(extra: &[&OsStr]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "describe",
        "--lm",
        &f("gpt2-tiny"),
        "--clip",
        &f("clip-tiny-quickgelu"),
        "--top-k",
        "20",
        "--max-tokens",
        "3",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.extend(extra.iter().map(|s| s.to_os_string()));
    args
}

fn run_describe(extra: &[&OsStr]) -> Output {
    let args = describe_args(extra);
    let refs: Vec<&OsStr> = args.iter().map(|s| s.as_os_str()).collect();
    run(&refs, LIMIT)
}

fn one_line_error(output: &Output, code: i32, needle: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(
        lines[0].starts_with("error:") && lines[0].contains(needle),
        "wanted '{needle}': {err}"
    );
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn image(tmp: &Path, name: &str) -> PathBuf {
    let path = tmp.join(name);
    std::fs::copy(fixture("images/crop32.png"), &path).unwrap();
    path
}

#[test]
fn out_never_trims_or_appends_to_what_clipsteer_did_not_write() {
    let tmp = TempDir::new("out-guard");
    let img = image(&tmp.0, "x.png");
    let user = tmp.0.join("user");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("notes.txt"), "first line\nlast line, no newline").unwrap();
    std::fs::copy(
        fixture("images/photo_80x53.jpg"),
        user.join("photo-copy.jpg"),
    )
    .unwrap();
    std::fs::write(
        user.join("other.jsonl"),
        "{\"event\":\"done\",\"image\":\"a.png\"}\n{\"id\": 1}\n",
    )
    .unwrap();
    mkfifo(&user.join("fifo.jsonl"));
    mksocket(&user.join("sock.jsonl"));
    std::os::unix::fs::symlink("missing.jsonl", user.join("dangling.jsonl")).unwrap();
    std::os::unix::fs::symlink("notes.txt", user.join("link-to-notes.txt")).unwrap();
    std::os::unix::fs::symlink("loop-b", user.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", user.join("loop-b")).unwrap();
    std::fs::create_dir(user.join("folder")).unwrap();
    let before = snapshot(&user);
    for (target, needle) in [
        ("notes.txt", "is not a part file that clipsteer wrote"),
        ("photo-copy.jpg", "is not a part file that clipsteer wrote"),
        ("other.jsonl", "line 2 is not a done or error line"),
        (
            "link-to-notes.txt",
            "is not a part file that clipsteer wrote",
        ),
        ("fifo.jsonl", "is a FIFO"),
        ("sock.jsonl", "is a socket"),
        ("dangling.jsonl", "which does not exist"),
        ("loop-a", "cannot"),
        ("folder", "is a directory"),
    ] {
        let out = user.join(target);
        let output = run_describe(&[img.as_os_str(), os("--out"), out.as_os_str()]);
        one_line_error(&output, 2, needle);
        assert!(stdout(&output).is_empty(), "{target}: no work was done");
        assert_eq!(
            snapshot(&user),
            before,
            "--out {target} changed the user's files"
        );
    }
}

#[test]
fn a_part_file_is_extended_only_with_its_own_settings_and_its_own_partial_line_is_trimmed() {
    let tmp = TempDir::new("out-settings");
    let img = image(&tmp.0, "x.png");
    let img2 = image(&tmp.0, "y.png");
    let part = tmp.0.join("part.jsonl");
    let first = run_describe(&[img.as_os_str(), os("--out"), part.as_os_str()]);
    assert!(first.status.success(), "{}", stderr(&first));
    let written = std::fs::read(&part).unwrap();
    // Other settings: refused with and without --resume, even when every input is done, and
    // before any model is loaded.
    for extra in [&["--resume"][..], &[][..]] {
        for input in [&img, &img2] {
            let mut args = vec![
                input.as_os_str(),
                os("--out"),
                part.as_os_str(),
                os("--prompt"),
                os("A photo of "),
            ];
            args.extend(extra.iter().map(|s| os(s)));
            let output = run_describe(&args);
            one_line_error(&output, 2, "was made with other settings");
            assert!(stderr(&output).contains("options"), "{}", stderr(&output));
            assert_eq!(std::fs::read(&part).unwrap(), written);
        }
    }
    // A killed run's partial line (the start of a done line) is ours: trimmed, and the image
    // described again.
    let mut killed = written.clone();
    killed.extend_from_slice(b"{\"event\":\"done\",\"image\":\"y.p");
    std::fs::write(&part, &killed).unwrap();
    let resumed = run_describe(&[
        img.as_os_str(),
        img2.as_os_str(),
        os("--out"),
        part.as_os_str(),
        os("--resume"),
    ]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("ends in a partial line"),
        "{}",
        stderr(&resumed)
    );
    let done: Vec<String> = lines(&part)
        .iter()
        .map(|l| l["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        done,
        [img.display().to_string(), img2.display().to_string()]
    );
}

#[test]
fn merge_writes_through_links_keeps_modes_and_refuses_what_is_not_a_file() {
    let tmp = TempDir::new("merge-out");
    let img = image(&tmp.0, "x.png");
    let part = tmp.0.join("part.jsonl");
    let described = run_describe(&[img.as_os_str(), os("--out"), part.as_os_str()]);
    assert!(described.status.success(), "{}", stderr(&described));
    let merge = |output: &Path, umask: Option<u32>| {
        run_in(
            &[os("merge"), part.as_os_str(), os("-o"), output.as_os_str()],
            LIMIT,
            umask,
        )
    };

    // A link: its target is replaced, the link stays, the target keeps its mode.
    let user = tmp.0.join("user");
    std::fs::create_dir(&user).unwrap();
    let target = user.join("results.jsonl");
    // An earlier merge: a file of results, which merge may replace.
    std::fs::write(
        &target,
        "{\"event\":\"error\",\"image\":\"old.png\",\"error\":\"x\"}\n",
    )
    .unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = user.join("latest.jsonl");
    std::os::unix::fs::symlink("results.jsonl", &link).unwrap();
    let output = merge(&link, None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&part).unwrap()
    );
    assert_eq!(mode(&target), 0o644);

    // A new file follows the umask; a replaced one keeps its bits.
    let fresh = user.join("fresh.jsonl");
    assert!(merge(&fresh, Some(0o022)).status.success());
    assert_eq!(mode(&fresh), 0o644);
    let private = user.join("private.jsonl");
    assert!(merge(&private, Some(0o077)).status.success());
    assert_eq!(mode(&private), 0o600);
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(merge(&private, Some(0o077)).status.success());
    assert_eq!(mode(&private), 0o640);

    // What is not a regular file is refused at once and left as it was.
    mkfifo(&user.join("fifo"));
    mksocket(&user.join("sock"));
    std::os::unix::fs::symlink("nowhere", user.join("dangling")).unwrap();
    std::os::unix::fs::symlink(".", user.join("to-dir")).unwrap();
    let before = snapshot(&user);
    for (name, needle) in [
        ("fifo", "is a FIFO"),
        ("sock", "is a socket"),
        ("dangling", "which does not exist"),
        ("to-dir", "a symbolic link to a directory"),
        (".", "is a directory"),
    ] {
        let output = merge(&user.join(name), None);
        one_line_error(&output, 2, needle);
        assert_eq!(snapshot(&user), before, "merge -o {name}");
    }
    // A part still held by a running describe is refused, not merged short.
    let held = std::fs::OpenOptions::new()
        .append(true)
        .open(&part)
        .unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock takes a descriptor we own.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let output = merge(&user.join("while-held.jsonl"), None);
    one_line_error(&output, 1, "is still being written");
    assert!(!user.join("while-held.jsonl").exists());
}

#[test]
fn caption_files_follow_the_umask_and_a_resumed_run_knows_its_own() {
    let tmp = TempDir::new("captions");
    let img = image(&tmp.0, "x.png");
    let part = tmp.0.join("part.jsonl");
    let args = describe_args(&[
        img.as_os_str(),
        os("--write-txt"),
        os("--out"),
        part.as_os_str(),
    ]);
    let refs: Vec<&OsStr> = args.iter().map(|s| s.as_os_str()).collect();
    let output = run_in(&refs, LIMIT, Some(0o022));
    assert!(output.status.success(), "{}", stderr(&output));
    let caption = tmp.0.join("x.txt");
    assert_eq!(mode(&caption), 0o644, "not 0600: the umask decides");
    let text = std::fs::read(&caption).unwrap();

    // Killed after the caption file, before the done line: resume takes the caption as its own.
    std::fs::write(&part, "").unwrap();
    let mut resume = refs.clone();
    resume.push(os("--resume"));
    let output = run(&resume, LIMIT);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read(&caption).unwrap(), text);
    assert_eq!(lines(&part).len(), 1);

    // A caption file with other text is the user's: never replaced, even when resuming.
    std::fs::write(&part, "").unwrap();
    std::fs::write(&caption, "my own caption\n").unwrap();
    let output = run(&resume, LIMIT);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("exists with other text"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read(&caption).unwrap(), b"my own caption\n");
}

#[test]
fn a_folder_expands_to_each_regular_image_once_and_names_that_are_not_utf8_stay_apart() {
    let tmp = TempDir::new("inputs");
    let dir = tmp.0.join("imgs");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::copy(fixture("images/crop32.png"), dir.join("a.png")).unwrap();
    // Latin-1 file names: M\xfcller and M\xf6ller, two images that read alike as UTF-8.
    let muller = dir.join(name(b"M\xfcller.png"));
    let moller = dir.join(name(b"M\xf6ller.png"));
    std::fs::copy(fixture("images/odd_47x61.png"), &muller).unwrap();
    std::fs::copy(fixture("images/grey_40x33.png"), &moller).unwrap();
    mkfifo(&dir.join("b.png"));
    mksocket(&dir.join("c.png"));
    std::os::unix::fs::symlink("gone.png", dir.join("d.png")).unwrap();
    std::os::unix::fs::symlink("a.png", dir.join("e.png")).unwrap();
    std::os::unix::fs::symlink("..", dir.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("f.png", dir.join("g.png")).unwrap();
    std::os::unix::fs::symlink("g.png", dir.join("f.png")).unwrap();
    let before = snapshot(&tmp.0);

    let part = tmp.0.join("part.jsonl");
    // The folder, and a file in it named twice more by other spellings.
    let relative = tmp.0.join("imgs/./a.png");
    let output = run_describe(&[
        dir.as_os_str(),
        relative.as_os_str(),
        dir.join("a.png").as_os_str(),
        os("--out"),
        part.as_os_str(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let done = lines(&part);
    let mut described: Vec<PathBuf> = done
        .iter()
        .map(|line| match line.get("image_hex").and_then(Value::as_str) {
            Some(hex) => {
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                PathBuf::from(name(&bytes))
            }
            None => PathBuf::from(line["image"].as_str().unwrap()),
        })
        .collect();
    described.sort();
    let mut wanted = vec![dir.join("a.png"), muller.clone(), moller.clone()];
    wanted.sort();
    assert_eq!(described, wanted, "each regular image once: {done:?}");
    for line in &done {
        assert_eq!(line["event"], "done", "{line}");
    }
    assert_eq!(
        done.iter()
            .filter(|l| l["image"].as_str().unwrap().contains('\u{fffd}'))
            .count(),
        2
    );

    // Resume knows both Latin-1 names; merge checks them against the inputs.
    let resumed = run_describe(&[
        dir.as_os_str(),
        os("--out"),
        part.as_os_str(),
        os("--resume"),
    ]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("nothing to describe"),
        "{}",
        stderr(&resumed)
    );
    let merged = tmp.0.join("merged.jsonl");
    let output = run(
        &[
            os("merge"),
            part.as_os_str(),
            os("-o"),
            merged.as_os_str(),
            os("--inputs"),
            dir.as_os_str(),
            os("--json"),
        ],
        LIMIT,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(report["missing"], serde_json::json!([]), "{report}");
    assert_eq!(report["duplicated"], serde_json::json!([]), "{report}");
    assert_eq!(report["described"], 3, "{report}");

    // Nothing of the inputs changed.
    let mut after = snapshot(&tmp.0);
    for written in [&b"part.jsonl"[..], b"merged.jsonl"] {
        after.remove(written);
    }
    assert_eq!(after, before);
}

#[test]
fn every_command_over_every_kind_of_file_system_object() {
    let tmp = TempDir::new("fs-objects");
    let objects = tmp.0.join("objects");
    std::fs::create_dir(&objects).unwrap();
    let o = |n: &str| objects.join(n);
    std::fs::copy(fixture("images/crop32.png"), o("file.png")).unwrap();
    std::fs::create_dir(o("folder.png")).unwrap();
    std::os::unix::fs::symlink("file.png", o("link.png")).unwrap();
    std::os::unix::fs::symlink("nowhere.png", o("dangling.png")).unwrap();
    std::os::unix::fs::symlink("loop2.png", o("loop1.png")).unwrap();
    std::os::unix::fs::symlink("loop1.png", o("loop2.png")).unwrap();
    mkfifo(&o("fifo.png"));
    mksocket(&o("socket.png"));
    std::fs::copy(fixture("images/crop32.png"), o("unreadable.png")).unwrap();
    std::fs::set_permissions(o("unreadable.png"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let latin1 = objects.join(name(b"M\xfcller.png"));
    std::fs::copy(fixture("images/crop32.png"), &latin1).unwrap();
    // A part file, so merge has something valid to read besides the objects.
    let part = tmp.0.join("part.jsonl");
    let file = o("file.png");
    let output = run_describe(&[file.as_os_str(), os("--out"), part.as_os_str()]);
    assert!(output.status.success(), "{}", stderr(&output));
    // Root reads a 0000 file anyway; what is checked is that nothing changes and nothing hangs.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;

    let kinds = [
        "file.png",
        "folder.png",
        "link.png",
        "dangling.png",
        "loop1.png",
        "fifo.png",
        "socket.png",
        "unreadable.png",
    ];
    let mut paths: Vec<(String, PathBuf)> = kinds.iter().map(|k| (k.to_string(), o(k))).collect();
    paths.push(("latin-1 name".into(), latin1.clone()));
    let clip = f("clip-tiny-quickgelu");
    let merged = tmp.0.join("m.jsonl");
    let before = snapshot(&objects);
    for (kind, path) in &paths {
        let p = path.as_os_str();
        let readable_image = matches!(kind.as_str(), "file.png" | "link.png" | "latin-1 name")
            || (kind == "unreadable.png" && root);
        let commands: Vec<(&str, Vec<&OsStr>, bool)> = vec![
            // (what, arguments, whether it succeeds)
            ("describe IMAGE", vec![], readable_image),
            (
                "embed --image",
                vec![os("embed"), os("--clip"), os(&clip), os("--image"), p],
                readable_image,
            ),
            (
                "score",
                vec![os("score"), p, os("a cat"), os("--clip"), os(&clip)],
                readable_image,
            ),
            (
                "merge PART",
                vec![os("merge"), p, os("-o"), merged.as_os_str()],
                false,
            ),
            ("describe --out", vec![], false),
            (
                "merge -o",
                vec![os("merge"), part.as_os_str(), os("-o"), p],
                false,
            ),
        ];
        for (what, args, succeeds) in commands {
            let output = match what {
                "describe IMAGE" => run_describe(&[p]),
                "describe --out" => run_describe(&[file.as_os_str(), os("--out"), p]),
                _ => run(&args, LIMIT),
            };
            let err = stderr(&output);
            assert!(!err.contains("panicked"), "{what} {kind}: {err}");
            // merge -o onto an image (a regular file holding no results) is refused as well.
            if succeeds {
                assert!(output.status.success(), "{what} {kind}: {err}");
            } else {
                assert!(!output.status.success(), "{what} {kind} must fail");
                let error_lines: Vec<&str> =
                    err.lines().filter(|l| l.starts_with("error:")).collect();
                // merge of a regular file that holds no part lines reports them, exit 1.
                let reports = what == "merge PART" && readable_image;
                assert!(reports || !error_lines.is_empty(), "{what} {kind}: {err}");
                if what != "describe IMAGE" && !reports {
                    assert_eq!(
                        err.trim().lines().count(),
                        1,
                        "{what} {kind}: one line: {err}"
                    );
                }
            }
            assert_eq!(
                snapshot(&objects),
                before,
                "{what} {kind} changed the user's files"
            );
        }
    }
    // generate -o onto what is not a regular file: refused before any work, nothing changed.
    for kind in [
        "folder.png",
        "dangling.png",
        "loop1.png",
        "fifo.png",
        "socket.png",
    ] {
        let output = run(
            &[
                os("generate"),
                os("a red cube"),
                os("-o"),
                o(kind).as_os_str(),
                os("--model"),
                os(&f("sd-tiny")),
                os("--steps"),
                os("1"),
                os("--size"),
                os("64"),
            ],
            LIMIT,
        );
        one_line_error(&output, 2, "");
        assert_eq!(snapshot(&objects), before, "generate -o {kind}");
    }
    // The folder itself, holding every kind: the regular images only, each once.
    let out = tmp.0.join("folder-part.jsonl");
    let output = run_describe(&[objects.as_os_str(), os("--out"), out.as_os_str()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let described = lines(&out);
    // file.png (link.png is the same file), unreadable.png, and the latin-1 name; as root the
    // 0000 file reads, otherwise it fails once.
    assert_eq!(described.len(), 3, "{described:?}");
    assert_eq!(
        described.iter().filter(|l| l["event"] == "done").count(),
        if root { 3 } else { 2 }
    );
    assert_eq!(snapshot(&objects), before);
}

#[test]
fn usage_errors_exit_2_and_numbers_are_checked_before_loading() {
    let tmp = TempDir::new("usage");
    let img = image(&tmp.0, "x.png");
    for (flags, needle) in [
        (
            &["--target-weight=-1"][..],
            "--target-weight must be a positive",
        ),
        (
            &["--target-weight", "0"][..],
            "--target-weight must be a positive",
        ),
        (
            &["--target-weight", "NaN"][..],
            "--target-weight must be a positive",
        ),
        (
            &["--strategy", "beam", "--beam-lookahead", "1000000"][..],
            "lower --beam-lookahead",
        ),
        (&["--prefilter", "0"][..], "--prefilter must be at least 1"),
    ] {
        let mut args = vec![img.as_os_str()];
        args.extend(flags.iter().map(|s| os(s)));
        let output = run_describe(&args);
        one_line_error(&output, 2, needle);
    }
    // A model that does not exist is not a usage error, but a bad number is found before it is
    // looked for.
    let output = run(
        &[
            os("describe"),
            img.as_os_str(),
            os("--lm"),
            tmp.0.join("no-such-model").as_os_str(),
            os("--target-weight=-1"),
        ],
        LIMIT,
    );
    one_line_error(&output, 2, "--target-weight");
    // clap's tip for a negative value names the form that works for options.
    let output = run_describe(&[img.as_os_str(), os("--top-k"), os("-1")]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(!err.contains("'-- -1'"), "{err}");
    // A text-only encoder cannot be steered toward images: said once, before the batch.
    let output = run(
        &[
            os("describe"),
            img.as_os_str(),
            img.as_os_str(),
            os("--lm"),
            os(&f("gpt2-tiny")),
            os("--encoder"),
            os(&f("minilm-tiny")),
            os("--top-k"),
            os("5"),
        ],
        LIMIT,
    );
    one_line_error(&output, 2, "embeds text only");
}

#[test]
fn merge_never_replaces_a_part_an_image_or_a_file_being_written() {
    let tmp = TempDir::new("merge-guard");
    let img = image(&tmp.0, "x.png");
    let part = tmp.0.join("part.jsonl");
    let output = run_describe(&[img.as_os_str(), os("--out"), part.as_os_str()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let link = tmp.0.join("link.jsonl");
    std::os::unix::fs::symlink("part.jsonl", &link).unwrap();
    let notes = tmp.0.join("notes.txt");
    std::fs::write(&notes, "mine\n").unwrap();
    let before = snapshot(&tmp.0);
    for (output, needle) in [
        (&part, "is the part"),
        (&link, "is the part"),
        (&img, "is not a file of clipsteer results"),
        (&notes, "is not a file of clipsteer results"),
    ] {
        let result = run(
            &[os("merge"), part.as_os_str(), os("-o"), output.as_os_str()],
            LIMIT,
        );
        one_line_error(&result, 2, needle);
        assert_eq!(snapshot(&tmp.0), before, "merge -o {output:?}");
    }
    // An output that a running describe holds: its next lines would go to a replaced file.
    let other = tmp.0.join("other.jsonl");
    std::fs::copy(&part, &other).unwrap();
    let held = std::fs::OpenOptions::new()
        .append(true)
        .open(&other)
        .unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock takes a descriptor we own.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let result = run(
        &[os("merge"), part.as_os_str(), os("-o"), other.as_os_str()],
        LIMIT,
    );
    one_line_error(&result, 1, "is being written by a running describe");
}

#[test]
fn a_replaced_file_keeps_its_owner_and_loses_set_id_bits() {
    let tmp = TempDir::new("owner");
    let img = image(&tmp.0, "x.png");
    let part = tmp.0.join("part.jsonl");
    let output = run_describe(&[img.as_os_str(), os("--out"), part.as_os_str()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let target = tmp.0.join("merged.jsonl");
    std::fs::copy(&part, &target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o6755)).unwrap();
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        std::os::unix::fs::chown(&target, Some(1234), Some(1234)).unwrap();
    }
    let owner = std::fs::metadata(&target).unwrap().uid();
    let result = run(
        &[os("merge"), part.as_os_str(), os("-o"), target.as_os_str()],
        LIMIT,
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(meta.uid(), owner);
    assert_eq!(
        (meta.uid(), meta.gid()),
        if root {
            (1234, 1234)
        } else {
            (meta.uid(), meta.gid())
        }
    );
}

#[test]
fn captions_never_overwrite_an_input_or_the_part_file() {
    let tmp = TempDir::new("caption-guard");
    let a = image(&tmp.0, "a.png");
    let b = image(&tmp.0, "b.png");
    // b.txt is a link to b.png itself; a.txt to the other input.
    std::os::unix::fs::symlink("b.png", tmp.0.join("b.txt")).unwrap();
    std::os::unix::fs::symlink("b.png", tmp.0.join("a.txt")).unwrap();
    let before = snapshot(&tmp.0);
    let output = run_describe(&[
        a.as_os_str(),
        b.as_os_str(),
        os("--write-txt"),
        os("--overwrite"),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let err = stderr(&output);
    assert_eq!(
        err.matches("an input image, which writing the caption would destroy")
            .count(),
        2,
        "{err}"
    );
    assert_eq!(snapshot(&tmp.0), before);

    // --out is a caption file: refused before any work.
    let tmp = TempDir::new("caption-out");
    let a = image(&tmp.0, "a.png");
    let output = run_describe(&[
        a.as_os_str(),
        os("--write-txt"),
        os("--overwrite"),
        os("--out"),
        tmp.0.join("a.txt").as_os_str(),
    ]);
    one_line_error(&output, 2, "is the caption file of");
    assert!(!tmp.0.join("a.txt").exists());
}

#[test]
fn only_a_part_files_own_partial_line_is_cut_and_only_when_a_result_is_written() {
    let tmp = TempDir::new("partial");
    let img = image(&tmp.0, "x.png");
    let img2 = image(&tmp.0, "y.png");
    let part = tmp.0.join("part.jsonl");
    let output = run_describe(&[img.as_os_str(), os("--out"), part.as_os_str()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let whole = std::fs::read(&part).unwrap();

    // A partial line after whole ones, and a run refused for its settings: nothing is cut.
    let mut killed = whole.clone();
    killed.extend_from_slice(b"{\"event\":\"done\",\"ima");
    std::fs::write(&part, &killed).unwrap();
    let refused = run_describe(&[
        img2.as_os_str(),
        os("--out"),
        part.as_os_str(),
        os("--prompt"),
        os("A photo of "),
    ]);
    one_line_error(&refused, 2, "other settings");
    assert_eq!(std::fs::read(&part).unwrap(), killed);

    // A whole last line without its newline is kept: the image is not described again.
    std::fs::write(&part, &whole[..whole.len() - 1]).unwrap();
    let resumed = run_describe(&[
        img.as_os_str(),
        img2.as_os_str(),
        os("--out"),
        part.as_os_str(),
        os("--resume"),
    ]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let images: Vec<String> = lines(&part)
        .iter()
        .map(|l| l["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        images,
        [img.display().to_string(), img2.display().to_string()]
    );

    // Fragments and blank lines alone are not a part file.
    for content in [
        &b"{"[..],
        b"{\"event\":\"done\",\"image\":\"x\",\"text\":\"my notes",
        b"\n\n",
        b"  \n",
    ] {
        std::fs::write(&part, content).unwrap();
        let output = run_describe(&[img.as_os_str(), os("--out"), part.as_os_str()]);
        one_line_error(&output, 2, "is not a part file that clipsteer wrote");
        assert_eq!(std::fs::read(&part).unwrap(), content);
    }

    // An --out inside the input folder, named like an image, is never an input.
    let dir = tmp.0.join("imgs");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(fixture("images/crop32.png"), dir.join("a.png")).unwrap();
    let inside = dir.join("zz.png");
    for _ in 0..2 {
        let output = run_describe(&[
            dir.as_os_str(),
            os("--out"),
            inside.as_os_str(),
            os("--resume"),
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let done = lines(&inside);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["event"], "done");
}

#[test]
fn names_are_shown_without_their_terminal_escapes() {
    let tmp = TempDir::new("escapes");
    let dir = tmp.0.join("imgs");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(fixture("images/crop32.png"), dir.join("a.png")).unwrap();
    std::fs::copy(
        fixture("images/crop32.png"),
        dir.join(name(
            b"esc\x1b]0;PWNED\x07\x1b[31mred\xe2\x80\xaeline\nbreak.png",
        )),
    )
    .unwrap();
    std::fs::write(dir.join(name(b"bad\x1b[5m.png")), b"not an image").unwrap();
    let output = run_describe(&[dir.as_os_str()]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    for stream in [&output.stdout, &output.stderr] {
        assert!(
            !stream.contains(&0x1b),
            "{}",
            String::from_utf8_lossy(stream)
        );
        assert!(!stream.contains(&0x07));
        assert!(!String::from_utf8_lossy(stream).contains('\u{202e}'));
    }
    let out = stdout(&output);
    // One line per image: the newline in the name is shown, not obeyed.
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("esc\\u{1b}]0;PWNED\\u{7}"), "{out}");
    let err = stderr(&output);
    assert!(err.contains("bad\\u{1b}[5m.png"), "{err}");
}
