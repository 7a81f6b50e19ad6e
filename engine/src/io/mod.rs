//! Model and data import: PyTorch `nn.Sequential` state dicts in safetensors, `.npy` inputs;
//! atomic output files.

pub mod model;
pub mod npy;
pub mod output;

pub use model::{load_safetensors_model, load_safetensors_model_with, UnusedTensors};
pub use npy::{load_features, load_labels, write_predictions};
pub use output::OutputFile;
