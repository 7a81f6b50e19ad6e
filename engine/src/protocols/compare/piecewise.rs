//! Piecewise-linear activations built on the secure comparison: Clip (ReLU6, Hardtanh) and
//! LeakyReLU.
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

use crate::dealer::MaterialSpec;
use crate::error::Result;
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
}
