//! Plaintext models (the model owner's side), mirroring PyTorch's `nn.Sequential`.

use rand::Rng;

use crate::error::{shape_err, EngineError, Result};
use crate::fixed::FixedPoint;

/// One layer of a plaintext model.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// `y = x·Wᵀ + b` with PyTorch's layout: `weight [out, in]`, `bias [out]`.
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
        /// Row-major `[out, in]`.
        weight: Vec<f64>,
        /// `[out]`.
        bias: Vec<f64>,
    },
    /// `max(x, 0)`.
    ReLU,
    /// Identity at inference.
    Dropout,
    /// Flattens `[batch, ...]` to `[batch, features]` (inputs here are already 2-D).
    Flatten,
}

impl Layer {
    /// A `Linear` layer from PyTorch-layout parameters, checking their sizes.
    pub fn linear(
        in_features: usize,
        out_features: usize,
        weight: Vec<f64>,
        bias: Vec<f64>,
    ) -> Result<Layer> {
        if weight.len() != in_features * out_features || bias.len() != out_features {
            return Err(shape_err(
                "Linear",
                format!(
                    "weight has {} values and bias {} for Linear({in_features}, {out_features})",
                    weight.len(),
                    bias.len()
                ),
            ));
        }
        Ok(Layer::Linear {
            in_features,
            out_features,
            weight,
            bias,
        })
    }

    /// PyTorch-style name.
    pub fn name(&self) -> String {
        match self {
            Layer::Linear {
                in_features,
                out_features,
                ..
            } => format!("Linear({in_features}, {out_features})"),
            Layer::ReLU => "ReLU".into(),
            Layer::Dropout => "Dropout".into(),
            Layer::Flatten => "Flatten".into(),
        }
    }
}

/// A plaintext sequential model.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequential {
    /// The layers in order.
    pub layers: Vec<Layer>,
}

impl Sequential {
    /// Build from layers, checking that consecutive Linear widths fit.
    pub fn new(layers: Vec<Layer>) -> Result<Sequential> {
        let model = Sequential { layers };
        model.check()?;
        Ok(model)
    }

    fn check(&self) -> Result<()> {
        let mut width: Option<usize> = None;
        for (i, l) in self.layers.iter().enumerate() {
            if let Layer::Linear {
                in_features,
                out_features,
                ..
            } = l
            {
                if *in_features == 0 || *out_features == 0 {
                    return Err(shape_err(
                        "Sequential",
                        format!("layer {i} {} has no features", l.name()),
                    ));
                }
                if let Some(w) = width {
                    if w != *in_features {
                        return Err(shape_err(
                            "Sequential",
                            format!("layer {i} {} receives {w} features", l.name()),
                        ));
                    }
                }
                width = Some(*out_features);
            }
        }
        if width.is_none() {
            return Err(EngineError::Invalid("model has no Linear layer".into()));
        }
        Ok(())
    }

    /// Input width (of the first Linear layer).
    pub fn in_features(&self) -> usize {
        self.layers
            .iter()
            .find_map(|l| match l {
                Layer::Linear { in_features, .. } => Some(*in_features),
                _ => None,
            })
            .expect("checked: has a Linear layer")
    }

    /// Output width (of the last Linear layer).
    pub fn out_features(&self) -> usize {
        self.layers
            .iter()
            .rev()
            .find_map(|l| match l {
                Layer::Linear { out_features, .. } => Some(*out_features),
                _ => None,
            })
            .expect("checked: has a Linear layer")
    }

    /// Total parameter count.
    pub fn parameters(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                Layer::Linear { weight, bias, .. } => weight.len() + bias.len(),
                _ => 0,
            })
            .sum()
    }

    /// Plaintext f64 forward pass of `x [batch, in]` (row-major) -> `[batch, out]`.
    pub fn forward_f64(&self, x: &[f64], batch: usize) -> Result<Vec<f64>> {
        self.forward_f64_observed(x, batch, &mut |_, _| {})
    }

    /// [`Self::forward_f64`], calling `observe(layer, output)` after every layer (calibration).
    pub fn forward_f64_observed(
        &self,
        x: &[f64],
        batch: usize,
        observe: &mut dyn FnMut(&Layer, &[f64]),
    ) -> Result<Vec<f64>> {
        let mut cur = x.to_vec();
        let mut width = self.in_features();
        if cur.len() != batch * width {
            return Err(shape_err(
                "forward",
                format!("{} values for batch {batch} x {width}", cur.len()),
            ));
        }
        for l in &self.layers {
            match l {
                Layer::Linear {
                    in_features,
                    out_features,
                    weight,
                    bias,
                } => {
                    let mut out = vec![0.0; batch * out_features];
                    for b in 0..batch {
                        for o in 0..*out_features {
                            let row = &weight[o * in_features..(o + 1) * in_features];
                            let xin = &cur[b * in_features..(b + 1) * in_features];
                            out[b * out_features + o] =
                                bias[o] + row.iter().zip(xin).map(|(w, v)| w * v).sum::<f64>();
                        }
                    }
                    cur = out;
                    width = *out_features;
                }
                Layer::ReLU => cur.iter_mut().for_each(|v| *v = v.max(0.0)),
                Layer::Dropout | Layer::Flatten => {}
            }
            observe(l, &cur);
        }
        debug_assert_eq!(cur.len(), batch * width);
        Ok(cur)
    }

    /// Check that every parameter is finite and fits the fixed-point range (before anything is
    /// shared, so a bad model shares nothing).
    pub fn check_encodable(&self, fx: &FixedPoint) -> Result<()> {
        for (i, l) in self.layers.iter().enumerate() {
            if let Layer::Linear { weight, bias, .. } = l {
                fx.check(weight)
                    .map_err(|e| EngineError::Format(format!("layer {i} weight: {e}")))?;
                fx.check(bias)
                    .map_err(|e| EngineError::Format(format!("layer {i} bias: {e}")))?;
            }
        }
        Ok(())
    }
}

/// Layer kinds for building an architecture from a comma-separated list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// `linear`
    Linear,
    /// `relu`
    ReLU,
    /// `dropout`
    Dropout,
    /// `flatten`
    Flatten,
}

/// Parse `linear,relu,dropout,linear` (or the preset `vgg16-head`) into layer kinds.
pub fn parse_arch(arch: &str) -> Result<Vec<LayerKind>> {
    if arch.trim().eq_ignore_ascii_case("vgg16-head") {
        return parse_arch("linear,relu,dropout,linear,relu,dropout,linear");
    }
    arch.split(',')
        .enumerate()
        .map(|(i, s)| match s.trim().to_ascii_lowercase().as_str() {
            "linear" => Ok(LayerKind::Linear),
            "relu" => Ok(LayerKind::ReLU),
            "dropout" => Ok(LayerKind::Dropout),
            "flatten" => Ok(LayerKind::Flatten),
            other => Err(EngineError::Invalid(format!(
                "unknown layer '{other}' at position {i} of --arch (expected linear, relu, dropout, flatten or the preset vgg16-head)"
            ))),
        })
        .collect()
}

/// The torchvision VGG16 classifier head with configurable widths and random weights
/// (PyTorch's default `U(-1/sqrt(in), 1/sqrt(in))` initialisation).
pub fn vgg16_head(input: usize, hidden: usize, classes: usize, rng: &mut impl Rng) -> Sequential {
    let mut linear = |i: usize, o: usize| {
        let bound = 1.0 / (i as f64).sqrt();
        let weight = (0..i * o).map(|_| rng.gen_range(-bound..bound)).collect();
        let bias = (0..o).map(|_| rng.gen_range(-bound..bound)).collect();
        Layer::linear(i, o, weight, bias).expect("sizes match")
    };
    let l0 = linear(input, hidden);
    let l3 = linear(hidden, hidden);
    let l6 = linear(hidden, classes);
    Sequential::new(vec![
        l0,
        Layer::ReLU,
        Layer::Dropout,
        l3,
        Layer::ReLU,
        Layer::Dropout,
        l6,
    ])
    .expect("consistent widths")
}

/// Transpose a row-major `[rows, cols]` matrix (cache-blocked: a PyTorch `[out, in]` weight
/// becomes the `[in, out]` right operand of products).
pub fn transposed<T: Copy + Default>(data: &[T], rows: usize, cols: usize) -> Vec<T> {
    const B: usize = 32;
    let mut out = vec![T::default(); rows * cols];
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_the_definition() {
        let (r, c) = (37, 70);
        let m: Vec<usize> = (0..r * c).collect();
        let t = transposed(&m, r, c);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(t[j * r + i], m[i * c + j]);
            }
        }
    }
}
