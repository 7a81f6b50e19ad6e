//! Interval rules: the bounds of one layer's output from the bounds of its inputs, per layer
//! kind (see the parent module and `docs/range-analysis.md`).

use std::sync::Arc;

use rayon::prelude::*;

use crate::nn::plain::Layer;

/// Truncation toward zero of a non-negative value below 2^63 (a conversion, not a libm call).
trait TruncFast {
    fn trunc_fast(self) -> f64;
}

impl TruncFast for f64 {
    fn trunc_fast(self) -> f64 {
        if self < 9.2e18 {
            self as u64 as f64
        } else {
            self
        }
    }
}

/// The largest value of a bound vector (0 for an empty one).
pub(super) fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Per-element bounds of one value: the secure value in ring units, the plaintext value in real
/// units, and their difference in real units.
#[derive(Clone, Debug)]
pub(super) struct Bounds {
    pub(super) ring: Vec<f64>,
    pub(super) real: Vec<f64>,
    pub(super) err: Vec<f64>,
}

impl Bounds {
    /// `n` elements with the same bounds.
    pub(super) fn uniform(n: usize, ring: f64, real: f64, err: f64) -> Bounds {
        Bounds {
            ring: vec![ring; n],
            real: vec![real; n],
            err: vec![err; n],
        }
    }

    /// `n` elements in groups (NCHW: element `i` of `n` belongs to row `i / (n / rows)`), row
    /// `r` bounded by `rows[r] = (real, error, ring)`.
    fn grouped(n: usize, rows: &[(f64, f64, f64)]) -> Bounds {
        let group = n.div_ceil(rows.len().max(1)).max(1);
        Bounds {
            real: (0..n).map(|i| rows[i / group].0).collect(),
            err: (0..n).map(|i| rows[i / group].1).collect(),
            ring: (0..n).map(|i| rows[i / group].2).collect(),
        }
    }

    /// Elementwise `(real, error, ring)` of a map applied to every element.
    pub(super) fn map(&self, f: impl Fn(f64, f64, f64) -> (f64, f64, f64)) -> Bounds {
        let (mut real, mut err, mut ring) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.ring.len() {
            let (a, b, c) = f(self.real[i], self.err[i], self.ring[i]);
            real.push(a);
            err.push(b);
            ring.push(c);
        }
        Bounds { ring, real, err }
    }

    /// The largest `(ring, real, error)` bound.
    pub(super) fn max(&self) -> (f64, f64, f64) {
        (max_of(&self.ring), max_of(&self.real), max_of(&self.err))
    }
}

/// What one layer does to the bounds: the bounds of its output, and the largest value it holds
/// before truncation or comparison (ring units; 0 when it holds nothing new).
pub(super) struct Step {
    pub(super) out: Arc<Bounds>,
    pub(super) peak: f64,
}

/// The bounds of layer `l`'s output from those of its inputs `ins` (per-sample shapes `input`
/// of the first input and `output`), at `frac_bits`; `checked` is the calibrated bound of a
/// hidden Linear layer's output.
pub(super) fn layer_step(
    l: &Layer,
    ins: &[&Arc<Bounds>],
    input: &[usize],
    output: &[usize],
    frac_bits: u32,
    checked: Option<f64>,
) -> Step {
    let scale = (1u64 << frac_bits) as f64;
    let eps = 1.0 / scale;
    // `trunc(|v| + 0.5)` >= `|round(v)|` (the encoding), and much faster than `round` on
    // baseline x86-64.
    let enc = |v: f64| ((v * scale).abs() + 0.5).trunc_fast();
    let out_len: usize = output.iter().product();
    let x = ins[0];
    let (rin, xin, ein) = x.max();
    let same = |out: Bounds| Step {
        out: Arc::new(out),
        peak: 0.0,
    };
    match l {
        // ReLU is 1-Lipschitz and shrinks magnitudes; Dropout and Flatten are identities.
        Layer::ReLU | Layer::Dropout | Layer::Flatten => Step {
            out: Arc::clone(x),
            peak: 0.0,
        },
        // A maximum of values within the bounds is within the bounds.
        Layer::MaxPool2d { .. } => same(Bounds::uniform(out_len, rin, xin, ein)),
        // A public sum of shares: exact in the ring.
        Layer::Add => {
            let mut out = Bounds::clone(x);
            for other in &ins[1..] {
                for i in 0..out.ring.len() {
                    out.ring[i] += other.ring[i];
                    out.real[i] += other.real[i];
                    out.err[i] += other.err[i];
                }
            }
            let peak = max_of(&out.ring);
            Step {
                out: Arc::new(out),
                peak,
            }
        }
        // Per sample, the inputs' elements one after the other (channels of NCHW).
        Layer::Concat => {
            let mut out = Bounds::uniform(0, 0.0, 0.0, 0.0);
            for b in ins {
                out.ring.extend_from_slice(&b.ring);
                out.real.extend_from_slice(&b.real);
                out.err.extend_from_slice(&b.err);
            }
            same(out)
        }
        // `y = x + relu(L - x) - relu(x - H)` with the encoded bounds `L`, `H`: the comparisons
        // see `L - x` and `x - H`; the result is `clip(x, L, H)` exactly, 1-Lipschitz, off by
        // at most half an ulp from the real bounds. `|clip(x)|` for `|x| <= r` is at most
        // `max(|clip(-r)|, |clip(r)|)`.
        Layer::Clip { min, max } => {
            let clip = |v: f64, lo: Option<f64>, hi: Option<f64>| {
                let v = lo.map_or(v, |l| v.max(l));
                hi.map_or(v, |h| v.min(h))
            };
            let mag = |r: f64, lo, hi| clip(-r, lo, hi).abs().max(clip(r, lo, hi).abs());
            let (lo, hi) = (
                min.map(|v| (v * scale).round()),
                max.map(|v| (v * scale).round()),
            );
            let edge = lo.into_iter().chain(hi).map(f64::abs).fold(0.0, f64::max);
            let out = x.map(|re, e, ri| (mag(re, *min, *max), e + eps / 2.0, mag(ri, lo, hi)));
            Step {
                out: Arc::new(out),
                peak: rin + edge,
            }
        }
        // `y = x - trunc(B·(x·[x < 0]))` with `B = round((1 - slope)·2^f)`: the product holds
        // up to `|B|·|x|`; `y` is the leaky map of slope `a' = 1 - B/2^f` (within half an ulp
        // of the slope), plus one ulp of truncation.
        Layer::LeakyReLU { slope } => {
            let b = enc(1.0 - slope);
            let gain = (1.0 - b / scale).abs().max(1.0);
            let lip = (slope.abs() + eps / 2.0).max(1.0);
            let out = x.map(|re, e, ri| {
                (
                    re * slope.abs().max(1.0),
                    lip * e + eps / 2.0 * re + eps,
                    ri * gain + 1.0,
                )
            });
            Step {
                out: Arc::new(out),
                peak: b * rin * (1.0 + 4.0 * f64::EPSILON),
            }
        }
        // `y = trunc(x·s)` with the factor `s = trunc(clip(x + 3, 0, 6)·c6)`, `c6 = round(2^f/6)`:
        // `s` is within 4 ulps of `clip(x + 3, 0, 6)/6` and at most `2^f + 4` ring units, so
        // `|y| <= |x|` in reals and `ri·(1 + 4 ulps) + 1` in the ring; the product before its
        // truncation holds up to `ri·(2^f + 4)`, the clip's differences `ri + 3·2^f`.
        Layer::HardSwish => {
            let c6 = enc(1.0 / 6.0);
            let out = x.map(|re, e, ri| {
                let factor_err = e / 6.0 + 4.0 * eps;
                (
                    re,
                    re * factor_err + e * (1.0 + factor_err) + eps,
                    ri * (1.0 + 4.0 * eps) + 1.0,
                )
            });
            Step {
                out: Arc::new(out),
                peak: (rin * (scale + 4.0))
                    .max(rin + 6.0 * scale)
                    .max(6.0 * scale * c6),
            }
        }
        Layer::Conv2d {
            out_channels,
            weight,
            bias,
            ..
        } => {
            let k = weight.len() / (*out_channels).max(1);
            let slack = 1.0 + (k as f64 + 2.0) * f64::EPSILON;
            let rows: Vec<(f64, f64, f64, f64)> = (0..*out_channels)
                .map(|o| {
                    let row = &weight[o * k..(o + 1) * k];
                    let encoded: f64 = row.iter().map(|w| enc(*w)).sum();
                    let l1: f64 = row.iter().map(|w| w.abs()).sum();
                    let acc = encoded * rin * slack;
                    let e = ((l1 + k as f64 * eps / 2.0) * ein + k as f64 * eps / 2.0 * xin)
                        * slack
                        + 1.5 * eps;
                    let out = acc / scale + 1.0 + (bias[o] * scale).round().abs();
                    (acc, (l1 * xin + bias[o].abs()) * slack, e, out)
                })
                .collect();
            per_row(out_len, &rows)
        }
        // Shared as a diagonal fixed operand: `round(s·2^f)·x`, truncated, plus `round(t·2^f)`.
        Layer::Affine { scale: sc, shift } => {
            let rows: Vec<(f64, f64, f64, f64)> = sc
                .iter()
                .zip(shift)
                .map(|(a, t)| {
                    let acc = enc(*a) * rin * (1.0 + 4.0 * f64::EPSILON);
                    let e = (a.abs() + eps / 2.0) * ein + eps / 2.0 * xin + 1.5 * eps;
                    let out = acc / scale + 1.0 + (t * scale).round().abs();
                    (acc, a.abs() * xin + t.abs(), e, out)
                })
                .collect();
            per_row(out_len, &rows)
        }
        // Window sum (at most `taps` values, `taps` = the divisor or the kernel size), times
        // the public `round(2^f / divisor)`, truncated: the accumulator is below
        // `rin·(2^f + taps/2)`; the error adds the reciprocal's rounding (`|sum|·2^-(f+1)`)
        // and one ulp of truncation.
        Layer::AvgPool2d { .. } | Layer::AdaptiveAvgPool2d { .. } => {
            let taps = match l {
                Layer::AvgPool2d { window, .. } => window.kernel[0] * window.kernel[1],
                _ => {
                    let (h, w) = (input[1], input[2]);
                    let (oh, ow) = (output[1].max(1), output[2].max(1));
                    ((h.div_ceil(oh) + 1).min(h) * (w.div_ceil(ow) + 1).min(w)).max(1)
                }
            } as f64;
            let acc = rin * (scale + taps / 2.0) * (1.0 + 4.0 * f64::EPSILON);
            let e = ein + taps * xin * eps / 2.0 + eps;
            per_row(out_len, &[(acc, xin, e, acc / scale + 1.0)])
        }
        Layer::Linear {
            in_features,
            out_features,
            weight,
            bias,
        } => {
            let k = *in_features;
            // Sums of `k` non-negative f64 terms are within a relative `k·2^-53` of the true
            // sum; inflating by `(k + 2)·2^-52` keeps every bound an upper bound.
            let slack = 1.0 + (k as f64 + 2.0) * f64::EPSILON;
            let rows: Vec<(f64, f64, f64)> = (0..*out_features)
                .into_par_iter()
                .map(|j| {
                    let row = &weight[j * k..(j + 1) * k];
                    let (mut acc, mut re, mut e) = (0.0f64, 0.0f64, 0.0f64);
                    for (i, &wi) in row.iter().enumerate() {
                        let w = wi.abs();
                        acc += enc(wi) * x.ring[i];
                        re += w * x.real[i];
                        e += (w + eps / 2.0) * x.err[i] + eps / 2.0 * x.real[i];
                    }
                    // Truncation: below one ulp; bias rounding: half an ulp.
                    (
                        acc * slack,
                        (re + bias[j].abs()) * slack,
                        e * slack + 1.5 * eps,
                    )
                })
                .collect();
            let ring = rows
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    let out = r.0 / scale + 1.0 + (bias[j] * scale).round().abs();
                    match checked {
                        Some(c) => out.min((c * scale).floor()),
                        None => out,
                    }
                })
                .collect();
            let err: Vec<f64> = rows.iter().map(|r| r.2).collect();
            let real = rows
                .iter()
                .zip(&err)
                .map(|(r, e)| match checked {
                    Some(c) => r.1.min(c + e),
                    None => r.1,
                })
                .collect();
            Step {
                out: Arc::new(Bounds { ring, real, err }),
                peak: rows.iter().map(|r| r.0).fold(0.0, f64::max),
            }
        }
    }
}

/// A layer bounded per output channel (or as a whole): `rows[o] = (accumulator, real, error,
/// ring output)`.
fn per_row(out_len: usize, rows: &[(f64, f64, f64, f64)]) -> Step {
    let r: Vec<(f64, f64, f64)> = rows.iter().map(|r| (r.1, r.2, r.3)).collect();
    Step {
        out: Arc::new(Bounds::grouped(out_len, &r)),
        peak: rows.iter().map(|r| r.0).fold(0.0, f64::max),
    }
}
