//! Shared `Conv2d` (groups = 1): one convolution-shaped product with the weight
//! `[c·kh·kw, out]` masked once like a Linear weight (it opens the activation, not its im2col
//! expansion: [`crate::protocols::conv`]), the truncation, the bias, and a local re-layout from
//! rows of pixels back to NCHW.

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::nn::geometry::{nhwc_to_nchw_index, ConvShape, Window2d};
use crate::party::Party;
use crate::protocols::conv::conv_fixed_specs;
use crate::share::Share;

use super::SharedLayer;

/// A convolution whose weight is a fixed operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedConv2d {
    weight: u64,
    fixed: u64,
    bias: u64,
    in_channels: usize,
    out_channels: usize,
    window: Window2d,
    /// Per-sample input `[c, h, w]`.
    input: [usize; 3],
    /// Output height and width.
    out_hw: [usize; 2],
}

impl SharedConv2d {
    /// Check the geometry; returns the product depth `c·kh·kw` and the output size.
    fn check(
        input: &[usize],
        in_channels: usize,
        out_channels: usize,
        window: &Window2d,
    ) -> Result<(usize, [usize; 2])> {
        let [c, h, w] = input[..] else {
            return Err(shape_err(
                "conv2d",
                format!("input {input:?} is not [c, h, w]"),
            ));
        };
        if c != in_channels {
            return Err(shape_err(
                "conv2d",
                format!("{c} input channels for Conv2d({in_channels}, {out_channels})"),
            ));
        }
        let out_hw = window.output_size("conv2d", h, w)?;
        // The geometry a batch of one carries to the dealer (refused here, at build, if not).
        ConvShape::new(1, [c, h, w], *window, out_channels)?;
        Ok((in_channels * window.kernel[0] * window.kernel[1], out_hw))
    }

    /// The layer over shares already stored under `[weight, fixed-operand, bias]` ids.
    pub(crate) fn from_ids(
        input: Vec<usize>,
        in_channels: usize,
        out_channels: usize,
        window: Window2d,
        [weight, fixed, bias]: [u64; 3],
    ) -> Result<SharedConv2d> {
        let out_hw = Self::check(&input, in_channels, out_channels, &window)?.1;
        Ok(SharedConv2d {
            weight,
            fixed,
            bias,
            in_channels,
            out_channels,
            window,
            input: [input[0], input[1], input[2]],
            out_hw,
        })
    }

    /// Product depth `c·kh·kw` of a convolution's weight.
    pub(crate) fn depth(in_channels: usize, window: &Window2d) -> usize {
        in_channels * window.kernel[0] * window.kernel[1]
    }

    /// The convolution over a batch of `batch` samples.
    fn shape(&self, batch: usize) -> Result<ConvShape> {
        ConvShape::new(batch, self.input, self.window, self.out_channels)
    }
}

impl SharedLayer for SharedConv2d {
    fn stored_ids(&self) -> Vec<u64> {
        vec![self.weight, self.fixed, self.bias]
    }

    fn fixed_ids(&self) -> Vec<u64> {
        vec![self.fixed]
    }

    fn name(&self) -> String {
        format!(
            "Conv2d({}, {}, kernel_size={:?}, stride={:?}, padding={:?})",
            self.in_channels,
            self.out_channels,
            self.window.kernel,
            self.window.stride,
            self.window.padding
        )
    }

    fn material(&self, batch: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        // A batch too large for the geometry needs no material: `forward` refuses it first.
        self.shape(batch)
            .map(|conv| conv_fixed_specs(self.fixed, conv, frac_bits))
            .unwrap_or_default()
    }

    fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        let n = x.shape()[0];
        let conv = self.shape(n)?;
        let wt = p.fixed_operand(self.fixed, &p.kept(self.weight)?)?;
        let [c, h, w] = self.input;
        // Inputs may arrive as rows of features; the layout is NCHW either way.
        let z = p.conv_fixed(&x.reshape(&[n, c, h, w])?, &conv, &wt)?;
        let z = p.add_row_broadcast(&z, &p.kept(self.bias)?)?;
        let [oh, ow] = self.out_hw;
        p.gather(
            &z,
            &nhwc_to_nchw_index(n, self.out_channels, oh * ow),
            &[n, self.out_channels, oh, ow],
        )
    }
}
