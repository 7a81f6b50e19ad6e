//! Convolution-shaped products with a fixed operand (model weights): the activation is opened
//! once, not its im2col expansion.
//!
//! # Protocol
//!
//! A convolution of `X [batch, c, h, w]` by a weight is the product `im2col(X)·W` with
//! `W [c·kh·kw, out]`, and `im2col` is linear (a gather, zero on padding): `im2col(X - A) =
//! im2col(X) - im2col(A)`. `W` is a fixed operand masked once (`F = W - b` public to alice
//! and bob, `b` known to the dealer only; see [`crate::protocols::matmul`]). For one product
//! the dealer draws a fresh mask `A` of the activation's shape and sends shares of
//! `C = im2col(A)·b` (it convolves its own mask). Each party precomputes
//! `M_i = im2col(A_i)·F + C_i` (no input needed), then online:
//!
//! 1. opens `E = X - A` — activation-sized, 9x fewer words than the im2col-shaped opening of
//!    a 3x3 kernel;
//! 2. computes `Z_i = im2col(E)·W_i + M_i` locally.
//!
//! `Σ Z_i = im2col(E)·W + im2col(A)·F + im2col(A)·b = im2col(E + A)·W = im2col(X)·W`.
//! One round, `batch·c·h·w` words sent per party.
//!
//! # Security
//!
//! What a party sees: `F` (once per weight, uniform and independent of `W` because `b` is
//! uniform and unknown to it) and, per product, the peer's share of `E`, which with its own
//! share gives `E = X - A`. `A = A_0 + A_1` is fresh and uniform on Z_2^64 for every product
//! and the party knows only its own share `A_i`, so `E` is uniform and independent of `X`,
//! of `W` and of every other opening (a one-time pad per product; masks are never reused, one
//! dealer stream per product). Its dealer material `(A_i, C_i)` is uniform given everything
//! else except through `C = im2col(A)·b`, which is additively shared: bob's correction is
//! `C - C_0` with alice's `C_0` uniform from her stream, so each party's view of `C` is
//! uniform. The dealer sees geometry and the ids of fixed operands, never `E` or `F` (they
//! travel between alice and bob only). As for every fixed-operand product, security needs a
//! non-colluding dealer. `engine/tests/conv.rs` checks the transcript statistically.

use kernels::BinaryOp;

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::nn::geometry::ConvShape;
use crate::party::Party;
use crate::protocols::matmul::FixedOperand;
use crate::protocols::truncate::truncate_spec;
use crate::share::Share;

/// Material specs, in consumption order, of [`Party::conv_fixed`] of `conv` by the fixed
/// operand `fixed_id`: the convolution's material, then the truncation by `frac_bits`.
pub fn conv_fixed_specs(fixed_id: u64, conv: ConvShape, frac_bits: u32) -> Vec<MaterialSpec> {
    vec![
        MaterialSpec::FixedConv { fixed_id, conv },
        truncate_spec(conv.pixels() * conv.out_channels(), frac_bits),
    ]
}

impl Party {
    /// The convolution `im2col(x)·W` of `x [batch, c, h, w]` (`conv`'s input) by the fixed
    /// operand `w [c·kh·kw, out]` on ring values, no truncation: `[batch·oh·ow, out]`, rows of
    /// pixels (NHWC). Opens only `x - a`, activation-sized (see the module docs).
    pub fn conv_fixed_raw(
        &mut self,
        x: &Share,
        conv: &ConvShape,
        w: &FixedOperand,
    ) -> Result<Share> {
        let [c, h, wd] = conv.input();
        if x.shape() != [conv.batch(), c, h, wd] {
            return Err(shape_err(
                "conv2d",
                format!("input {:?} for a convolution of {conv:?}", x.shape()),
            ));
        }
        if (w.k(), w.n()) != (conv.depth(), conv.out_channels()) {
            return Err(shape_err(
                "conv2d",
                format!(
                    "a [{}, {}] weight for a convolution of depth {} to {} channels",
                    w.k(),
                    w.n(),
                    conv.depth(),
                    conv.out_channels()
                ),
            ));
        }
        let parts = self.material(MaterialSpec::FixedConv {
            fixed_id: w.id(),
            conv: *conv,
        })?;
        let a = parts[0]
            .reshaped(x.shape().to_vec())
            .ok_or_else(|| shape_err("conv2d", "mask"))?;
        let e = self.backend().binary(BinaryOp::Sub, x.tensor(), &a)?;
        let e = self.open("conv", &[&e])?.pop().expect("one opened");
        let be = self.backend();
        let cols = be.gather(&e, &conv.im2col(), &[conv.pixels(), conv.depth()])?;
        Ok(Share::new(be.matmul(
            &cols,
            w.share().tensor(),
            Some(&parts[1]),
        )?))
    }

    /// Fixed-point convolution by a fixed operand ([`Party::conv_fixed_raw`], then
    /// truncation).
    pub fn conv_fixed(&mut self, x: &Share, conv: &ConvShape, w: &FixedOperand) -> Result<Share> {
        let p = self.conv_fixed_raw(x, conv, w)?;
        self.truncate(&p)
    }
}
