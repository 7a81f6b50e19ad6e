//! Shared element-wise layers: ReLU, Clip, LeakyReLU, HardSwish, identities (Dropout), Flatten.

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::fixed::FixedPoint;
use crate::nn::plain::Layer;
use crate::party::Party;
use crate::protocols::compare::{
    clip_specs, hardswish_specs, leaky_relu_specs, relu_specs, HardSwishConstants,
};
use crate::share::Share;

use super::SharedLayer;

/// `max(x, 0)` through the secure comparison.
#[derive(Clone, Debug)]
pub struct SharedReLU {
    per_sample: usize,
}

impl SharedReLU {
    /// ReLU over inputs of per-sample shape `input`.
    pub fn new(input: Vec<usize>) -> Self {
        SharedReLU {
            per_sample: input.iter().product(),
        }
    }
}

impl SharedLayer for SharedReLU {
    fn name(&self) -> String {
        "ReLU".into()
    }
    fn material(&self, batch: usize, _frac_bits: u32) -> Vec<MaterialSpec> {
        relu_specs(batch * self.per_sample)
    }
    fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        p.relu(x)
    }
}

/// A layer that is the identity at inference (Dropout, Identity).
#[derive(Clone, Debug)]
pub struct SharedIdentity {
    name: &'static str,
}

impl SharedIdentity {
    /// An identity layer named `name`.
    pub fn new(name: &'static str) -> Self {
        SharedIdentity { name }
    }
}

impl SharedLayer for SharedIdentity {
    fn name(&self) -> String {
        self.name.into()
    }
    fn material(&self, _batch: usize, _frac_bits: u32) -> Vec<MaterialSpec> {
        Vec::new()
    }
    fn forward(&self, _p: &mut Party, x: &Share) -> Result<Share> {
        Ok(x.clone())
    }
}

/// `[batch, ...] -> [batch, features]` (a view: no data moves).
#[derive(Clone, Debug)]
pub struct SharedFlatten {
    per_sample: usize,
}

impl SharedFlatten {
    /// Flatten inputs of per-sample shape `input`.
    pub fn new(input: Vec<usize>) -> Self {
        SharedFlatten {
            per_sample: input.iter().product(),
        }
    }
}

impl SharedLayer for SharedFlatten {
    fn name(&self) -> String {
        "Flatten".into()
    }
    fn material(&self, _batch: usize, _frac_bits: u32) -> Vec<MaterialSpec> {
        Vec::new()
    }
    fn forward(&self, _p: &mut Party, x: &Share) -> Result<Share> {
        x.reshape(&[x.len() / self.per_sample.max(1), self.per_sample])
    }
}

/// `min(max(x, min), max)` (ReLU6, Hardtanh) through one batched comparison.
#[derive(Clone, Debug)]
pub struct SharedClip {
    per_sample: usize,
    min: Option<f64>,
    max: Option<f64>,
    lo: Option<u64>,
    hi: Option<u64>,
}

impl SharedClip {
    /// Clip inputs of per-sample shape `input` to the public bounds, encoded in `fx`.
    pub fn new(
        input: Vec<usize>,
        min: Option<f64>,
        max: Option<f64>,
        fx: &FixedPoint,
    ) -> Result<Self> {
        let enc = |v: Option<f64>| v.map(|v| fx.encode_one(v, 0)).transpose();
        let (lo, hi) = (enc(min)?, enc(max)?);
        if let (Some(l), Some(h)) = (lo, hi) {
            if (l as i64) > (h as i64) {
                return Err(shape_err(
                    "clip",
                    format!("min {min:?} is above max {max:?}"),
                ));
            }
        }
        Ok(SharedClip {
            per_sample: input.iter().product(),
            min,
            max,
            lo,
            hi,
        })
    }
}

impl SharedLayer for SharedClip {
    fn name(&self) -> String {
        Layer::Clip {
            min: self.min,
            max: self.max,
        }
        .name()
    }
    fn material(&self, batch: usize, _frac_bits: u32) -> Vec<MaterialSpec> {
        let bounds = usize::from(self.lo.is_some()) + usize::from(self.hi.is_some());
        clip_specs(batch * self.per_sample, bounds)
    }
    fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        p.clip(x, self.lo, self.hi)
    }
}

/// LeakyReLU with a public slope: the comparison selects the negative part, a local product
/// with `round((1 - slope)·2^f)` and one truncation scale it.
#[derive(Clone, Debug)]
pub struct SharedLeakyReLU {
    per_sample: usize,
    slope: f64,
    complement: u64,
}

impl SharedLeakyReLU {
    /// LeakyReLU of inputs of per-sample shape `input`, slope encoded in `fx`.
    pub fn new(input: Vec<usize>, slope: f64, fx: &FixedPoint) -> Result<Self> {
        Ok(SharedLeakyReLU {
            per_sample: input.iter().product(),
            slope,
            complement: fx.encode_one(1.0 - slope, 0)?,
        })
    }
}

impl SharedLayer for SharedLeakyReLU {
    fn name(&self) -> String {
        Layer::LeakyReLU { slope: self.slope }.name()
    }
    fn material(&self, batch: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        leaky_relu_specs(batch * self.per_sample, frac_bits)
    }
    fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        p.leaky_relu(x, self.complement)
    }
}

/// HardSwish, `x · clip(x + 3, 0, 6) / 6`: one batched comparison for the clip, a local product
/// with `round(2^f / 6)` and a truncation for the factor, and one Beaver product with its
/// truncation ([`Party::hardswish`]).
#[derive(Clone, Debug)]
pub struct SharedHardSwish {
    per_sample: usize,
    constants: HardSwishConstants,
}

impl SharedHardSwish {
    /// HardSwish of inputs of per-sample shape `input`, its constants encoded in `fx`.
    pub fn new(input: Vec<usize>, fx: &FixedPoint) -> Result<Self> {
        Ok(SharedHardSwish {
            per_sample: input.iter().product(),
            constants: HardSwishConstants::new(fx)?,
        })
    }
}

impl SharedLayer for SharedHardSwish {
    fn name(&self) -> String {
        Layer::HardSwish.name()
    }
    fn material(&self, batch: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        hardswish_specs(batch * self.per_sample, frac_bits)
    }
    fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        p.hardswish(x, &self.constants)
    }
}
