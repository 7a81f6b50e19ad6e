//! A model shared between alice and bob: handles on the session side, secure forward on each
//! party.

use crate::dealer::MaterialSpec;
use crate::error::Result;
use crate::nn::source::{LayerShape, ModelSource};
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
}

impl Session {
    /// The model owner fixed-point encodes `model` and shares it across alice and bob; each
    /// weight is registered as a fixed operand (its mask opened once).
    pub fn share_model(&mut self, owner: PartyId, model: &dyn ModelSource) -> Result<SharedModel> {
        self.share_model_observed(owner, model, &mut |_, _| {})
    }

    /// [`Session::share_model`], calling `on_progress(parameters_done, parameters_total)` after
    /// each layer. The owner streams one tensor at a time from `model` into the share messages;
    /// each party builds its weight share straight into the product layout.
    pub fn share_model_observed(
        &mut self,
        owner: PartyId,
        model: &dyn ModelSource,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<SharedModel> {
        let fx = self.config().fixed;
        model.check_encodable(&fx)?;
        let shapes = model.layer_shapes();
        let (total, mut done) = (model.parameter_count(), 0);
        let mut layers = Vec::with_capacity(shapes.len());
        let (mut first_in, mut last_out) = (None, None);
        for (li, l) in shapes.iter().enumerate() {
            layers.push(match *l {
                LayerShape::Linear {
                    in_features: i,
                    out_features: o,
                } => {
                    self.send_shares_filled(owner, &[i, o], &mut |out| {
                        model.encode_weight(li, &fx, out)
                    })?;
                    self.send_shares_filled(owner, &[o], &mut |out| {
                        model.encode_bias(li, &fx, out)
                    })?;
                    let [(weight, bias, fixed), _] = self.run(move |p| {
                        let w = p.receive_operand_share(owner, &[i, o])?;
                        let b = p.receive_share(owner, &[o])?;
                        let (wid, bid) = (p.keep(w.clone()), p.keep(b));
                        Ok((wid, bid, p.fix_operand(&w)?.id()))
                    })?;
                    first_in.get_or_insert(i);
                    last_out = Some(o);
                    done += i * o + o;
                    on_progress(done, total);
                    SharedLayer::Linear {
                        weight,
                        fixed,
                        bias,
                        in_features: i,
                        out_features: o,
                    }
                }
                LayerShape::ReLU => SharedLayer::ReLU,
                LayerShape::Dropout => SharedLayer::Dropout,
                LayerShape::Flatten => SharedLayer::Flatten,
            });
        }
        let (Some(in_features), Some(out_features)) = (first_in, last_out) else {
            return Err(crate::EngineError::Invalid(
                "model has no Linear layer".into(),
            ));
        };
        Ok(SharedModel {
            layers,
            in_features,
            out_features,
        })
    }

    /// Delete a shared model: both parties drop its shares and fixed operands, every material
    /// pool made for it is closed (its workers stopped, its material freed), and the dealer
    /// forgets its fixed masks.
    pub fn delete_model(&mut self, model: SharedModel) -> Result<()> {
        let (mut ids, mut fixed) = (Vec::new(), Vec::new());
        for l in &model.layers {
            if let SharedLayer::Linear {
                weight,
                fixed: f,
                bias,
                ..
            } = l
            {
                ids.extend([*weight, *bias, *f]);
                fixed.push(*f);
            }
        }
        self.run(move |p| {
            p.close_pools_of(&fixed);
            for &id in &ids {
                p.forget(id);
            }
            if p.index() == 1 {
                p.dealer_forget_fixed(&fixed)?;
            }
            Ok(())
        })?;
        Ok(())
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

    /// The layers.
    pub fn layers(&self) -> &[SharedLayer] {
        &self.layers
    }

    /// Dealer material for one forward pass of `batch` rows, in consumption order.
    pub fn material_specs(&self, batch: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        let mut specs = Vec::new();
        let mut width = self.in_features;
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
        }
        specs
    }

    /// Secure forward pass on this party's share of `x [batch, in]`.
    pub fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        let mut cur = x.clone();
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
        }
        Ok(cur)
    }
}
