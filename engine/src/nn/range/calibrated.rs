//! Calibrated bounds: the owner's measured bounds on hidden outputs, their ring limits, and the
//! run-time guard that checks them inside the secure computation (see the parent module).

use crate::dealer::MaterialSpec;
use crate::error::{EngineError, Result};
use crate::fixed::FixedPoint;
use crate::nn::plain::{Layer, Sequential};
use crate::nn::source::{LayerShape, ModelSource};
use crate::party::Party;
use crate::protocols::compare::compare_specs;
use crate::share::Share;

use super::ModelBounds;

/// Calibrated bounds for every hidden Linear output: the largest magnitude seen on `data
/// [rows, in]` (the model owner's representative plaintext data) times `margin` (>= 1).
pub fn calibrate(model: &Sequential, data: &[f64], rows: usize, margin: f64) -> Result<Vec<f64>> {
    if !(margin.is_finite() && margin >= 1.0) {
        return Err(EngineError::Invalid(format!(
            "the calibration margin must be at least 1, got {margin}"
        )));
    }
    if rows == 0 {
        return Err(EngineError::Invalid("no calibration rows".into()));
    }
    let mut maxima = Vec::new();
    model.forward_f64_observed(data, rows, &mut |l, out| {
        if matches!(l, Layer::Linear { .. }) {
            maxima.push(out.iter().fold(0.0f64, |m, v| m.max(v.abs())));
        }
    })?;
    maxima.pop();
    // A layer that stayed at zero still gets a usable bound of one unit.
    Ok(maxima.into_iter().map(|m| (m * margin).max(1.0)).collect())
}

/// Run-time range checks of a forward pass with calibrated bounds: for every checked layer
/// output `y` with ring bound `C` (the hidden Linear outputs), the parties compute
/// `[C + y < 0] + [C - y < 0]` (one batched comparison), add up the indicators over the pass
/// and, at the end, open the single bit `[count > 0]`. Without calibrated bounds it does
/// nothing and costs nothing.
pub struct RangeGuard<'a> {
    limits: &'a [Option<u64>],
    count: Option<Share>,
}

impl<'a> RangeGuard<'a> {
    /// A guard for the ring limit of each layer's output (`None`: unchecked; empty: no checks).
    pub fn new(limits: &'a [Option<u64>]) -> Self {
        RangeGuard {
            limits,
            count: None,
        }
    }

    fn limit(&self, layer: usize) -> Option<u64> {
        self.limits.get(layer).copied().flatten()
    }

    /// Material for the check of layer `layer`'s output of `elements` values (after the
    /// layer's own material).
    pub fn specs_after(&self, layer: usize, elements: usize) -> Vec<MaterialSpec> {
        match self.limit(layer) {
            Some(_) => compare_specs(2 * elements, 0),
            None => Vec::new(),
        }
    }

    /// Material for [`Self::finish`].
    pub fn final_specs(&self) -> Vec<MaterialSpec> {
        if self.limits.iter().any(Option::is_some) {
            compare_specs(1, 0)
        } else {
            Vec::new()
        }
    }

    /// Check the output `y` of layer `layer` (call after every layer, in order).
    pub fn observe(&mut self, p: &mut Party, layer: usize, y: &Share) -> Result<()> {
        let Some(c) = self.limit(layer) else {
            return Ok(());
        };
        let above = p.add_public_ring(&p.neg(y)?, c)?;
        let below = p.add_public_ring(y, c)?;
        let both = p.concat(&[&above, &below])?;
        let bits = p.ltz(&both)?;
        let n = p.sum_all(&bits)?;
        self.count = Some(match self.count.take() {
            Some(prev) => p.add(&prev, &n)?,
            None => n,
        });
        Ok(())
    }

    /// Open the one "out of range" bit of this pass; an error if it is set.
    pub fn finish(self, p: &mut Party) -> Result<()> {
        let Some(flag) = self.finish_flag(p)? else {
            return Ok(());
        };
        let opened = p.open("range check", &[flag.tensor()])?;
        let bit = p.backend().download(&opened[0])?[0];
        if bit != 0 {
            return Err(EngineError::Range(
                "a hidden value left its calibrated range in this batch (the only thing revealed is this one out-of-range flag); nothing of the batch was revealed; recalibrate on more representative data or with a larger margin".into(),
            ));
        }
        Ok(())
    }

    /// This pass's "out of range" bit, as this party's arithmetic share of 0 or 1 (scale 0),
    /// unopened (`None` when nothing is checked): a service withholds a flagged batch's
    /// predictions without learning the bit, and adds it to the model owner's count.
    pub fn finish_flag(self, p: &mut Party) -> Result<Option<Share>> {
        let Some(count) = self.count else {
            if self.limits.iter().any(Option::is_some) {
                return Err(EngineError::Invalid(
                    "range guard saw none of the layers it checks".into(),
                ));
            }
            return Ok(None);
        };
        // count <= number of checked values < 2^62, so its sign test is exact.
        Ok(Some(p.ltz(&p.neg(&count)?)?))
    }
}

/// Ring limits (`floor(C·2^f)`) of calibrated bounds, in order of the hidden Linear layers.
pub fn ring_limits(bounds: &ModelBounds, fx: &FixedPoint) -> Vec<u64> {
    bounds
        .calibrated
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .map(|c| (c * fx.scale()).floor() as u64)
        .collect()
}

/// The ring limit checked on each layer's output: the calibrated bounds' [`ring_limits`] on the
/// hidden Linear layers (all Linear layers but the last), in order; empty without calibration.
pub fn layer_limits(
    model: &(impl ModelSource + ?Sized),
    bounds: &ModelBounds,
    fx: &FixedPoint,
) -> Vec<Option<u64>> {
    let rings = ring_limits(bounds, fx);
    if rings.is_empty() {
        return Vec::new();
    }
    let mut next = rings.into_iter();
    model
        .layer_shapes()
        .iter()
        .map(|l| match l {
            LayerShape::Linear { .. } => next.next(),
            _ => None,
        })
        .collect()
}
