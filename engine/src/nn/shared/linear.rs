//! Shared `Linear`: `x · Wᵀ + b` with the weight as a fixed operand (masked once).

use crate::dealer::MaterialSpec;
use crate::error::Result;
use crate::party::Party;
use crate::protocols::matmul::matmul_fixed_specs;
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
