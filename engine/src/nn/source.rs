//! Where the model owner reads a model from while sharing it: tensor by tensor, encoded
//! straight into the share messages, so the owner never needs the whole model in memory (a
//! memory-mapped safetensors file, [`crate::io::ModelFile`], or an in-memory [`Sequential`]).
//!
//! Linear weights (the large tensors) are streamed, encoded, into the share messages; every
//! other layer (convolutions, pooling, normalisation) is read whole, one layer at a time, with
//! [`ModelSource::layer`].

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::fixed::FixedPoint;
use crate::nn::graph::Wiring;
use crate::nn::plain::{Layer, Sequential};

/// A layer's kind and size, without parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerShape {
    /// `y = x·Wᵀ + b`, weight `[out, in]`.
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
    },
    /// `max(x, 0)`.
    ReLU,
    /// Identity at inference.
    Dropout,
    /// `[batch, ...] -> [batch, features]`.
    Flatten,
    /// Any other layer (convolution, pooling, normalisation): read whole with
    /// [`ModelSource::layer`].
    Other,
}

/// A model the owner shares layer by layer.
pub trait ModelSource {
    /// The layers, in order.
    fn layer_shapes(&self) -> Vec<LayerShape>;

    /// Shape of one input sample.
    fn input_shape(&self) -> Vec<usize>;

    /// Per-sample shapes of the values: the input, then the output of every layer.
    fn shapes(&self) -> Result<Vec<Vec<usize>>>;

    /// Which values each layer reads (a chain unless the model is a graph).
    fn wiring(&self) -> Wiring {
        Wiring::chain(self.layer_shapes().len())
    }

    /// Layer `layer` with its parameters in plaintext (the owner's; read on demand, one layer
    /// at a time).
    fn layer(&self, layer: usize) -> Result<Cow<'_, Layer>>;

    /// Check that every parameter is finite and encodable in `fx`, before anything is shared.
    fn check_encodable(&self, fx: &FixedPoint) -> Result<()>;

    /// Layer `layer`'s weight, encoded and transposed to `[in, out]` (the layout products use),
    /// written into `out` (`in * out` values).
    fn encode_weight(&self, layer: usize, fx: &FixedPoint, out: &mut [u64]) -> Result<()>;

    /// Layer `layer`'s bias, encoded, written into `out` (`out_features` values).
    fn encode_bias(&self, layer: usize, fx: &FixedPoint, out: &mut [u64]) -> Result<()>;

    /// Number of parameters (for progress reports; the default counts the Linear layers').
    fn parameter_count(&self) -> usize {
        self.layer_shapes()
            .iter()
            .map(|l| match l {
                LayerShape::Linear {
                    in_features,
                    out_features,
                } => in_features * out_features + out_features,
                _ => 0,
            })
            .sum()
    }
}

/// The whole model in memory, read layer by layer from `model`.
pub fn to_sequential(model: &(impl ModelSource + ?Sized)) -> Result<Sequential> {
    let layers = (0..model.layer_shapes().len())
        .map(|i| model.layer(i).map(Cow::into_owned))
        .collect::<Result<Vec<_>>>()?;
    Sequential::graph(layers, model.input_shape(), model.wiring())
}

/// Encode `values` into `out` (same length). `label` names the tensor in errors.
pub fn encode_values(values: &[f64], fx: &FixedPoint, label: &str, out: &mut [u64]) -> Result<()> {
    if values.len() != out.len() {
        return Err(EngineError::Invalid(format!(
            "{label}: {} values for {} outputs",
            values.len(),
            out.len()
        )));
    }
    out.par_iter_mut()
        .zip(values)
        .enumerate()
        .try_for_each(|(i, (o, &v))| {
            *o = fx
                .encode_one(v, i)
                .map_err(|e| EngineError::Format(format!("{label}: {e}")))?;
            Ok(())
        })
}

/// Encode a row-major `[rows, cols]` matrix, read through `get(index)`, transposed into
/// `out [cols, rows]`, in parallel cache-sized tiles. `label` names the tensor in errors.
pub fn encode_transposed(
    rows: usize,
    cols: usize,
    get: &(dyn Fn(usize) -> f64 + Sync),
    fx: &FixedPoint,
    label: &str,
    out: &mut [u64],
) -> Result<()> {
    const T: usize = 32;
    if out.len() != rows * cols {
        return Err(EngineError::Invalid(format!(
            "{label}: {} output values for a [{rows}, {cols}] matrix",
            out.len()
        )));
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    // Each task owns T output rows (= T source columns) and walks the source rows.
    out.par_chunks_mut(T * rows)
        .enumerate()
        .try_for_each(|(t, block)| {
            let c0 = t * T;
            let width = block.len() / rows;
            for r0 in (0..rows).step_by(T) {
                for r in r0..(r0 + T).min(rows) {
                    for dc in 0..width {
                        let i = r * cols + c0 + dc;
                        let v = get(i);
                        block[dc * rows + r] = fx
                            .encode_one(v, i)
                            .map_err(|e| EngineError::Format(format!("{label}: {e}")))?;
                    }
                }
            }
            Ok(())
        })
}

impl ModelSource for Sequential {
    fn layer_shapes(&self) -> Vec<LayerShape> {
        self.layers
            .iter()
            .map(|l| match l {
                Layer::Linear {
                    in_features,
                    out_features,
                    ..
                } => LayerShape::Linear {
                    in_features: *in_features,
                    out_features: *out_features,
                },
                Layer::ReLU => LayerShape::ReLU,
                Layer::Dropout => LayerShape::Dropout,
                Layer::Flatten => LayerShape::Flatten,
                _ => LayerShape::Other,
            })
            .collect()
    }

    fn input_shape(&self) -> Vec<usize> {
        self.input.clone()
    }

    fn shapes(&self) -> Result<Vec<Vec<usize>>> {
        Sequential::shapes(self)
    }

    fn wiring(&self) -> Wiring {
        self.wiring.clone()
    }

    fn layer(&self, layer: usize) -> Result<Cow<'_, Layer>> {
        self.layers
            .get(layer)
            .map(Cow::Borrowed)
            .ok_or_else(|| EngineError::Invalid(format!("the model has no layer {layer}")))
    }

    fn check_encodable(&self, fx: &FixedPoint) -> Result<()> {
        Sequential::check_encodable(self, fx)
    }

    fn parameter_count(&self) -> usize {
        self.parameters()
    }

    fn encode_weight(&self, layer: usize, fx: &FixedPoint, out: &mut [u64]) -> Result<()> {
        match self.layers.get(layer) {
            Some(Layer::Linear {
                in_features,
                out_features,
                weight,
                ..
            }) => encode_transposed(
                *out_features,
                *in_features,
                &|i| weight[i],
                fx,
                &format!("layer {layer} weight"),
                out,
            ),
            _ => Err(EngineError::Invalid(format!("layer {layer} has no weight"))),
        }
    }

    fn encode_bias(&self, layer: usize, fx: &FixedPoint, out: &mut [u64]) -> Result<()> {
        match self.layers.get(layer) {
            Some(Layer::Linear { bias, .. }) if bias.len() == out.len() => {
                encode_values(bias, fx, &format!("layer {layer} bias"), out)
            }
            _ => Err(EngineError::Invalid(format!(
                "layer {layer} has no bias of {} values",
                out.len()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::plain::transposed;

    #[test]
    fn tiled_encode_equals_transpose_then_encode() {
        let fx = FixedPoint::default();
        for (r, c) in [(1, 1), (7, 33), (70, 37), (64, 65)] {
            let m: Vec<f64> = (0..r * c).map(|i| (i as f64 - 100.0) / 64.0).collect();
            let want = fx.encode(&transposed(&m, r, c)).unwrap();
            let mut got = vec![0u64; r * c];
            encode_transposed(r, c, &|i| m[i], &fx, "m", &mut got).unwrap();
            assert_eq!(got, want, "{r}x{c}");
        }
        let bad = [1.0, f64::NAN];
        let mut out = [0u64; 2];
        let e = encode_transposed(1, 2, &|i| bad[i], &fx, "w", &mut out).unwrap_err();
        assert!(e.to_string().contains("w:"), "{e}");
    }
}
