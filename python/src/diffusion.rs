//! `clipsteer.generate`'s Stable Diffusion pipeline.

use crate::args::{check_local, device_named};
use crate::errors::{runtime_err, value_err};
use crate::run::{Message, Run};
use anyhow::{Context, Result};
use clipsteer::diffusion::cli::DiffusionArgs;
use clipsteer::diffusion::StableDiffusion;
use clipsteer::request::value_enum;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::{Arc, Mutex};

/// A Stable Diffusion pipeline, loaded once.
#[pyclass(frozen, module = "clipsteer._clipsteer")]
pub(crate) struct Diffusion {
    pipeline: Arc<StableDiffusion>,
    model: String,
    variant: Option<String>,
}

#[pymethods]
impl Diffusion {
    #[new]
    #[pyo3(signature = (model, variant=None, device="cpu"))]
    fn new(py: Python<'_>, model: String, variant: Option<String>, device: &str) -> PyResult<Self> {
        let device = device_named(device)?;
        check_local(&model, "Stable Diffusion model")?;
        let pipeline = py
            .detach(|| -> Result<StableDiffusion> {
                let dir = clipsteer::diffusion::resolve(&model, variant.as_deref())?;
                StableDiffusion::load_variant(&dir, variant.as_deref(), &device)
                    .with_context(|| format!("cannot load Stable Diffusion model '{model}'"))
            })
            .map_err(runtime_err)?;
        Ok(Self {
            pipeline: Arc::new(pipeline),
            model,
            variant,
        })
    }

    /// Text to image: (width, height, RGB bytes). Ctrl-C stops it between steps.
    #[pyo3(signature = (prompt, steps, scheduler, guidance, size, seed, negative))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        steps: usize,
        scheduler: &str,
        guidance: f64,
        size: usize,
        seed: u64,
        negative: String,
    ) -> PyResult<(u32, u32, Bound<'py, PyBytes>)> {
        let args = DiffusionArgs {
            model: self.model.clone(),
            variant: self.variant.clone(),
            steps,
            scheduler: value_enum("scheduler", scheduler).map_err(value_err)?,
            guidance,
            size,
            seed,
            negative,
        };
        args.validate().map_err(value_err)?;
        self.pipeline.check_size(size, size).map_err(value_err)?;
        let options = args.options(&prompt);
        let pipeline = self.pipeline.clone();
        let slot: Arc<Mutex<Option<image::RgbImage>>> = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let run = Run::spawn(move |events| {
            let generated = pipeline.generate(&options, |done, total| {
                events.send(
                    serde_json::json!({"event": "step", "step": done, "steps": total}).to_string(),
                )
            });
            match generated {
                Ok(generated) => {
                    if let Ok(mut out) = out.lock() {
                        *out = Some(generated.image);
                    }
                }
                Err(e) => events.fail(Message::Failed(clipsteer::error_line(&e))),
            }
        });
        while run.__next__(py)?.is_some() {}
        run.join(py);
        let image = slot
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .ok_or_else(|| PyRuntimeError::new_err("generation ended without an image"))?;
        let (width, height) = image.dimensions();
        let pixels = image.into_raw();
        Ok((width, height, PyBytes::new(py, &pixels)))
    }
}
