//! Dealer-assisted fixed-point truncation with randomised rounding, one round.
//!
//! To divide a shared `x` (|x| < 2^62) by `2^f`:
//! 1. shift to a non-negative value `x' = x + 2^62 < 2^63`;
//! 2. open `c = x' + r` for a dealer mask `r` (uniform on Z_2^64, so `c` reveals nothing);
//! 3. whether `x' + r` wrapped past 2^64 is `w = msb(r) · (1 - msb(c))` — exact because
//!    `x' < 2^63` — and is linear in the shares of `msb(r)` given public `c`;
//! 4. `(c >> f) - (r >> f) + w · 2^(64-f) = (x' >> f) + carry`, where `carry ∈ {0,1}` is the
//!    carry out of the low `f` bits of `x' + r`; removing the offset `2^(62-f)` leaves
//!    `floor(x/2^f) + carry`.
//!
//! **What it guarantees.** For every `|x| < 2^62` the result is `floor(x/2^f)` or
//! `floor(x/2^f) + 1`: the error is below one unit in the last place, for negative values too.
//! The rounding is randomised — with a uniform mask, `carry = 1` with probability equal to the
//! dropped fraction `(x mod 2^f) / 2^f`, so it is unbiased — and it is *not* exact: two runs can
//! differ by one unit. There is no probabilistic failure (no wrap-around) inside the bound; the
//! bound itself is not checked here: the range analysis ([`crate::nn::range`]) proves it for a
//! model before sharing, or the calibrated run-time check detects a violation. Outside the bound
//! the result is wrong. The dealer supplies shares of `r`, `r >> f` (logical) and `msb(r)`.

use kernels::BinaryOp;

use crate::dealer::MaterialSpec;
use crate::error::Result;
use crate::fixed::TRUNC_OFFSET_BITS;
use crate::party::Party;
use crate::share::Share;

/// Material spec of [`Party::truncate_by`] on `n` elements by `bits`.
pub fn truncate_spec(n: usize, bits: u32) -> MaterialSpec {
    MaterialSpec::Trunc { n, bits }
}

impl Party {
    /// Truncate by the fixed-point fractional bits (after a product of two encoded values).
    pub fn truncate(&mut self, x: &Share) -> Result<Share> {
        let f = self.fixed_point().frac_bits();
        self.truncate_by(x, f)
    }

    /// Divide by `2^bits` with randomised rounding (result `floor(x/2^bits)` or one more, error
    /// below one ulp) for `|x| < 2^62`; outside that bound the result is wrong (see module docs).
    pub fn truncate_by(&mut self, x: &Share, bits: u32) -> Result<Share> {
        if !(1..=TRUNC_OFFSET_BITS).contains(&bits) {
            return Err(crate::EngineError::Invalid(format!(
                "truncation by {bits} bits (must be 1..={TRUNC_OFFSET_BITS})"
            )));
        }
        let n = x.len();
        let parts = self.material(truncate_spec(n, bits))?;
        let be = self.backend();
        let shape = x.shape().to_vec();
        let flat = x.tensor().reshaped(vec![n]).expect("same length");
        // x + 2^62 + r: the offset is already in alice's share of r.
        let masked = be.binary(BinaryOp::Add, &flat, &parts[0])?;
        let c = self
            .open("truncate", &[&masked])?
            .pop()
            .expect("one opened");
        let y =
            self.backend()
                .truncate_combine(&c, &parts[1], &parts[2], bits, self.index() == 0)?;
        Ok(Share::new(y.reshaped(shape).expect("same length")))
    }
}
