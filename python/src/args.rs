//! Arguments as the Python layer passes them: devices, model paths, images.

use crate::errors::{runtime_err, value_err};
use candle_core::Device;
use clipsteer::image::{decode_image_bytes, load_image, DecodeLimits};
use clipsteer::request::{select_device, value_enum, DeviceChoice};
use pyo3::exceptions::{PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::{Path, PathBuf};

pub(crate) fn device_named(name: &str) -> PyResult<Device> {
    let choice: DeviceChoice = value_enum("device", name).map_err(value_err)?;
    select_device(choice).map_err(runtime_err)
}

/// A model argument that names a local file or directory which is not there:
/// `FileNotFoundError`, where the hub would only say that no such repository is reachable.
pub(crate) fn check_local(spec: &str, what: &str) -> PyResult<()> {
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
pub(crate) enum ImageArg {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

impl ImageArg {
    pub(crate) fn from_py(image: &Bound<'_, PyAny>) -> PyResult<Self> {
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
    pub(crate) fn decode(&self) -> PyResult<image::DynamicImage> {
        let decoded = match self {
            Self::Bytes(bytes) => decode_image_bytes(bytes, DecodeLimits::default()),
            Self::Path(path) => load_image(path, DecodeLimits::default()),
        };
        decoded.map_err(value_err)
    }

    /// How events name the input: its path, or nothing for pixels.
    pub(crate) fn label(&self) -> Option<String> {
        match self {
            Self::Path(path) => Some(path.display().to_string()),
            Self::Bytes(_) => None,
        }
    }
}
