//! Plaintext f64 evaluation of one layer (the reference the secure computation is checked
//! against, and the owner's calibration).

use super::Layer;
use crate::nn::geometry::Window2d;

/// The layer's output for the values `xs` it reads (each `[batch, ...inputs[i]]`, row-major);
/// shapes were checked when the model was built.
pub(super) fn forward(layer: &Layer, xs: &[&[f64]], batch: usize, inputs: &[&[usize]]) -> Vec<f64> {
    let (x, input) = (xs[0], inputs[0]);
    match layer {
        Layer::Linear {
            in_features,
            out_features,
            weight,
            bias,
        } => {
            let mut out = vec![0.0; batch * out_features];
            for b in 0..batch {
                let xin = &x[b * in_features..(b + 1) * in_features];
                for o in 0..*out_features {
                    let row = &weight[o * in_features..(o + 1) * in_features];
                    out[b * out_features + o] =
                        bias[o] + row.iter().zip(xin).map(|(w, v)| w * v).sum::<f64>();
                }
            }
            out
        }
        Layer::Conv2d {
            in_channels,
            out_channels,
            window,
            weight,
            bias,
        } => conv2d(
            x,
            batch,
            input,
            *in_channels,
            *out_channels,
            window,
            weight,
            bias,
        ),
        Layer::ReLU => x.iter().map(|v| v.max(0.0)).collect(),
        Layer::Clip { min, max } => x
            .iter()
            .map(|&v| {
                let v = min.map_or(v, |m| v.max(m));
                max.map_or(v, |m| v.min(m))
            })
            .collect(),
        Layer::LeakyReLU { slope } => x
            .iter()
            .map(|&v| if v >= 0.0 { v } else { slope * v })
            .collect(),
        Layer::HardSwish => x
            .iter()
            .map(|&v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0)
            .collect(),
        Layer::Dropout | Layer::Flatten => x.to_vec(),
        Layer::MaxPool2d { window } | Layer::AvgPool2d { window, .. } => {
            let (c, h, w) = (input[0], input[1], input[2]);
            let [oh, ow] = window.output_size("pool2d", h, w).expect("shapes checked");
            let k = (window.kernel[0] * window.kernel[1]) as f64;
            let mut out = Vec::with_capacity(batch * c * oh * ow);
            for plane in 0..batch * c {
                let xs = &x[plane * h * w..(plane + 1) * h * w];
                for y in 0..oh {
                    for xx in 0..ow {
                        let vals: Vec<f64> =
                            window_taps(window, y, xx, h, w).map(|t| xs[t.2]).collect();
                        out.push(match layer {
                            Layer::MaxPool2d { .. } => {
                                vals.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                            }
                            Layer::AvgPool2d {
                                count_include_pad: true,
                                ..
                            } => vals.iter().sum::<f64>() / k,
                            _ => vals.iter().sum::<f64>() / vals.len() as f64,
                        });
                    }
                }
            }
            out
        }
        Layer::AdaptiveAvgPool2d { output } => {
            let (c, h, w) = (input[0], input[1], input[2]);
            let mut out = Vec::with_capacity(batch * c * output[0] * output[1]);
            for plane in 0..batch * c {
                let xs = &x[plane * h * w..(plane + 1) * h * w];
                for y in 0..output[0] {
                    let (r0, r1) = (y * h / output[0], ((y + 1) * h).div_ceil(output[0]));
                    for xx in 0..output[1] {
                        let (c0, c1) = (xx * w / output[1], ((xx + 1) * w).div_ceil(output[1]));
                        let mut s = 0.0;
                        for r in r0..r1 {
                            s += xs[r * w + c0..r * w + c1].iter().sum::<f64>();
                        }
                        out.push(s / ((r1 - r0) * (c1 - c0)) as f64);
                    }
                }
            }
            out
        }
        Layer::Affine { scale, shift } => {
            let plane: usize = input[1..].iter().product();
            x.iter()
                .enumerate()
                .map(|(i, v)| {
                    let ch = (i / plane.max(1)) % scale.len();
                    v * scale[ch] + shift[ch]
                })
                .collect()
        }
        Layer::Add => {
            let mut out = x.to_vec();
            for other in &xs[1..] {
                out.iter_mut().zip(other.iter()).for_each(|(o, v)| *o += v);
            }
            out
        }
        Layer::Concat => {
            let per: Vec<usize> = inputs.iter().map(|s| s.iter().product()).collect();
            let mut out = Vec::with_capacity(batch * per.iter().sum::<usize>());
            for b in 0..batch {
                for (v, n) in xs.iter().zip(&per) {
                    out.extend_from_slice(&v[b * n..(b + 1) * n]);
                }
            }
            out
        }
    }
}

/// A convolution of `x [batch, c, h, w]` (`input = [c, h, w]`).
#[allow(clippy::too_many_arguments)]
fn conv2d(
    x: &[f64],
    batch: usize,
    input: &[usize],
    c: usize,
    out_channels: usize,
    window: &Window2d,
    weight: &[f64],
    bias: &[f64],
) -> Vec<f64> {
    let (h, w) = (input[1], input[2]);
    let [kh, kw] = window.kernel;
    let [oh, ow] = window.output_size("Conv2d", h, w).expect("shapes checked");
    let mut out = vec![0.0; batch * out_channels * oh * ow];
    for b in 0..batch {
        for o in 0..out_channels {
            for y in 0..oh {
                for xx in 0..ow {
                    let mut acc = bias[o];
                    for ch in 0..c {
                        for (dy, dx, v) in window_taps(window, y, xx, h, w) {
                            acc += weight[((o * c + ch) * kh + dy) * kw + dx]
                                * x[((b * c + ch) * h) * w + v];
                        }
                    }
                    out[((b * out_channels + o) * oh + y) * ow + xx] = acc;
                }
            }
        }
    }
    out
}

/// The in-range taps `(dy, dx, row·w + col)` of window `(y, x)` over an `h x w` plane.
fn window_taps(
    win: &Window2d,
    y: usize,
    x: usize,
    h: usize,
    w: usize,
) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let [kh, kw] = win.kernel;
    (0..kh).flat_map(move |dy| {
        (0..kw).filter_map(move |dx| {
            let r = (y * win.stride[0] + dy).checked_sub(win.padding[0])?;
            let c = (x * win.stride[1] + dx).checked_sub(win.padding[1])?;
            (r < h && c < w).then_some((dy, dx, r * w + c))
        })
    })
}
