//! Equality of small integers in one round, by lookup in a dealer-made one-hot table.
//!
//! # Protocol
//! `x` and `y` are shared integers at the session's fixed-point scale (`x = i · 2^f`), such as
//! class indices from [`Party::argmax_last`] and labels, whose difference is known to lie in
//! `(-range, range)` (times `2^f`). Then:
//!
//! 1. `d = x - y` (local). `d` is a multiple of `2^f`, so the low `f` bits of the two shares add
//!    up to `0` or exactly `2^f`: `e = d / 2^f` has shares `⌈d_0 / 2^f⌉` for alice (the carry
//!    of the low bits is 1 exactly when her low bits are not 0) and `⌊d_1 / 2^f⌋` for bob,
//!    computed as `(d_0 + 2^f - 1) >> f` and `d_1 >> f` (logical shifts). This holds mod
//!    `2^(64-f)`, and so mod `2^bits`.
//! 2. The dealer's [`MaterialSpec::OneHot`] gives each party a random `r_p` (the mask is
//!    `r = r_0 + r_1 mod 2^bits`, uniform) and arithmetic shares of the row `T[j] = [j == r]`,
//!    `j < 2^bits`. Each party sends `z_p = e_p + r_p mod 2^bits`; both learn
//!    `z = e + r mod 2^bits`, uniform and independent of `e` (1 round).
//! 3. `[e == 0] = [z == r] = T[z]`: each party picks its share of entry `z` of its row.
//!
//! **Exactness.** With `2^bits ≥ range`, the only multiple of `2^bits` in `(-range, range)` is
//! 0, so `e ≡ 0 (mod 2^bits)` exactly when `x == y`: the result is exact for every input that
//! meets the precondition. Inputs outside it give a wrong 0/1 (the caller checks
//! its inputs: labels are checked by [`crate::nn::check_labels`], argmax indices lie in range by
//! construction).
//!
//! **Cost** per element and party: 1 round and 8 bytes sent (against 8 rounds and ~95 bytes for
//! [`Party::eq`]); the dealer sends bob `2^bits` words per element (16 for 10 classes, 1024
//! for ImageNet's 1000). Domains above [`MaterialSpec::MAX_ONE_HOT_BITS`] bits (4096 classes),
//! wider than `64 - f`, or tables above [`MAX_EQ_INDEX_TABLE_WORDS`] fall back to
//! [`Party::eq`].

use kernels::{BinaryOp, ScalarOp, Tensor};

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::party::Party;
use crate::share::Share;

/// Most table words one [`Party::eq_index`] takes from the dealer (`n · 2^bits`, 32 MiB per
/// party); larger lookups fall back to [`Party::eq`].
pub const MAX_EQ_INDEX_TABLE_WORDS: usize = 1 << 22;

/// Bits of the lookup domain for `n` differences in `(-range, range)` at `frac_bits`
/// fractional bits, or `None` where the one-round lookup does not apply (the comparison-based
/// [`Party::eq`] is used instead): a domain above [`MaterialSpec::MAX_ONE_HOT_BITS`] bits or
/// `64 - frac_bits` bits, or tables above [`MAX_EQ_INDEX_TABLE_WORDS`]. The one decision both
/// the material list and the protocol follow.
pub fn eq_index_bits(n: usize, range: usize, frac_bits: u32) -> Option<u32> {
    let bits = range.max(2).checked_next_power_of_two()?.trailing_zeros();
    let fits = bits <= MaterialSpec::MAX_ONE_HOT_BITS
        && bits + frac_bits <= 64
        && n.checked_shl(bits)
            .is_some_and(|w| w >> bits == n && w <= MAX_EQ_INDEX_TABLE_WORDS);
    fits.then_some(bits)
}

/// Material specs, in consumption order, of [`Party::eq_index`] on `n` elements.
pub fn eq_index_specs(n: usize, range: usize, frac_bits: u32) -> Vec<MaterialSpec> {
    match eq_index_bits(n, range, frac_bits) {
        Some(bits) => vec![MaterialSpec::OneHot { n, bits }],
        None => super::eq_specs(n),
    }
}

impl Party {
    /// `[x == y]` as an arithmetic 0/1 share (scale 0) for shared integers at the session's
    /// fixed-point scale whose difference lies in `(-range, range)` (e.g. class indices below
    /// `range`): one round (see the module documentation). Inputs outside the precondition give
    /// a wrong bit; a `range` too wide for the lookup runs [`Party::eq`] instead.
    pub fn eq_index(&mut self, x: &Share, y: &Share, range: usize) -> Result<Share> {
        if x.shape() != y.shape() {
            return Err(shape_err(
                "eq_index",
                format!("{:?} vs {:?}", x.shape(), y.shape()),
            ));
        }
        let f = self.fixed_point().frac_bits();
        let n = x.len();
        let Some(bits) = eq_index_bits(n, range, f) else {
            return self.eq(x, y);
        };
        let prev = self.set_step("eq");
        let be = self.backend_arc();
        let parts = self.material(MaterialSpec::OneHot { n, bits })?;
        let mask = (1u64 << bits) - 1;
        // e_p = d_p >> f, alice rounding up (adding the carry of the low bits): mod 2^(64-f),
        // f < 64 since `eq_index_bits` keeps bits + f <= 64 with bits >= 1.
        let flat = |t: &Tensor| t.reshaped(vec![n]).expect("n elements");
        let d = flat(self.sub(x, y)?.tensor());
        let d = if self.index() == 0 {
            be.scalar(ScalarOp::Add, &d, (1u64 << f) - 1)?
        } else {
            d
        };
        let e = be.scalar(ScalarOp::ShrLogical, &d, u64::from(f))?;
        let e = be.binary(BinaryOp::Add, &e, &flat(&parts[0]))?;
        let z = be.scalar(ScalarOp::And, &e, mask)?;
        let mine = be.download(&z)?;
        let theirs = self.exchange("eq", mine.clone())?;
        let index: Vec<u32> = mine
            .iter()
            .zip(&theirs)
            .enumerate()
            .map(|(e, (&a, &b))| {
                let z = a.wrapping_add(b) & mask;
                // Below MAX_EQ_INDEX_TABLE_WORDS (checked by eq_index_bits): fits u32.
                ((e << bits) as u64 + z) as u32
            })
            .collect();
        let picked = be.gather(&parts[1], &index, x.shape())?;
        self.set_step(prev);
        Ok(Share::new(picked))
    }
}
