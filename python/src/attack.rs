//! `clipsteer.Attacker`'s models: attack with a command, an encoder or a Python objective.

use crate::args::{check_local, device_named};
use crate::errors::{runtime_err, value_err};
use crate::run::{Message, Run};
use anyhow::{anyhow, Result};
use candle_core::Device;
use clipsteer::attack::{AttackModels, AttackRequest, AttackSpec, SharedScorer};
use clipsteer::events::{attack_done_json, attack_step_json};
use clipsteer::steer::objectives::command::{checked_scores, Item, ItemScorer};
use pyo3::exceptions::PyFileNotFoundError;
use pyo3::prelude::*;
use pyo3::types::PyList;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A Python callable scoring the victim's answers: `list[str] -> list[float]`.
pub(crate) struct PyScorer {
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
pub(crate) struct AttackerModels {
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
