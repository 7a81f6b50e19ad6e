//! A model's public plan: what the parties need to know to receive a model's shares and run it
//! (layer kinds and hyperparameters, shapes, the declared bounds and the owner's range
//! analysis), and nothing of its weights.
//!
//! Sharing a model is the same three steps in every deployment: the owner derives the plan
//! ([`ModelPlan::of`]) and sends each layer's shares ([`ModelPlan::send_layer`]); each party
//! builds the layer from the shares it receives ([`ModelPlan::build_layer`]). In-process,
//! [`crate::session::Session::share_model_observed`] runs the party side on the party threads;
//! across hosts the party service runs it on a message from the owner. A party that restarts
//! rebuilds the same layers from the plan and the store ids it persisted
//! ([`LayerPlan::assemble`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{shape_err, EngineError, Result};
use crate::fixed::FixedPoint;
use crate::nn::geometry::Window2d;
use crate::nn::plain::Layer;
use crate::nn::range::{ring_limits, ModelBounds, RangeReport};
use crate::nn::shared::linear::receive_fixed_weight;
use crate::nn::shared::{
    SharedAffine2d, SharedAvgPool2d, SharedConv2d, SharedFlatten, SharedIdentity, SharedLayer,
    SharedLinear, SharedMaxPool2d, SharedModel, SharedReLU,
};
use crate::nn::source::{encode_transposed, encode_values, LayerShape, ModelSource};
use crate::party::Party;
use crate::transport::PartyId;

/// Where the owner's side of sharing puts a tensor: `send(shape, fill)` has `fill` write the
/// encoded values and splits them into one share per party.
pub type ShareSink<'a> =
    dyn FnMut(&[usize], &mut dyn FnMut(&mut [u64]) -> Result<()>) -> Result<()> + 'a;

/// One layer's public description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LayerPlan {
    /// `x·Wᵀ + b`; its weight and bias are shared.
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
    },
    /// A convolution (groups 1); its weight and bias are shared.
    Conv2d {
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Kernel, stride, padding.
        window: Window2d,
    },
    /// A layer without secret parameters, as the plaintext layer: activations, dropout,
    /// flatten, pooling, and batch norm (a public per-channel affine map).
    Public(Layer),
}

impl LayerPlan {
    /// The shared tensors' shapes a party receives for this layer, in order (weight in product
    /// layout `[depth, out]`, then bias `[out]`); `None` for layers without parameters.
    pub fn weight_shape(&self) -> Option<(usize, usize)> {
        match self {
            LayerPlan::Linear {
                in_features,
                out_features,
            } => Some((*in_features, *out_features)),
            LayerPlan::Conv2d {
                in_channels,
                out_channels,
                window,
            } => Some((SharedConv2d::depth(*in_channels, window), *out_channels)),
            _ => None,
        }
    }

    /// The shared layer over per-sample `input`, with its shares stored under `ids`
    /// (`[weight, fixed operand, bias]` for layers with parameters, none otherwise).
    pub fn assemble(
        &self,
        input: Vec<usize>,
        ids: &[u64],
        fx: &FixedPoint,
    ) -> Result<Arc<dyn SharedLayer>> {
        let want = if self.weight_shape().is_some() { 3 } else { 0 };
        if ids.len() != want {
            return Err(EngineError::Invalid(format!(
                "{self:?}: {} store ids, expected {want}",
                ids.len()
            )));
        }
        Ok(match self {
            LayerPlan::Linear {
                in_features,
                out_features,
            } => Arc::new(SharedLinear {
                weight: ids[0],
                fixed: ids[1],
                bias: ids[2],
                in_features: *in_features,
                out_features: *out_features,
            }),
            LayerPlan::Conv2d {
                in_channels,
                out_channels,
                window,
            } => Arc::new(SharedConv2d::from_ids(
                input,
                *in_channels,
                *out_channels,
                *window,
                [ids[0], ids[1], ids[2]],
            )?),
            LayerPlan::Public(l) => match l {
                Layer::ReLU => Arc::new(SharedReLU::new(input)),
                Layer::Dropout => Arc::new(SharedIdentity::new("Dropout")),
                Layer::Flatten => Arc::new(SharedFlatten::new(input)),
                Layer::MaxPool2d { window } => Arc::new(SharedMaxPool2d::new(input, *window)?),
                Layer::AvgPool2d {
                    window,
                    count_include_pad,
                } => Arc::new(SharedAvgPool2d::avg(input, *window, *count_include_pad)?),
                Layer::AdaptiveAvgPool2d { output } => {
                    Arc::new(SharedAvgPool2d::adaptive(input, *output)?)
                }
                Layer::BatchNorm2d { scale, shift } => {
                    Arc::new(SharedAffine2d::new(input, scale, shift, fx)?)
                }
                Layer::Linear { .. } | Layer::Conv2d { .. } => {
                    return Err(EngineError::Invalid(format!(
                        "{} has secret parameters: it cannot be a public layer",
                        l.name()
                    )))
                }
            },
        })
    }
}

/// A model's public plan (see the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelPlan {
    /// The layers.
    pub layers: Vec<LayerPlan>,
    /// Per-sample shape entering each layer, then the output shape.
    pub shapes: Vec<Vec<usize>>,
    /// Fractional bits the model is encoded with.
    pub frac_bits: u32,
    /// Input bound declared by the owner.
    pub input_bound: f64,
    /// Calibrated bounds of the hidden Linear outputs, if the owner calibrated.
    pub calibrated: Option<Vec<f64>>,
    /// The owner's range analysis (headroom, error bound), for display.
    pub range: RangeReport,
}

impl ModelPlan {
    /// The owner's side, before anything is shared: check that `model` encodes, prove with the
    /// range analysis that no value can overflow for inputs within `bounds` (or refuse), and
    /// describe every layer.
    pub fn of(model: &dyn ModelSource, fx: &FixedPoint, bounds: &ModelBounds) -> Result<Self> {
        model.check_encodable(fx)?;
        let range = crate::nn::range::analyse(model, fx, bounds)?;
        let shapes = model.shapes()?;
        let mut layers = Vec::new();
        for (li, kind) in model.layer_shapes().iter().enumerate() {
            layers.push(match *kind {
                LayerShape::Linear {
                    in_features,
                    out_features,
                } => LayerPlan::Linear {
                    in_features,
                    out_features,
                },
                LayerShape::ReLU => LayerPlan::Public(Layer::ReLU),
                LayerShape::Dropout => LayerPlan::Public(Layer::Dropout),
                LayerShape::Flatten => LayerPlan::Public(Layer::Flatten),
                // Only parameter-free layers are copied (never a weight).
                LayerShape::Other => match &*model.layer(li)? {
                    Layer::Linear {
                        in_features,
                        out_features,
                        ..
                    } => LayerPlan::Linear {
                        in_features: *in_features,
                        out_features: *out_features,
                    },
                    Layer::Conv2d {
                        in_channels,
                        out_channels,
                        window,
                        ..
                    } => LayerPlan::Conv2d {
                        in_channels: *in_channels,
                        out_channels: *out_channels,
                        window: *window,
                    },
                    public => LayerPlan::Public(public.clone()),
                },
            });
        }
        let plan = ModelPlan {
            layers,
            shapes,
            frac_bits: fx.frac_bits(),
            input_bound: bounds.input_bound,
            calibrated: bounds.calibrated.clone(),
            range,
        };
        plan.check()?;
        Ok(plan)
    }

    /// Check the plan's internal consistency (a plan received from a peer is checked before
    /// anything is built from it): one shape per layer plus the output, non-empty sizes that
    /// do not overflow, a Linear layer, a classifier output.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(shape_err("model plan", m));
        if self.layers.is_empty() || self.shapes.len() != self.layers.len() + 1 {
            return bad(format!(
                "{} layers and {} shapes",
                self.layers.len(),
                self.shapes.len()
            ));
        }
        for s in &self.shapes {
            let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if s.is_empty() || !matches!(n, Some(1..=0x1_0000_0000)) {
                return bad(format!("shape {s:?} is empty or too large"));
            }
        }
        for (li, l) in self.layers.iter().enumerate() {
            let (input, output) = (&self.shapes[li], &self.shapes[li + 1]);
            let elems = |s: &[usize]| s.iter().product::<usize>();
            let fits = match l {
                LayerPlan::Linear {
                    in_features,
                    out_features,
                } => *in_features == elems(input) && *out_features == elems(output),
                LayerPlan::Conv2d {
                    in_channels,
                    out_channels,
                    ..
                } => input.first() == Some(in_channels) && output.first() == Some(out_channels),
                _ => true,
            };
            let params_fit = l
                .weight_shape()
                .is_none_or(|(k, n)| k.checked_mul(n).is_some_and(|w| w <= 1 << 32));
            if !fits || !params_fit {
                return bad(format!(
                    "layer {li} {l:?} does not fit its shapes {input:?} -> {output:?}"
                ));
            }
        }
        if self.out_features() == 0 || self.frac_bits == 0 || self.frac_bits > 40 {
            return bad("no classes or unusable fractional bits".into());
        }
        if !(self.input_bound.is_finite() && self.input_bound > 0.0) {
            return bad(format!("input bound {}", self.input_bound));
        }
        Ok(())
    }

    /// The declared bounds.
    pub fn bounds(&self) -> ModelBounds {
        ModelBounds {
            input_bound: self.input_bound,
            calibrated: self.calibrated.clone(),
        }
    }

    /// Per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.shapes[0]
    }

    /// Elements per sample of the output (classes).
    pub fn out_features(&self) -> usize {
        self.shapes.last().map_or(0, |s| s.iter().product())
    }

    /// Parameters layer `layer` shares (0 for layers without).
    pub fn layer_parameters(&self, layer: usize) -> usize {
        self.layers[layer]
            .weight_shape()
            .map_or(0, |(k, n)| k * n + n)
    }

    /// The owner's side of layer `layer`: encode its weight (product layout) and bias from
    /// `model` and hand each to `send(shape, fill)`, which splits it into shares for the two
    /// parties.
    pub fn send_layer(
        &self,
        model: &dyn ModelSource,
        layer: usize,
        fx: &FixedPoint,
        send: &mut ShareSink<'_>,
    ) -> Result<()> {
        let Some((k, n)) = self.layers[layer].weight_shape() else {
            return Ok(());
        };
        match model.layer_shapes().get(layer) {
            // Streamed from the source tensor by tensor.
            Some(LayerShape::Linear { .. }) => {
                send(&[k, n], &mut |out| model.encode_weight(layer, fx, out))?;
                send(&[n], &mut |out| model.encode_bias(layer, fx, out))
            }
            _ => {
                let l = model.layer(layer)?;
                let (Layer::Conv2d { weight, bias, .. } | Layer::Linear { weight, bias, .. }) = &*l
                else {
                    return Err(EngineError::Invalid(format!(
                        "layer {layer} is not the layer with parameters the plan describes"
                    )));
                };
                if weight.len() != k * n || bias.len() != n {
                    return Err(shape_err(
                        "conv2d",
                        format!("{} weights and {} biases", weight.len(), bias.len()),
                    ));
                }
                // PyTorch stores [out, in] or [out, in·kh·kw]; products need [depth, out].
                let label = format!("layer {layer} weight");
                send(&[k, n], &mut |out| {
                    encode_transposed(n, k, &|x| weight[x], fx, &label, out)
                })?;
                send(&[n], &mut |out| {
                    encode_values(bias, fx, &format!("layer {layer} bias"), out)
                })
            }
        }
    }

    /// A party's side of layer `layer`: receive its shares from `owner` (if it has
    /// parameters), keep them, and build the shared layer. Returns the layer and its store ids.
    pub fn build_layer(
        &self,
        p: &mut Party,
        layer: usize,
        owner: PartyId,
    ) -> Result<(Arc<dyn SharedLayer>, Vec<u64>)> {
        let ids = match self.layers[layer].weight_shape() {
            Some((k, n)) => {
                let (w, f, b) = receive_fixed_weight(p, owner, k, n)?;
                vec![w, f, b]
            }
            None => Vec::new(),
        };
        let fx = p.fixed_point();
        let l = self.layers[layer].assemble(self.shapes[layer].clone(), &ids, &fx)?;
        Ok((l, ids))
    }

    /// The shared model from its layers (built or reloaded).
    pub fn model(&self, layers: Vec<Arc<dyn SharedLayer>>, fx: &FixedPoint) -> SharedModel {
        let bounds = self.bounds();
        SharedModel::from_parts(
            layers,
            self.shapes[1..]
                .iter()
                .map(|s| s.iter().product())
                .collect(),
            self.input_shape().to_vec(),
            self.out_features(),
            ring_limits(&bounds, fx),
            bounds,
            self.range.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::plain::{Layer, Sequential};

    #[test]
    fn a_plan_that_does_not_fit_its_shapes_is_refused() {
        let model = Sequential::new(vec![
            Layer::linear(3, 2, vec![0.5; 6], vec![0.0; 2]).unwrap(),
            Layer::ReLU,
        ])
        .unwrap();
        let plan = ModelPlan::of(&model, &FixedPoint::default(), &ModelBounds::default()).unwrap();
        plan.check().unwrap();
        let mut bad = plan.clone();
        bad.layers[0] = LayerPlan::Linear {
            in_features: 1 << 40,
            out_features: 1 << 40,
        };
        let e = bad.check().unwrap_err().to_string();
        assert!(
            e.contains("layer 0") && e.contains("does not fit its shapes"),
            "{e}"
        );
        let mut bad = plan;
        bad.shapes.pop();
        assert!(bad.check().is_err());
    }
}
