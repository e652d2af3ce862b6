//! `clipsteer._clipsteer`: the library's describe, attack, embed, score and generate behind
//! Python classes. The Python layer (`python/clipsteer/__init__.py`) is the public face: it turns
//! images into file bytes, keyword arguments into a JSON object (the command line's option names,
//! parsed by [`DescribeRequest`] and [`AttackRequest`]), and JSON events into dicts.
//!
//! Every long computation runs with the GIL released. A describe or attack runs on a worker
//! thread and reports through a [`Run`], an iterator of JSON events: the reader waits with the
//! GIL released and checks for signals every 100 ms (Ctrl-C raises `KeyboardInterrupt` and stops
//! the worker), and a `Run` dropped or closed halfway stops its worker at the next step.

use anyhow::{anyhow, Context, Result};
use candle_core::Device;
use clipsteer::attack::{AttackModels, AttackRequest, AttackSpec, SharedScorer};
use clipsteer::clipscore::{clip_scores, Convention};
use clipsteer::diffusion::cli::DiffusionArgs;
use clipsteer::diffusion::StableDiffusion;
use clipsteer::events::{attack_done_json, attack_step_json, step_json};
use clipsteer::image::{decode_image_bytes, load_image, DecodeLimits};
use clipsteer::pipeline::{DescribeModels, Describer};
use clipsteer::request::{
    encoder_for, preset_named, select_device, value_enum, DescribeRequest, DeviceChoice, Preset,
    DEFAULT_CLIP,
};
use clipsteer::steer::objectives::command::{checked_scores, Item, ItemScorer};
use clipsteer::steer::scorer::Encoder;
use clipsteer::steer::Scorer;
use clipsteer::HubError;
use pyo3::exceptions::{
    PyConnectionError, PyFileNotFoundError, PyPermissionError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How an error of no more definite kind reaches Python, by where it arose.
#[derive(Clone, Copy)]
enum Kind {
    /// In the arguments: `ValueError`.
    Value,
    /// In the work: `RuntimeError`.
    Runtime,
}

/// The exception for `error`, carrying the command line's one-line message (flags named as
/// keyword arguments). The library's error kind decides where it has one ([`clipsteer::Error`]):
/// a bad argument is `ValueError`; a missing file, hub repository, revision or file is
/// `FileNotFoundError`; a gated or refused hub model `PermissionError`; a model neither cached nor
/// reachable offline `ConnectionError`. Otherwise `kind`'s.
fn py_err(error: &anyhow::Error, kind: Kind) -> PyErr {
    let classified = clipsteer::Error::classify(error);
    let message = keyword_names(classified.message());
    match classified {
        clipsteer::Error::BadArgument(_) => PyValueError::new_err(message),
        clipsteer::Error::NotFound(_)
        | clipsteer::Error::Hub {
            kind: HubError::Missing,
            ..
        } => PyFileNotFoundError::new_err(message),
        clipsteer::Error::Hub {
            kind: HubError::Gated,
            ..
        } => PyPermissionError::new_err(message),
        clipsteer::Error::Hub {
            kind: HubError::Offline,
            ..
        } => PyConnectionError::new_err(message),
        _ => match kind {
            Kind::Value => PyValueError::new_err(message),
            Kind::Runtime => PyRuntimeError::new_err(message),
        },
    }
}

/// The library's messages name command-line flags (`--max-tokens`); here they are keyword
/// arguments (`max_tokens`).
fn keyword_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("--") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let flag_len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
            .unwrap_or(after.len());
        let flag = &after[..flag_len];
        if flag.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.push_str(&flag.replace('-', "_"));
        } else {
            out.push_str("--");
            out.push_str(flag);
        }
        rest = &after[flag_len..];
    }
    out.push_str(rest);
    out
}

fn value_err(error: anyhow::Error) -> PyErr {
    py_err(&error, Kind::Value)
}

fn runtime_err(error: anyhow::Error) -> PyErr {
    py_err(&error, Kind::Runtime)
}

fn device_named(name: &str) -> PyResult<Device> {
    let choice: DeviceChoice = value_enum("device", name).map_err(value_err)?;
    select_device(choice).map_err(runtime_err)
}

/// A model argument that names a local file or directory which is not there:
/// `FileNotFoundError`, where the hub would only say that no such repository is reachable.
fn check_local(spec: &str, what: &str) -> PyResult<()> {
    let looks_local = spec.starts_with('/')
        || spec.starts_with("./")
        || spec.starts_with("../")
        || spec.starts_with('~')
        || spec.to_ascii_lowercase().ends_with(".gguf");
    if looks_local && !Path::new(spec).exists() {
        return Err(PyFileNotFoundError::new_err(format!(
            "no {what} at {spec}; pass an existing path or a hub id"
        )));
    }
    Ok(())
}

/// An image as the Python layer passes it: the bytes of an image file (what PIL images and
/// arrays become), or a path.
enum ImageArg {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

impl ImageArg {
    fn from_py(image: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(bytes) = image.cast::<PyBytes>() {
            return Ok(Self::Bytes(bytes.as_bytes().to_vec()));
        }
        let path: PathBuf = image.extract().map_err(|_| {
            PyValueError::new_err(
                "image must be a path, a PIL.Image.Image, or a numpy uint8 array (H, W[, C])",
            )
        })?;
        if path.is_dir() {
            return Err(PyValueError::new_err(format!(
                "{} is a directory: give one image (the command line describes folders)",
                path.display()
            )));
        }
        if !path.is_file() {
            return Err(PyFileNotFoundError::new_err(format!(
                "no image at {}",
                path.display()
            )));
        }
        Ok(Self::Path(path))
    }

    /// Decodes as the command line does; an unreadable image is a `ValueError`.
    fn decode(&self) -> PyResult<image::DynamicImage> {
        let decoded = match self {
            Self::Bytes(bytes) => decode_image_bytes(bytes, DecodeLimits::default()),
            Self::Path(path) => load_image(path, DecodeLimits::default()),
        };
        decoded.map_err(value_err)
    }

    /// How events name the input: its path, or nothing for pixels.
    fn label(&self) -> Option<String> {
        match self {
            Self::Path(path) => Some(path.display().to_string()),
            Self::Bytes(_) => None,
        }
    }
}

/// What a worker sends to its [`Run`].
enum Message {
    /// One JSON event (`step` or `done`).
    Event(String),
    /// The run failed: a one-line message.
    Failed(String),
    /// The run failed because a Python callable raised: the exception itself.
    Raised(PyErr),
}

/// The error a worker's callback returns to end a run nobody reads any more.
fn stopped() -> anyhow::Error {
    anyhow!("stopped: the stream was closed")
}

/// A describe or attack running on a worker thread: an iterator of JSON event strings, the last
/// of which is the `done` event. Dropping or closing it stops the worker at its next step.
#[pyclass(module = "clipsteer._clipsteer")]
struct Run {
    events: Mutex<Option<mpsc::Receiver<Message>>>,
    stop: Arc<AtomicBool>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// The sending side, given to the worker.
#[derive(Clone)]
struct Events {
    sender: mpsc::SyncSender<Message>,
    stop: Arc<AtomicBool>,
}

impl Events {
    /// Sends an event; an error once the reader has gone or asked to stop.
    fn send(&self, event: String) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        self.sender
            .send(Message::Event(event))
            .map_err(|_| stopped())
    }

    fn fail(&self, message: Message) {
        if !self.stop.load(Ordering::Relaxed) {
            let _ = self.sender.send(message);
        }
    }
}

impl Run {
    /// Starts `work` on a thread with the events it may send.
    fn spawn(work: impl FnOnce(&Events) + Send + 'static) -> Self {
        // Bounded: a reader that pauses pauses the work, as a generator would.
        let (sender, receiver) = mpsc::sync_channel(16);
        let stop = Arc::new(AtomicBool::new(false));
        let events = Events {
            sender,
            stop: stop.clone(),
        };
        let worker = std::thread::spawn(move || work(&events));
        Self {
            events: Mutex::new(Some(receiver)),
            stop,
            worker: Mutex::new(Some(worker)),
        }
    }

    fn join(&self, py: Python<'_>) {
        let handle = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            py.detach(move || {
                let _ = handle.join();
            });
        }
    }
}

#[pymethods]
impl Run {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next event as JSON text; StopIteration after the last.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            let mut guard = self.events.try_lock().map_err(|_| {
                PyRuntimeError::new_err("this stream is being read by another thread")
            })?;
            let Some(receiver) = guard.take() else {
                return Ok(None);
            };
            let (receiver, message) = py.detach(move || {
                let message = receiver.recv_timeout(Duration::from_millis(100));
                (receiver, message)
            });
            *guard = Some(receiver);
            drop(guard);
            match message {
                Ok(Message::Event(json)) => return Ok(Some(json)),
                Ok(Message::Failed(message)) => {
                    self.finish(py);
                    return Err(PyRuntimeError::new_err(message));
                }
                Ok(Message::Raised(error)) => {
                    self.finish(py);
                    return Err(error);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(interrupt) = py.check_signals() {
                        self.finish(py);
                        return Err(interrupt);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.finish(py);
                    return Ok(None);
                }
            }
        }
    }

    /// Stops the work (at its next step) and waits for the worker to end.
    fn close(&self, py: Python<'_>) {
        self.finish(py);
        self.join(py);
    }

    /// Whether the worker is still running.
    #[getter]
    fn running(&self) -> bool {
        self.worker
            .lock()
            .ok()
            .and_then(|w| w.as_ref().map(|h| !h.is_finished()))
            .unwrap_or(false)
    }
}

impl Run {
    /// Tells the worker to stop and lets go of the events.
    fn finish(&self, _py: Python<'_>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut events) = self.events.try_lock() {
            events.take();
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Not joined here: a worker calling a Python function needs the GIL this thread holds.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The models of a `clipsteer.Describer`, loaded once.
#[pyclass(frozen, module = "clipsteer._clipsteer")]
struct Models {
    models: Arc<DescribeModels>,
    preset: Option<Preset>,
}

#[pymethods]
impl Models {
    #[new]
    #[pyo3(signature = (lm, encoder=None, device="cpu", preset=None))]
    fn new(
        py: Python<'_>,
        lm: String,
        encoder: Option<String>,
        device: &str,
        preset: Option<&str>,
    ) -> PyResult<Self> {
        let preset = preset.map(preset_named).transpose().map_err(value_err)?;
        let device = device_named(device)?;
        let encoder = encoder_for(encoder.as_deref(), preset);
        check_local(&lm, "language model")?;
        check_local(&encoder, "encoder")?;
        let models = py
            .detach(|| DescribeModels::load(&lm, Some(&encoder), &device))
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

    /// CLIPScore of each caption for `image`, as `clipsteer score --json`'s `scores`.
    #[pyo3(signature = (image, captions, prefix=None, torchmetrics=false))]
    fn score(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        captions: Vec<String>,
        prefix: Option<String>,
        torchmetrics: bool,
    ) -> PyResult<String> {
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
        let Encoder::Clip(clip) = self.models.encoder().map_err(value_err)? else {
            return Err(PyValueError::new_err(
                "CLIPScore needs a CLIP encoder; this Describer's encoder embeds text only",
            ));
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

fn float_bytes(py: Python<'_>, values: Vec<f32>) -> Bound<'_, PyBytes> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    PyBytes::new(py, &bytes)
}

/// A Python callable scoring the victim's answers: `list[str] -> list[float]`.
struct PyScorer {
    function: Py<PyAny>,
    /// The exception the callable raised, handed back to the caller as itself.
    raised: Mutex<Option<PyErr>>,
}

impl ItemScorer for PyScorer {
    fn score_items(&self, items: &[Item]) -> Result<Vec<f32>> {
        let answers: Vec<&str> = items.iter().map(|i| i.response.unwrap_or(i.text)).collect();
        Python::attach(|py| {
            let called = self
                .function
                .call1(py, (PyList::new(py, &answers)?,))
                .and_then(|scores| scores.extract::<Vec<Bound<'_, PyAny>>>(py));
            let scores = match called {
                Ok(scores) => scores,
                Err(error) => {
                    let message = format!("the objective raised {error}");
                    if let Ok(mut raised) = self.raised.lock() {
                        *raised = Some(error);
                    }
                    return Err(anyhow!(message));
                }
            };
            let values: Vec<serde_json::Value> = scores
                .iter()
                .map(|s| match s.extract::<f64>() {
                    Ok(x) => serde_json::Number::from_f64(x)
                        .map(serde_json::Value::Number)
                        .unwrap_or_else(|| serde_json::Value::String(x.to_string())),
                    Err(_) => serde_json::Value::String(
                        s.repr().map(|r| r.to_string()).unwrap_or_default(),
                    ),
                })
                .collect();
            checked_scores("the objective", &values, items.len())
        })
    }
}

/// The models of a `clipsteer.Attacker`, loaded once.
#[pyclass(frozen, module = "clipsteer._clipsteer")]
struct AttackerModels {
    models: Arc<AttackModels>,
    device: Device,
}

#[pymethods]
impl AttackerModels {
    #[new]
    #[pyo3(signature = (lm, victim=None, chat_template=None, device="cpu"))]
    fn new(
        py: Python<'_>,
        lm: String,
        victim: Option<String>,
        chat_template: Option<PathBuf>,
        device: &str,
    ) -> PyResult<Self> {
        let device = device_named(device)?;
        check_local(&lm, "attacker")?;
        if let Some(victim) = &victim {
            check_local(victim, "victim")?;
        }
        if let Some(path) = &chat_template {
            if !path.is_file() {
                return Err(PyFileNotFoundError::new_err(format!(
                    "no chat template at {}",
                    path.display()
                )));
            }
        }
        let models = py
            .detach(|| {
                AttackModels::load(&lm, victim.as_deref(), chat_template.as_deref(), &device)
            })
            .map_err(runtime_err)?;
        Ok(Self {
            models: Arc::new(models),
            device,
        })
    }

    /// Starts an attack with `options`, a JSON object of attack's options; `objective`, a
    /// callable scoring the victim's answers, is one more way to give the objective.
    #[pyo3(signature = (options, objective=None))]
    fn attack(&self, options: &str, objective: Option<Py<PyAny>>) -> PyResult<Run> {
        let request = AttackRequest::from_json(options).map_err(value_err)?;
        let scorer = objective.map(|function| {
            Arc::new(PyScorer {
                function,
                raised: Mutex::new(None),
            })
        });
        let shared = scorer
            .clone()
            .map(|s| SharedScorer(s as Arc<dyn ItemScorer + Send + Sync>));
        let (objective, options) = request.to_spec(shared).map_err(value_err)?;
        // Every bad option is the caller's ValueError now, not a RuntimeError from the stream.
        clipsteer::steer::search::attack::validate(&options).map_err(value_err)?;
        let spec = AttackSpec {
            attacker: String::new(),
            victim: None,
            chat_template: None,
            objective,
            options,
        };
        let models = self.models.clone();
        let device = self.device.clone();
        Ok(Run::spawn(move |events| {
            let report = models.attack(&spec, &device, |step| {
                events.send(attack_step_json(step).to_string())
            });
            match report {
                Ok(report) => {
                    let _ = events.send(attack_done_json(&report).to_string());
                }
                Err(e) => {
                    let raised = scorer
                        .as_ref()
                        .and_then(|s| s.raised.lock().ok().and_then(|mut r| r.take()));
                    match raised {
                        Some(error) => events.fail(Message::Raised(error)),
                        None => events.fail(Message::Failed(clipsteer::error_line(&e))),
                    }
                }
            }
        }))
    }
}

/// A Stable Diffusion pipeline, loaded once.
#[pyclass(frozen, module = "clipsteer._clipsteer")]
struct Diffusion {
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

/// See [`clipsteer::default_thread_count`]; `clipsteer/__init__.py` pins RAYON_NUM_THREADS to it.
#[pyfunction]
fn _default_thread_count() -> usize {
    clipsteer::default_thread_count()
}

#[pymodule]
fn _clipsteer(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // A library prints nothing unless asked: no download progress bars on stderr.
    clipsteer::hub::set_progress(false);
    m.add_function(wrap_pyfunction!(_default_thread_count, m)?)?;
    m.add_class::<Models>()?;
    m.add_class::<AttackerModels>()?;
    m.add_class::<Diffusion>()?;
    m.add_class::<Run>()?;
    m.add("DEFAULT_LM", clipsteer::request::DEFAULT_LM)?;
    m.add("DEFAULT_CLIP", DEFAULT_CLIP)?;
    m.add(
        "DEFAULT_DIFFUSION_MODEL",
        clipsteer::diffusion::DEFAULT_MODEL,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
