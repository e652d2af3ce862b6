//! `clipsteer.Describer`'s models: describe, embed and score.

use crate::args::{check_local, device_named, ImageArg};
use crate::errors::{runtime_err, value_err};
use crate::run::{Message, Run};
use anyhow::Result;
use clipsteer::clipscore::{clip_scores, siglip_probabilities, Convention};
use clipsteer::events::step_json;
use clipsteer::pipeline::{DescribeModels, Describer};
use clipsteer::request::{encoder_for, preset_named, DescribeRequest, Preset};
use clipsteer::steer::scorer::Encoder;
use clipsteer::steer::Scorer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;

/// The models of a `clipsteer.Describer`, loaded once.
#[pyclass(frozen, module = "clipsteer._clipsteer")]
pub(crate) struct Models {
    models: Arc<DescribeModels>,
    preset: Option<Preset>,
}

#[pymethods]
impl Models {
    #[new]
    #[pyo3(signature = (lm, encoder=None, device="cpu", preset=None, gguf_file=None))]
    fn new(
        py: Python<'_>,
        lm: String,
        encoder: Option<String>,
        device: &str,
        preset: Option<&str>,
        gguf_file: Option<String>,
    ) -> PyResult<Self> {
        let preset = preset.map(preset_named).transpose().map_err(value_err)?;
        let device = device_named(device)?;
        let encoder = encoder_for(encoder.as_deref(), preset);
        check_local(&lm, "language model")?;
        check_local(&encoder, "encoder")?;
        let models = py
            .detach(|| {
                let lm = clipsteer::load::lm_argument(&lm, gguf_file.as_deref())?;
                DescribeModels::load(&lm, Some(&encoder), &device)
            })
            .map_err(runtime_err)?;
        Ok(Self {
            models: Arc::new(models),
            preset,
        })
    }

    /// The encoder loaded.
    #[getter]
    fn encoder(&self) -> Option<String> {
        self.models.encoder_spec.clone()
    }

    /// Starts describing `image` (None: the text targets alone) with `options`, a JSON object
    /// of describe's options.
    #[pyo3(signature = (image, options))]
    fn describe(
        &self,
        py: Python<'_>,
        image: Option<&Bound<'_, PyAny>>,
        options: &str,
    ) -> PyResult<Run> {
        let request = DescribeRequest::from_json(options).map_err(value_err)?;
        let image = image.map(ImageArg::from_py).transpose()?;
        let label = image.as_ref().and_then(ImageArg::label);
        let decoded = image.as_ref().map(ImageArg::decode).transpose()?;
        let resolved = request
            .resolve(self.preset, decoded.is_some())
            .map_err(value_err)?;
        let models = self.models.clone();
        let describer = py
            .detach(|| Describer::new(models, &resolved))
            .map_err(value_err)?;
        Ok(Run::spawn(move |events| {
            let started = std::time::Instant::now();
            let result = describer.describe_image(decoded.as_ref(), |step| {
                events.send(step_json(label.as_deref(), step).to_string())
            });
            match result {
                Ok(result) => {
                    let done = describer.done_event(
                        label.as_deref(),
                        &result,
                        started.elapsed().as_secs_f64(),
                    );
                    let _ = events.send(done.to_string());
                }
                Err(e) => events.fail(Message::Failed(clipsteer::error_line(&e))),
            }
        }))
    }

    /// Projected, unnormalised text features, as transformers' `get_text_features` (CLIP) or
    /// sentence-transformers' pooled output: little-endian float32 bytes of shape (n, d), and d.
    fn embed_text<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize)> {
        let encoder = self.models.encoder().map_err(value_err)?;
        let rows = py
            .detach(|| {
                texts
                    .iter()
                    .map(|t| encoder.embed_text(t))
                    .collect::<Result<Vec<_>>>()
            })
            .map_err(runtime_err)?;
        let dim = rows.first().map_or(0, Vec::len);
        Ok((float_bytes(py, rows.concat()), dim))
    }

    /// Projected, unnormalised image features, as `get_image_features`: float32 bytes of shape
    /// (d,).
    fn embed_image<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let decoded = ImageArg::from_py(image)?.decode()?;
        let encoder = self.models.encoder().map_err(value_err)?;
        let embedding = py
            .detach(|| encoder.image_embedding(&decoded))
            .map_err(value_err)?;
        Ok(float_bytes(py, embedding))
    }

    /// CLIPScore of each caption for `image`, as `clipsteer score --json`'s `scores` (a SigLIP
    /// encoder: its probability, sigmoid(exp(logit_scale) · cos + logit_bias)).
    #[pyo3(signature = (image, captions, prefix=None, torchmetrics=false))]
    fn score(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        captions: Vec<String>,
        prefix: Option<String>,
        torchmetrics: bool,
    ) -> PyResult<String> {
        let explicit_prefix = prefix.is_some();
        let convention = match (torchmetrics, prefix) {
            (true, Some(_)) => {
                return Err(PyValueError::new_err(
                    "torchmetrics=True scores the bare caption: leave out prefix",
                ))
            }
            (true, None) => Convention::Torchmetrics,
            (false, Some(prefix)) => Convention::Hessel { prefix },
            (false, None) => Convention::default(),
        };
        let decoded = ImageArg::from_py(image)?.decode()?;
        let clip = match self.models.encoder().map_err(value_err)? {
            Encoder::Clip(clip) => clip,
            Encoder::Siglip(siglip) => {
                // SigLIP's own probability, not CLIPScore: see `clipsteer score`.
                if torchmetrics {
                    return Err(PyValueError::new_err(
                        "torchmetrics=True is a CLIPScore convention; a SigLIP encoder reports its probability",
                    ));
                }
                let prefix = match convention {
                    Convention::Hessel { prefix } if explicit_prefix => prefix,
                    _ => String::new(),
                };
                let scores = py
                    .detach(|| {
                        let image = siglip.image_embedding(&decoded)?;
                        siglip_probabilities(siglip, &image, &captions, &prefix)
                    })
                    .map_err(runtime_err)?;
                let rows: Vec<serde_json::Value> = scores
                    .iter()
                    .map(|s| serde_json::json!({"caption": s.caption, "probability": s.probability, "cosine": s.cosine}))
                    .collect();
                return Ok(serde_json::Value::Array(rows).to_string());
            }
            Encoder::Sentence(_) => {
                return Err(PyValueError::new_err(
                    "scoring needs an image-text encoder (CLIP or SigLIP); this Describer's encoder embeds text only",
                ))
            }
        };
        let scores = py
            .detach(|| {
                let image = clip.image_embedding(&decoded)?;
                clip_scores(clip, &image, &captions, &convention)
            })
            .map_err(runtime_err)?;
        let rows: Vec<serde_json::Value> = scores
            .iter()
            .map(|s| serde_json::json!({"caption": s.caption, "clipscore": s.clipscore, "cosine": s.cosine}))
            .collect();
        Ok(serde_json::Value::Array(rows).to_string())
    }
}

pub(crate) fn float_bytes(py: Python<'_>, values: Vec<f32>) -> Bound<'_, PyBytes> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    PyBytes::new(py, &bytes)
}
