//! Model and data import: PyTorch `nn.Sequential` state dicts in safetensors, `.npy` inputs.

pub mod model;
pub mod npy;

pub use model::{load_safetensors_model, ModelFile};
pub use npy::{load_features, load_labels, write_predictions};
