//! Which comparison a model runs: the one decision its layers' material lists and their
//! forward passes both follow.

use serde::{Deserialize, Serialize};

use crate::dealer::tables::check_top_bit;
use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::party::Party;
use crate::share::Share;

use super::argmax::pairwise_argmax_specs;
use super::narrow::{narrow_specs, Payload};
use super::{compare_specs, tree_max_specs};

/// How a model's comparisons run, chosen by the owner's range analysis and carried in the
/// model's public plan (one value per model: no layer's bound is revealed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareMode {
    /// The 64-bit carry tree: exact for every ring value (8 rounds); for models whose proven
    /// bounds reach `2^31` ring units.
    #[default]
    Full,
    /// The narrow comparison (4 rounds): exact for values below `2^31` ring units, which the
    /// range analysis proves for every compared value.
    Narrow,
    /// The narrow comparison with its fused range check: for models whose worst-case bounds
    /// exceed the ring; every compared value is checked inside the secure computation (see
    /// [`crate::protocols::range_check`]).
    Checked,
}

impl CompareMode {
    /// The check window's top bit at `frac_bits` (0 unless [`CompareMode::Checked`]).
    pub fn check_top(self, frac_bits: u32) -> u32 {
        if self == CompareMode::Checked {
            check_top_bit(frac_bits)
        } else {
            0
        }
    }

    /// Material of [`Party::sign_select`] on `n` values (with or without the payload).
    pub fn sign_specs(self, n: usize, payload: bool, frac_bits: u32) -> Vec<MaterialSpec> {
        match self {
            CompareMode::Full => compare_specs(n, usize::from(payload)),
            _ => narrow_specs(n, self.check_top(frac_bits), 1 + u32::from(payload)),
        }
    }

    /// Material of [`Party::relu_in`] on `n` values.
    pub fn relu_specs(self, n: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        self.sign_specs(n, true, frac_bits)
    }

    /// Material of [`Party::max_last_in`] on `[m, k]`.
    pub fn max_specs(self, m: usize, k: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        match self {
            CompareMode::Full => tree_max_specs(m, k, false),
            _ => {
                let mut specs = Vec::new();
                let mut cols = k;
                while cols > 1 {
                    let pairs = cols / 2;
                    specs.extend(narrow_specs(m * pairs, self.check_top(frac_bits), 2));
                    cols = pairs + cols % 2;
                }
                specs
            }
        }
    }

    /// Material of [`Party::argmax_in`] on `[m, k]`.
    pub fn argmax_specs(self, m: usize, k: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        match self {
            CompareMode::Full => tree_max_specs(m, k, true),
            _ => pairwise_argmax_specs(m, k, self.check_top(frac_bits)),
        }
    }
}

impl Party {
    /// `[x < 0]` (arithmetic 0/1) and, with `payload`, `x·[x < 0]`, by `mode`'s comparison.
    pub fn sign_select(
        &mut self,
        mode: CompareMode,
        x: &Share,
        payload: bool,
    ) -> Result<(Share, Option<Share>)> {
        match mode {
            CompareMode::Full => {
                let pays: Vec<&Share> = if payload { vec![x] } else { Vec::new() };
                let (bit, mut sel) = self.ltz_select(x, &pays)?;
                Ok((bit, sel.pop()))
            }
            _ => {
                let p = if payload {
                    Payload::Value
                } else {
                    Payload::None
                };
                self.narrow_select(x, mode == CompareMode::Checked, p)
            }
        }
    }

    /// `max(x, 0)` elementwise by `mode`'s comparison.
    pub fn relu_in(&mut self, mode: CompareMode, x: &Share) -> Result<Share> {
        let (_, neg) = self.sign_select(mode, x, true)?;
        self.sub(x, &neg.expect("payload selected"))
    }

    /// Max over the last axis of `x [m, k] -> [m]` by `mode`'s comparison (a tournament:
    /// `⌈log2 k⌉` comparison levels).
    pub fn max_last_in(&mut self, mode: CompareMode, x: &Share) -> Result<Share> {
        if mode == CompareMode::Full {
            return self.max_last(x);
        }
        let (m, k) = match x.shape() {
            [m, k] if *k > 0 => (*m, *k),
            s => return Err(shape_err("max", format!("expected [m, k>0], got {s:?}"))),
        };
        let checked = mode == CompareMode::Checked;
        let mut vals = self.columns(x)?;
        while vals.len() > 1 {
            let pairs = vals.len() / 2;
            let diffs = (0..pairs)
                .map(|j| self.sub(&vals[2 * j], &vals[2 * j + 1]))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&Share> = diffs.iter().collect();
            let d = self.concat(&refs)?;
            // (r - l)·[l - r < 0], added to l: max(l, r).
            let (_, gain) = self.narrow_select(&d, checked, Payload::Negated)?;
            let gains = self.split(&gain.expect("payload"), pairs)?;
            let mut next = Vec::with_capacity(pairs + 1);
            for (j, g) in gains.iter().enumerate() {
                next.push(self.add(&vals[2 * j], g)?);
            }
            if vals.len() % 2 == 1 {
                next.push(vals.pop().expect("odd"));
            }
            vals = next;
        }
        let _ = k;
        vals.pop().expect("one column").reshape(&[m])
    }

    /// Argmax over the last axis of `x [m, k]` by `mode`'s comparison: a shared index `[m]` at
    /// the fixed-point scale (ties: [`super::ARGMAX_TIE_RULE`]).
    pub fn argmax_in(&mut self, mode: CompareMode, x: &Share) -> Result<Share> {
        match mode {
            CompareMode::Full => self.argmax_last(x),
            _ => {
                let top = mode.check_top(self.fixed_point().frac_bits());
                self.pairwise_argmax(x, top)
            }
        }
    }
}
