//! A describe or attack on a worker thread, read from Python as an iterator of JSON events.

use anyhow::{anyhow, Result};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a worker sends to its [`Run`].
pub(crate) enum Message {
    /// One JSON event (`step` or `done`).
    Event(String),
    /// The run failed: a one-line message.
    Failed(String),
    /// The run failed because a Python callable raised: the exception itself.
    Raised(PyErr),
}

/// The error a worker's callback returns to end a run nobody reads any more.
pub(crate) fn stopped() -> anyhow::Error {
    anyhow!("stopped: the stream was closed")
}

/// A describe or attack running on a worker thread: an iterator of JSON event strings, the last
/// of which is the `done` event. Dropping or closing it stops the worker at its next step.
#[pyclass(module = "clipsteer._clipsteer")]
pub(crate) struct Run {
    events: Mutex<Option<mpsc::Receiver<Message>>>,
    stop: Arc<AtomicBool>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// The sending side, given to the worker.
#[derive(Clone)]
pub(crate) struct Events {
    sender: mpsc::SyncSender<Message>,
    stop: Arc<AtomicBool>,
}

impl Events {
    /// Sends an event; an error once the reader has gone or asked to stop.
    pub(crate) fn send(&self, event: String) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        self.sender
            .send(Message::Event(event))
            .map_err(|_| stopped())
    }

    pub(crate) fn fail(&self, message: Message) {
        if !self.stop.load(Ordering::Relaxed) {
            let _ = self.sender.send(message);
        }
    }
}

impl Run {
    /// Starts `work` on a thread with the events it may send.
    pub(crate) fn spawn(work: impl FnOnce(&Events) + Send + 'static) -> Self {
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

    pub(crate) fn join(&self, py: Python<'_>) {
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
    pub(crate) fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
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
    pub(crate) fn finish(&self, _py: Python<'_>) {
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
