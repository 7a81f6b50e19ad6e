//! Shared `Linear`: `x · Wᵀ + b` with the weight as a fixed operand (masked once).

use crate::dealer::MaterialSpec;
use crate::error::Result;
use crate::nn::plain::transposed;
use crate::party::Party;
use crate::protocols::matmul::matmul_fixed_specs;
use crate::session::Session;
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

/// Share a PyTorch-layout weight `[out, in]` as the fixed operand `[in, out]` and the bias
/// `[out]`; returns `(weight id, fixed-operand id, bias id)`.
pub(super) fn share_fixed_weight(
    s: &mut Session,
    owner: PartyId,
    in_features: usize,
    out_features: usize,
    weight: &[f64],
    bias: &[f64],
) -> Result<(u64, u64, u64)> {
    let (i, o) = (in_features, out_features);
    // PyTorch stores [out, in]; products need [in, out].
    let wt = transposed(weight, o, i);
    let w = s.share(owner, &[i, o], &wt)?;
    drop(wt);
    let b = s.share(owner, &[o], bias)?;
    let wid = w.id();
    let [fa, fb] = s.run(move |p| {
        let w = p.kept(wid)?;
        Ok(p.fix_operand(&w)?.id())
    })?;
    Ok((wid, crate::session::agreed_id(fa, fb)?, b.id()))
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
            share_fixed_weight(s, owner, in_features, out_features, weight, bias)?;
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
    fn is_linear(&self) -> bool {
        true
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
