//! `clipsteer._clipsteer`: the library's describe, attack, embed, score and generate behind
//! Python classes. The Python layer (`python/clipsteer/__init__.py`) is the public face: it turns
//! images into file bytes, keyword arguments into a JSON object (the command line's option names,
//! parsed by [`clipsteer::request::DescribeRequest`] and [`clipsteer::attack::AttackRequest`]),
//! and JSON events into dicts. One module per domain: describe, attack, diffusion, the event
//! stream ([`run`]), arguments and errors.
//!
//! Every long computation runs with the GIL released. A describe or attack runs on a worker
//! thread and reports through a [`Run`], an iterator of JSON events: the reader waits with the
//! GIL released and checks for signals every 100 ms (Ctrl-C raises `KeyboardInterrupt` and stops
//! the worker), and a `Run` dropped or closed halfway stops its worker at the next step.

mod args;
mod attack;
mod describe;
mod diffusion;
mod errors;
mod run;

use pyo3::prelude::*;

use attack::AttackerModels;
use describe::Models;
use diffusion::Diffusion;
use run::Run;

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
    m.add("DEFAULT_CLIP", clipsteer::request::DEFAULT_CLIP)?;
    m.add(
        "DEFAULT_DIFFUSION_MODEL",
        clipsteer::diffusion::DEFAULT_MODEL,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
