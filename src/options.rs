//! Options and input files several commands share: the model a model owner brings and how it
//! is encoded and bounded, and labels checked against the model.

use clap::Args;

use engine::error::{EngineError, Result};
use engine::fixed::FixedPoint;
use engine::io::{declared_bounds, load_inputs, load_labels, open_model, UnusedTensors};
use engine::nn::check_labels;
use engine::nn::range::{ModelBounds, DEFAULT_INPUT_BOUND};
use engine::nn::source::ModelSource;

/// A model file and how the model owner encodes and bounds it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// The model: an ONNX file (`.onnx`, exported with `torch.onnx.export`), or a
    /// safetensors state dict (needs `--arch`).
    #[arg(long)]
    pub model: Option<String>,
    /// For safetensors: layer list in PyTorch order (e.g. `linear,relu,dropout,linear`),
    /// or a preset: `vgg16-head`, `vgg16` or `resnet18` (torchvision's whole VGG16 or
    /// ResNet-18, 3x224x224 inputs; `vgg16:SIZE`, `resnet18:SIZE` for 3xSIZExSIZE).
    #[arg(long)]
    pub arch: Option<String>,
    /// Tensor-name prefix (e.g. `classifier.`).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Fixed-point fractional bits.
    #[arg(long, default_value_t = 16)]
    pub frac_bits: u32,
    /// The input bound the model accepts: every feature must satisfy |x| <= this (the client
    /// checks its rows; the model owner's range analysis proves no overflow within it).
    #[arg(long, default_value_t = DEFAULT_INPUT_BOUND, value_parser = positive_number)]
    pub input_bound: f64,
    /// Calibrate hidden-layer bounds on this `.npy` (the model owner's representative data)
    /// and check them inside the secure computation instead of worst-case bounds.
    #[arg(long)]
    pub calibrate: Option<String>,
    /// Factor applied to the calibrated maxima.
    #[arg(long, default_value_t = 2.0)]
    pub calibration_margin: f64,
    /// Accept a model file with tensors (under --prefix) that --arch does not use.
    #[arg(long)]
    pub allow_unused_tensors: bool,
}

/// A model owner's model, ready to share.
pub struct LoadedModel {
    /// The model, read (or mapped) from its file.
    pub source: Box<dyn ModelSource>,
    /// The declared bounds (calibrated when asked).
    pub bounds: ModelBounds,
    /// The encoding.
    pub fixed: FixedPoint,
}

impl ModelArgs {
    /// Check the options, read the model and (when asked) calibrate its bounds. `inputs`: the
    /// client's input file, if it is the same process (checked against the bound here).
    pub fn load(&self) -> Result<LoadedModel> {
        let model = self.model.as_deref().ok_or_else(|| {
            EngineError::Invalid("--model is required (an .onnx or .safetensors file)".into())
        })?;
        let fixed = FixedPoint::new(self.frac_bits)?;
        let unused = if self.allow_unused_tensors {
            UnusedTensors::Allow
        } else {
            UnusedTensors::Refuse
        };
        let opened = open_model(model, self.arch.as_deref(), &self.prefix, unused)?;
        for note in &opened.notes {
            eprintln!("note: {note}");
        }
        let source = opened.source;
        let calibration = match &self.calibrate {
            Some(path) => Some((path, load_inputs(path, &source.input_shape())?.1)),
            None => None,
        };
        let bounds = declared_bounds(
            source.as_ref(),
            self.input_bound,
            calibration
                .as_ref()
                .map(|(p, d)| (p.as_str(), d.as_slice())),
            self.calibration_margin,
        )?;
        Ok(LoadedModel {
            source,
            bounds,
            fixed,
        })
    }
}

/// Load a labels file for `rows` input rows of a model with `classes` classes: one label per
/// row, each in `0..classes`, or an error naming the file.
pub fn load_checked_labels(path: &str, rows: usize, classes: usize) -> Result<Vec<i64>> {
    let l = load_labels(path)?;
    check_labels(&l, rows, classes).map_err(|e| EngineError::Format(format!("{path}: {e}")))?;
    Ok(l)
}

/// A finite number above zero (for bounds; refused while parsing, before any file is read).
fn positive_number(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) => Err(format!("must be a positive number, got {v}")),
        Err(e) => Err(e.to_string()),
    }
}
