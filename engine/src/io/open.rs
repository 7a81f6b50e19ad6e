//! A model owner's model as the CLI and the Python bindings take it: a file (ONNX, or a
//! safetensors state dict with its architecture) or an ONNX file's bytes, and the bounds the
//! owner declares for it (worst case for an input bound, or calibrated on representative data).

use crate::error::{EngineError, Result};
use crate::io::model::{load_safetensors_model_with, ModelFile};
use crate::io::onnx::{import_onnx, import_onnx_bytes, OnnxImport};
use crate::io::presets::parse_preset;
use crate::io::tensors::UnusedTensors;
use crate::nn::range::{calibrate, check_inputs, ModelBounds};
use crate::nn::source::{to_sequential, ModelSource};

/// A model read (or mapped) from its file, ready to share.
pub struct OpenedModel {
    /// The model.
    pub source: Box<dyn ModelSource + Send + Sync>,
    /// What the import changed that leaves the predictions as they are (e.g. a trailing
    /// softmax dropped), one line each.
    pub notes: Vec<String>,
}

impl From<OnnxImport> for OpenedModel {
    fn from(import: OnnxImport) -> Self {
        OpenedModel {
            source: Box::new(import.model),
            notes: import.notes,
        }
    }
}

/// Open the model at `path`: an ONNX file (`.onnx`, which carries its graph: `arch` must be
/// `None`), or a safetensors state dict laid out by `arch` (a layer list such as
/// `linear,relu,linear`, or a preset: `vgg16-head`, `vgg16`, `resnet18`) under tensor-name
/// `prefix`. A layer list is streamed from the memory-mapped file when shared; presets are read
/// whole.
pub fn open_model(
    path: &str,
    arch: Option<&str>,
    prefix: &str,
    unused: UnusedTensors,
) -> Result<OpenedModel> {
    if path.ends_with(".onnx") {
        if arch.is_some() {
            return Err(EngineError::Invalid(
                "--arch applies to safetensors models; an ONNX file carries its graph".into(),
            ));
        }
        return Ok(import_onnx(path)?.into());
    }
    let arch = arch.ok_or_else(|| {
        EngineError::Invalid(format!(
            "{path}: a safetensors model needs --arch (e.g. vgg16-head, vgg16, resnet18 or linear,relu,linear)"
        ))
    })?;
    let source: Box<dyn ModelSource + Send + Sync> = if parse_preset(arch)?.is_some() {
        Box::new(load_safetensors_model_with(path, arch, prefix, unused)?)
    } else {
        Box::new(ModelFile::open_with(path, arch, prefix, unused)?)
    };
    Ok(OpenedModel {
        source,
        notes: Vec::new(),
    })
}

/// [`open_model`] for an ONNX file's bytes in memory (`name` stands for the file in errors).
pub fn open_onnx_bytes(name: &str, bytes: &[u8]) -> Result<OpenedModel> {
    Ok(import_onnx_bytes(name, bytes)?.into())
}

/// The bounds a model owner declares for `model`: every input feature within `input_bound`
/// (finite, above zero), and, with `calibration = Some((what, rows))`, the hidden layers'
/// bounds measured on those rows (the owner's representative data, row-major, each row one
/// input sample; `what` names them in errors) times `margin`, checked inside the secure
/// computation. Without calibration the range analysis uses worst-case bounds.
pub fn declared_bounds(
    model: &dyn ModelSource,
    input_bound: f64,
    calibration: Option<(&str, &[f64])>,
    margin: f64,
) -> Result<ModelBounds> {
    if !(input_bound.is_finite() && input_bound > 0.0) {
        return Err(EngineError::Invalid(format!(
            "the input bound must be a positive number, got {input_bound}"
        )));
    }
    let Some((what, data)) = calibration else {
        return Ok(ModelBounds::worst_case(input_bound));
    };
    let width: usize = model.input_shape().iter().product();
    if width == 0 || data.is_empty() || !data.len().is_multiple_of(width) {
        return Err(EngineError::Invalid(format!(
            "{what}: {} values are not rows of {width} features",
            data.len()
        )));
    }
    check_inputs(data, width, input_bound)
        .map_err(|e| EngineError::Range(format!("{what}: {e}")))?;
    // Calibration runs the plaintext model: the owner reads it whole here.
    let whole = to_sequential(model)?;
    Ok(ModelBounds {
        input_bound,
        calibrated: Some(calibrate(&whole, data, data.len() / width, margin)?),
    })
}
