//! diffusers config.json files (unet/, vae/) turned into candle-transformers' model configs.
//! candle's `StableDiffusionConfig` hard-codes the real models' sizes; reading the files instead
//! is what lets the tiny test pipeline and real SD 2-base share one loading path.

use anyhow::{bail, Context, Result};
use candle_transformers::models::stable_diffusion::{unet_2d, vae};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::files::read_regular_to_string(path, &path.display().to_string()).with_context(|| {
        format!(
            "cannot read {}: is the model directory in the diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/)?",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))
}

/// An int or a per-block list, as several UNet keys may be.
fn per_block(value: &Value, blocks: usize, key: &str) -> Result<Vec<usize>> {
    match value {
        Value::Number(n) => {
            let n = n
                .as_u64()
                .with_context(|| format!("unet config: {key} must be a positive integer"))?;
            Ok(vec![n as usize; blocks])
        }
        Value::Array(values) => {
            let list: Option<Vec<usize>> = values
                .iter()
                .map(|v| v.as_u64().map(|n| n as usize))
                .collect();
            match list {
                Some(list) if list.len() == blocks => Ok(list),
                _ => bail!("unet config: {key} must be an integer or a list of {blocks} integers"),
            }
        }
        _ => bail!("unet config: {key} must be an integer or a list of {blocks} integers"),
    }
}

#[derive(Debug, Deserialize)]
struct UNetFile {
    #[serde(default = "four")]
    in_channels: usize,
    #[serde(default = "four")]
    out_channels: usize,
    block_out_channels: Vec<usize>,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    #[serde(default = "two")]
    layers_per_block: usize,
    #[serde(default)]
    attention_head_dim: Option<Value>,
    #[serde(default)]
    num_attention_heads: Option<Value>,
    #[serde(default)]
    transformer_layers_per_block: Option<Value>,
    cross_attention_dim: usize,
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default = "yes")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    #[serde(default = "one")]
    downsample_padding: usize,
    #[serde(default = "one_f")]
    mid_block_scale_factor: f64,
    #[serde(default = "thirty_two")]
    norm_num_groups: usize,
    #[serde(default = "norm_eps")]
    norm_eps: f64,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default)]
    act_fn: Option<String>,
    #[serde(default)]
    mid_block_type: Option<String>,
    #[serde(default)]
    class_embed_type: Option<String>,
    #[serde(default)]
    addition_embed_type: Option<String>,
    #[serde(default)]
    encoder_hid_dim: Option<usize>,
    #[serde(default)]
    time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    only_cross_attention: Option<Value>,
    #[serde(default)]
    dual_cross_attention: Option<bool>,
    #[serde(default)]
    resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    time_embedding_type: Option<String>,
    #[serde(default)]
    conv_in_kernel: Option<usize>,
    #[serde(default)]
    conv_out_kernel: Option<usize>,
}

fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn thirty_two() -> usize {
    32
}
fn yes() -> bool {
    true
}
fn norm_eps() -> f64 {
    1e-5
}

/// The UNet's candle config and its channel counts.
#[derive(Debug, Clone)]
pub struct UNetSpec {
    pub config: unet_2d::UNet2DConditionModelConfig,
    pub in_channels: usize,
    pub out_channels: usize,
}

pub fn read_unet(path: &Path) -> Result<UNetSpec> {
    let file: UNetFile = read_json(path)?;
    let unsupported = |what: String| -> Result<UNetSpec> {
        bail!(
            "{}: {what}; clipsteer runs Stable Diffusion 1.x/2.x UNets (UNet2DConditionModel with CrossAttnDownBlock2D/DownBlock2D blocks)",
            path.display()
        )
    };
    let blocks = file.block_out_channels.len();
    if blocks == 0 || file.down_block_types.len() != blocks || file.up_block_types.len() != blocks {
        return unsupported(format!(
            "{} block_out_channels but {} down and {} up block types",
            blocks,
            file.down_block_types.len(),
            file.up_block_types.len()
        ));
    }
    if let Some(what) = unsupported_feature(&file) {
        return unsupported(what);
    }
    // diffusers' legacy naming: without num_attention_heads, attention_head_dim is the number
    // of heads (SD 2's [5, 10, 20, 20]); candle's BlockConfig field means the same.
    let heads_value = file
        .num_attention_heads
        .as_ref()
        .filter(|v| !v.is_null())
        .or(file.attention_head_dim.as_ref())
        .cloned()
        .unwrap_or(Value::from(8));
    let heads = per_block(&heads_value, blocks, "attention_head_dim")?;
    let transformer_layers = per_block(
        file.transformer_layers_per_block
            .as_ref()
            .unwrap_or(&Value::from(1)),
        blocks,
        "transformer_layers_per_block",
    )?;
    let block_configs = (0..blocks)
        .map(|i| block_config(&file, i, heads[i], transformer_layers[i]))
        .collect::<std::result::Result<Vec<_>, String>>();
    let block_configs = match block_configs {
        Ok(block_configs) => block_configs,
        Err(what) => return unsupported(what),
    };
    Ok(UNetSpec {
        config: unet_2d::UNet2DConditionModelConfig {
            center_input_sample: file.center_input_sample,
            flip_sin_to_cos: file.flip_sin_to_cos,
            freq_shift: file.freq_shift,
            blocks: block_configs,
            layers_per_block: file.layers_per_block,
            downsample_padding: file.downsample_padding,
            mid_block_scale_factor: file.mid_block_scale_factor,
            norm_num_groups: file.norm_num_groups,
            norm_eps: file.norm_eps,
            cross_attention_dim: file.cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection: file.use_linear_projection,
        },
        in_channels: file.in_channels,
        out_channels: file.out_channels,
    })
}

/// What a UNet config asks that candle-transformers' SD 1.x/2.x UNet does not do, if anything.
fn unsupported_feature(file: &UNetFile) -> Option<String> {
    for (what, value) in [
        ("act_fn", file.act_fn.as_deref().filter(|a| *a != "silu")),
        (
            "mid_block_type",
            file.mid_block_type
                .as_deref()
                .filter(|m| *m != "UNetMidBlock2DCrossAttn"),
        ),
        ("class_embed_type", file.class_embed_type.as_deref()),
        ("addition_embed_type", file.addition_embed_type.as_deref()),
        (
            "resnet_time_scale_shift",
            file.resnet_time_scale_shift
                .as_deref()
                .filter(|r| *r != "default"),
        ),
        (
            "time_embedding_type",
            file.time_embedding_type
                .as_deref()
                .filter(|t| *t != "positional"),
        ),
    ] {
        if let Some(value) = value {
            return Some(format!("{what} '{value}' is not supported"));
        }
    }
    if file.encoder_hid_dim.is_some() || file.time_cond_proj_dim.is_some() {
        return Some("encoder_hid_dim / time_cond_proj_dim are not supported".into());
    }
    if file.dual_cross_attention == Some(true)
        || file.only_cross_attention.as_ref().is_some_and(|v| {
            v.as_bool() == Some(true)
                || v.as_array()
                    .is_some_and(|a| a.iter().any(|b| b.as_bool() == Some(true)))
        })
    {
        return Some("dual or only cross attention is not supported".into());
    }
    if file.conv_in_kernel.is_some_and(|k| k != 3) || file.conv_out_kernel.is_some_and(|k| k != 3) {
        return Some("conv kernels other than 3 are not supported".into());
    }
    if file.norm_num_groups != 32 {
        return Some(format!(
            "norm_num_groups {} is not supported (candle-transformers' UNet blocks use 32)",
            file.norm_num_groups
        ));
    }
    None
}

/// Down block `i` of `file` (and its mirror up block), with `heads` attention heads and
/// `transformer_layers` transformer layers when it cross-attends; Err says what is unsupported.
fn block_config(
    file: &UNetFile,
    i: usize,
    heads: usize,
    transformer_layers: usize,
) -> std::result::Result<unet_2d::BlockConfig, String> {
    let blocks = file.block_out_channels.len();
    let cross = match file.down_block_types[i].as_str() {
        "CrossAttnDownBlock2D" => true,
        "DownBlock2D" => false,
        other => return Err(format!("down block type '{other}' is not supported")),
    };
    let expected_up = if cross {
        "CrossAttnUpBlock2D"
    } else {
        "UpBlock2D"
    };
    if file.up_block_types[blocks - 1 - i] != expected_up {
        return Err(format!(
            "up block {} is '{}' where the mirror of down block {i} needs '{expected_up}'",
            blocks - 1 - i,
            file.up_block_types[blocks - 1 - i]
        ));
    }
    let channels = file.block_out_channels[i];
    if heads == 0 || !channels.is_multiple_of(heads) {
        return Err(format!(
            "block {i}: {channels} channels do not split into {heads} heads"
        ));
    }
    if !channels.is_multiple_of(file.norm_num_groups) {
        return Err(format!(
            "block {i}: {channels} channels do not split into {} norm groups",
            file.norm_num_groups
        ));
    }
    Ok(unet_2d::BlockConfig {
        out_channels: channels,
        use_cross_attn: cross.then_some(transformer_layers),
        attention_head_dim: heads,
    })
}

#[derive(Debug, Deserialize)]
struct VaeFile {
    #[serde(default = "three")]
    in_channels: usize,
    #[serde(default = "three")]
    out_channels: usize,
    block_out_channels: Vec<usize>,
    #[serde(default)]
    down_block_types: Vec<String>,
    #[serde(default)]
    up_block_types: Vec<String>,
    #[serde(default = "one")]
    layers_per_block: usize,
    #[serde(default = "four")]
    latent_channels: usize,
    #[serde(default = "thirty_two")]
    norm_num_groups: usize,
    #[serde(default)]
    scaling_factor: Option<f64>,
    #[serde(default)]
    shift_factor: Option<f64>,
    #[serde(default)]
    use_quant_conv: Option<bool>,
    #[serde(default)]
    use_post_quant_conv: Option<bool>,
    #[serde(default)]
    mid_block_add_attention: Option<bool>,
    #[serde(default)]
    act_fn: Option<String>,
}

fn three() -> usize {
    3
}

#[derive(Debug, Clone)]
pub struct VaeSpec {
    pub config: vae::AutoEncoderKLConfig,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Latents are scaled by this before decoding (SD: 0.18215).
    pub scaling_factor: f64,
    /// Pixels per latent along each side: 2^(blocks − 1), 8 for SD.
    pub downscale: usize,
}

pub fn read_vae(path: &Path) -> Result<VaeSpec> {
    let file: VaeFile = read_json(path)?;
    let unsupported = |what: String| -> Result<VaeSpec> {
        bail!(
            "{}: {what}; clipsteer runs Stable Diffusion's AutoencoderKL",
            path.display()
        )
    };
    let blocks = file.block_out_channels.len();
    if blocks == 0 {
        return unsupported("block_out_channels is empty".into());
    }
    if file
        .down_block_types
        .iter()
        .any(|t| t != "DownEncoderBlock2D")
        || file.up_block_types.iter().any(|t| t != "UpDecoderBlock2D")
    {
        return unsupported("only DownEncoderBlock2D/UpDecoderBlock2D blocks are supported".into());
    }
    if file.act_fn.as_deref().is_some_and(|a| a != "silu") {
        return unsupported("act_fn other than silu is not supported".into());
    }
    if file.mid_block_add_attention == Some(false) || file.shift_factor.is_some_and(|s| s != 0.0) {
        return unsupported(
            "mid_block_add_attention = false and shift_factor are not supported".into(),
        );
    }
    if let Some(channels) = file
        .block_out_channels
        .iter()
        .find(|c| !c.is_multiple_of(file.norm_num_groups))
    {
        return unsupported(format!(
            "{channels} channels do not split into {} norm groups",
            file.norm_num_groups
        ));
    }
    Ok(VaeSpec {
        config: vae::AutoEncoderKLConfig {
            block_out_channels: file.block_out_channels.clone(),
            layers_per_block: file.layers_per_block,
            latent_channels: file.latent_channels,
            norm_num_groups: file.norm_num_groups,
            use_quant_conv: file.use_quant_conv.unwrap_or(true),
            use_post_quant_conv: file.use_post_quant_conv.unwrap_or(true),
        },
        in_channels: file.in_channels,
        out_channels: file.out_channels,
        scaling_factor: file.scaling_factor.unwrap_or(0.18215),
        downscale: 1 << (blocks - 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sd-tiny's UNet config with `change` applied, read back.
    fn read_changed(name: &str, change: impl Fn(&mut Value)) -> Result<UNetSpec> {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/sd-tiny/unet/config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        change(&mut config);
        let path =
            std::env::temp_dir().join(format!("clipsteer-unet-{name}-{}.json", std::process::id()));
        std::fs::write(&path, config.to_string()).unwrap();
        let spec = read_unet(&path);
        std::fs::remove_file(&path).unwrap();
        spec
    }

    #[test]
    fn unets_candle_cannot_run_are_refused_by_what_they_ask() {
        let spec = read_changed("as-is", |_| {}).unwrap();
        assert!(!spec.config.blocks.is_empty());
        let refused = |name: &str, change: &dyn Fn(&mut Value), says: &str| {
            let error = read_changed(name, change).unwrap_err().to_string();
            assert!(error.contains(says), "{name}: {error}");
            assert!(error.contains("Stable Diffusion 1.x/2.x UNets"), "{error}");
        };
        refused(
            "act",
            &|c| c["act_fn"] = "gelu".into(),
            "act_fn 'gelu' is not supported",
        );
        refused(
            "addition",
            &|c| c["addition_embed_type"] = "text_time".into(),
            "addition_embed_type 'text_time'",
        );
        refused(
            "kernel",
            &|c| c["conv_in_kernel"] = 7.into(),
            "conv kernels other than 3",
        );
        refused(
            "down",
            &|c| c["down_block_types"][0] = "AttnDownBlock2D".into(),
            "down block type 'AttnDownBlock2D' is not supported",
        );
        refused(
            "up",
            &|c| {
                let last = c["up_block_types"].as_array().unwrap().len() - 1;
                let flipped = match c["up_block_types"][last].as_str().unwrap() {
                    "UpBlock2D" => "CrossAttnUpBlock2D",
                    _ => "UpBlock2D",
                };
                c["up_block_types"][last] = flipped.into();
            },
            "where the mirror of down block 0 needs",
        );
        refused(
            "heads",
            &|c| c["attention_head_dim"] = 7.into(),
            "channels do not split into 7 heads",
        );
    }
}
