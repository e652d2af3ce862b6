//! Peak memory of one image, measured in child processes (wait4's rusage, which counts that
//! child alone while other tests run beside it): memory is bounded by the decoded pixels plus
//! the crop, whatever the image's shape. The bounds are those docs/SERVE.md and docs/IMAGES.md
//! state.

mod common;

use clipsteer::image::{load_image, ClipImageProcessor, DecodeLimits};
use common::*;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, RgbImage};
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// What preprocessing may add to the decoded pixels, in bytes: the cropped resize's
/// intermediate (crop width × source height × 3, 5.3 MiB for 8192 rows at 224), the output, and
/// the allocator's slack.
const PREPROCESS_SLACK: u64 = 16 * MIB;

/// What a strip of a few KB may cost over a small image: its crop is the same size.
const STRIP_SLACK: u64 = 4 * MIB;

const PROBE_ENV: &str = "CLIPSTEER_TEST_RSS_PROBE";

/// The measuring process: runs the command in `PROBE_ENV` (arguments separated by newlines) to
/// its end and prints its exit code and peak RSS. The measurement needs this small process in
/// between: Linux records, in a child's peak RSS, the peak of the memory it had before `exec`,
/// which for a child spawned (vfork) by this test binary is the whole test process's, with its
/// 8192×8192 test image and the tests running beside it. Spawned by this probe, it is the
/// probe's few MiB.
#[test]
#[ignore = "run as a child process by the tests below"]
fn rss_probe_child() {
    let argv = std::env::var(PROBE_ENV).expect("the command to measure");
    let mut argv = argv.split('\n');
    let mut command = Command::new(argv.next().unwrap());
    command.args(argv).env_remove(PROBE_ENV);
    // Reaped by wait4 below, which, unlike Child::wait, returns the child's rusage.
    #[allow(clippy::zombie_processes)]
    let child = command.spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for the child `pid`, which this thread owns.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    // ru_maxrss is in KiB on Linux.
    println!("probe: exit {code} peak_rss_kib {}", usage.ru_maxrss);
}

/// Runs `argv` with `env` under the probe, its stderr in a file under `dir`: (success, peak RSS
/// in bytes, stderr).
fn peak_rss(argv: &[&str], env: &[(&str, &Path)], dir: &Path, tag: &str) -> (bool, u64, String) {
    let err_path = dir.join(format!("{tag}.stderr"));
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "rss_probe_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, argv.join("\n"))
        .envs(env.iter().copied())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .output()
        .expect("run the probe");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let line = report
        .lines()
        .find_map(|l| l.strip_prefix("probe: exit "))
        .unwrap_or_else(|| panic!("{tag}: no probe report in {report}"));
    let mut words = line.split_whitespace();
    let code: i32 = words.next().unwrap().parse().unwrap();
    let kib: u64 = words.nth(1).unwrap().parse().unwrap();
    let err = std::fs::read_to_string(err_path).unwrap_or_default();
    (code == 0, kib * 1024, err)
}

/// An 8192×8192 RGB PNG of large flat blocks, 216 KB (the was 196 KB). Compressed: the
/// file's bytes are held while it decodes, and an uncompressed one would add its 192 MiB.
fn write_big_png(path: &Path) {
    let side = 8192;
    let image = RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([
            (x / 512 * 16) as u8,
            (y / 512 * 16) as u8,
            ((x ^ y) / 1024) as u8,
        ])
    });
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    PngEncoder::new_with_quality(file, CompressionType::Default, FilterType::Adaptive)
        .write_image(image.as_raw(), side, side, image::ExtendedColorType::Rgb8)
        .unwrap();
}

fn write_png(path: &Path, width: u32, height: u32) {
    RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .save(path)
        .unwrap();
}

const CHILD_ENV: &str = "CLIPSTEER_TEST_PREPROCESS_IMAGE";

/// The child process of `preprocessing_at_224_is_bounded_by_the_output`: decodes and
/// preprocesses one image for a 224-pixel CLIP, as `describe` and `serve` do.
#[test]
#[ignore = "run as a child process by preprocessing_at_224_is_bounded_by_the_output"]
fn preprocess_one_image_child() {
    let path = std::env::var(CHILD_ENV).expect("the image path");
    let image = load_image(Path::new(&path), DecodeLimits::default()).unwrap();
    let pixels = ClipImageProcessor::openai(224)
        .preprocess(&image, &candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(pixels.dims(), &[3, 224, 224]);
}

fn child_peak(image: &Path, dir: &Path, tag: &str) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let (ok, peak, err) = peak_rss(
        &[
            exe.to_str().unwrap(),
            "--ignored",
            "--exact",
            "preprocess_one_image_child",
            "--test-threads=1",
        ],
        &[(CHILD_ENV, image)],
        dir,
        tag,
    );
    assert!(ok, "{tag}: the child failed: {err}");
    peak
}

#[test]
fn preprocessing_at_224_is_bounded_by_the_output() {
    let tmp = TempDir::new("image-memory-224");
    let small = tmp.0.join("small.png");
    write_png(&small, 40, 30);
    let baseline = child_peak(&small, &tmp.0, "small");

    // The strips: resized in full they make 1792000×224 pixels, 1.2 GB.
    for (width, height) in [(8000, 1), (1, 8000)] {
        let strip = tmp.0.join(format!("strip_{width}x{height}.png"));
        write_png(&strip, width, height);
        let peak = child_peak(&strip, &tmp.0, "strip");
        let extra = peak.saturating_sub(baseline);
        println!(
            "peak RSS at 224: baseline {} KiB, {width}×{height} {} KiB",
            baseline >> 10,
            peak >> 10
        );
        assert!(
            extra <= STRIP_SLACK,
            "{width}×{height}: {} MiB over the baseline",
            extra / MIB
        );
    }

    // 8192×8192: 192 MiB decoded, and nothing of that size beside it (no RGB copy, no full
    // resize). Before the cropped resize it took three copies (about 600 MiB).
    let big = tmp.0.join("big.png");
    write_big_png(&big);
    let decoded = 8192 * 8192 * 3;
    let peak = child_peak(&big, &tmp.0, "big");
    let extra = peak.saturating_sub(baseline);
    println!(
        "peak RSS at 224: baseline {} KiB, 8192×8192 {} KiB ({} KiB over)",
        baseline >> 10,
        peak >> 10,
        extra >> 10
    );
    assert!(
        extra <= decoded + PREPROCESS_SLACK,
        "8192×8192: {} MiB over the baseline, over {} MiB decoded + {} MiB",
        extra / MIB,
        decoded / MIB,
        PREPROCESS_SLACK / MIB
    );
    // The measurement sees the decoded pixels: the bound is not met by measuring nothing.
    assert!(
        extra >= decoded * 9 / 10,
        "8192×8192: only {} MiB over the baseline",
        extra / MIB
    );
}

/// The command line end to end (file read, decode, preprocess, embed) with the tiny fixture CLIP
/// (30 pixels): a strip costs what a small image costs. Resized in full, the 8000×1 strip made a
/// 240000×30 image here (21 MiB); at 224 pixels it is 1792000×224 (1.2 GB).
#[test]
fn embedding_a_strip_costs_what_a_small_image_costs() {
    let tmp = TempDir::new("image-memory-cli");
    let clip = f("clip-tiny-gelu");
    let exe = env!("CARGO_BIN_EXE_clipsteer");
    let empty_hf_home = tmp.0.join("hf-home");
    let embed = |image: &Path, tag: &str| {
        let image = image.to_str().unwrap();
        let argv = [exe, "embed", "--clip", &clip, "--image", image];
        // As common::bin(): off the network and away from the user's model cache.
        let env = [
            ("HF_HUB_OFFLINE", Path::new("1")),
            ("HF_HOME", &empty_hf_home),
        ];
        let (ok, peak, err) = peak_rss(&argv, &env, &tmp.0, tag);
        assert!(ok, "{tag}: {err}");
        peak
    };
    let baseline = embed(&fixture("images/crop30.png"), "small");
    let strip = fixture("extreme_shapes/wide_8000x1.png");
    let peak = embed(&strip, "strip");
    let extra = peak.saturating_sub(baseline);
    println!(
        "peak RSS of embed: baseline {} KiB, 8000×1 {} KiB",
        baseline >> 10,
        peak >> 10
    );
    assert!(extra <= STRIP_SLACK, "8000×1: {} MiB", extra / MIB);
}
