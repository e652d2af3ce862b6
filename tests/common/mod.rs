#![allow(dead_code)]
//! Shared helpers for the integration tests: fixture paths and error measures.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(path: &str) -> PathBuf {
    root().join("tests/fixtures").join(path)
}

pub fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture(&format!("reference/{name}.safetensors")),
        &Device::Cpu,
    )
    .expect("reference tensors")
}

/// ‖a − b‖₂ / ‖b‖₂ over all elements.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let diff: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff.sqrt() / norm.sqrt()) as f32
}

pub fn cosine(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb)) as f32
}

/// Token ids from a JSON array of numbers.
pub fn json_ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

pub fn ids_of(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// A directory that is removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "clipsteer-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The clipsteer binary, kept off the network and away from the user's model cache.
pub fn bin() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_clipsteer"));
    cmd.env("HF_HUB_OFFLINE", "1").env(
        "HF_HOME",
        std::env::temp_dir().join("clipsteer-test-empty-hf-home"),
    );
    cmd.env_remove("HF_HUB_CACHE");
    cmd
}

pub fn run(args: &[&str]) -> std::process::Output {
    bin().args(args).output().expect("run clipsteer")
}

pub fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A fixture's path as an argument.
pub fn f(path: &str) -> String {
    fixture(path).display().to_string()
}

/// The largest |a − b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("difference")
}

/// The largest |a| over all elements.
pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max")
}

/// The image target (unit embedding) of a fixture image under `scorer`.
pub fn target_of(scorer: &clipsteer::steer::ClipScorer, image: &str) -> Vec<f32> {
    clipsteer::steer::scorer::image_target(
        scorer,
        &fixture(&format!("images/{image}")),
        clipsteer::image::DecodeLimits::default(),
    )
    .expect("fixture image target")
}

/// `lm` encodes each case's `text` to its reference `ids` and decodes them back to the text.
pub fn assert_round_trips(lm: &impl clipsteer::steer::CausalLm, cases: &[serde_json::Value]) {
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = json_ids(&case["ids"]);
        assert_eq!(lm.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(lm.decode(&want).unwrap(), text, "decode of {text:?}");
    }
}

/// Writes `src`'s tensors cast to `dtype` as safetensors at `dst`, as torch's `.to(dtype)`
/// rounds (to nearest even, in candle as in torch).
pub fn cast_safetensors(src: &Path, dst: &Path, dtype: DType) {
    let tensors = candle_core::safetensors::load(src, &Device::Cpu).unwrap();
    let cast: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            let v = if v.dtype().is_float() {
                v.to_dtype(dtype).unwrap()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    candle_core::safetensors::save(&cast, dst).unwrap();
}

/// Splits `src` into two safetensors shards and an index in `dir`, named as transformers names them.
pub fn shard_safetensors(src: &Path, dir: &Path) {
    let tensors = candle_core::safetensors::load(src, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let shard = format!("model-{:05}-of-00002.safetensors", i + 1);
        let subset: HashMap<String, Tensor> = part
            .iter()
            .map(|k| ((*k).clone(), tensors[*k].clone()))
            .collect();
        candle_core::safetensors::save(&subset, dir.join(&shard)).unwrap();
        for k in part {
            weight_map.insert((*k).clone(), serde_json::json!(shard));
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
}

/// Makes a FIFO at `path`, where tests put one in place of a file to check it is refused, not
/// waited on.
pub fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "{path:?}");
}
