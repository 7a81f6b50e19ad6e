//! Activations built on the secure comparison: Clip (ReLU6, Hardtanh), LeakyReLU and HardSwish.
//!
//! - `clip(x, L, H) = x + relu(L - x) - relu(x - H)` for public ring bounds `L <= H` (either may
//!   be absent): both ReLUs in one batched comparison, so 8 rounds like a ReLU, and exact (the
//!   result is `min(max(x, L), H)` in ring units) whenever `|L - x|` and `|x - H|` stay below
//!   `2^63`.
//! - `leaky(x) = x - trunc(c·(x·[x < 0]))` with the public ring constant
//!   `c = round((1 - slope)·2^f)`: the comparison's payload gives `x·[x < 0]` at no extra
//!   round, the product with `c` is local and one truncation (1 round) rescales it. For
//!   `x >= 0` the result is `x` exactly; below, it is `slope'·x` within one ulp, where
//!   `slope' = 1 - c/2^f` is within half an ulp of the slope. Needs `|c·x| < 2^62` (the
//!   truncation's precondition, proven by the range analysis).
//! - `hardswish(x) = x · clip(x + 3, 0, 6) / 6`: the clip above on `x + 3` (8 rounds), the
//!   factor `s = trunc(h · c6)` with the public `c6 = round(2^f / 6)` (local product, 1 round),
//!   then the Beaver product `trunc(x · s)` (2 rounds): 11 rounds. `s` is within `4` ulps of
//!   `h / 6` (half an ulp of `c6` times `h <= 6`, plus one of truncation) and lies in
//!   `[-1, 2^f + 4]` ring units, so the result is within `|x|·(e/6 + 4 ulps) + e + 1 ulp` of
//!   `hardswish(x)` for an input error `e`. Needs `|x + 3| < 2^63` and `|x|·(2^f + 4) < 2^62`
//!   (proven by the range analysis).
//!
//! Security: every message these protocols send is a message of the comparison, the truncation
//! or the Beaver product, each masked by fresh dealer randomness (see their modules); the
//! constants are public hyperparameters of the layer (like a kernel size), so what a party sends
//! is independent of the other party's shares.

use crate::dealer::MaterialSpec;
use crate::error::Result;
use crate::fixed::FixedPoint;
use crate::party::Party;
use crate::protocols::truncate::truncate_spec;
use crate::share::Share;

use super::relu_specs;

/// Material specs of [`Party::clip`] on `n` elements with `bounds` (0, 1 or 2) bounds set.
pub fn clip_specs(n: usize, bounds: usize) -> Vec<MaterialSpec> {
    if bounds == 0 {
        Vec::new()
    } else {
        relu_specs(bounds * n)
    }
}

/// Material specs of [`Party::leaky_relu`] on `n` elements at `frac_bits`.
pub fn leaky_relu_specs(n: usize, frac_bits: u32) -> Vec<MaterialSpec> {
    let mut v = relu_specs(n);
    v.push(truncate_spec(n, frac_bits));
    v
}

/// Material specs of [`Party::hardswish`] on `n` elements at `frac_bits`, in the order it
/// consumes them.
pub fn hardswish_specs(n: usize, frac_bits: u32) -> Vec<MaterialSpec> {
    let mut v = clip_specs(n, 2);
    v.push(truncate_spec(n, frac_bits));
    v.push(MaterialSpec::MulTriple { n });
    v.push(truncate_spec(n, frac_bits));
    v
}

/// The public ring constants of [`Party::hardswish`] at one fixed-point scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HardSwishConstants {
    three: u64,
    six: u64,
    sixth: u64,
}

impl HardSwishConstants {
    /// `3`, `6` and `1/6` encoded in `fx`.
    pub fn new(fx: &FixedPoint) -> Result<Self> {
        Ok(HardSwishConstants {
            three: fx.encode_one(3.0, 0)?,
            six: fx.encode_one(6.0, 0)?,
            sixth: fx.encode_one(1.0 / 6.0, 0)?,
        })
    }
}

impl Party {
    /// `min(max(x, lo), hi)` elementwise for public ring bounds (`lo <= hi` as signed values;
    /// either optional), in 8 rounds (see the module documentation).
    pub fn clip(&mut self, x: &Share, lo: Option<u64>, hi: Option<u64>) -> Result<Share> {
        let mut args = Vec::with_capacity(2);
        if let Some(l) = lo {
            let minus = self.neg(x)?;
            args.push(self.add_public_ring(&minus, l)?);
        }
        if let Some(h) = hi {
            args.push(self.add_public_ring(x, h.wrapping_neg())?);
        }
        if args.is_empty() {
            return Ok(x.clone());
        }
        let refs: Vec<&Share> = args.iter().collect();
        let all = self.concat(&refs)?;
        let relus = self.relu(&all)?;
        let parts = self.split(&relus, args.len())?;
        let mut y = x.reshape(&[x.len()])?;
        let mut next = parts.iter();
        if lo.is_some() {
            y = self.add(&y, next.next().expect("one part per bound"))?;
        }
        if hi.is_some() {
            y = self.sub(&y, next.next().expect("one part per bound"))?;
        }
        y.reshape(x.shape())
    }

    /// LeakyReLU with the public ring constant `c = round((1 - slope)·2^f)`: `x` for
    /// `x >= 0`, `x - trunc(c·x)` below (see the module documentation).
    pub fn leaky_relu(&mut self, x: &Share, c: u64) -> Result<Share> {
        let (_, negative) = self.ltz_select(x, &[x])?;
        let scaled = self.mul_public_int(&negative[0], c as i64)?;
        let t = self.truncate(&scaled)?;
        self.sub(x, &t)
    }

    /// HardSwish `x · clip(x + 3, 0, 6) / 6` elementwise in 11 rounds (see the module
    /// documentation for its error bound and preconditions).
    pub fn hardswish(&mut self, x: &Share, c: &HardSwishConstants) -> Result<Share> {
        let shifted = self.add_public_ring(x, c.three)?;
        let h = self.clip(&shifted, Some(0), Some(c.six))?;
        let scaled = self.mul_public_int(&h, c.sixth as i64)?;
        let s = self.truncate(&scaled)?;
        self.mul(x, &s)
    }
}
