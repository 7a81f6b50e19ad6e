//! Range analysis: no secure computation may overflow the ring silently.
//!
//! Every value the protocols handle must stay inside the range they are exact on: the truncation
//! after a fixed-point product needs `|x| < 2^62` ring units (see [`crate::protocols::truncate`]),
//! and a comparison `x < y` needs `|x - y| < 2^63`. Before anything is shared, the model owner
//! (who holds the weights in plaintext) bounds every layer by interval arithmetic from a declared
//! input bound `B` ([`ModelBounds`]), in ring units and with the encoding's rounding:
//!
//! - a Linear layer's accumulator (at scale `2^(2f)`, before truncation) for output `j` is at most
//!   `A_j = Σ_i |round(W_ji·2^f)| · X_i`, where `X_i` bounds input `i` in ring units; it must stay
//!   below `2^62`;
//! - its output is at most `A_j / 2^f + 1 + |round(b_j·2^f)|` (truncation is off by less than one
//!   unit), which is below `2^62` whenever the accumulator is, so ReLU, argmax and equality
//!   comparisons (differences below `2^63`) are exact too;
//! - ReLU, Dropout and Flatten keep or shrink every bound;
//! - convolutions, affine maps (shared as diagonal weights), pools, the residual `Add` (a sum of
//!   shares: the bounds add up), `Concat`, Clip, LeakyReLU and HardSwish each have their rule in
//!   `layer_step` (see `docs/range-analysis.md`); a graph is analysed in the order it runs, with
//!   per-element bounds of every live value.
//!
//! If some bound reaches `2^62`, [`analyse`] refuses with an error naming the layer, the bound in
//! bits, the largest safe `--frac-bits` and the largest safe input bound. The same pass bounds the
//! difference between the secure logits and the plaintext logits ([`RangeReport::logit_error`]).
//!
//! **Calibrated bounds.** Worst-case bounds grow with depth. The model owner may instead declare a
//! bound for every hidden Linear output (measured in plaintext with a margin, [`calibrate`]); the
//! analysis then starts each following layer from that bound, and the secure forward pass checks
//! at run time that every hidden pre-activation lies within it ([`RangeGuard`]): the parties
//! compare, sum the out-of-range indicators and open one bit per batch, "some value was out of
//! range". A batch with that bit set fails with an error. By induction over the layers, the first
//! value that leaves its declared range is computed correctly (all earlier ones were in range, so
//! its layer could not overflow) and is therefore detected.

use std::sync::Arc;

use rayon::prelude::*;

use crate::dealer::MaterialSpec;
use crate::error::{EngineError, Result};
use crate::fixed::{FixedPoint, MAX_ENCODED_BITS};
use crate::nn::plain::{Layer, Sequential};
use crate::nn::source::{LayerShape, ModelSource};
use crate::party::Party;
use crate::protocols::compare::compare_specs;
use crate::share::Share;

/// Input bound a model accepts unless its owner declares another: `|x| <= 16` fits ordinary
/// normalised data (standardised features, pixels in [0, 1] or [-1, 1]).
pub const DEFAULT_INPUT_BOUND: f64 = 16.0;

/// Every accumulator and activation must stay below `2^SAFE_BITS` ring units (the truncation's
/// precondition; it also keeps every comparison's difference below `2^63`).
pub const SAFE_BITS: u32 = 62;

/// What the model owner declares about the values the model will see (stored with the shared
/// model).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelBounds {
    /// Every input feature must satisfy `|x| <= input_bound` (the client checks its own rows).
    pub input_bound: f64,
    /// Calibrated bounds on the output of every hidden Linear layer (all Linear layers but the
    /// last), checked inside the secure computation; `None`: worst-case bounds only.
    pub calibrated: Option<Vec<f64>>,
}

impl Default for ModelBounds {
    fn default() -> Self {
        ModelBounds {
            input_bound: DEFAULT_INPUT_BOUND,
            calibrated: None,
        }
    }
}

impl ModelBounds {
    /// Worst-case bounds from a declared input bound.
    pub fn worst_case(input_bound: f64) -> Self {
        ModelBounds {
            input_bound,
            calibrated: None,
        }
    }
}

/// The bounds of one Linear layer.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerRange {
    /// Index of the layer in the model.
    pub layer: usize,
    /// Its PyTorch-style name.
    pub name: String,
    /// `log2` of the bound on the accumulator (ring units, before truncation).
    pub accumulator_bits: f64,
    /// Bound on the plaintext output (real units).
    pub output_bound: f64,
    /// The calibrated bound checked at run time on this layer's output, if any.
    pub checked: Option<f64>,
}

/// Result of a successful range analysis.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RangeReport {
    /// Fractional bits analysed.
    pub frac_bits: u32,
    /// Declared input bound.
    pub input_bound: f64,
    /// One entry per Linear layer.
    pub layers: Vec<LayerRange>,
    /// Proven bound on `|secure logit - plaintext logit|` (real units) for inputs within the bound.
    pub logit_error: f64,
}

impl RangeReport {
    /// The Linear layer with the least headroom.
    pub fn worst(&self) -> &LayerRange {
        self.layers
            .iter()
            .max_by(|a, b| a.accumulator_bits.total_cmp(&b.accumulator_bits))
            .expect("a model has a Linear layer")
    }

    /// Bits of headroom of the worst layer below `2^62`.
    pub fn headroom_bits(&self) -> f64 {
        SAFE_BITS as f64 - self.worst().accumulator_bits
    }

    /// One line for command output.
    pub fn summary(&self) -> String {
        let w = self.worst();
        let mode = if self.layers.iter().any(|l| l.checked.is_some()) {
            "calibrated bounds, checked at run time"
        } else {
            "worst-case bounds"
        };
        format!(
            "range: inputs within ±{}, {mode}; worst layer {} {}: accumulator < 2^{:.1} of 2^{SAFE_BITS}, headroom {:.1} bits; logits within ±{:.2e} of plaintext",
            self.input_bound,
            w.layer,
            w.name,
            w.accumulator_bits,
            self.headroom_bits(),
            self.logit_error
        )
    }
}

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

/// Why a configuration is unsafe (before suggestions are added).
enum Violation {
    /// A layer could not be read from the model source.
    Read(String),
    Input,
    Layer {
        layer: usize,
        name: String,
        bits: f64,
    },
}

impl From<EngineError> for Violation {
    fn from(e: EngineError) -> Self {
        Violation::Read(e.to_string())
    }
}

/// The largest value of a bound vector (0 for an empty one).
fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Per-element bounds of one value: the secure value in ring units, the plaintext value in real
/// units, and their difference in real units.
#[derive(Clone, Debug)]
struct Bounds {
    ring: Vec<f64>,
    real: Vec<f64>,
    err: Vec<f64>,
}

impl Bounds {
    /// `n` elements with the same bounds.
    fn uniform(n: usize, ring: f64, real: f64, err: f64) -> Bounds {
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
    fn map(&self, f: impl Fn(f64, f64, f64) -> (f64, f64, f64)) -> Bounds {
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
    fn max(&self) -> (f64, f64, f64) {
        (max_of(&self.ring), max_of(&self.real), max_of(&self.err))
    }
}

/// What one layer does to the bounds: the bounds of its output, and the largest value it holds
/// before truncation or comparison (ring units; 0 when it holds nothing new).
struct Step {
    out: Arc<Bounds>,
    peak: f64,
}

/// The bounds of layer `l`'s output from those of its inputs `ins` (per-sample shapes `input`
/// of the first input and `output`), at `frac_bits`; `checked` is the calibrated bound of a
/// hidden Linear layer's output.
fn layer_step(
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

/// Propagate bounds through `model` at `frac_bits`; `Err` names the first unsafe place.
fn propagate(
    model: &(impl ModelSource + ?Sized),
    frac_bits: u32,
    bounds: &ModelBounds,
) -> std::result::Result<RangeReport, Violation> {
    let scale = (1u64 << frac_bits) as f64;
    let eps = 1.0 / scale;
    let b = bounds.input_bound;
    if (b * scale).round() >= (1u64 << MAX_ENCODED_BITS) as f64 {
        return Err(Violation::Input);
    }
    let width: usize = model.input_shape().iter().product();
    let limit = 2f64.powi(SAFE_BITS as i32);
    let calibrated = bounds.calibrated.as_deref().unwrap_or(&[]);
    let mut linear = 0usize;
    let mut layers = Vec::new();
    // Models are shape-checked when built; a hand-edited one that no longer fits is refused by
    // `analyse` before this runs.
    let shapes = model.shapes().unwrap_or_default();
    let wiring = model.wiring();
    // Inputs are rounded to the nearest unit: half an ulp.
    let input = Arc::new(Bounds::uniform(width, (b * scale).round(), b, eps / 2.0));
    // One layer's parameters in plaintext at a time (a memory-mapped model is read on demand).
    let out = wiring.evaluate(input, |idx, ins| {
        let (Some(input), Some(output)) = (shapes.get(wiring.inputs(idx)[0]), shapes.get(idx + 1))
        else {
            return Err(Violation::Read(format!("layer {idx} has no shape")));
        };
        let l = model
            .layer(idx)
            .map_err(|e| Violation::Read(e.to_string()))?;
        let l: &Layer = &l;
        let is_linear = matches!(l, Layer::Linear { .. });
        let checked = if is_linear {
            calibrated.get(linear).copied()
        } else {
            None
        };
        let step = layer_step(l, ins, input, output, frac_bits, checked);
        let bits = step.peak.max(1.0).log2();
        if step.peak >= limit {
            return Err(Violation::Layer {
                layer: idx,
                name: l.name(),
                bits,
            });
        }
        if step.peak > 0.0 || is_linear {
            layers.push(LayerRange {
                layer: idx,
                name: l.name(),
                accumulator_bits: bits,
                output_bound: max_of(&step.out.real),
                checked,
            });
        }
        linear += usize::from(is_linear);
        Ok(step.out)
    })?;
    Ok(RangeReport {
        frac_bits,
        input_bound: b,
        layers,
        logit_error: max_of(&out.err),
    })
}

/// Check that `model` cannot overflow at `fx` for inputs within `bounds`, before anything is
/// shared. The error names the layer, the bound in bits, the largest safe fractional bits and the
/// largest safe input bound.
pub fn analyse(
    model: &(impl ModelSource + ?Sized),
    fx: &FixedPoint,
    bounds: &ModelBounds,
) -> Result<RangeReport> {
    let f = fx.frac_bits();
    let b = bounds.input_bound;
    model.shapes()?;
    if !(b.is_finite() && b > 0.0) {
        return Err(EngineError::Invalid(format!(
            "the input bound must be a positive number, got {b}"
        )));
    }
    let hidden = model
        .layer_shapes()
        .iter()
        .filter(|l| matches!(l, LayerShape::Linear { .. }))
        .count()
        .saturating_sub(1);
    if let Some(c) = &bounds.calibrated {
        if c.len() != hidden {
            return Err(EngineError::Invalid(format!(
                "{} calibrated bounds for a model with {hidden} hidden Linear layers",
                c.len()
            )));
        }
        // Below 2^61 ring units, so `C ± y` stays below 2^63 for every |y| < 2^62.
        let max = 2f64.powi(61) / fx.scale();
        if let Some(v) = c
            .iter()
            .find(|v| !(v.is_finite() && **v > 0.0 && **v < max))
        {
            return Err(EngineError::Invalid(format!(
                "calibrated bounds must be positive numbers below {max:e}, got {v}"
            )));
        }
    }
    let violation = match propagate(model, f, bounds) {
        Ok(report) => return Ok(report),
        Err(Violation::Read(e)) => return Err(EngineError::Format(e)),
        Err(v) => v,
    };
    let safe_f = largest_safe_frac_bits(model, f, bounds, &violation);
    let safe_f = match safe_f {
        Some(g) => format!("the largest safe --frac-bits is {g}"),
        None => format!("no --frac-bits is safe for inputs within ±{b}"),
    };
    let excess = match &violation {
        Violation::Layer { bits, .. } => bits - SAFE_BITS as f64,
        Violation::Input | Violation::Read(_) => f64::INFINITY,
    };
    let safe_b = safe_input_bound(model, f, bounds, excess);
    let safe_b = match safe_b {
        Some(v) => format!("the largest safe input bound at --frac-bits {f} is {v}"),
        None => format!("no input bound is safe at --frac-bits {f}"),
    };
    Err(EngineError::Range(match violation {
        Violation::Read(e) => e,
        Violation::Input => format!(
            "input bound ±{b} cannot be encoded with {f} fractional bits (|x| must stay below 2^{}); {safe_f}, or {safe_b}",
            MAX_ENCODED_BITS - f
        ),
        Violation::Layer { layer, name, bits } => format!(
            "layer {layer} {name} can overflow: its accumulator bound is 2^{bits:.1} ring units, at or above the safe limit 2^{SAFE_BITS}, for inputs within ±{b} at --frac-bits {f}; {safe_f}, or {safe_b}; nothing was shared"
        ),
    }))
}

/// Largest fractional bits below `f` that are safe. Accumulators scale about as `2^(2f)`, so the
/// search starts near `f - excess/2` (a few analyses instead of one per candidate), then climbs
/// while the next value up is still safe.
fn largest_safe_frac_bits(
    model: &(impl ModelSource + ?Sized),
    f: u32,
    bounds: &ModelBounds,
    violation: &Violation,
) -> Option<u32> {
    let ok = |g: u32| propagate(model, g, bounds).is_ok();
    let start = match violation {
        Violation::Layer { bits, .. } => {
            let drop = ((bits - SAFE_BITS as f64) / 2.0).floor().max(0.0) as u32;
            f.saturating_sub(drop).clamp(1, f - 1)
        }
        Violation::Input | Violation::Read(_) => f - 1,
    };
    let mut g = (1..=start).rev().find(|&g| ok(g))?;
    while g + 1 < f && ok(g + 1) {
        g += 1;
    }
    Some(g)
}

/// Largest input bound (3 significant digits, rounded down) that is safe at `frac_bits`, where
/// the declared bound overflows by `excess` bits.
fn safe_input_bound(
    model: &(impl ModelSource + ?Sized),
    frac_bits: u32,
    bounds: &ModelBounds,
    excess: f64,
) -> Option<String> {
    let ok = |b: f64| {
        propagate(
            model,
            frac_bits,
            &ModelBounds {
                input_bound: b,
                calibrated: bounds.calibrated.clone(),
            },
        )
        .is_ok()
    };
    // Bounds are monotone in the input bound: bisect on a log scale, from a bracket guessed by
    // scaling the declared bound down by the excess (bounds are about linear in it).
    let mut hi = bounds.input_bound;
    let guess = hi * 2f64.powf(-excess.min(1e3)) * 0.5;
    let mut lo = if guess.is_normal() && ok(guess) {
        guess
    } else {
        let tiny = 1.0 / (1u64 << frac_bits) as f64;
        if !ok(tiny) {
            return None;
        }
        tiny
    };
    for _ in 0..60 {
        let mid = (lo * hi).sqrt();
        if ok(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi / lo < 1.0 + 1e-3 {
            break;
        }
    }
    // Three significant digits, rounded down, printed exactly as checked.
    let exp = lo.log10().floor() as i32 - 2;
    let r = (lo / 10f64.powi(exp)).floor() * 10f64.powi(exp);
    let text = format!("{:.*}", (-exp).max(0) as usize, r);
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && ok(v) => Some(text),
        _ => Some(format!("{lo}")),
    }
}

/// The client's check of its own inputs `[rows, width]` against the model's declared bound,
/// before it shares anything; rows and columns are counted from 0 in the whole data.
pub fn check_inputs(data: &[f64], width: usize, input_bound: f64) -> Result<()> {
    if let Some(i) = data
        .iter()
        .position(|v| !v.is_finite() || v.abs() > input_bound)
    {
        let (row, col, v) = (i / width.max(1), i % width.max(1), data[i]);
        return Err(if v.is_finite() {
            EngineError::Range(format!(
                "row {row}, column {col}: value {v} is outside the model's declared input bound ±{input_bound} (the model owner can declare a larger bound, e.g. --input-bound)"
            ))
        } else {
            EngineError::Format(format!("row {row}, column {col}: value {v} is not finite"))
        });
    }
    Ok(())
}

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
        let Some(count) = self.count else {
            if self.limits.iter().any(Option::is_some) {
                return Err(EngineError::Invalid(
                    "range guard saw none of the layers it checks".into(),
                ));
            }
            return Ok(());
        };
        // count <= number of checked values < 2^62, so its sign test is exact.
        let flag = p.ltz(&p.neg(&count)?)?;
        let opened = p.open("range check", &[flag.tensor()])?;
        let bit = p.backend().download(&opened[0])?[0];
        if bit != 0 {
            return Err(EngineError::Range(
                "a hidden value left its calibrated range in this batch (the only thing revealed is this one out-of-range flag); nothing of the batch was revealed; recalibrate on more representative data or with a larger margin".into(),
            ));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(i: usize, o: usize, w: f64, b: f64) -> Layer {
        Layer::linear(i, o, vec![w; i * o], vec![b; o]).unwrap()
    }

    #[test]
    fn bounds_follow_the_layers_and_refusals_name_layer_bits_and_safe_settings() {
        // 784 inputs within 120, weights 1: accumulator 784·120·2^(2f) = 2^(16.52 + 2f).
        let m = Sequential::new(vec![
            Layer::Flatten,
            linear(784, 4, 1.0, 0.0),
            Layer::ReLU,
            Layer::Dropout,
            linear(4, 2, 0.5, 1.0),
        ])
        .unwrap();
        let b = ModelBounds::worst_case(120.0);
        let r = analyse(&m, &FixedPoint::new(16).unwrap(), &b).unwrap();
        assert_eq!(r.layers.len(), 2);
        let expect = (784.0f64 * 120.0 * 2f64.powi(32)).log2();
        assert!(
            (r.layers[0].accumulator_bits - expect).abs() < 1e-6,
            "{r:?}"
        );
        assert!((r.layers[0].output_bound - 784.0 * 120.0).abs() < 1e-3);
        // Second layer: 4 inputs of 94080, weight 0.5, bias 1.
        assert!((r.layers[1].output_bound - (2.0 * 94080.0 + 1.0)).abs() < 1e-3);
        assert_eq!(r.worst().layer, 4);
        assert!((r.headroom_bits() - (62.0 - r.layers[1].accumulator_bits)).abs() < 1e-12);
        assert!(
            r.summary().contains("worst layer 4 Linear(4, 2)"),
            "{}",
            r.summary()
        );
        let e = analyse(&m, &FixedPoint::new(23).unwrap(), &b)
            .unwrap_err()
            .to_string();
        // Layer 1 at f = 23: 2^(16.52 + 46) = 2^62.5. At f = 22 layer 4 has 2^61.5 (safe). At
        // f = 23, layer 4 needs 4·2^22·(784·B + 1)·2^23 < 2^62: B < 41.8.
        assert!(
            e.starts_with("layer 1 Linear(784, 4) can overflow: its accumulator bound is 2^62.5"),
            "{e}"
        );
        assert!(e.contains("the largest safe --frac-bits is 22"), "{e}");
        assert!(
            e.contains("the largest safe input bound at --frac-bits 23 is 41.7;"),
            "{e}"
        );
        // An input bound that cannot even be encoded.
        let e = analyse(
            &m,
            &FixedPoint::new(24).unwrap(),
            &ModelBounds::worst_case(200.0),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("input bound ±200 cannot be encoded with 24 fractional bits"),
            "{e}"
        );
        // Bad declarations.
        let bad = |b: ModelBounds| {
            analyse(&m, &FixedPoint::default(), &b)
                .unwrap_err()
                .to_string()
        };
        assert!(bad(ModelBounds::worst_case(0.0)).contains("must be a positive number"));
        assert!(bad(ModelBounds::worst_case(f64::NAN)).contains("must be a positive number"));
        let two = ModelBounds {
            input_bound: 1.0,
            calibrated: Some(vec![1.0, 2.0]),
        };
        assert!(bad(two).contains("2 calibrated bounds for a model with 1 hidden Linear layers"));
    }

    #[test]
    fn convolution_and_pooling_layers_are_bounded_and_refused_by_name() {
        use crate::nn::geometry::Window2d;
        // [2, 5, 7] -> Conv2d(2->3, 3x3, pad 1) with weights 1000: 18 taps per output.
        let conv = Layer::conv2d(
            2,
            3,
            Window2d::square(3, 1, 1),
            vec![1000.0; 3 * 18],
            vec![0.5; 3],
        )
        .unwrap();
        let m = Sequential::with_input(
            vec![
                conv,
                Layer::Affine {
                    scale: vec![2.0, -1.0, 0.5],
                    shift: vec![1.0, 0.0, -1.0],
                },
                Layer::ReLU,
                Layer::AvgPool2d {
                    window: Window2d::square(2, 2, 0),
                    count_include_pad: true,
                },
                Layer::MaxPool2d {
                    window: Window2d::square(1, 1, 0),
                },
                Layer::Flatten,
                linear(3 * 2 * 3, 2, 1.0, 0.0),
            ],
            vec![2, 5, 7],
        )
        .unwrap();
        let b = ModelBounds::worst_case(2.0);
        let f = 16;
        let r = analyse(&m, &FixedPoint::new(f).unwrap(), &b).unwrap();
        // Conv: 18 · round(1000·2^16) · round(2·2^16) ring units; BatchNorm: its output times
        // round(2·2^16).
        let conv_bits = (18.0f64 * 1000.0 * 2.0 * 2f64.powi(2 * f as i32)).log2();
        assert_eq!(r.layers[0].layer, 0);
        assert!(
            (r.layers[0].accumulator_bits - conv_bits).abs() < 1e-6,
            "{r:?}"
        );
        assert!((r.layers[0].output_bound - 36000.5).abs() < 1e-6, "{r:?}");
        assert_eq!(r.layers[1].layer, 1);
        assert!((r.layers[1].output_bound - 72002.0).abs() < 1e-6, "{r:?}");
        // The bounds hold for the plaintext forward pass at the extreme inputs (all ±2).
        for v in [2.0, -2.0] {
            let x = vec![v; 70];
            let mut at = 0;
            m.forward_f64_observed(&x, 1, &mut |l, out| {
                let worst = out.iter().fold(0.0f64, |a, y| a.max(y.abs()));
                if let Some(lr) = r
                    .layers
                    .iter()
                    .find(|lr| lr.name == l.name() && lr.layer == at)
                {
                    assert!(
                        worst <= lr.output_bound,
                        "{} {worst} > {}",
                        lr.name,
                        lr.output_bound
                    );
                }
                at += 1;
            })
            .unwrap();
        }
        // At f = 24 the convolution's accumulator (18·1000·2·2^48 = 2^63.1) is refused by name.
        let e = analyse(&m, &FixedPoint::new(24).unwrap(), &b)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("layer 0 Conv2d"), "{e}");
        assert!(e.contains("nothing was shared"), "{e}");
    }

    #[test]
    fn calibrated_bounds_replace_worst_case_growth() {
        // Ten layers of 64 inputs with weight 1 overflow in the worst case at f = 16; a
        // calibrated bound of 100 on every hidden output makes each layer provably safe.
        let mut layers = vec![linear(64, 64, 1.0, 0.0)];
        for _ in 0..9 {
            layers.push(Layer::ReLU);
            layers.push(linear(64, 64, 1.0, 0.0));
        }
        let m = Sequential::new(layers).unwrap();
        let fx = FixedPoint::default();
        assert!(analyse(&m, &fx, &ModelBounds::worst_case(1.0)).is_err());
        let cal = ModelBounds {
            input_bound: 1.0,
            calibrated: Some(vec![100.0; 9]),
        };
        let r = analyse(&m, &fx, &cal).unwrap();
        assert!(r.layers[..9].iter().all(|l| l.checked == Some(100.0)));
        assert!(r.summary().contains("checked at run time"));
        assert_eq!(ring_limits(&cal, &fx), vec![100 << 16; 9]);
    }

    #[test]
    fn client_check_names_row_and_column() {
        let e = check_inputs(&[0.0, 1.0, 2.0, -3.5], 2, 3.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "row 1, column 1: value -3.5 is outside the model's declared input bound ±3"
            ),
            "{e}"
        );
        assert!(check_inputs(&[3.0, -3.0], 2, 3.0).is_ok());
    }
}
