//! Reading tensors of a safetensors file: values as f64 with their shapes, errors that name the
//! tensor, and what to do with tensors an architecture does not use. Shared by the model file
//! reader ([`super::model`]) and the presets ([`super::presets`]).

use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::error::{EngineError, Result};

/// What to do with tensors of the file (under the prefix) that the architecture does not use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnusedTensors {
    /// Refuse the file (the architecture probably does not match it).
    #[default]
    Refuse,
    /// Ignore them.
    Allow,
}

/// How many names an error lists before "and N more".
const LISTED_NAMES: usize = 6;

/// `a, b, c and 12 more`.
pub(super) fn name_list(names: &[String]) -> String {
    let shown = names.iter().take(LISTED_NAMES).cloned().collect::<Vec<_>>();
    match names.len().saturating_sub(LISTED_NAMES) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// A safetensors parse error in words.
pub(super) fn describe(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::InvalidHeader => "the header is not valid UTF-8".into(),
        SafeTensorError::InvalidHeaderStart => "the header does not start with '{'".into(),
        SafeTensorError::InvalidHeaderDeserialization => "the header is not valid JSON".into(),
        SafeTensorError::HeaderTooLarge => "the header is larger than 100 MB".into(),
        SafeTensorError::HeaderTooSmall => "the file is shorter than the 8-byte header size".into(),
        SafeTensorError::InvalidHeaderLength => "the header length is larger than the file".into(),
        SafeTensorError::TensorNotFound(n) => format!("tensor '{n}' not found"),
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's shape and dtype do not match its byte range".into()
        }
        SafeTensorError::InvalidOffset(n) => {
            format!("the byte range of tensor '{n}' is invalid (overlaps, gaps or past the end)")
        }
        SafeTensorError::IoError(e) => format!("read error: {e}"),
        SafeTensorError::JsonError(e) => format!("the header is not valid JSON: {e}"),
        SafeTensorError::InvalidTensorView(d, s, n) => {
            format!("a {d:?} tensor of shape {s:?} cannot hold {n} bytes")
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "the tensors do not cover the data section exactly".into()
        }
        SafeTensorError::ValidationOverflow => "a tensor's size overflows".into(),
    }
}

/// Values of tensor `name` as f64, with its shape.
pub(super) fn tensor_f64(
    st: &SafeTensors,
    name: &str,
    path: &str,
) -> Result<(Vec<usize>, Vec<f64>)> {
    let t = st.tensor(name).map_err(|_| {
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        EngineError::Format(format!(
            "{path}: tensor '{name}' is missing (file has {}: {})",
            names.len(),
            name_list(&names)
        ))
    })?;
    let bytes = t.data();
    let vals: Vec<f64> = match t.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        other => {
            return Err(EngineError::Format(format!(
                "{path}: tensor '{name}' has dtype {other:?}; expected F32, F64, F16 or BF16"
            )))
        }
    };
    if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
        return Err(EngineError::Format(format!(
            "{path}: tensor '{name}' has a non-finite value ({}) at index {i}",
            vals[i]
        )));
    }
    Ok((t.shape().to_vec(), vals))
}
