//! Model architectures, written against Hugging Face weight names so that a checkpoint saved by
//! transformers loads without conversion.

pub mod attention;
pub mod bert;
pub mod clip;
pub mod cpu_kernels;
pub mod decoder;
pub mod gguf;
pub mod gpt2;
pub mod siglip;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};

/// The activations that HF configs name for the architectures we support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// OpenAI CLIP's x·σ(1.702x).
    QuickGelu,
    /// Exact erf GELU (LAION CLIP, `gelu`).
    Gelu,
    /// tanh approximation of GELU (GPT-2's `gelu_new`).
    GeluTanh,
    Relu,
    /// x·σ(x) (`silu`, `swish`): the llama family's gate.
    Silu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            other => bail!(
                "unsupported activation '{other}' in config.json (supported: quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu, silu)"
            ),
        })
    }

    pub fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu if cpu_kernels::applies(xs) => cpu_kernels::quick_gelu(xs),
            Self::QuickGelu => xs.broadcast_mul(&candle_nn::ops::sigmoid(&(xs * 1.702)?)?),
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
            Self::Relu => xs.relu(),
            Self::Silu => xs.silu(),
        }
    }
}

/// A dense layer that keeps its weight contiguous as (in, out), the layout GPT-2's Conv1D stores.
/// nn.Linear weights are transposed once at load: gemm runs the (in, out) layout markedly faster
/// at the row counts of steering batches (≈200 vs ≈150 GFLOP/s at 480×512×512 here).
#[derive(Debug, Clone)]
pub struct Dense {
    weight_in_out: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    /// torch.nn.Linear: weight stored as (out, in).
    pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight_in_out: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// One layer computing the outputs of `parts` side by side (e.g. fused q, k, v projections).
    pub fn concat(parts: &[Dense]) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight_in_out).collect();
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias.as_ref()).collect();
        Ok(Self {
            weight_in_out: Tensor::cat(&weights, 1)?,
            bias: match biases {
                Some(biases) => Some(Tensor::cat(&biases, 0)?),
                None => None,
            },
        })
    }

    /// A weight already in memory as (out, in), e.g. from GGUF.
    pub fn from_out_in(weight: Tensor, out_dim: usize, in_dim: usize) -> Result<Self> {
        if weight.dims() != [out_dim, in_dim] {
            bail!(
                "weight of shape {:?}, expected ({out_dim}, {in_dim})",
                weight.dims()
            );
        }
        Ok(Self {
            weight_in_out: weight.t()?.contiguous()?,
            bias: None,
        })
    }

    /// The same layer with a bias [out] added (`None` leaves it without).
    pub fn with_bias(mut self, bias: Option<Tensor>) -> Result<Self> {
        if let Some(b) = &bias {
            let out = self.weight_in_out.dim(1)?;
            if b.dims() != [out] {
                bail!("bias of shape {:?}, expected ({out})", b.dims());
            }
        }
        self.bias = bias;
        Ok(self)
    }

    /// transformers' Conv1D: weight stored as (in, out).
    pub fn conv1d(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((in_dim, out_dim), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        Ok(Self {
            weight_in_out: weight,
            bias: Some(bias),
        })
    }

    /// `xs` [..., in] → [..., out].
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_inner(xs, None)
    }

    /// `residual + self.forward(xs)`, in one pass over the output on CPU. `residual` has the
    /// output's shape.
    pub fn forward_residual(&self, xs: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_inner(xs, Some(residual))
    }

    fn forward_inner(&self, xs: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let dims = xs.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = xs.elem_count() / in_dim;
        let out_dim = self.weight_in_out.dim(1)?;
        let mut out_dims = dims.to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = out_dim;
        let xs = xs.reshape((rows, in_dim))?;
        let out = if !cpu_kernels::applies(&xs) {
            let out = xs.matmul(&self.weight_in_out)?;
            let out = match &self.bias {
                Some(bias) => out.broadcast_add(bias)?,
                None => out,
            };
            match residual {
                Some(residual) => (out + residual.reshape((rows, out_dim))?)?,
                None => out,
            }
        } else {
            let residual = residual.map(|r| r.reshape((rows, out_dim))).transpose()?;
            cpu_kernels::linear(
                &xs,
                &self.weight_in_out,
                self.bias.as_ref(),
                residual.as_ref(),
            )?
        };
        out.reshape(out_dims)
    }
}

/// Reads and parses a model's config.json with errors that name the file.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("config.json");
    if !crate::files::model_file_present(&path)? {
        anyhow::bail!(
            "no {}: is {} a model directory in the Hugging Face layout?",
            path.display(),
            dir.display()
        );
    }
    let text = crate::files::read_regular_to_string(&path, &path.display().to_string())?;
    if text.trim().is_empty() {
        crate::usage_bail!(
            "{} is empty: replace it with the model's own config.json",
            path.display()
        );
    }
    serde_json::from_str(&text).with_context(|| invalid_config(dir))
}

/// config.json's `model_type`, None where the file does not name one.
pub(crate) fn model_type(dir: &Path) -> Result<Option<String>> {
    let raw: serde_json::Value = read_config(dir)?;
    Ok(raw["model_type"].as_str().map(String::from))
}

/// The context of a config.json in `dir` that does not describe the model being loaded.
pub(crate) fn invalid_config(dir: &Path) -> String {
    format!(
        "{} is not a valid config for this model type",
        dir.join("config.json").display()
    )
}

/// How a library names its weight files: transformers writes `model.safetensors` and
/// `pytorch_model.bin`, diffusers `diffusion_pytorch_model.{safetensors,bin}`.
#[derive(Debug, Clone, Copy)]
pub struct WeightNames {
    pub safetensors: &'static str,
    pub pytorch: &'static str,
}

/// transformers' names (`model.safetensors`, `pytorch_model.bin` and their sharded indexes).
pub const TRANSFORMERS_WEIGHTS: WeightNames = WeightNames {
    safetensors: "model",
    pytorch: "pytorch_model",
};

/// diffusers' names for UNet and VAE weights.
pub const DIFFUSERS_WEIGHTS: WeightNames = WeightNames {
    safetensors: "diffusion_pytorch_model",
    pytorch: "diffusion_pytorch_model",
};

impl WeightNames {
    /// The weight files a checkpoint may have, in the order transformers and diffusers prefer
    /// them: safetensors (single, then sharded index) before PyTorch pickles. A `variant` such as
    /// `fp16` is inserted as diffusers' `_add_variant` does: `model.fp16.safetensors`,
    /// `model.safetensors.index.fp16.json`.
    pub fn candidates(&self, variant: Option<&str>) -> Vec<String> {
        let v = variant.map(|v| format!(".{v}")).unwrap_or_default();
        vec![
            format!("{}{v}.safetensors", self.safetensors),
            format!("{}.safetensors.index{v}.json", self.safetensors),
            format!("{}{v}.bin", self.pytorch),
            format!("{}.bin.index{v}.json", self.pytorch),
        ]
    }
}

/// The files (relative to the checkpoint directory) that a sharded checkpoint's index names in
/// its `weight_map`, sorted and without repeats.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = crate::files::read_regular_to_string(index, &index.display().to_string())?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no weight_map", index.display()))?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str())
        .map(str::to_string)
        .collect();
    shards.sort();
    shards.dedup();
    if let Some(bad) = shards
        .iter()
        .find(|s| s.starts_with('/') || s.split('/').any(|part| part == ".."))
    {
        bail!(
            "{} names a shard outside its directory: {bad}",
            index.display()
        );
    }
    Ok(shards)
}

/// The weight files of a checkpoint in `dir`: the first of [`WeightNames::candidates`] present,
/// an index replaced by the shards it lists.
///
/// Errors: none present (naming the weight-like files the directory does have, e.g. TensorFlow
/// or Flax weights that clipsteer does not read), or an unreadable index.
pub fn find_weights(dir: &Path, names: WeightNames, variant: Option<&str>) -> Result<Vec<PathBuf>> {
    for candidate in names.candidates(variant) {
        let path = dir.join(&candidate);
        if !path.is_file() {
            continue;
        }
        if candidate.ends_with(".json") {
            return Ok(shard_names(&path)?
                .into_iter()
                .map(|shard| dir.join(shard))
                .collect());
        }
        return Ok(vec![path]);
    }
    const WEIGHT_ENDINGS: [&str; 10] = [
        ".safetensors",
        ".bin",
        ".h5",
        ".msgpack",
        ".ckpt",
        ".pt",
        ".pth",
        ".onnx",
        ".gguf",
        ".index.json",
    ];
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !WEIGHT_ENDINGS.iter().any(|ending| name.ends_with(ending)) {
                        return None;
                    }
                    // A FIFO or a directory with a weights name is no weights: say what it is,
                    // or the message would list the very name it looked for.
                    Some(match std::fs::metadata(e.path()) {
                        Ok(meta) if !meta.is_file() => {
                            format!("{name} ({})", crate::files::kind_name(&meta.file_type()))
                        }
                        Err(_) => format!("{name} (a link to nothing)"),
                        Ok(_) => name,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    present.sort();
    bail!(
        "no weights clipsteer reads in {} (looked for {}); it has: {}",
        dir.display(),
        names.candidates(variant).join(", "),
        if present.is_empty() {
            "no weight files".to_string()
        } else {
            present.join(", ")
        }
    )
}

/// The weight files of a transformers checkpoint: safetensors when present, else PyTorch.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    find_weights(dir, TRANSFORMERS_WEIGHTS, None)
}

/// Weights of a transformers checkpoint, read as f32 whatever dtype they are stored in.
pub(crate) fn load_weights(dir: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    load_weight_files(&weight_files(dir)?, device)
}

/// A VarBuilder over checkpoint files, all safetensors (memory-mapped) or all PyTorch `.bin`
/// (read with candle's pickle reader, which loads tensors without running pickled code).
/// Tensors stored as f16 or bf16 are converted to f32 as they are read, so every model computes
/// in f32 on the CPU whatever the checkpoint's dtype.
///
/// Errors: a truncated or corrupt file, a legacy (non-zip) PyTorch pickle, mixed formats.
pub fn load_weight_files(files: &[PathBuf], device: &Device) -> Result<VarBuilder<'static>> {
    let is_bin = |f: &PathBuf| f.extension().is_some_and(|e| e == "bin");
    if !files.is_empty() && files.iter().all(is_bin) {
        let mut tensors = std::collections::HashMap::new();
        for file in files {
            for (name, tensor) in read_pytorch(file)? {
                tensors.insert(name, tensor);
            }
        }
        return Ok(VarBuilder::from_tensors(
            tensors,
            candle_core::DType::F32,
            device,
        ));
    }
    if files.iter().any(is_bin) {
        bail!("a checkpoint mixes safetensors and PyTorch shards; clipsteer reads one format per checkpoint");
    }
    for file in files {
        // Validate the header against the file length before mmap, so that a truncated download
        // is reported as such rather than as a failure deep inside a model constructor.
        check_safetensors(file)?;
    }
    let described = files
        .first()
        .and_then(|f| f.parent())
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    // SAFETY: the files are mmapped read-only; clipsteer never writes to them while they are mapped.
    let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }
        .with_context(|| {
            format!("cannot read weights in {described}: the file may be truncated or corrupt; download it again")
        })?;
    Ok(VarBuilder::from_backend(
        Box::new(ReleasingMmap::new(mapped)),
        candle_core::DType::F32,
        device.clone(),
    ))
}

/// Memory-mapped safetensors that hand the file's pages back to the kernel after each tensor is
/// copied out. Every tensor is copied into memory of its own as it is read, and the mapped pages
/// it was read from would otherwise stay resident until the whole model is built: loading CLIP
/// B/32 after GPT-2 would peak at 1.7 GB instead of 1.1 GB.
struct ReleasingMmap {
    inner: candle_core::safetensors::MmapedSafetensors,
    /// (start, length) of each mapping of the files, from /proc/self/maps; empty where that
    /// cannot be read, and then nothing is released.
    ranges: Vec<(usize, usize)>,
}

impl ReleasingMmap {
    fn new(inner: candle_core::safetensors::MmapedSafetensors) -> Self {
        // Only the mappings that hold this checkpoint's tensors: another thread may map the same
        // file, and its mapping may be gone (and the addresses reused) before this one is done.
        let tensor_addresses: Vec<usize> = inner
            .tensors()
            .iter()
            .map(|(_, view)| view.data().as_ptr() as usize)
            .collect();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let ranges = maps
            .lines()
            .filter_map(|line| {
                let (start, end) = line.split_whitespace().next()?.split_once('-')?;
                let start = usize::from_str_radix(start, 16).ok()?;
                let end = usize::from_str_radix(end, 16).ok()?;
                Some((start, end.checked_sub(start)?))
            })
            .filter(|&(start, len)| {
                tensor_addresses
                    .iter()
                    .any(|&a| a >= start && a < start + len)
            })
            .collect();
        Self { inner, ranges }
    }

    fn release(&self) {
        for &(start, len) in &self.ranges {
            // SAFETY: a private, read-only file mapping that `inner` owns and keeps mapped;
            // MADV_DONTNEED only drops its resident pages, which the kernel reads back from the
            // file on the next access.
            unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED);
            }
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for ReleasingMmap {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: candle_core::DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor =
            candle_nn::var_builder::SimpleBackend::get(&self.inner, s, name, h, dtype, dev);
        self.release();
        tensor
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: candle_core::DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor =
            candle_nn::var_builder::SimpleBackend::get_unchecked(&self.inner, name, dtype, dev);
        self.release();
        tensor
    }

    fn contains_tensor(&self, name: &str) -> bool {
        candle_nn::var_builder::SimpleBackend::contains_tensor(&self.inner, name)
    }
}

/// Every tensor of a `torch.save` file in the zip format (torch >= 1.6), by name.
fn read_pytorch(path: &Path) -> Result<Vec<(String, Tensor)>> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if magic != *b"PK\x03\x04" {
        bail!(
            "{} is a PyTorch checkpoint in the legacy (pre-1.6, non-zip) format, which clipsteer does not read; convert it with python -c \"import torch; torch.save(torch.load('{0}', weights_only=True), '{0}')\" or save the model again with transformers (save_pretrained writes safetensors)",
            path.display()
        );
    }
    candle_core::pickle::read_all(path).with_context(|| {
        format!(
            "cannot read PyTorch weights {}: the file may be truncated or corrupt; download it again",
            path.display()
        )
    })
}

fn check_safetensors(path: &Path) -> Result<()> {
    use std::io::Read;
    let bad = |why: &str| {
        anyhow::anyhow!(
            "{} is truncated or corrupt ({why}); download it again",
            path.display()
        )
    };
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = file.metadata()?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| bad("shorter than its 8-byte header length"))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(bad("header runs past the end of the file"));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|_| bad("header cut short"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| bad("header is not valid JSON"))?;
    let data_len = file_len - 8 - header_len;
    let mut needed = 0u64;
    if let Some(map) = header.as_object() {
        for (name, info) in map {
            if name == "__metadata__" {
                continue;
            }
            let end = info
                .get("data_offsets")
                .and_then(|o| o.get(1))
                .and_then(|e| e.as_u64())
                .ok_or_else(|| bad("a tensor has no data_offsets"))?;
            needed = needed.max(end);
        }
    }
    if needed > data_len {
        return Err(bad(&format!(
            "tensor data needs {needed} bytes but the file holds {data_len}"
        )));
    }
    Ok(())
}

/// candle appends a backtrace to its errors' text when RUST_BACKTRACE is set; inside the
/// loaders' one-line messages it would split the sentence over dozens of lines.
pub(crate) fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => *inner,
        e => e,
    }
}
