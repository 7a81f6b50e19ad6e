//! Shared element-wise layers: ReLU, identities (Dropout), Flatten, and the public per-channel
//! affine map of a BatchNorm2d that could not be folded into a convolution.

use kernels::BinaryOp;

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::fixed::FixedPoint;
use crate::party::Party;
use crate::protocols::compare::relu_specs;
use crate::protocols::truncate::truncate_spec;
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

/// `y[n, c, ...] = x[n, c, ...] · scale[c] + shift[c]` with public per-channel parameters
/// (a BatchNorm2d in eval mode without a convolution before it to fold into): a local product
/// with the encoded scale, one truncation, a public addition.
#[derive(Clone, Debug)]
pub struct SharedAffine2d {
    channels: usize,
    plane: usize,
    scale: Vec<u64>,
    shift: Vec<u64>,
}

impl SharedAffine2d {
    /// The affine map over per-sample inputs `[channels, h, w]`.
    pub fn new(input: Vec<usize>, scale: &[f64], shift: &[f64], fx: &FixedPoint) -> Result<Self> {
        let channels = input.first().copied().unwrap_or(0);
        if input.len() != 3 || scale.len() != channels || shift.len() != channels {
            return Err(shape_err(
                "batch_norm2d",
                format!(
                    "{} scales and {} shifts for input {input:?}",
                    scale.len(),
                    shift.len()
                ),
            ));
        }
        Ok(SharedAffine2d {
            channels,
            plane: input[1] * input[2],
            scale: fx.encode(scale)?,
            shift: fx.encode(shift)?,
        })
    }

    /// A per-channel vector broadcast over `batch` samples of `[channels, plane]`.
    fn broadcast(&self, v: &[u64], batch: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(batch * self.channels * self.plane);
        for _ in 0..batch {
            for &c in v {
                out.extend(std::iter::repeat_n(c, self.plane));
            }
        }
        out
    }
}

impl SharedLayer for SharedAffine2d {
    fn name(&self) -> String {
        format!("BatchNorm2d({})", self.channels)
    }
    fn material(&self, batch: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        vec![truncate_spec(batch * self.channels * self.plane, frac_bits)]
    }
    fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        let batch = x.shape()[0];
        let be = p.backend();
        let scale = be.upload(x.shape(), &self.broadcast(&self.scale, batch))?;
        let scaled = Share::new(be.binary(BinaryOp::Mul, x.tensor(), &scale)?);
        let y = p.truncate(&scaled)?;
        let shift = p
            .backend()
            .upload(x.shape(), &self.broadcast(&self.shift, batch))?;
        p.add_public_tensor(&y, &shift)
    }
}
