//! A model shared between alice and bob: handles on the session side, secure forward on each
//! party.

use crate::dealer::MaterialSpec;
use crate::error::Result;
use crate::nn::plain::{transposed, Layer, Sequential};
use crate::nn::range::{analyse, ring_limits, ModelBounds, RangeGuard, RangeReport};
use crate::party::Party;
use crate::protocols::compare::compare_specs;
use crate::session::Session;
use crate::share::Share;
use crate::transport::PartyId;

/// One shared layer: store ids on both parties (no data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedLayer {
    /// A Linear layer whose weight `[in, out]` is a fixed operand (masked once).
    Linear {
        /// Store id of the weight share `[in, out]`.
        weight: u64,
        /// Fixed-operand id of the weight.
        fixed: u64,
        /// Store id of the bias share `[out]`.
        bias: u64,
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
    },
    /// ReLU (secure comparison).
    ReLU,
    /// Identity at inference.
    Dropout,
    /// Identity on 2-D inputs.
    Flatten,
}

/// A model after `fix_precision().share(alice, bob, crypto_provider)`.
#[derive(Clone, Debug)]
pub struct SharedModel {
    layers: Vec<SharedLayer>,
    in_features: usize,
    out_features: usize,
    bounds: ModelBounds,
    range: RangeReport,
    limits: Vec<u64>,
}

impl Session {
    /// [`Self::share_model_with`] with the default bounds (inputs within
    /// [`crate::nn::range::DEFAULT_INPUT_BOUND`], worst-case analysis).
    pub fn share_model(&mut self, owner: PartyId, model: &Sequential) -> Result<SharedModel> {
        self.share_model_with(owner, model, &ModelBounds::default())
    }

    /// The model owner fixed-point encodes `model` and shares it across alice and bob; each
    /// weight is registered as a fixed operand (its mask opened once). Before anything is
    /// shared, the range analysis proves that no value can overflow for inputs within `bounds`
    /// (or refuses); the bounds are stored with the shared model.
    pub fn share_model_with(
        &mut self,
        owner: PartyId,
        model: &Sequential,
        bounds: &ModelBounds,
    ) -> Result<SharedModel> {
        let fx = self.config().fixed;
        model.check_encodable(&fx)?;
        let range = analyse(model, &fx, bounds)?;
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            layers.push(match l {
                Layer::Linear {
                    in_features,
                    out_features,
                    weight,
                    bias,
                } => {
                    let (i, o) = (*in_features, *out_features);
                    // PyTorch stores [out, in]; products need [in, out].
                    let wt = transposed(weight, o, i);
                    let w = self.share(owner, &[i, o], &wt)?;
                    drop(wt);
                    let b = self.share(owner, &[o], bias)?;
                    let wid = w.id();
                    let [fa, fb] = self.run(move |p| {
                        let w = p.kept(wid)?;
                        Ok(p.fix_operand(&w)?.id())
                    })?;
                    let fixed = crate::session::agreed_id(fa, fb)?;
                    SharedLayer::Linear {
                        weight: wid,
                        fixed,
                        bias: b.id(),
                        in_features: i,
                        out_features: o,
                    }
                }
                Layer::ReLU => SharedLayer::ReLU,
                Layer::Dropout => SharedLayer::Dropout,
                Layer::Flatten => SharedLayer::Flatten,
            });
        }
        Ok(SharedModel {
            layers,
            in_features: model.in_features(),
            out_features: model.out_features(),
            bounds: bounds.clone(),
            range,
            limits: ring_limits(bounds, &fx),
        })
    }
}

impl SharedModel {
    /// Input width.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output width (classes).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// The bounds declared by the model owner (the client checks its inputs against them).
    pub fn bounds(&self) -> &ModelBounds {
        &self.bounds
    }

    /// The range analysis done before sharing (headroom, error bound).
    pub fn range(&self) -> &RangeReport {
        &self.range
    }

    /// The layers.
    pub fn layers(&self) -> &[SharedLayer] {
        &self.layers
    }

    /// Dealer material for one forward pass of `batch` rows, in consumption order.
    pub fn material_specs(&self, batch: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        let mut specs = Vec::new();
        let mut width = self.in_features;
        let mut guard = RangeGuard::new(&self.limits);
        for l in &self.layers {
            match l {
                SharedLayer::Linear {
                    fixed,
                    in_features,
                    out_features,
                    ..
                } => {
                    specs.push(MaterialSpec::FixedTriple {
                        fixed_id: *fixed,
                        m: batch,
                        k: *in_features,
                        n: *out_features,
                    });
                    specs.push(MaterialSpec::Trunc {
                        n: batch * out_features,
                        bits: frac_bits,
                    });
                    width = *out_features;
                }
                SharedLayer::ReLU => specs.extend(compare_specs(batch * width, 1)),
                SharedLayer::Dropout | SharedLayer::Flatten => {}
            }
            specs.extend(guard.specs_after(l, batch * width));
        }
        specs.extend(guard.final_specs());
        specs
    }

    /// Secure forward pass on this party's share of `x [batch, in]`.
    pub fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        let mut cur = x.clone();
        let mut guard = RangeGuard::new(&self.limits);
        for l in &self.layers {
            cur = match l {
                SharedLayer::Linear {
                    weight,
                    fixed,
                    bias,
                    ..
                } => {
                    let w = p.fixed_operand(*fixed, &p.kept(*weight)?)?;
                    let z = p.matmul_fixed(&cur, &w)?;
                    p.add_row_broadcast(&z, &p.kept(*bias)?)?
                }
                SharedLayer::ReLU => p.relu(&cur)?,
                SharedLayer::Dropout | SharedLayer::Flatten => cur,
            };
            guard.observe(p, l, &cur)?;
        }
        guard.finish(p)?;
        Ok(cur)
    }
}
