//! `.npy` inputs (features f32/f64 `[N, features]`, labels int64 `[N]`) and prediction output.

use ndarray::{Array1, Array2};
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
    check_exists(path)?;
    let arr: Array2<f64> = match read_npy::<_, Array2<f64>>(path) {
        Ok(a) => a,
        Err(e64) => match read_npy::<_, Array2<f32>>(path) {
            Ok(a) => a.mapv(|v| v as f64),
            Err(_) => {
                return Err(EngineError::Format(format!(
                    "{path}: cannot read as a 2-D f32/f64 array [N, features]: {e64}"
                )))
            }
        },
    };
    let (n, w) = arr.dim();
    if w != features {
        return Err(EngineError::Format(format!(
            "{path}: inputs have {w} features per row, the model expects {features}"
        )));
    }
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
