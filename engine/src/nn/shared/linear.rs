//! Shared `Linear`: `x · Wᵀ + b` with the weight as a fixed operand (masked once).

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::nn::source::{encode_transposed, encode_values, ModelSource};
use crate::party::Party;
use crate::protocols::matmul::matmul_fixed_specs;
use crate::session::{agreed_id, Session};
use crate::share::Share;
use crate::transport::PartyId;

use super::SharedLayer;

/// A Linear layer whose weight `[in, out]` is a fixed operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedLinear {
    /// Store id of the weight share `[in, out]`.
    pub weight: u64,
    /// Fixed-operand id of the weight.
    pub fixed: u64,
    /// Store id of the bias share `[out]`.
    pub bias: u64,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
}

/// Share a weight as the fixed operand `[in, out]` and the bias `[out]`; returns
/// `(weight id, fixed-operand id, bias id)`.
///
/// The owner streams each tensor straight into the share messages: `encode_weight` writes the
/// encoded weight in the product layout `[in, out]`, `encode_bias` the encoded bias. Each party
/// builds its weight share straight into the packed product layout, and the mask is opened
/// streamed, block of rows by block of rows ([`Party::fix_operand`]).
pub(super) fn share_fixed_weight(
    s: &mut Session,
    owner: PartyId,
    in_features: usize,
    out_features: usize,
    encode_weight: &mut dyn FnMut(&mut [u64]) -> Result<()>,
    encode_bias: &mut dyn FnMut(&mut [u64]) -> Result<()>,
) -> Result<(u64, u64, u64)> {
    let (i, o) = (in_features, out_features);
    s.send_shares_filled(owner, &[i, o], encode_weight)?;
    s.send_shares_filled(owner, &[o], encode_bias)?;
    let [a, b] = s.run(move |p| receive_fixed_weight(p, owner, i, o))?;
    Ok((
        agreed_id(a.0, b.0)?,
        agreed_id(a.1, b.1)?,
        agreed_id(a.2, b.2)?,
    ))
}

/// A party's side of sharing a weight: receive its share of the weight `[in, out]` (straight
/// into the product layout) and of the bias `[out]` from `owner`, keep both and register the
/// weight as a fixed operand (its mask opened once). Returns `(weight id, fixed-operand id,
/// bias id)`.
pub(crate) fn receive_fixed_weight(
    p: &mut Party,
    owner: PartyId,
    in_features: usize,
    out_features: usize,
) -> Result<(u64, u64, u64)> {
    let (i, o) = (in_features, out_features);
    let w = p.receive_operand_share(owner, &[i, o])?;
    let b = p.receive_share(owner, &[o])?;
    let (wid, bid) = (p.keep(w.clone()), p.keep(b));
    Ok((wid, p.fix_operand(&w)?.id(), bid))
}

/// [`share_fixed_weight`] of an in-memory PyTorch-layout weight `[out, in]` and bias `[out]`
/// (encoded and transposed tile by tile into the share messages).
pub(super) fn share_plain_weight(
    s: &mut Session,
    owner: PartyId,
    in_features: usize,
    out_features: usize,
    weight: &[f64],
    bias: &[f64],
) -> Result<(u64, u64, u64)> {
    let fx = s.config().fixed;
    let (i, o) = (in_features, out_features);
    if weight.len() != i * o || bias.len() != o {
        return Err(shape_err(
            "share_weight",
            format!(
                "{} weights and {} biases for {i} inputs and {o} outputs",
                weight.len(),
                bias.len()
            ),
        ));
    }
    share_fixed_weight(
        s,
        owner,
        i,
        o,
        // PyTorch stores [out, in]; products need [in, out].
        &mut |out| encode_transposed(o, i, &|x| weight[x], &fx, "weight", out),
        &mut |out| encode_values(bias, &fx, "bias", out),
    )
}

impl SharedLinear {
    /// Share a PyTorch-layout Linear layer.
    pub fn share(
        s: &mut Session,
        owner: PartyId,
        in_features: usize,
        out_features: usize,
        weight: &[f64],
        bias: &[f64],
    ) -> Result<SharedLinear> {
        let (weight, fixed, bias) =
            share_plain_weight(s, owner, in_features, out_features, weight, bias)?;
        Ok(SharedLinear {
            weight,
            fixed,
            bias,
            in_features,
            out_features,
        })
    }

    /// Share Linear layer `layer` of `model`, streamed tensor by tensor from the source.
    pub fn share_from(
        s: &mut Session,
        owner: PartyId,
        model: &dyn ModelSource,
        layer: usize,
        in_features: usize,
        out_features: usize,
    ) -> Result<SharedLinear> {
        let fx = s.config().fixed;
        let (weight, fixed, bias) = share_fixed_weight(
            s,
            owner,
            in_features,
            out_features,
            &mut |out| model.encode_weight(layer, &fx, out),
            &mut |out| model.encode_bias(layer, &fx, out),
        )?;
        Ok(SharedLinear {
            weight,
            fixed,
            bias,
            in_features,
            out_features,
        })
    }
}

impl SharedLayer for SharedLinear {
    fn stored_ids(&self) -> Vec<u64> {
        vec![self.weight, self.fixed, self.bias]
    }

    fn fixed_ids(&self) -> Vec<u64> {
        vec![self.fixed]
    }

    fn name(&self) -> String {
        format!("Linear({}, {})", self.in_features, self.out_features)
    }

    fn material(&self, batch: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        matmul_fixed_specs(
            self.fixed,
            batch,
            self.in_features,
            self.out_features,
            frac_bits,
        )
    }

    fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        let w = p.fixed_operand(self.fixed, &p.kept(self.weight)?)?;
        let z = p.matmul_fixed(x, &w)?;
        p.add_row_broadcast(&z, &p.kept(self.bias)?)
    }
}
