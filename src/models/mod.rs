//! Model architectures, written against Hugging Face weight names so that a checkpoint saved by
//! transformers loads without conversion.

pub mod attention;
pub mod bert;
pub mod clip;
pub mod cpu_kernels;
pub mod gemma3_gguf;
pub mod gpt2;
pub mod llama_gguf;

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
}

impl Activation {
    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            other => bail!(
                "unsupported activation '{other}' in config.json (supported: quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu)"
            ),
        })
    }

    pub fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 => {
                cpu_kernels::quick_gelu(xs)
            }
            Self::QuickGelu => xs.broadcast_mul(&candle_nn::ops::sigmoid(&(xs * 1.702)?)?),
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
            Self::Relu => xs.relu(),
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

    /// transformers' Conv1D: weight stored as (in, out).
    pub fn conv1d(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((in_dim, out_dim), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        Ok(Self {
            weight_in_out: weight,
            bias: Some(bias),
        })
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dims = xs.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = xs.elem_count() / in_dim;
        let out = xs.reshape((rows, in_dim))?.matmul(&self.weight_in_out)?;
        let out = match &self.bias {
            Some(bias) => out.broadcast_add(bias)?,
            None => out,
        };
        let mut out_dims = dims.to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = out.dim(1)?;
        out.reshape(out_dims)
    }
}

/// Reads and parses a model's config.json with errors that name the file.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: is {} a model directory in the Hugging Face layout?",
            path.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid config for this model type",
            path.display()
        )
    })
}

/// The safetensors files of a checkpoint: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no weight_map", index.display()))?;
        let mut shards: Vec<PathBuf> = map
            .values()
            .filter_map(|v| v.as_str())
            .map(|name| dir.join(name))
            .collect();
        shards.sort();
        shards.dedup();
        return Ok(shards);
    }
    if dir.join("pytorch_model.bin").is_file() {
        bail!(
            "{} holds only pytorch_model.bin; clipsteer reads safetensors: convert it with transformers (model.save_pretrained(dir, safe_serialization=True))",
            dir.display()
        );
    }
    bail!(
        "no model.safetensors in {}: is it a model directory in the Hugging Face layout?",
        dir.display()
    )
}

/// Memory-maps a checkpoint's safetensors, turning a truncated or corrupt file into one clear error.
pub(crate) fn load_weights(dir: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    let files = weight_files(dir)?;
    for file in &files {
        // Validate the header against the file length before mmap, so that a truncated download
        // is reported as such rather than as a failure deep inside a model constructor.
        check_safetensors(file)?;
    }
    // SAFETY: the files are mmapped read-only; clipsteer never writes to them while they are mapped.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&files, candle_core::DType::F32, device) }
            .with_context(|| {
                format!(
            "cannot read weights in {}: the file may be truncated or corrupt; download it again",
            dir.display()
        )
            })?;
    Ok(vb)
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
