//! `.npy` inputs (features f32/f64 `[N, features]`, labels int64 `[N]`) and prediction output.

use ndarray::{Array1, ArrayD};
use ndarray_npy::{read_npy, write_npy};

use crate::error::{EngineError, Result};

fn check_exists(path: &str) -> Result<()> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| EngineError::Io {
            path: path.to_string(),
            source,
        })
}

/// Read features `[N, features]` stored as f64 or f32; checks the width and finiteness.
pub fn load_features(path: &str, features: usize) -> Result<(usize, Vec<f64>)> {
    load_inputs(path, &[features])
}

/// Read model inputs stored as f64 or f32: `[N, features]` for a model taking `[features]`
/// samples, `[N, C, H, W]` for one taking `[C, H, W]` images. Checks every dimension after the
/// first against `sample` and that every value is finite; returns `N` and the row-major values.
pub fn load_inputs(path: &str, sample: &[usize]) -> Result<(usize, Vec<f64>)> {
    check_exists(path)?;
    let rank = sample.len() + 1;
    let arr: ArrayD<f64> = match read_npy::<_, ArrayD<f64>>(path) {
        Ok(a) => a,
        Err(e64) => match read_npy::<_, ArrayD<f32>>(path) {
            Ok(a) => a.mapv(|v| v as f64),
            Err(_) => {
                return Err(EngineError::Format(format!(
                    "{path}: cannot read as a {rank}-D f32/f64 array {}: {e64}",
                    layout(sample)
                )))
            }
        },
    };
    let dims = arr.shape().to_vec();
    if dims.len() != rank {
        return Err(EngineError::Format(format!(
            "{path}: cannot read as a {rank}-D f32/f64 array {}: the file holds shape {dims:?}",
            layout(sample)
        )));
    }
    if dims[1..] != *sample {
        return Err(EngineError::Format(match sample {
            [f] => format!(
                "{path}: inputs have {} features per row, the model expects {f}",
                dims[1]
            ),
            _ => format!(
                "{path}: inputs have shape {dims:?}; the model expects [N, {}]",
                sample
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }));
    }
    let n = dims[0];
    let w: usize = sample.iter().product();
    let data: Vec<f64> = arr.iter().copied().collect();
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(EngineError::Format(format!(
            "{path}: value {} at row {}, column {} is not finite",
            data[i],
            i / w.max(1),
            i % w.max(1)
        )));
    }
    Ok((n, data))
}

fn layout(sample: &[usize]) -> &'static str {
    if sample.len() == 1 {
        "[N, features]"
    } else {
        "[N, C, H, W]"
    }
}

/// Read integer labels `[N]` (int64).
pub fn load_labels(path: &str) -> Result<Vec<i64>> {
    check_exists(path)?;
    let arr: Array1<i64> = read_npy(path).map_err(|e| {
        EngineError::Format(format!("{path}: cannot read as a 1-D int64 array [N]: {e}"))
    })?;
    Ok(arr.to_vec())
}

/// Write predicted class indices as int64 `[N]`.
pub fn write_predictions(path: &str, preds: &[i64]) -> Result<()> {
    write_npy(path, &Array1::from(preds.to_vec()))
        .map_err(|e| EngineError::Format(format!("{path}: cannot write predictions: {e}")))
}
