//! A model's public plan: what the parties need to know to receive a model's shares and run it
//! (layer kinds and hyperparameters, shapes, how the layers are connected, the input bound and
//! the ring limits checked at run time), and nothing derived from its weights.
//!
//! Sharing a model is the same three steps in every deployment: the owner derives the plan
//! ([`ModelPlan::of`]) and sends each layer's shares ([`ModelPlan::send_layer`]); each party
//! builds the layer from the shares it receives ([`ModelPlan::build_layer`]). A party service
//! runs these steps for an upload; a custom computation runs them inside itself
//! ([`crate::service::computation::Computation::share_model_observed`]). A party that restarts
//! rebuilds the same layers from the plan and the store ids it persisted
//! ([`ModelPlan::assemble_layer`]).
//!
//! The layers a party builds may compute the plaintext model's function in a cheaper exact
//! form: a ReLU whose output only a max pool reads runs after the pool
//! ([`ModelPlan::relu_after_pool`], [`crate::nn::rewrite`]); the plaintext model is unchanged.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{shape_err, EngineError, Result};
use crate::fixed::FixedPoint;
use crate::nn::geometry::Window2d;
use crate::nn::graph::Wiring;
use crate::nn::plain::Layer;
use crate::nn::range::{layer_limits, ModelBounds, RangeReport};
use crate::nn::rewrite::{relu_pool_pairs_by, DEFERRED_RELU};
use crate::nn::shared::linear::receive_fixed_weight;
use crate::nn::shared::{
    SharedAdd, SharedAvgPool2d, SharedClip, SharedConcat, SharedConv2d, SharedFlatten,
    SharedHardSwish, SharedIdentity, SharedLayer, SharedLeakyReLU, SharedLinear, SharedMaxPool2d,
    SharedModel, SharedReLU,
};
use crate::nn::source::{encode_transposed, encode_values, LayerShape, ModelSource};
use crate::party::Party;
use crate::protocols::compare::CompareMode;
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
    /// A layer without parameters, as the plaintext layer: activations (with their public
    /// hyperparameters), dropout, flatten, pooling, `Add`, `Concat`. A layer with parameters
    /// is never public ([`ModelPlan::check`] refuses it).
    Public(Layer),
}

impl LayerPlan {
    /// The public description of `layer` reading values of per-sample shape `input`: its
    /// kind and shapes only. An affine map is a product with a diagonal weight (a `Linear` on
    /// features, a 1x1 `Conv2d` on images), shared like any weight.
    pub fn of(layer: &Layer, input: &[usize]) -> Result<LayerPlan> {
        Ok(match layer {
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
            Layer::Affine { scale, .. } => match input.len() {
                1 => LayerPlan::Linear {
                    in_features: scale.len(),
                    out_features: scale.len(),
                },
                3 => LayerPlan::Conv2d {
                    in_channels: scale.len(),
                    out_channels: scale.len(),
                    window: Window2d::square(1, 1, 0),
                },
                _ => {
                    return Err(shape_err(
                        "model plan",
                        format!(
                            "{} over values of shape {input:?}: only [features] and [c, h, w] are supported",
                            layer.name()
                        ),
                    ))
                }
            },
            public => LayerPlan::Public(public.clone()),
        })
    }

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

    /// The per-sample output shape for inputs of per-sample shapes `inputs`, or an error if
    /// the layer does not fit them.
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let elems = |s: &[usize]| s.iter().product::<usize>();
        match (self, inputs) {
            (
                LayerPlan::Linear {
                    in_features,
                    out_features,
                },
                [x],
            ) if elems(x) == *in_features => Ok(vec![*out_features]),
            (
                LayerPlan::Conv2d {
                    in_channels,
                    out_channels,
                    window,
                },
                [x],
            ) if x.len() == 3 && x[0] == *in_channels => {
                let [oh, ow] = window.output_size("conv2d", x[1], x[2])?;
                Ok(vec![*out_channels, oh, ow])
            }
            (LayerPlan::Public(l), _) if l.parameters() == 0 => l.output_shape(inputs),
            _ => Err(shape_err(
                "model plan",
                format!("{self:?} does not take inputs {inputs:?}"),
            )),
        }
    }

    /// The shared layer over per-sample `inputs` (the shapes of the values it reads), with
    /// its shares stored under `ids` (`[weight, fixed operand, bias]` for layers with
    /// parameters, none otherwise).
    pub fn assemble(
        &self,
        inputs: &[Vec<usize>],
        ids: &[u64],
        fx: &FixedPoint,
        compare: CompareMode,
    ) -> Result<Arc<dyn SharedLayer>> {
        let want = if self.weight_shape().is_some() { 3 } else { 0 };
        if ids.len() != want || inputs.is_empty() {
            return Err(EngineError::Invalid(format!(
                "{self:?}: {} store ids and {} inputs, expected {want} and at least one",
                ids.len(),
                inputs.len()
            )));
        }
        let input = inputs[0].clone();
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
                Layer::ReLU => Arc::new(SharedReLU::new(input).comparing(compare)),
                Layer::Clip { min, max } => Arc::new(SharedClip::new(input, *min, *max, fx)?),
                Layer::LeakyReLU { slope } => Arc::new(SharedLeakyReLU::new(input, *slope, fx)?),
                Layer::HardSwish => Arc::new(SharedHardSwish::new(input, fx)?),
                Layer::Dropout => Arc::new(SharedIdentity::new("Dropout")),
                Layer::Flatten => Arc::new(SharedFlatten::new(input)),
                Layer::MaxPool2d { window } => {
                    Arc::new(SharedMaxPool2d::new(input, *window)?.comparing(compare))
                }
                Layer::AvgPool2d {
                    window,
                    count_include_pad,
                } => Arc::new(SharedAvgPool2d::avg(input, *window, *count_include_pad)?),
                Layer::AdaptiveAvgPool2d { output } => {
                    Arc::new(SharedAvgPool2d::adaptive(input, *output)?)
                }
                Layer::Add => Arc::new(SharedAdd::new(inputs.len())),
                Layer::Concat => Arc::new(SharedConcat::new(inputs)?),
                Layer::Linear { .. } | Layer::Conv2d { .. } | Layer::Affine { .. } => {
                    return Err(EngineError::Invalid(format!(
                        "{} has secret parameters: it cannot be a public layer",
                        l.name()
                    )))
                }
            },
        })
    }
}

/// A model's public plan (see the module documentation): layer kinds, shapes, how the layers
/// are connected, the encoding and the ring limits checked at run time. It holds no value
/// derived from the weights: no parameter, no range report, no calibrated bound in real units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelPlan {
    /// The layers.
    pub layers: Vec<LayerPlan>,
    /// Per-sample shape of every value: the input, then each layer's output (in a chain,
    /// entry `i` is what layer `i` receives).
    pub shapes: Vec<Vec<usize>>,
    /// Which values each layer reads.
    pub wiring: Wiring,
    /// Fractional bits the model is encoded with.
    pub frac_bits: u32,
    /// Input bound declared by the owner (public: every client checks its inputs against it).
    pub input_bound: f64,
    /// Ring limit of each layer's output checked at run time (the owner's calibrated bounds
    /// times `2^f`, on the hidden Linear layers), or empty for worst-case bounds only.
    pub limits: Vec<Option<u64>>,
    /// How the comparisons run (a ring limit: full-width, or checked below `2^31` ring units
    /// with the batch failing on a value outside; see [`crate::protocols::range_check`]).
    #[serde(default)]
    pub compare: CompareMode,
    /// The ReLU layers that run after the max pool that alone reads them: the ReLU is the
    /// identity where it stands and the pool computes `relu(maxpool(x))` (exact, and proven by
    /// the range analysis in that order: [`crate::nn::rewrite`]). Found from the layer kinds
    /// and the wiring (empty where the checked analysis needed the original order, and in
    /// plans made before the rewrite existed).
    #[serde(default)]
    pub relu_after_pool: Vec<usize>,
    /// The owner's range analysis (headroom, error bound), for display on the owner's side:
    /// never serialized, so it never reaches the parties.
    #[serde(skip)]
    pub range: Option<RangeReport>,
}

impl ModelPlan {
    /// The owner's side, before anything is shared: check that `model` encodes, prove with the
    /// range analysis that no value can overflow for inputs within `bounds` (or refuse), and
    /// describe every layer.
    pub fn of(model: &dyn ModelSource, fx: &FixedPoint, bounds: &ModelBounds) -> Result<Self> {
        model.check_encodable(fx)?;
        let range = crate::nn::range::analyse(model, fx, bounds)?;
        let shapes = model.shapes()?;
        let wiring = model.wiring();
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
                // Only kinds and shapes are copied (never a weight).
                LayerShape::Other => {
                    LayerPlan::of(&*model.layer(li)?, &shapes[wiring.inputs(li)[0]])?
                }
            });
        }
        let plan = ModelPlan {
            layers,
            shapes,
            wiring,
            frac_bits: fx.frac_bits(),
            input_bound: bounds.input_bound,
            limits: layer_limits(model, bounds, fx),
            compare: range.compare,
            relu_after_pool: range.relu_after_pool.clone(),
            range: Some(range),
        };
        plan.check()?;
        Ok(plan)
    }

    /// Check the plan's internal consistency (a plan received from a peer is checked before
    /// anything is built from it): one shape per value, non-empty sizes that do not overflow,
    /// a wiring in topological order, every layer fitting the shapes it reads and writes, no
    /// public layer with parameters, usable ring limits, a classifier output, ReLUs moved after
    /// pools only where the pool alone reads them.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(shape_err("model plan", m));
        if self.layers.is_empty() || self.shapes.len() != self.layers.len() + 1 {
            return bad(format!(
                "{} layers and {} shapes",
                self.layers.len(),
                self.shapes.len()
            ));
        }
        self.wiring.check(self.layers.len())?;
        for s in &self.shapes {
            let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if s.is_empty() || !matches!(n, Some(1..=0x1_0000_0000)) {
                return bad(format!("shape {s:?} is empty or too large"));
            }
        }
        for (li, l) in self.layers.iter().enumerate() {
            let inputs: Vec<&[usize]> = self.input_shapes(li).collect();
            let output = &self.shapes[li + 1];
            let fits = l.output_shape(&inputs).is_ok_and(|o| &o == output);
            let params_fit = l
                .weight_shape()
                .is_none_or(|(k, n)| k.checked_mul(n).is_some_and(|w| w <= 1 << 32));
            if !fits || !params_fit {
                return bad(format!(
                    "layer {li} {l:?} does not fit its shapes {inputs:?} -> {output:?}"
                ));
            }
        }
        if self.out_features() == 0 || self.frac_bits == 0 || self.frac_bits > 40 {
            return bad("no classes or unusable fractional bits".into());
        }
        if !(self.input_bound.is_finite() && self.input_bound > 0.0) {
            return bad(format!("input bound {}", self.input_bound));
        }
        let pairs = self.relu_pool_pairs();
        let moved_ok = self.relu_after_pool.windows(2).all(|w| w[0] < w[1])
            && self
                .relu_after_pool
                .iter()
                .all(|r| pairs.iter().any(|(q, _)| q == r));
        if !moved_ok {
            return bad(format!(
                "ReLU layers {:?} moved after max pools, but only {:?} are ReLUs read by a max pool alone",
                self.relu_after_pool,
                pairs.iter().map(|&(r, _)| r).collect::<Vec<_>>()
            ));
        }
        // Below 2^61, so `C ± y` stays below 2^63 for every |y| < 2^62.
        let limits_ok = (self.limits.is_empty() || self.limits.len() == self.layers.len())
            && self.limits.iter().flatten().all(|&c| c > 0 && c < 1 << 61);
        if !limits_ok {
            return bad(format!(
                "{} ring limits for {} layers, or a limit outside 1..2^61",
                self.limits.len(),
                self.layers.len()
            ));
        }
        Ok(())
    }

    /// Every `(relu, pool)` pair of the plan's layers where a ReLU's output is read by a max
    /// pool alone ([`crate::nn::rewrite::relu_pool_pairs_by`]).
    fn relu_pool_pairs(&self) -> Vec<(usize, usize)> {
        relu_pool_pairs_by(
            self.layers.len(),
            &self.wiring,
            |i| self.layers[i] == LayerPlan::Public(Layer::ReLU),
            |i| matches!(self.layers[i], LayerPlan::Public(Layer::MaxPool2d { .. })),
        )
    }

    /// The per-sample shapes of the values layer `layer` reads.
    fn input_shapes(&self, layer: usize) -> impl Iterator<Item = &[usize]> + '_ {
        self.wiring
            .inputs(layer)
            .iter()
            .map(|&v| self.shapes[v].as_slice())
    }

    /// The declared bounds, as the parties know them (the input bound; calibrated bounds stay
    /// with the owner, the parties hold their ring limits).
    pub fn bounds(&self) -> ModelBounds {
        ModelBounds::worst_case(self.input_bound)
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
    /// parties. An affine map is sent as its diagonal weight and its shift.
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
        if let Some(LayerShape::Linear { .. }) = model.layer_shapes().get(layer) {
            // Streamed from the source tensor by tensor.
            send(&[k, n], &mut |out| model.encode_weight(layer, fx, out))?;
            return send(&[n], &mut |out| model.encode_bias(layer, fx, out));
        }
        let l = model.layer(layer)?;
        let label = format!("layer {layer} weight");
        let (weight, bias): (&(dyn Fn(usize) -> f64 + Sync), &[f64]) = match &*l {
            Layer::Conv2d { weight, bias, .. } | Layer::Linear { weight, bias, .. }
                if weight.len() == k * n && bias.len() == n =>
            {
                (&|x| weight[x], bias)
            }
            // Row `o` of the `[out, in]` weight holds `scale[o]` on the diagonal.
            Layer::Affine { scale, shift } if scale.len() == n && k == n => {
                (&|x| if x / n == x % n { scale[x / n] } else { 0.0 }, shift)
            }
            _ => {
                return Err(EngineError::Invalid(format!(
                    "layer {layer} is not the layer with parameters the plan describes"
                )))
            }
        };
        // PyTorch stores [out, in] or [out, in·kh·kw]; products need [depth, out].
        send(&[k, n], &mut |out| {
            encode_transposed(n, k, weight, fx, &label, out)
        })?;
        send(&[n], &mut |out| {
            encode_values(bias, fx, &format!("layer {layer} bias"), out)
        })
    }

    /// The shared layer `layer` over shares stored under `ids` (`[weight, fixed operand,
    /// bias]` for layers with parameters, none otherwise): how a party builds it after an
    /// upload and rebuilds it from its records.
    pub fn assemble_layer(
        &self,
        layer: usize,
        ids: &[u64],
        fx: &FixedPoint,
    ) -> Result<Arc<dyn SharedLayer>> {
        let inputs: Vec<Vec<usize>> = self.input_shapes(layer).map(<[usize]>::to_vec).collect();
        if self.relu_after_pool.contains(&layer) {
            return Ok(Arc::new(SharedIdentity::new(DEFERRED_RELU)));
        }
        // The max pool reading a moved ReLU computes `relu(maxpool(x))` (x: the ReLU's input,
        // which the moved ReLU passes on unchanged).
        let reads_moved = self
            .wiring
            .inputs(layer)
            .iter()
            .any(|&v| v > 0 && self.relu_after_pool.contains(&(v - 1)));
        match (&self.layers[layer], reads_moved, inputs.as_slice()) {
            (LayerPlan::Public(Layer::MaxPool2d { window }), true, [input]) => Ok(Arc::new(
                SharedMaxPool2d::new(input.clone(), *window)?
                    .comparing(self.compare)
                    .then_relu(),
            )),
            (l, true, _) => Err(EngineError::Invalid(format!(
                "layer {layer} {l:?} reads a ReLU moved after a max pool but is not that pool"
            ))),
            (l, false, _) => l.assemble(&inputs, ids, fx, self.compare),
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
        let l = self.assemble_layer(layer, &ids, &fx)?;
        Ok((l, ids))
    }

    /// The shared model from its layers (built or reloaded), encoded in `fx` (the plan's
    /// fractional bits).
    pub fn model(&self, layers: Vec<Arc<dyn SharedLayer>>, fx: &FixedPoint) -> SharedModel {
        debug_assert_eq!(fx.frac_bits(), self.frac_bits);
        SharedModel::from_parts(
            layers,
            self.wiring.clone(),
            self.shapes[1..]
                .iter()
                .map(|s| s.iter().product())
                .collect(),
            self.input_shape().to_vec(),
            self.out_features(),
            self.limits.clone(),
            self.bounds(),
            self.range.clone(),
        )
        .comparing(self.compare)
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

    #[test]
    fn a_relu_read_by_its_max_pool_alone_runs_after_it_and_a_peer_cannot_claim_others() {
        let model = Sequential::with_input(
            vec![
                Layer::ReLU,
                Layer::MaxPool2d {
                    window: Window2d::square(2, 2, 0),
                },
                Layer::ReLU,
                Layer::Flatten,
                Layer::linear(4, 2, vec![0.5; 8], vec![0.0; 2]).unwrap(),
            ],
            vec![1, 4, 4],
        )
        .unwrap();
        let fx = FixedPoint::default();
        let plan = ModelPlan::of(&model, &fx, &ModelBounds::default()).unwrap();
        assert_eq!(plan.relu_after_pool, vec![0]);
        assert_eq!(
            plan.assemble_layer(0, &[], &fx).unwrap().name(),
            DEFERRED_RELU
        );
        let pool = plan.assemble_layer(1, &[], &fx).unwrap();
        assert!(pool.name().starts_with("ReLU∘MaxPool2d"), "{}", pool.name());
        // The pool's material: its comparison tree, then one ReLU per pooled value.
        let c = plan.compare;
        let mut want = c.max_specs(2 * 4, 4, 16);
        want.extend(c.relu_specs(2 * 4, 16));
        assert_eq!(pool.material(2, 16), want);
        assert_eq!(plan.assemble_layer(2, &[], &fx).unwrap().name(), "ReLU");
        for moved in [vec![2], vec![0, 0], vec![7]] {
            let mut bad = plan.clone();
            bad.relu_after_pool = moved;
            let e = bad.check().unwrap_err().to_string();
            assert!(e.contains("moved after max pools"), "{e}");
        }
        // A plan from before the rewrite (no list) keeps the ReLU in place.
        let mut json: serde_json::Value = serde_json::to_value(&plan).unwrap();
        json.as_object_mut().unwrap().remove("relu_after_pool");
        let old: ModelPlan = serde_json::from_value(json).unwrap();
        old.check().unwrap();
        assert_eq!(old.assemble_layer(0, &[], &fx).unwrap().name(), "ReLU");
    }

    #[test]
    fn affine_maps_are_planned_as_shared_weights_and_never_public() {
        let affine = Layer::Affine {
            scale: vec![0.25, -3.0],
            shift: vec![0.5, 0.125],
        };
        let model = Sequential::new(vec![
            Layer::linear(2, 2, vec![1.0, 2.0, 3.0, 4.0], vec![0.0; 2]).unwrap(),
            Layer::ReLU,
            affine.clone(),
            Layer::ReLU,
            Layer::linear(2, 1, vec![1.0, 1.0], vec![0.0]).unwrap(),
        ])
        .unwrap();
        let plan = ModelPlan::of(&model, &FixedPoint::default(), &ModelBounds::default()).unwrap();
        assert_eq!(
            plan.layers[2],
            LayerPlan::Linear {
                in_features: 2,
                out_features: 2
            }
        );
        assert_eq!(plan.layer_parameters(2), 6);
        // A peer's plan that carries parameters in a public layer is refused.
        let mut bad = plan;
        bad.layers[2] = LayerPlan::Public(affine);
        let e = bad.check().unwrap_err().to_string();
        assert!(e.contains("layer 2") && e.contains("does not fit"), "{e}");
    }
}
