//! Range checks inside the secure computation, finished once per batch: no value may leave
//! the range the protocols are exact on without the batch failing.
//!
//! # What is checked
//! A model whose worst-case interval bounds exceed the ring (the owner's range analysis,
//! [`crate::nn::range`]) runs its comparisons in [`super::compare::CompareMode::Checked`]: every value a
//! comparison sees (each ReLU, Clip and LeakyReLU input, each max pool and argmax difference)
//! is checked in the same rounds as its sign (the narrow comparison's fused check, see
//! [`crate::protocols::compare`]). A value within `±2^(h-1)` ring units (`h` =
//! [`CHECK_LOW_BIT`]: `±2^13` in real units at 16 fractional bits) always passes; a value
//! that passes is below `1.5·2^h`, so its sign is exact and the next layers start from that
//! bound: the range analysis re-anchors there and proves every accumulator up to the next
//! checked value. By induction over the layers the first value that leaves its range was
//! computed correctly (everything before it was in range) and is therefore caught. Models
//! with calibrated bounds (`--calibrate`) add their checks of hidden outputs to the same
//! record ([`crate::nn::range::RangeGuard`]).
//!
//! # What is revealed
//! Each check site (one comparison call: a layer, or an argmax) keeps a *shared* count of
//! the values that failed it. At the end of the batch, before anything of the batch is
//! revealed, the parties compute `[count > 0]` for every site in one narrow comparison
//! (counts are below `2^31`, so it is exact) and open those bits — one bit per site, and
//! nothing else: the counts, which values failed and by how much stay shared, and every
//! intermediate value of the checks is uniformly masked (see the comparison's security
//! argument). If a bit is set the batch fails with [`crate::error::ErrorKind::OverflowDetected`]
//! naming the first failing layer (the parties' logs and the model owner see it; the client
//! learns that its request failed), and nothing of the batch is revealed. What the bits tell
//! the parties: whether the client's input drove that layer out of the range, i.e. one bit of
//! information about the input per site, and only for inputs that fail.
//!
//! **Cost:** 4 rounds per batch (open the masked counts, two merge levels, open the bits),
//! whatever the number of sites; the per-value checks add no round.

use kernels::Tensor;

use crate::dealer::tables::CHECK_LOW_BIT;
use crate::dealer::MaterialSpec;
use crate::error::{EngineError, Result};
use crate::party::Party;

use super::compare::narrow_specs;

/// Material of [`Party::finish_range_checks`] over `sites` recorded counts.
pub fn range_check_specs(sites: usize) -> Vec<MaterialSpec> {
    if sites == 0 {
        Vec::new()
    } else {
        narrow_specs(sites, 0, 0)
    }
}

/// How many range-check sites (counts) the material `specs` records: one per checked
/// narrow comparison.
pub fn checked_sites(specs: &[MaterialSpec]) -> usize {
    specs
        .iter()
        .filter(|s| matches!(s, MaterialSpec::NarrowCompare { check_top, .. } if *check_top > 0))
        .count()
}

impl Party {
    /// Open one bit per range-check site recorded since the last call, `[count > 0]` (see
    /// the module documentation); an [`EngineError::Range`] naming the first failing site if
    /// any is set. Nothing is opened (and nothing consumed) when no site was recorded.
    pub fn finish_range_checks(&mut self) -> Result<()> {
        let sites = self.take_range_failures();
        if sites.is_empty() {
            return Ok(());
        }
        let prev = self.set_step("range check");
        let counts: Vec<&crate::share::Share> = sites.iter().map(|(_, c)| c).collect();
        let all = self.concat(&counts)?;
        let minus = self.neg(&all)?;
        // [-count < 0] = [count > 0]; counts are below 2^31 (checked comparisons take fewer
        // values), so the narrow comparison is exact without a check of its own.
        let bits = self.narrow_bits(&minus, 0, 0)?;
        let be = self.backend_arc();
        let theirs = self.exchange("range check", be.download(&bits.sign)?)?;
        let flags: Tensor = be.binary_host(kernels::BinaryOp::Xor, &bits.sign, &theirs)?;
        let flags = be.download(&flags)?;
        self.set_step(prev);
        let failed = |i: usize| (flags[i / 64] >> (i % 64)) & 1 == 1;
        if let Some(i) = (0..sites.len()).find(|&i| failed(i)) {
            let others = (i + 1..sites.len()).filter(|&j| failed(j)).count();
            // The site is for the parties' logs (and the model owner's, in-process); the
            // error that travels to the client names no layer.
            tracing::warn!(
                site = %sites[i].0,
                later_sites = others,
                "overflow detected in the secure computation: a value left the range its \
                 comparisons are exact on; the batch was stopped"
            );
            return Err(EngineError::Range(
                "overflow detected in the secure computation: a value of this request left the \
                 range the model is checked on, so the request failed and nothing of it was \
                 revealed (the model owner can declare --calibrate data or fewer --frac-bits)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Ring units below which every checked value passes: `2^(CHECK_LOW_BIT - 1)`.
pub const CHECK_PASS_BOUND: u64 = 1 << (CHECK_LOW_BIT - 1);

/// Ring units below which every value that passed a check lies: `1.5·2^CHECK_LOW_BIT` (the
/// bound the range analysis re-anchors at).
pub const CHECK_GUARANTEE: u64 = 3 << (CHECK_LOW_BIT - 1);
