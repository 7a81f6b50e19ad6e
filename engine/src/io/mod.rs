//! Model and data import: PyTorch `nn.Sequential` state dicts in safetensors, ONNX graphs
//! exported from PyTorch, `.npy` inputs; atomic output files.

pub mod model;
pub mod npy;
pub mod onnx;
pub mod open;
pub mod output;
pub mod presets;
pub mod tensors;

pub use model::{load_safetensors_model, load_safetensors_model_with, ModelFile};
pub use npy::{
    check_input_shape, describe_inputs, load_features, load_inputs, load_labels, write_predictions,
};
pub use onnx::{import_onnx, import_onnx_bytes, load_onnx_model, OnnxImport};
pub use open::{declared_bounds, open_model, open_onnx_bytes, OpenedModel};
pub use output::OutputFile;
pub use presets::{parse_preset, Preset, PresetKind};
pub use tensors::UnusedTensors;
