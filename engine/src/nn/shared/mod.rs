//! A model shared between alice and bob: handles on the session side, secure forward on each
//! party.
//!
//! # One definition per layer
//! Each shared layer is a type implementing [`SharedLayer`] in its own module. Its
//! [`SharedLayer::material`] lists the dealer material its [`SharedLayer::forward`] consumes, and
//! both are written against the same protocol calls: a layer that calls `p.relu` declares
//! `relu_specs`, one that calls `p.matmul_fixed` declares `matmul_fixed_specs` — the spec
//! functions live beside the protocols that consume them. [`SharedModel::material_specs`] and
//! [`SharedModel::forward`] only iterate over the layers (in index order, the graph's
//! topological order: see [`crate::nn::graph`]), and `forward` checks every layer's
//! consumption against its declaration whenever the material was preprocessed, so a divergence
//! is an error at once rather than a desynchronised queue later.

mod activation;
mod combine;
mod conv;
pub(crate) mod linear;
mod pool;

use std::fmt;
use std::sync::Arc;

pub use activation::{
    SharedClip, SharedFlatten, SharedHardSwish, SharedIdentity, SharedLeakyReLU, SharedReLU,
};
pub use combine::{SharedAdd, SharedConcat};
pub use conv::SharedConv2d;
pub use linear::SharedLinear;
pub use pool::{SharedAvgPool2d, SharedMaxPool2d};

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, EngineError, Result};
use crate::nn::graph::Wiring;
use crate::nn::range::{ModelBounds, RangeGuard, RangeReport};
use crate::party::Party;
use crate::share::Share;

/// One layer of a shared model: store ids of its shared parameters (no data), its per-sample
/// input shape, and its secure forward pass with the material that pass consumes.
pub trait SharedLayer: fmt::Debug + Send + Sync {
    /// PyTorch-style name.
    fn name(&self) -> String;

    /// Dealer material one forward pass over `batch` samples consumes, in consumption order.
    fn material(&self, batch: usize, frac_bits: u32) -> Vec<MaterialSpec>;

    /// Secure forward pass on this party's share of `x [batch, ...input shape]`.
    fn forward(&self, p: &mut Party, x: &Share) -> Result<Share>;

    /// Secure forward pass on the values the layer reads (one for most layers, two or more
    /// for `Add` and `Concat`, which override this).
    fn forward_inputs(&self, p: &mut Party, xs: &[&Share]) -> Result<Share> {
        match xs {
            [x] => self.forward(p, x),
            _ => Err(shape_err(
                "forward",
                format!("{} reads one value, not {}", self.name(), xs.len()),
            )),
        }
    }

    /// Store ids this layer holds on each party (shares and fixed operands).
    fn stored_ids(&self) -> Vec<u64> {
        Vec::new()
    }

    /// Fixed-operand ids of this layer (their dealer masks and pools go with the model).
    fn fixed_ids(&self) -> Vec<u64> {
        Vec::new()
    }
}

/// A model after `fix_precision().share(alice, bob, crypto_provider)`.
#[derive(Clone, Debug)]
pub struct SharedModel {
    layers: Vec<Arc<dyn SharedLayer>>,
    wiring: Wiring,
    /// Elements per sample of each layer's output.
    output_lens: Vec<usize>,
    input_shape: Vec<usize>,
    out_features: usize,
    bounds: ModelBounds,
    range: Option<RangeReport>,
    /// Ring limit of each layer's output checked at run time (empty: none).
    limits: Vec<Option<u64>>,
}

impl SharedModel {
    /// A model from its parts (see [`ModelPlan::model`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        layers: Vec<Arc<dyn SharedLayer>>,
        wiring: Wiring,
        output_lens: Vec<usize>,
        input_shape: Vec<usize>,
        out_features: usize,
        limits: Vec<Option<u64>>,
        bounds: ModelBounds,
        range: Option<RangeReport>,
    ) -> SharedModel {
        SharedModel {
            layers,
            wiring,
            output_lens,
            input_shape,
            out_features,
            bounds,
            range,
            limits,
        }
    }

    /// Every store id the model's layers hold on each party, layer by layer.
    pub fn stored_ids(&self) -> Vec<Vec<u64>> {
        self.layers.iter().map(|l| l.stored_ids()).collect()
    }

    /// Input width: elements per sample.
    pub fn in_features(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Shape of one input sample (`[features]`, or `[channels, height, width]`).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Output width (classes).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// This model as its owner's process holds it: with the owner's own bounds (calibrated
    /// ones included), which the parties never receive.
    pub(crate) fn with_owner_bounds(mut self, bounds: ModelBounds) -> SharedModel {
        self.bounds = bounds;
        self
    }

    /// The layers.
    pub fn layers(&self) -> &[Arc<dyn SharedLayer>] {
        &self.layers
    }

    /// The bounds declared by the model owner, as this process knows them: the input bound
    /// (the client checks its inputs against it), and the calibrated bounds only where this
    /// process is the model owner (the parties hold their ring limits alone).
    pub fn bounds(&self) -> &ModelBounds {
        &self.bounds
    }

    /// Which values each layer reads.
    pub fn wiring(&self) -> &Wiring {
        &self.wiring
    }

    /// The owner's range analysis done before sharing (headroom, error bound), where this
    /// process is the model owner (in-process sessions); the parties never receive it.
    pub fn range(&self) -> Option<&RangeReport> {
        self.range.as_ref()
    }

    /// Dealer material for one forward pass of `batch` rows, in consumption order (each layer's
    /// own material, then the range guard's check of its output where bounds are calibrated).
    pub fn material_specs(&self, batch: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        let guard = RangeGuard::new(&self.limits);
        let mut specs = Vec::new();
        for (i, (l, n)) in self.layers.iter().zip(&self.output_lens).enumerate() {
            specs.extend(l.material(batch, frac_bits));
            specs.extend(guard.specs_after(i, batch * n));
        }
        specs.extend(guard.final_specs());
        specs
    }

    /// Secure forward pass on this party's share of `x [batch, in]` (or `[batch, ...input
    /// shape]`); returns `[batch, out]`.
    pub fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        let per = self.in_features();
        let batch = match x.shape().first() {
            Some(&b) if x.len() == b * per => b,
            _ => {
                return Err(shape_err(
                    "forward",
                    format!(
                        "input {:?} is not a batch of samples of shape {:?}",
                        x.shape(),
                        self.input_shape
                    ),
                ))
            }
        };
        let mut shape = vec![batch];
        shape.extend(&self.input_shape);
        let input = x.reshape(&shape)?;
        let f = p.fixed_point().frac_bits();
        let mut guard = RangeGuard::new(&self.limits);
        let out = self.wiring.evaluate(input, |i, xs| -> Result<Share> {
            let l = &self.layers[i];
            let declared = l.material(batch, f).len();
            let before = p.queued_material();
            let y = l.forward_inputs(p, xs)?;
            let used = before.saturating_sub(p.queued_material());
            if before >= declared && used != declared {
                return Err(EngineError::Protocol(format!(
                    "layer {i} {} consumed {used} preprocessed material items but declares {declared}",
                    l.name()
                )));
            }
            guard.observe(p, i, &y)?;
            Ok(y)
        })?;
        guard.finish(p)?;
        Ok(out)
    }
}
