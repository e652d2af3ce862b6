//! Models by hub id from a stand-in hub (tests/hub_support/) that answers as huggingface.co
//! does, in the layouts real repositories have: every model loaded by id gives the same numbers
//! as the same files loaded from a local directory, only what is needed is downloaded, and
//! each failure is one line that says what to do.

mod common;
mod hub_support;

use candle_core::{DType, Device, Tensor};
use clipsteer::hub::{resolve_with, HubConfig, ModelKind, ModelOrigin};
use common::*;
use hub_support::{dir_files, Files, HubRepo, StandInHub};
use std::path::Path;
use std::sync::Arc;

fn config(hub: &StandInHub, cache: &Path) -> HubConfig {
    HubConfig {
        endpoint: hub.endpoint.clone(),
        token: None,
        offline: false,
        cache: cache.to_path_buf(),
        progress: false,
    }
}

fn bytes(path: &Path) -> Arc<Vec<u8>> {
    Arc::new(std::fs::read(path).unwrap())
}

/// The sentence encoder's non-weight files plus `weights`.
fn minilm(weights: &[(&str, Arc<Vec<u8>>)]) -> Files {
    let mut files = Files::new();
    for file in [
        "config.json",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        files.insert(file.into(), bytes(&fixture("minilm-tiny").join(file)));
    }
    for (name, data) in weights {
        files.insert(name.to_string(), Arc::clone(data));
    }
    files
}

/// Bytes of `src` cast to `dtype` as safetensors.
fn cast(src: &Path, dtype: DType) -> Arc<Vec<u8>> {
    let dir = TempDir::new("cast");
    let out = dir.0.join("w.safetensors");
    cast_safetensors(src, &out, dtype);
    bytes(&out)
}

fn sentence_embeddings(dir: &Path) -> Vec<Vec<f32>> {
    let texts = ["a photo of a cat", "the quick brown fox"].map(String::from);
    clipsteer::steer::SentenceScorer::load(dir, &Device::Cpu)
        .unwrap()
        .embed(&texts)
        .unwrap()
}

fn gpt2_logits(dir: &Path) -> Vec<f32> {
    let model = clipsteer::models::gpt2::Gpt2::load(dir, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[464u32, 2068, 7586, 21831]], &Device::Cpu).unwrap();
    model
        .forward(&ids, &mut model.new_cache())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A local directory holding exactly `files`.
fn local(files: &Files) -> TempDir {
    let dir = TempDir::new("local");
    for (name, data) in files {
        let path = dir.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data.as_slice()).unwrap();
    }
    dir
}

fn requested(hub: &StandInHub, file: &str) -> bool {
    hub.log()
        .iter()
        .any(|line| line.ends_with(&format!("/{file}")))
}

#[test]
fn every_layout_loads_by_id_as_from_a_local_directory() {
    let f32_st = bytes(&fixture("minilm-tiny/model.safetensors"));
    let sharded_st = {
        let dir = TempDir::new("shards");
        shard_safetensors(&fixture("minilm-tiny/model.safetensors"), &dir.0);
        dir_files(&dir.0)
    };
    let sharded_bin = dir_files(&fixture("torch/minilm-sharded"));
    let with = |extra: Files| {
        let mut files = minilm(&[]);
        files.extend(extra);
        files
    };
    let junk = Arc::new(b"weights clipsteer does not read".to_vec());
    let layouts: Vec<(&str, Files)> = vec![
        // As openai/clip-vit-base-patch32's main: PyTorch weights beside TF and Flax ones.
        (
            "org/minilm-bin",
            minilm(&[
                ("pytorch_model.bin", bytes(&fixture("torch/minilm-f32.bin"))),
                ("tf_model.h5", Arc::clone(&junk)),
                ("flax_model.msgpack", Arc::clone(&junk)),
            ]),
        ),
        (
            "org/minilm-f16",
            minilm(&[(
                "model.safetensors",
                cast(&fixture("minilm-tiny/model.safetensors"), DType::F16),
            )]),
        ),
        (
            "org/minilm-bf16",
            minilm(&[(
                "model.safetensors",
                cast(&fixture("minilm-tiny/model.safetensors"), DType::BF16),
            )]),
        ),
        (
            "org/minilm-bin-f16",
            minilm(&[("pytorch_model.bin", bytes(&fixture("torch/minilm-f16.bin")))]),
        ),
        (
            "org/minilm-bin-bf16",
            minilm(&[(
                "pytorch_model.bin",
                bytes(&fixture("torch/minilm-bf16.bin")),
            )]),
        ),
        ("org/minilm-sharded", with(sharded_st)),
        ("org/minilm-sharded-bin", with(sharded_bin)),
        (
            "org/minilm-both",
            minilm(&[
                ("model.safetensors", Arc::clone(&f32_st)),
                ("pytorch_model.bin", bytes(&fixture("torch/minilm-f32.bin"))),
            ]),
        ),
    ];
    let hub = StandInHub::start(
        layouts
            .iter()
            .map(|(id, files)| HubRepo::new(id, files.clone()))
            .collect(),
    );
    let cache = TempDir::new("cache");
    let f32_numbers = sentence_embeddings(&fixture("minilm-tiny"));
    for (id, files) in &layouts {
        hub.clear_log();
        let dir = resolve_with(id, ModelKind::Encoder, &config(&hub, &cache.0))
            .unwrap_or_else(|e| panic!("{id}: {}", clipsteer::error_line(&e)));
        let by_id = sentence_embeddings(&dir);
        let from_local = sentence_embeddings(&local(files).0);
        assert_eq!(
            by_id, from_local,
            "{id}: by id and from a local directory differ"
        );
        if !id.contains("f16") {
            assert_eq!(
                by_id, f32_numbers,
                "{id}: f32 weights differ from the fixture's"
            );
        }
        assert!(!requested(&hub, "tf_model.h5") && !requested(&hub, "flax_model.msgpack"));
        if *id == "org/minilm-both" {
            assert!(
                !requested(&hub, "pytorch_model.bin"),
                "the .bin beside safetensors was downloaded: {:?}",
                hub.log()
            );
        }
        // The cache is huggingface_hub's: refs/main names the snapshot the files are in.
        let folder = cache.0.join(format!("models--{}", id.replace('/', "--")));
        let commit = std::fs::read_to_string(folder.join("refs/main")).unwrap();
        assert_eq!(dir, folder.join("snapshots").join(commit.trim()));
        assert!(std::fs::symlink_metadata(dir.join("config.json"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}

#[test]
fn revisions_pick_branches_tags_and_commits_and_are_recorded() {
    let mut files = dir_files(&fixture("gpt2-tiny"));
    let mut repo = HubRepo::new("org/gpt2", files.clone());
    let main_commit = repo.refs["main"].clone();
    repo.refs.insert("v1.0".into(), main_commit.clone());
    files.insert(
        "model.safetensors".into(),
        cast(&fixture("gpt2-tiny/model.safetensors"), DType::F16),
    );
    let v2_commit = repo.branch("v2", files.clone());
    let hub = StandInHub::start(vec![repo]);
    let cache = TempDir::new("cache-rev");
    let config = config(&hub, &cache.0);

    let f16_local = gpt2_logits(&local(&files).0);
    let main_local = gpt2_logits(&fixture("gpt2-tiny"));
    assert_ne!(f16_local, main_local);
    for (spec, commit, want) in [
        ("org/gpt2@v2".to_string(), &v2_commit, &f16_local),
        ("org/gpt2".to_string(), &main_commit, &main_local),
        ("org/gpt2@v1.0".to_string(), &main_commit, &main_local),
        (format!("org/gpt2@{v2_commit}"), &v2_commit, &f16_local),
    ] {
        let dir = resolve_with(&spec, ModelKind::CausalLm, &config)
            .unwrap_or_else(|e| panic!("{spec}: {}", clipsteer::error_line(&e)));
        assert_eq!(&gpt2_logits(&dir), want, "{spec}");
        let revision = spec.split_once('@').map(|(_, r)| r).unwrap_or("main");
        assert_eq!(
            clipsteer::hub::origin(&spec),
            Some(ModelOrigin::Hub {
                id: "org/gpt2".into(),
                revision: revision.into(),
                commit: commit.clone(),
                file: None,
            })
        );
    }
    let refs = cache.0.join("models--org--gpt2/refs");
    assert_eq!(std::fs::read_to_string(refs.join("v2")).unwrap(), v2_commit);
    assert_eq!(
        std::fs::read_to_string(refs.join("v1.0")).unwrap(),
        main_commit
    );
    // Commits are not refs in huggingface_hub's layout.
    assert!(!refs.join(&v2_commit).exists());

    let error = resolve_with("org/gpt2@nope", ModelKind::CausalLm, &config).unwrap_err();
    let line = clipsteer::error_line(&error);
    assert!(line.contains("no revision 'nope'"), "{line}");
}

#[test]
fn gated_repos_need_a_token_and_say_so() {
    let files = minilm(&[(
        "model.safetensors",
        bytes(&fixture("minilm-tiny/model.safetensors")),
    )]);
    let hub = StandInHub::start(vec![HubRepo::new("org/gated", files).gated("hf_right")]);
    let cache = TempDir::new("cache-gated");
    let mut config = config(&hub, &cache.0);
    for token in [None, Some("hf_wrong".to_string())] {
        config.token = token;
        let line = clipsteer::error_line(
            &resolve_with("org/gated", ModelKind::Encoder, &config).unwrap_err(),
        );
        assert!(
            line.contains("gated") && line.contains("HF_TOKEN"),
            "{line}"
        );
        assert!(
            line.contains(&format!("{}/org/gated", hub.endpoint)),
            "{line}"
        );
    }
    config.token = Some("hf_right".into());
    let dir = resolve_with("org/gated", ModelKind::Encoder, &config).unwrap();
    assert_eq!(
        sentence_embeddings(&dir),
        sentence_embeddings(&fixture("minilm-tiny"))
    );
}

#[test]
fn failures_are_one_line_and_say_what_to_do() {
    let junk = Arc::new(b"h5".to_vec());
    let tf_only = minilm(&[("tf_model.h5", junk)]);
    let good = minilm(&[(
        "model.safetensors",
        bytes(&fixture("minilm-tiny/model.safetensors")),
    )]);
    let hub = StandInHub::start(vec![
        HubRepo::new("org/tf-only", tf_only),
        HubRepo::new("org/good", good),
    ]);
    let cache = TempDir::new("cache-errors");
    let online = config(&hub, &cache.0);
    let error = |spec: &str, config: &HubConfig| {
        let line =
            clipsteer::error_line(&resolve_with(spec, ModelKind::Encoder, config).unwrap_err());
        assert!(!line.contains('\n'));
        line
    };
    let line = error("org/missing", &online);
    assert!(line.contains("no model 'org/missing'"), "{line}");
    let line = error("org/tf-only", &online);
    assert!(
        line.contains("no weights") && line.contains("tf_model.h5"),
        "{line}"
    );

    // Offline with nothing cached, then with a file gone from the cache: each names the cache.
    let offline = HubConfig {
        offline: true,
        ..online.clone()
    };
    let line = error("org/good", &offline);
    assert!(
        line.contains("not in the Hugging Face cache") && line.contains("HF_HUB_OFFLINE"),
        "{line}"
    );
    let dir = resolve_with("org/good", ModelKind::Encoder, &online).unwrap();
    assert_eq!(
        resolve_with("org/good", ModelKind::Encoder, &offline).unwrap(),
        dir
    );
    // The hub unreachable: the cache serves, as huggingface_hub falls back to it.
    let unreachable = HubConfig {
        endpoint: "http://127.0.0.1:9".into(),
        ..online.clone()
    };
    assert_eq!(
        resolve_with("org/good", ModelKind::Encoder, &unreachable).unwrap(),
        dir
    );
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let line = error("org/good", &unreachable);
    assert!(
        line.contains("unreachable") && line.contains("tokenizer.json"),
        "{line}"
    );
    let line = error("org/good", &offline);
    assert!(
        line.contains("tokenizer.json") && line.contains("HF_HUB_OFFLINE"),
        "{line}"
    );
}

#[test]
fn diffusers_pipelines_load_fp16_variants_bins_and_sharded_unets() {
    let sd = fixture("sd-tiny");
    let mut base = dir_files(&sd);
    base.retain(|name, _| !name.starts_with("reference/"));
    // As SD repos ship: fp16 variants beside the f32 files; a .bin beside the VAE's safetensors.
    let mut variants = base.clone();
    for (folder, file) in [
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ] {
        variants.insert(
            format!("{folder}/{file}.fp16.safetensors"),
            cast(&sd.join(format!("{folder}/{file}.safetensors")), DType::F16),
        );
    }
    variants.insert(
        "vae/diffusion_pytorch_model.bin".into(),
        bytes(&fixture("torch/sd-vae.bin")),
    );
    // PyTorch components and a sharded UNet.
    let mut bins = base.clone();
    bins.remove("vae/diffusion_pytorch_model.safetensors");
    bins.remove("text_encoder/model.safetensors");
    bins.remove("unet/diffusion_pytorch_model.safetensors");
    bins.insert(
        "vae/diffusion_pytorch_model.bin".into(),
        bytes(&fixture("torch/sd-vae.bin")),
    );
    bins.insert(
        "text_encoder/pytorch_model.bin".into(),
        bytes(&fixture("torch/sd-text-encoder.bin")),
    );
    let shards = TempDir::new("unet-shards");
    shard_safetensors(
        &sd.join("unet/diffusion_pytorch_model.safetensors"),
        &shards.0,
    );
    for (name, data) in dir_files(&shards.0) {
        let name = name.replace("model-", "diffusion_pytorch_model-").replace(
            "model.safetensors.index.json",
            "diffusion_pytorch_model.safetensors.index.json",
        );
        let data = if name.ends_with(".json") {
            Arc::new(
                String::from_utf8(data.to_vec())
                    .unwrap()
                    .replace("\"model-", "\"diffusion_pytorch_model-")
                    .into_bytes(),
            )
        } else {
            data
        };
        bins.insert(format!("unet/{name}"), data);
    }
    let hub = StandInHub::start(vec![
        HubRepo::new("org/sd-variants", variants.clone()),
        HubRepo::new("org/sd-bins", bins.clone()),
    ]);
    let cache = TempDir::new("cache-sd");
    let config = config(&hub, &cache.0);
    let run = |dir: &Path, variant: Option<&str>| {
        let pipeline =
            clipsteer::diffusion::StableDiffusion::load_variant(dir, variant, &Device::Cpu)
                .unwrap();
        let options = clipsteer::diffusion::GenerateOptions {
            prompt: "a red square".into(),
            negative: String::new(),
            steps: 2,
            guidance: 7.5,
            width: 64,
            height: 64,
            seed: 1,
            scheduler: clipsteer::diffusion::SchedulerKind::DpmPlusPlus2M,
        };
        pipeline
            .generate(&options, |_, _| Ok(()))
            .unwrap()
            .image
            .into_raw()
    };
    for (id, files, variant) in [
        ("org/sd-variants", &variants, Some("fp16")),
        ("org/sd-variants", &variants, None),
        ("org/sd-bins", &bins, None),
    ] {
        hub.clear_log();
        let dir = clipsteer::diffusion::resolve_with(id, variant, &config)
            .unwrap_or_else(|e| panic!("{id}: {}", clipsteer::error_line(&e)));
        assert_eq!(
            run(&dir, variant),
            run(&local(files).0, variant),
            "{id} {variant:?}"
        );
        let log = hub.log();
        let fp16 = log.iter().any(|l| l.contains(".fp16."));
        assert_eq!(fp16, variant.is_some(), "{id} {variant:?}: {log:?}");
        if id == "org/sd-variants" {
            assert!(
                !requested(&hub, "vae/diffusion_pytorch_model.bin"),
                "{log:?}"
            );
        }
    }
    let line = clipsteer::error_line(
        &clipsteer::diffusion::resolve_with("org/sd-bins", Some("fp16"), &config).unwrap_err(),
    );
    assert!(
        line.contains("fp16") && line.contains("no weights"),
        "{line}"
    );
}

/// clipsteer with the stand-in hub as HF_ENDPOINT, HF_HOME at `home`, and nothing from the
/// caller's environment that would change what it reaches (CI sets HF_HUB_OFFLINE).
fn clipsteer(hub: &StandInHub, home: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_clipsteer"));
    for name in [
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
        "XDG_CACHE_HOME",
    ] {
        cmd.env_remove(name);
    }
    cmd.env("HF_HOME", home).env("HF_ENDPOINT", &hub.endpoint);
    cmd
}

fn describe_args<'a>(lm: &'a str, encoder: &'a str) -> Vec<&'a str> {
    vec![
        "describe",
        "--lm",
        lm,
        "--encoder",
        encoder,
        "--target-text",
        "the quick brown fox",
        "--max-tokens",
        "3",
        "--json",
    ]
}

fn done_event(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", stderr(output));
    let last = stdout(output)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let done: serde_json::Value = serde_json::from_str(&last).expect("a JSON line");
    assert_eq!(done["event"], "done", "{last}");
    done
}

/// The gpt2-tiny repository with a `v2` branch holding f16 weights; returns it, v2's files
/// and v2's commit.
fn gpt2_repo() -> (HubRepo, Files, String) {
    let mut files = dir_files(&fixture("gpt2-tiny"));
    let mut repo = HubRepo::new("org/gpt2", files.clone());
    files.insert(
        "model.safetensors".into(),
        cast(&fixture("gpt2-tiny/model.safetensors"), DType::F16),
    );
    let v2 = repo.branch("v2", files.clone());
    (repo, files, v2)
}

#[test]
fn describe_by_id_reads_the_token_file_and_records_each_models_commit() {
    let (gpt2, v2_files, v2_commit) = gpt2_repo();
    let encoder_files = minilm(&[(
        "model.safetensors",
        bytes(&fixture("minilm-tiny/model.safetensors")),
    )]);
    let gated = HubRepo::new("org/minilm", encoder_files).gated("hf_from_file");
    let encoder_commit = gated.refs["main"].clone();
    let hub = StandInHub::start(vec![gpt2, gated]);
    let home = TempDir::new("home");
    // As `huggingface-cli login` leaves it.
    std::fs::write(home.0.join("token"), "hf_from_file\n").unwrap();
    let by_id = done_event(
        &clipsteer(&hub, &home.0)
            .args(describe_args("org/gpt2@v2", "org/minilm"))
            .output()
            .unwrap(),
    );
    let lm_dir = local(&v2_files);
    let from_local = done_event(
        &clipsteer(&hub, &home.0)
            .args(describe_args(
                &lm_dir.0.display().to_string(),
                &f("minilm-tiny"),
            ))
            .output()
            .unwrap(),
    );
    assert_eq!(by_id["text"], from_local["text"]);
    assert_eq!(by_id["token_ids"], from_local["token_ids"]);
    assert_eq!(by_id["similarity"], from_local["similarity"]);
    assert_eq!(
        by_id["models"],
        serde_json::json!({
            "lm": {"id": "org/gpt2", "revision": "v2", "commit": v2_commit},
            "encoder": {"id": "org/minilm", "revision": "main", "commit": encoder_commit},
        })
    );
    assert_eq!(
        from_local["models"]["lm"],
        serde_json::json!({"path": lm_dir.0.display().to_string()})
    );
    // HF_TOKEN comes before the token file, as in huggingface_hub.
    let output = clipsteer(&hub, &TempDir::new("home2").0)
        .env("HF_TOKEN", "hf_wrong")
        .args(describe_args("org/gpt2", "org/minilm"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stdout(&output).contains("gated") || stderr(&output).contains("gated"));
}

#[test]
fn an_interrupted_download_is_never_loaded_and_the_next_run_completes_it() {
    let (gpt2, _, _) = gpt2_repo();
    let hub = StandInHub::start(vec![gpt2]);
    let home = TempDir::new("home-kill");
    let args = describe_args("org/gpt2", &f("minilm-tiny"))
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    // 4.9 MB at 64 KiB per 50 ms: about 4 s, killed early on.
    hub.trickle(Some(64 * 1024));
    let mut child = clipsteer(&hub, &home.0)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let blobs = home.0.join("hub/models--org--gpt2/blobs");
    let started = std::time::Instant::now();
    let partial = loop {
        let part = std::fs::read_dir(&blobs).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "part"))
                .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 100_000))
        });
        if let Some(part) = part {
            break part;
        }
        assert!(
            started.elapsed().as_secs() < 60,
            "no partial download appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let snapshot_weights: Vec<_> =
        glob_snapshots(&home.0.join("hub/models--org--gpt2"), "model.safetensors");
    assert!(
        snapshot_weights.is_empty(),
        "a partial file reached the snapshot: {snapshot_weights:?}"
    );
    assert!(std::fs::metadata(&partial).unwrap().len() < 4_000_000);

    // Offline, the half-downloaded model is reported missing, never loaded.
    let output = clipsteer(&hub, &home.0)
        .env("HF_HUB_OFFLINE", "1")
        .args(&args)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = stdout(&output) + &stderr(&output);
    assert!(message.contains("model.safetensors"), "{message}");

    hub.trickle(None);
    let resumed = done_event(&clipsteer(&hub, &home.0).args(&args).output().unwrap());
    let local = done_event(
        &clipsteer(&hub, &home.0)
            .args(describe_args(&f("gpt2-tiny"), &f("minilm-tiny")))
            .output()
            .unwrap(),
    );
    assert_eq!(resumed["token_ids"], local["token_ids"]);
    assert_eq!(resumed["similarity"], local["similarity"]);
    assert!(!partial.exists(), "the partial file was left behind");
}

/// Files named `name` in any snapshot of a cached repository folder.
fn glob_snapshots(folder: &Path, name: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(folder.join("snapshots"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join(name))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default()
}

/// A Python command with huggingface_hub importable: a venv in target/ made on first use (pip
/// from PyPI, about 10 s), or, where python3 cannot make venvs, `pip install --target`; so that
/// this test needs nothing CI does not install itself.
fn python_with_huggingface_hub() -> std::process::Command {
    let venv = root().join("target/hub-test-venv");
    let target = root().join("target/hub-test-pylib");
    let command = |venv_python: bool| {
        if venv_python {
            std::process::Command::new(venv.join("bin/python"))
        } else {
            let mut cmd = std::process::Command::new("python3");
            cmd.env("PYTHONPATH", &target);
            cmd
        }
    };
    let ready = |venv_python: bool| {
        command(venv_python)
            .args(["-c", "import huggingface_hub"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for venv_python in [true, false] {
        if ready(venv_python) {
            return command(venv_python);
        }
    }
    let made_venv = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .is_ok_and(|o| o.status.success());
    let installed = if made_venv {
        std::process::Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "huggingface_hub",
            ])
            .status()
    } else {
        std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&target)
            .arg("huggingface_hub")
            .status()
    };
    assert!(
        installed.is_ok_and(|s| s.success()),
        "pip install huggingface_hub failed (this test needs PyPI once)"
    );
    assert!(
        ready(made_venv),
        "huggingface_hub does not import after pip install"
    );
    command(made_venv)
}

#[test]
fn the_cache_is_shared_with_pythons_huggingface_hub_both_ways() {
    let (gpt2, v2_files, _) = gpt2_repo();
    let encoder_files = minilm(&[(
        "model.safetensors",
        bytes(&fixture("minilm-tiny/model.safetensors")),
    )]);
    let hub = StandInHub::start(vec![
        gpt2,
        HubRepo::new("org/minilm", encoder_files.clone()),
    ]);
    let home = TempDir::new("home-python");
    let py = |code: &str, offline: bool| {
        let mut cmd = python_with_huggingface_hub();
        cmd.args(["-c", code])
            .env("HF_HOME", &home.0)
            .env("HF_ENDPOINT", &hub.endpoint)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .env("HF_HUB_DISABLE_PROGRESS_BARS", "1");
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        } else {
            cmd.env_remove("HF_HUB_OFFLINE");
        }
        let output = cmd.output().expect("python");
        assert!(output.status.success(), "python: {}", stderr(&output));
        stdout(&output).trim().to_string()
    };
    // Python fills the cache; clipsteer then runs offline from it.
    py(
        "from huggingface_hub import snapshot_download; print(snapshot_download('org/gpt2', revision='v2'))",
        false,
    );
    let offline = done_event(
        &clipsteer(&hub, &home.0)
            .env("HF_HUB_OFFLINE", "1")
            .args(describe_args("org/gpt2@v2", &f("minilm-tiny")))
            .output()
            .unwrap(),
    );
    let lm_dir = local(&v2_files);
    let from_local = done_event(
        &clipsteer(&hub, &home.0)
            .args(describe_args(
                &lm_dir.0.display().to_string(),
                &f("minilm-tiny"),
            ))
            .output()
            .unwrap(),
    );
    assert_eq!(offline["token_ids"], from_local["token_ids"]);
    assert_eq!(offline["similarity"], from_local["similarity"]);

    // clipsteer fills the cache; Python finds every file offline, byte for byte.
    done_event(
        &clipsteer(&hub, &home.0)
            .args(describe_args(&f("gpt2-tiny"), "org/minilm"))
            .output()
            .unwrap(),
    );
    let listing = py(
        "import hashlib, os\n\
         from huggingface_hub import snapshot_download\n\
         d = snapshot_download('org/minilm')\n\
         files = sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)\n\
         for f in files:\n\
         \x20   print(f, hashlib.sha256(open(os.path.join(d, f), 'rb').read()).hexdigest())",
        true,
    );
    let want: Vec<String> = encoder_files
        .iter()
        .map(|(name, data)| format!("{name} {}", hub_support::sha256(data)))
        .collect();
    assert_eq!(listing.lines().collect::<Vec<_>>(), want);
}

#[test]
fn a_clip_repo_laid_out_as_openai_clip_vit_base_patch32_loads_its_pytorch_weights() {
    // openai/clip-vit-base-patch32's main: PyTorch weights beside TF and Flax, no safetensors.
    let clip = fixture("clip-tiny-gelu");
    let mut files = Files::new();
    for file in ["config.json", "preprocessor_config.json", "tokenizer.json"] {
        files.insert(file.into(), bytes(&clip.join(file)));
    }
    files.insert(
        "pytorch_model.bin".into(),
        bytes(&fixture("torch/clip-gelu-f16.bin")),
    );
    files.insert("tf_model.h5".into(), Arc::new(b"tf".to_vec()));
    files.insert("flax_model.msgpack".into(), Arc::new(b"flax".to_vec()));
    files.insert("README.md".into(), Arc::new(b"# clip".to_vec()));
    let hub = StandInHub::start(vec![HubRepo::new("openai/clip-tiny", files.clone())]);
    let cache = TempDir::new("cache-clip");
    let image = image::open(fixture("images/crop32.png")).unwrap();
    let numbers = |dir: &Path| {
        let scorer = clipsteer::steer::ClipScorer::load(dir, &Device::Cpu).unwrap();
        (
            scorer.image_embedding(&image).unwrap(),
            scorer.text_embedding("a photo of a cat").unwrap(),
        )
    };
    for kind in [ModelKind::Clip, ModelKind::Encoder] {
        let dir = resolve_with("openai/clip-tiny", kind, &config(&hub, &cache.0))
            .unwrap_or_else(|e| panic!("{}", clipsteer::error_line(&e)));
        assert_eq!(numbers(&dir), numbers(&local(&files).0));
    }
    for file in ["tf_model.h5", "flax_model.msgpack", "README.md"] {
        assert!(!requested(&hub, file), "{file} was downloaded");
    }
}

#[test]
fn a_gguf_file_and_a_decoder_family_load_by_hub_id_as_from_local_files() {
    let mut files = Files::new();
    for name in ["llama-tiny.gguf", "gemma3-tiny.gguf"] {
        files.insert(name.into(), bytes(&fixture(name)));
    }
    files.insert("README.md".into(), Arc::new(b"# tiny GGUFs\n".to_vec()));
    let ggufs = HubRepo::new("org/tiny-GGUF", files);
    let commit = ggufs.refs["main"].clone();
    let qwen3 = HubRepo::new("org/qwen3", dir_files(&fixture("decoders/qwen3")));
    let hub = StandInHub::start(vec![ggufs, qwen3]);
    let home = TempDir::new("home-gguf");
    let encoder = f("minilm-tiny");
    let run = |lm: &str, extra: &[&str]| {
        let mut args = describe_args(lm, &encoder);
        args.extend(extra);
        clipsteer(&hub, &home.0).args(&args).output().unwrap()
    };
    // transformers' gguf_file=: only that file is fetched, and the run records it.
    let by_id = done_event(&run("org/tiny-GGUF", &["--gguf-file", "llama-tiny.gguf"]));
    let local = done_event(&run(&f("llama-tiny.gguf"), &[]));
    assert_eq!(by_id["token_ids"], local["token_ids"]);
    assert_eq!(by_id["similarity"], local["similarity"]);
    assert_eq!(
        by_id["models"]["lm"],
        serde_json::json!({"id": "org/tiny-GGUF", "revision": "main", "commit": commit, "file": "llama-tiny.gguf"})
    );
    assert!(requested(&hub, "llama-tiny.gguf"));
    assert!(!requested(&hub, "gemma3-tiny.gguf"));
    // A file the repository lacks: one line that lists the ones it has.
    let output = run("org/tiny-GGUF", &["--gguf-file", "q4.gguf"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("has no q4.gguf") && message.contains("gemma3-tiny.gguf, llama-tiny.gguf"),
        "{message}"
    );
    // A config-driven family by id, in the HF layout.
    let by_id = done_event(&run("org/qwen3", &[]));
    let local = done_event(&run(&f("decoders/qwen3"), &[]));
    assert_eq!(by_id["token_ids"], local["token_ids"]);
    assert_eq!(by_id["models"]["lm"]["id"], "org/qwen3");
}
