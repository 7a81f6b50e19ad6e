//! Shared pooling: max pooling through the comparison max over all windows of the layer at
//! once; average pooling (fixed and adaptive windows) as a window sum, a product with the public
//! encoded reciprocal of each window's divisor, and one truncation.

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::fixed::FixedPoint;
use crate::nn::geometry::{adaptive_avg_windows, avg_pool_windows, max_pool_index, Window2d};
use crate::party::Party;
use crate::protocols::compare::CompareMode;
use crate::protocols::truncate::truncate_spec;
use crate::share::Share;

use super::SharedLayer;

fn chw(op: &'static str, input: &[usize]) -> Result<[usize; 3]> {
    match input {
        [c, h, w] => Ok([*c, *h, *w]),
        s => Err(shape_err(op, format!("input {s:?} is not [c, h, w]"))),
    }
}

/// `MaxPool2d`: every window of every channel and sample gathered into one `[windows, k]`
/// matrix, then one comparison tree over its rows (`ceil(log2 k)` comparison rounds); with
/// [`SharedMaxPool2d::then_relu`], a ReLU of each pooled value after it (the rewrite of a
/// `ReLU → MaxPool2d` pair, see [`crate::nn::rewrite`]).
#[derive(Clone, Debug)]
pub struct SharedMaxPool2d {
    window: Window2d,
    input: [usize; 3],
    out_hw: [usize; 2],
    compare: CompareMode,
    relu: bool,
}

impl SharedMaxPool2d {
    /// Max pooling over per-sample inputs `[c, h, w]`.
    pub fn new(input: Vec<usize>, window: Window2d) -> Result<Self> {
        let input = chw("max_pool2d", &input)?;
        window.check_pool("max_pool2d")?;
        let out_hw = window.output_size("max_pool2d", input[1], input[2])?;
        Ok(SharedMaxPool2d {
            window,
            input,
            out_hw,
            compare: CompareMode::Full,
            relu: false,
        })
    }

    /// The same pool by `compare`'s comparison (the model plan's).
    pub fn comparing(mut self, compare: CompareMode) -> Self {
        self.compare = compare;
        self
    }

    /// The same pool followed by a ReLU of every pooled value, by the same comparison:
    /// `relu(maxpool(x))`, which equals `maxpool(relu(x))` (see [`crate::nn::rewrite`] for why,
    /// and why the range checks stay sound).
    pub fn then_relu(mut self) -> Self {
        self.relu = true;
        self
    }

    /// Whether a ReLU of every pooled value follows the pool ([`Self::then_relu`]).
    pub fn has_relu(&self) -> bool {
        self.relu
    }

    fn rows(&self, batch: usize) -> usize {
        batch * self.input[0] * self.out_hw[0] * self.out_hw[1]
    }
}

impl SharedLayer for SharedMaxPool2d {
    fn name(&self) -> String {
        format!(
            "{}MaxPool2d(kernel_size={:?}, stride={:?}, padding={:?})",
            if self.relu { "ReLU∘" } else { "" },
            self.window.kernel,
            self.window.stride,
            self.window.padding
        )
    }

    fn material(&self, batch: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        let k = self.window.kernel[0] * self.window.kernel[1];
        let mut specs = self.compare.max_specs(self.rows(batch), k, frac_bits);
        if self.relu {
            specs.extend(self.compare.relu_specs(self.rows(batch), frac_bits));
        }
        specs
    }

    fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        let n = x.shape()[0];
        let [c, h, w] = self.input;
        let k = self.window.kernel[0] * self.window.kernel[1];
        let windows = p.gather(
            x,
            &max_pool_index(&self.window, n, c, h, w)?,
            &[self.rows(n), k],
        )?;
        let m = if k == 1 {
            windows.reshape(&[self.rows(n)])?
        } else {
            p.max_last_in(self.compare, &windows)?
        };
        let m = if self.relu {
            p.relu_in(self.compare, &m)?
        } else {
            m
        };
        m.reshape(&[n, c, self.out_hw[0], self.out_hw[1]])
    }
}

/// Which windows an average pool takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AvgKind {
    Fixed {
        window: Window2d,
        count_include_pad: bool,
    },
    Adaptive,
}

/// `AvgPool2d` or `AdaptiveAvgPool2d`: window sums, times the public encoded `1/divisor` of
/// each window, one truncation. Error per output: below `|sum|·2^-(f+1) + 1` units of `2^-f`
/// (the encoding error of `1/divisor` scaled by the sum, plus the truncation's ulp).
#[derive(Clone, Debug)]
pub struct SharedAvgPool2d {
    kind: AvgKind,
    input: [usize; 3],
    out_hw: [usize; 2],
}

impl SharedAvgPool2d {
    /// `AvgPool2d` over per-sample inputs `[c, h, w]`.
    pub fn avg(input: Vec<usize>, window: Window2d, count_include_pad: bool) -> Result<Self> {
        let input = chw("avg_pool2d", &input)?;
        window.check_pool("avg_pool2d")?;
        let out_hw = window.output_size("avg_pool2d", input[1], input[2])?;
        Ok(SharedAvgPool2d {
            kind: AvgKind::Fixed {
                window,
                count_include_pad,
            },
            input,
            out_hw,
        })
    }

    /// `AdaptiveAvgPool2d(output)` over per-sample inputs `[c, h, w]`.
    pub fn adaptive(input: Vec<usize>, output: [usize; 2]) -> Result<Self> {
        let input = chw("adaptive_avg_pool2d", &input)?;
        if output.contains(&0) || input[1] == 0 || input[2] == 0 {
            return Err(shape_err(
                "adaptive_avg_pool2d",
                format!("output {output:?} from input {input:?}"),
            ));
        }
        Ok(SharedAvgPool2d {
            kind: AvgKind::Adaptive,
            input,
            out_hw: output,
        })
    }

    fn rows(&self, batch: usize) -> usize {
        batch * self.input[0] * self.out_hw[0] * self.out_hw[1]
    }
}

impl SharedLayer for SharedAvgPool2d {
    fn name(&self) -> String {
        match self.kind {
            AvgKind::Fixed { window, .. } => format!(
                "AvgPool2d(kernel_size={:?}, stride={:?}, padding={:?})",
                window.kernel, window.stride, window.padding
            ),
            AvgKind::Adaptive => format!("AdaptiveAvgPool2d({:?})", self.out_hw),
        }
    }

    fn material(&self, batch: usize, frac_bits: u32) -> Vec<MaterialSpec> {
        vec![truncate_spec(self.rows(batch), frac_bits)]
    }

    fn forward(&self, p: &mut Party, x: &Share) -> Result<Share> {
        let n = x.shape()[0];
        let [c, h, w] = self.input;
        let win = match self.kind {
            AvgKind::Fixed {
                window,
                count_include_pad,
            } => avg_pool_windows(&window, count_include_pad, n, c, h, w)?,
            AvgKind::Adaptive => adaptive_avg_windows(self.out_hw, n, c, h, w)?,
        };
        let rows = self.rows(n);
        let windows = p.gather(x, &win.index, &[rows, win.width])?;
        let sums = p.sum_last(&windows)?;
        let fx: FixedPoint = p.fixed_point();
        let recip: Vec<u64> = win
            .divisor
            .iter()
            .map(|&d| fx.encode_one(1.0 / d as f64, 0))
            .collect::<Result<_>>()?;
        let scaled = p.mul_public_ring_tensor(&sums, &recip)?;
        let y = p.truncate(&scaled)?;
        y.reshape(&[n, c, self.out_hw[0], self.out_hw[1]])
    }
}
