//! Sliding-window geometry of 2-D convolutions and pools (NCHW, PyTorch semantics), and the
//! gather indices that lower them to matrix products and row reductions.
//!
//! Every index list here feeds [`kernels::Backend::gather`]: entry `i` of the result is element
//! `index[i]` of the source, or zero for [`kernels::GATHER_ZERO`] (padding).

use kernels::GATHER_ZERO;

use crate::error::{shape_err, Result};

/// Kernel size, stride and zero padding of a 2-D sliding window, `[height, width]` each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window2d {
    /// Window size.
    pub kernel: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// Implicit padding on each side (top/bottom, left/right).
    pub padding: [usize; 2],
}

impl Window2d {
    /// A square window with equal stride and padding on both axes.
    pub fn square(kernel: usize, stride: usize, padding: usize) -> Window2d {
        Window2d {
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 2],
        }
    }

    /// Output height and width for an `h x w` input (PyTorch's floor formula), or an error when
    /// the geometry is degenerate or the window does not fit.
    pub fn output_size(&self, op: &'static str, h: usize, w: usize) -> Result<[usize; 2]> {
        let mut out = [0; 2];
        for (axis, size) in [h, w].into_iter().enumerate() {
            let (k, s, p) = (self.kernel[axis], self.stride[axis], self.padding[axis]);
            if k == 0 || s == 0 {
                return Err(shape_err(
                    op,
                    format!("kernel {k} and stride {s} must be >= 1"),
                ));
            }
            if size + 2 * p < k {
                return Err(shape_err(
                    op,
                    format!("kernel {k} does not fit input size {size} with padding {p}"),
                ));
            }
            out[axis] = (size + 2 * p - k) / s + 1;
        }
        Ok(out)
    }

    /// Checks shared by pools: padding at most half the kernel (as PyTorch requires), so every
    /// window holds at least one input element.
    pub fn check_pool(&self, op: &'static str) -> Result<()> {
        for axis in 0..2 {
            if 2 * self.padding[axis] > self.kernel[axis] {
                return Err(shape_err(
                    op,
                    format!(
                        "padding {:?} must be at most half of kernel {:?}",
                        self.padding, self.kernel
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The input positions `(row, col)` of window `(oh, ow)`: `None` where the window lies on
    /// padding.
    fn taps(
        &self,
        oh: usize,
        ow: usize,
        h: usize,
        w: usize,
    ) -> impl Iterator<Item = Option<usize>> + '_ {
        let [kh, kw] = self.kernel;
        let r0 = (oh * self.stride[0]) as isize - self.padding[0] as isize;
        let c0 = (ow * self.stride[1]) as isize - self.padding[1] as isize;
        (0..kh * kw).map(move |t| {
            let (r, c) = (r0 + (t / kw) as isize, c0 + (t % kw) as isize);
            (r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w)
                .then(|| r as usize * w + c as usize)
        })
    }
}

/// Convert an element index to the `u32` the gather kernels take.
fn idx(i: usize) -> u32 {
    debug_assert!(i < GATHER_ZERO as usize);
    i as u32
}

/// Check that a tensor of `len` elements can be addressed by `u32` gather indices.
pub fn check_addressable(op: &'static str, len: usize) -> Result<()> {
    if len >= GATHER_ZERO as usize {
        return Err(shape_err(
            op,
            format!(
                "{len} elements exceed the {} a gather can address",
                GATHER_ZERO
            ),
        ));
    }
    Ok(())
}

/// im2col of `x [n, c, h, w]`: rows `(n, oh, ow)`, columns `(c, kh, kw)` (PyTorch's weight
/// order), zero where the window covers padding. The result `[n·oh·ow, c·kh·kw]` times the
/// transposed weight `[c·kh·kw, out]` is the convolution in NHWC order.
pub fn im2col_index(win: &Window2d, n: usize, c: usize, h: usize, w: usize) -> Result<Vec<u32>> {
    let [oh, ow] = win.output_size("conv2d", h, w)?;
    check_addressable("conv2d", n * c * h * w)?;
    Ok(im2col_rows(win, [c, h, w], [oh, ow], 0..n * oh * ow))
}

/// Rows `pixels` of the im2col index of `x [n, c, h, w]` (see [`im2col_index`]), for a
/// geometry already checked.
fn im2col_rows(
    win: &Window2d,
    [c, h, w]: [usize; 3],
    [oh, ow]: [usize; 2],
    pixels: std::ops::Range<usize>,
) -> Vec<u32> {
    let k = c * win.kernel[0] * win.kernel[1];
    let mut out = Vec::with_capacity(pixels.len() * k);
    for p in pixels {
        let (b, y, x) = (p / (oh * ow), (p / ow) % oh, p % ow);
        for ch in 0..c {
            let base = (b * c + ch) * h * w;
            out.extend(
                win.taps(y, x, h, w)
                    .map(|t| t.map_or(GATHER_ZERO, |i| idx(base + i))),
            );
        }
    }
    out
}

/// A convolution over a batch: input `[batch, c, h, w]`, its window and output channels — what
/// the dealer needs to make convolution-shaped material (see
/// [`crate::protocols::conv`]). Built only through [`ConvShape::new`], which checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    batch: usize,
    input: [usize; 3],
    window: Window2d,
    out_channels: usize,
    out_hw: [usize; 2],
}

impl ConvShape {
    /// Largest batch, output channels (32 bits), input channels, height and width (21 bits)
    /// and window entries (10 bits) a material request can carry.
    const LIMITS: [u32; 3] = [32, 21, 10];

    /// Check a convolution's geometry: the window fits, every size is at least 1 and within
    /// what a material request can carry, and the input can be addressed by a gather.
    pub fn new(
        batch: usize,
        input: [usize; 3],
        window: Window2d,
        out_channels: usize,
    ) -> Result<ConvShape> {
        let [c, h, w] = input;
        let out_hw = window.output_size("conv2d", h, w)?;
        let fits = |v: usize, bits: u32| v >= 1 && v < (1usize << bits);
        let [wide, mid, small] = Self::LIMITS;
        let ok = fits(batch, wide)
            && fits(out_channels, wide)
            && [c, h, w].iter().all(|&v| fits(v, mid))
            && window
                .kernel
                .iter()
                .chain(&window.stride)
                .all(|&v| fits(v, small))
            && window.padding.iter().all(|&v| fits(v + 1, small));
        if !ok {
            return Err(shape_err(
                "conv2d",
                format!(
                    "batch {batch}, input {input:?}, {window:?}, {out_channels} output channels:                      a size is 0 or too large for convolution-shaped material"
                ),
            ));
        }
        let depth = c * window.kernel[0] * window.kernel[1];
        let sizes = batch.checked_mul(c * h * w).zip(
            batch
                .checked_mul(out_hw[0] * out_hw[1])
                .filter(|p| p.checked_mul(depth.max(out_channels)).is_some()),
        );
        let Some((elements, _)) = sizes else {
            return Err(shape_err("conv2d", "sizes overflow"));
        };
        check_addressable("conv2d", elements)?;
        Ok(ConvShape {
            batch,
            input,
            window,
            out_channels,
            out_hw,
        })
    }

    /// Elements of the input `batch·c·h·w`.
    pub fn input_len(&self) -> usize {
        self.batch * self.input.iter().product::<usize>()
    }

    /// Output pixels `batch·oh·ow` (rows of the product).
    pub fn pixels(&self) -> usize {
        self.batch * self.out_hw[0] * self.out_hw[1]
    }

    /// Product depth `c·kh·kw` (rows of the weight).
    pub fn depth(&self) -> usize {
        self.input[0] * self.window.kernel[0] * self.window.kernel[1]
    }

    /// Output channels (columns of the weight).
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Per-sample input `[c, h, w]`.
    pub fn input(&self) -> [usize; 3] {
        self.input
    }

    /// The window.
    pub fn window(&self) -> Window2d {
        self.window
    }

    /// Rows `pixels` of the im2col index of the input (`[pixels.len(), depth]` entries).
    pub fn im2col_rows(&self, pixels: std::ops::Range<usize>) -> Vec<u32> {
        im2col_rows(&self.window, self.input, self.out_hw, pixels)
    }

    /// The whole im2col index (`[pixels, depth]`).
    pub fn im2col(&self) -> Vec<u32> {
        self.im2col_rows(0..self.pixels())
    }

    /// Pack into three words (see [`ConvShape::unpack`]).
    pub fn pack(&self) -> [u64; 3] {
        let [c, h, w] = self.input.map(|v| v as u64);
        let win = &self.window;
        let small = [
            win.kernel[0],
            win.kernel[1],
            win.stride[0],
            win.stride[1],
            win.padding[0],
            win.padding[1],
        ];
        let window = small
            .iter()
            .enumerate()
            .fold(0u64, |acc, (i, &v)| acc | (v as u64) << (10 * i));
        [
            self.batch as u64 | (self.out_channels as u64) << 32,
            c | h << 21 | w << 42,
            window,
        ]
    }

    /// Unpack words made by [`ConvShape::pack`], checking the geometry again (they may come
    /// from a peer).
    pub fn unpack(words: [u64; 3]) -> Result<ConvShape> {
        let field = |word: u64, at: u32, bits: u32| ((word >> at) & ((1 << bits) - 1)) as usize;
        let [sizes, input, window] = words;
        if words[1] >> 63 != 0 || window >> 60 != 0 {
            return Err(shape_err("conv2d", "malformed convolution geometry"));
        }
        let s = |i: u32| field(window, 10 * i, 10);
        ConvShape::new(
            field(sizes, 0, 32),
            [
                field(input, 0, 21),
                field(input, 21, 21),
                field(input, 42, 21),
            ],
            Window2d {
                kernel: [s(0), s(1)],
                stride: [s(2), s(3)],
                padding: [s(4), s(5)],
            },
            field(sizes, 32, 32),
        )
    }
}

/// Re-layout `[n·hw, c]` (rows of pixels, one column per channel) to NCHW `[n, c, hw]`.
pub fn nhwc_to_nchw_index(n: usize, c: usize, hw: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(n * c * hw);
    for b in 0..n {
        for ch in 0..c {
            out.extend((0..hw).map(|p| idx((b * hw + p) * c + ch)));
        }
    }
    out
}

/// Windows of a max pool over `x [n, c, h, w]`: `[n·c·oh·ow, kh·kw]`. Taps on padding repeat
/// the window's first in-range element, so they never change the maximum (PyTorch pads with
/// -inf).
pub fn max_pool_index(win: &Window2d, n: usize, c: usize, h: usize, w: usize) -> Result<Vec<u32>> {
    win.check_pool("max_pool2d")?;
    let [oh, ow] = win.output_size("max_pool2d", h, w)?;
    check_addressable("max_pool2d", n * c * h * w)?;
    let k = win.kernel[0] * win.kernel[1];
    let mut out = Vec::with_capacity(n * c * oh * ow * k);
    for plane in 0..n * c {
        let base = plane * h * w;
        for y in 0..oh {
            for x in 0..ow {
                let first = win
                    .taps(y, x, h, w)
                    .flatten()
                    .next()
                    .expect("check_pool: every window holds an input element");
                out.extend(win.taps(y, x, h, w).map(|t| idx(base + t.unwrap_or(first))));
            }
        }
    }
    Ok(out)
}

/// Windows of an average pool: the gather index `[rows, width]` (zero-padded), and each row's
/// divisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvgWindows {
    /// Gather index of `rows · width` entries.
    pub index: Vec<u32>,
    /// Entries per row.
    pub width: usize,
    /// Divisor of each row's sum.
    pub divisor: Vec<usize>,
}

/// Windows of `AvgPool2d` over `x [n, c, h, w]`; the divisor counts padding taps when
/// `count_include_pad` (PyTorch's default) and only in-range taps otherwise.
pub fn avg_pool_windows(
    win: &Window2d,
    count_include_pad: bool,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Result<AvgWindows> {
    win.check_pool("avg_pool2d")?;
    let [oh, ow] = win.output_size("avg_pool2d", h, w)?;
    check_addressable("avg_pool2d", n * c * h * w)?;
    let k = win.kernel[0] * win.kernel[1];
    let mut index = Vec::with_capacity(n * c * oh * ow * k);
    let mut divisor = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        let base = plane * h * w;
        for y in 0..oh {
            for x in 0..ow {
                let mut inside = 0;
                for t in win.taps(y, x, h, w) {
                    inside += usize::from(t.is_some());
                    index.push(t.map_or(GATHER_ZERO, |i| idx(base + i)));
                }
                divisor.push(if count_include_pad { k } else { inside });
            }
        }
    }
    Ok(AvgWindows {
        index,
        width: k,
        divisor,
    })
}

/// The rows of input window `i` of `AdaptiveAvgPool2d` along an axis of `size` for `out`
/// outputs: `floor(i·size/out) .. ceil((i+1)·size/out)` (PyTorch's rule).
fn adaptive_range(i: usize, size: usize, out: usize) -> (usize, usize) {
    (i * size / out, ((i + 1) * size).div_ceil(out))
}

/// Windows of `AdaptiveAvgPool2d([oh, ow])` over `x [n, c, h, w]` (windows may differ in size;
/// shorter rows are zero-padded to the widest).
pub fn adaptive_avg_windows(
    output: [usize; 2],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Result<AvgWindows> {
    let [oh, ow] = output;
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        return Err(shape_err(
            "adaptive_avg_pool2d",
            format!("output {output:?} from input {h}x{w}"),
        ));
    }
    check_addressable("adaptive_avg_pool2d", n * c * h * w)?;
    let span = |size: usize, out: usize| {
        (0..out)
            .map(|i| {
                let (a, b) = adaptive_range(i, size, out);
                b - a
            })
            .max()
            .unwrap_or(0)
    };
    let width = span(h, oh) * span(w, ow);
    let mut index = Vec::with_capacity(n * c * oh * ow * width);
    let mut divisor = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        let base = plane * h * w;
        for y in 0..oh {
            let (r0, r1) = adaptive_range(y, h, oh);
            for x in 0..ow {
                let (c0, c1) = adaptive_range(x, w, ow);
                let start = index.len();
                for r in r0..r1 {
                    index.extend((c0..c1).map(|cc| idx(base + r * w + cc)));
                }
                divisor.push(index.len() - start);
                index.resize(start + width, GATHER_ZERO);
            }
        }
    }
    Ok(AvgWindows {
        index,
        width,
        divisor,
    })
}

/// PyTorch's windows of `AdaptiveAvgPool2d` along one axis, for plaintext references.
pub fn adaptive_bounds(size: usize, out: usize) -> Vec<(usize, usize)> {
    (0..out).map(|i| adaptive_range(i, size, out)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_follow_pytorch() {
        let w = Window2d::square(3, 2, 1);
        assert_eq!(w.output_size("t", 7, 8).unwrap(), [4, 4]);
        assert_eq!(
            Window2d::square(1, 1, 0).output_size("t", 5, 3).unwrap(),
            [5, 3]
        );
        assert!(Window2d::square(5, 1, 0).output_size("t", 3, 9).is_err());
        assert!(Window2d::square(3, 0, 0).output_size("t", 3, 9).is_err());
    }

    #[test]
    fn adaptive_windows_cover_every_row() {
        assert_eq!(adaptive_bounds(5, 3), vec![(0, 2), (1, 4), (3, 5)]);
        assert_eq!(adaptive_bounds(1, 7), vec![(0, 1); 7]);
    }
}
