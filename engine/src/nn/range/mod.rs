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
//! If some bound reaches `2^62` (and the checked comparisons below cannot help), [`analyse`]
//! refuses with an error naming the layer, the bound in bits, the largest safe `--frac-bits` and
//! the largest safe input bound. The same pass bounds the difference between the secure logits
//! and the plaintext logits ([`RangeReport::logit_error`]).
//!
//! **Checked comparisons: deep networks by default.** Worst-case bounds grow with every layer,
//! so a proof from the input to the logits refuses every deep network (VGG16 at CIFAR shape at
//! its twelfth layer, although its activations stay below 4). Where that proof fails and no
//! bounds are calibrated, the analysis runs again with every comparison checked inside the
//! secure computation ([`CompareMode::Checked`], protocol in
//! [`crate::protocols::range_check`]): each ReLU input, max-pool difference and argmax
//! difference is compared by the narrow comparison with its fused range check, which passes
//! every value below `2^29` ring units and guarantees that a passing value is below
//! `1.5·2^30` ([`CHECK_GUARANTEE`]) — provided the value itself is below `2^(top - 2)`
//! (`top` = [`crate::dealer::tables::check_top_bit`]), which this pass proves. So the analysis
//! *re-anchors* after every ReLU at that ring limit and only has to prove each stretch from one
//! ReLU to the next: every accumulator below `2^62`, every compared value below `2^(top - 2)`.
//! The ring limit is fixed by the ring and the fixed-point scale, not measured on the weights;
//! the public plan carries only the mode. By induction over the layers, the first value that
//! leaves its range was computed correctly (all earlier compared values passed, so every layer
//! up to it was exact) and fails its check; the batch then fails with
//! [`crate::error::ErrorKind::OverflowDetected`] before anything of it is revealed. The proof
//! still holds wherever it did: a model proven from input to logits keeps the full-width
//! comparisons and no check.
//!
//! **ReLUs after their max pools.** The shared model runs a ReLU whose output only a max pool
//! reads as `relu(maxpool(x))` (exact: [`crate::nn::rewrite`]), and the analysis follows that
//! order: the moved ReLU compares nothing and does not re-anchor; the pool compares differences
//! of pre-ReLU values (below twice their bound) and the pooled value, then re-anchors as the
//! ReLU did. Where that order cannot be proven and the original one can, the model keeps its
//! ReLUs before the pools ([`RangeReport::relu_after_pool`] is then empty).
//!
//! **Calibrated bounds.** Worst-case bounds grow with depth. The model owner may instead declare a
//! bound for every hidden Linear output (measured in plaintext with a margin, [`calibrate`]); the
//! analysis then starts each following layer from that bound, and the secure forward pass checks
//! at run time that every hidden pre-activation lies within it ([`RangeGuard`]): the parties
//! compare, sum the out-of-range indicators and open one bit per batch, "some value was out of
//! range". A batch with that bit set fails with an error. By induction over the layers, the first
//! value that leaves its declared range is computed correctly (all earlier ones were in range, so
//! its layer could not overflow) and is therefore detected.
//!
//! The module is split by responsibility: the interval rule of every layer kind
//! (`interval`), and the run-time guard of calibrated bounds with the calibration itself
//! (`calibrated`).

mod calibrated;
mod interval;
#[cfg(test)]
mod tests;

pub use calibrated::{calibrate, layer_limits, ring_limits, RangeGuard};

use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::fixed::{FixedPoint, MAX_ENCODED_BITS};
use crate::nn::plain::Layer;
use crate::nn::rewrite::relu_pool_pairs;
use crate::nn::source::{LayerShape, ModelSource};

use interval::{layer_step, max_of, Bounds};

use crate::protocols::compare::CompareMode;
use crate::protocols::range_check::CHECK_GUARANTEE;

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
    /// How the model's comparisons run: [`CompareMode::Full`] where the worst-case bounds
    /// hold from the input to the logits, [`CompareMode::Checked`] where they hold only from
    /// one checked comparison to the next (see the module documentation).
    #[serde(default)]
    pub compare: CompareMode,
    /// The ReLU layers the shared model runs after the max pool that alone reads them
    /// (`relu(maxpool(x))`, [`crate::nn::rewrite`]); the analysis above ran in that order.
    #[serde(default)]
    pub relu_after_pool: Vec<usize>,
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
        } else if self.compare == CompareMode::Checked {
            "worst-case bounds between comparisons, each compared value checked at run time"
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

/// Propagate bounds through `model` at `frac_bits`, with the ReLU → max pool pairs `fused`
/// run as `relu(maxpool(x))` ([`crate::nn::rewrite`]); `Err` names the first unsafe place.
fn propagate(
    model: &(impl ModelSource + ?Sized),
    frac_bits: u32,
    bounds: &ModelBounds,
    compare: CompareMode,
    fused: &[(usize, usize)],
) -> std::result::Result<RangeReport, Violation> {
    let checks = compare == CompareMode::Checked;
    // A checked comparison is exact on values below 2^(top - 2) ring units; it is held to
    // the accumulators' limit 2^SAFE_BITS after scaling by the difference.
    let compared_scale = 2f64.powi(SAFE_BITS as i32 + 2 - compare.check_top(frac_bits) as i32);
    let guarantee = CHECK_GUARANTEE as f64;
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
        let mut step = layer_step(l, ins, input, output, frac_bits, checked);
        if checks {
            // Values compared by a checked comparison: a ReLU's inputs, a max pool's
            // differences. A ReLU's output passed its check: re-anchor at the guarantee. A
            // ReLU moved after its max pool compares nothing where it stood (the identity);
            // the pool compares differences of the pre-ReLU values, then the ReLU checks the
            // pooled value (below the differences' bound) and re-anchors.
            let rin = ins[0].max().0;
            let deferred = fused.iter().any(|&(r, _)| r == idx);
            let relu_after = fused.iter().any(|&(_, p)| p == idx);
            let compared = match l {
                Layer::ReLU if !deferred => rin,
                Layer::MaxPool2d { .. } => 2.0 * rin,
                _ => 0.0,
            };
            step.peak = step.peak.max(compared * compared_scale);
            if (matches!(l, Layer::ReLU) && !deferred) || relu_after {
                step.out = Arc::new(
                    step.out
                        .map(|re, e, ri| (re.min(guarantee * eps + e), e, ri.min(guarantee))),
                );
            }
        }
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
    // The argmax compares differences of two logits.
    let logits = out.max().0;
    if checks && 2.0 * logits * compared_scale >= limit {
        let last = wiring.len().saturating_sub(1);
        return Err(Violation::Layer {
            layer: last,
            name: "argmax".into(),
            bits: (2.0 * logits * compared_scale).log2(),
        });
    }
    Ok(RangeReport {
        frac_bits,
        input_bound: b,
        layers,
        logit_error: max_of(&out.err),
        compare,
        relu_after_pool: fused.iter().map(|&(r, _)| r).collect(),
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
    let fused = relu_pool_pairs(model)?;
    let violation = match propagate(model, f, bounds, CompareMode::Full, &fused) {
        Ok(report) => return Ok(report),
        Err(Violation::Read(e)) => return Err(EngineError::Format(e)),
        Err(v) => v,
    };
    // The proof does not reach the logits: re-anchor at every checked comparison; with the
    // ReLUs before their pools where the rewrite's pool differences do not fit the check's
    // window (see `crate::nn::rewrite`).
    if bounds.calibrated.is_none() {
        for pairs in [&fused[..], &[]] {
            if let Ok(report) = propagate(model, f, bounds, CompareMode::Checked, pairs) {
                return Ok(report);
            }
        }
    }
    let safe_f = largest_safe_frac_bits(model, f, bounds, &violation, &fused);
    let safe_f = match safe_f {
        Some(g) => format!("the largest safe --frac-bits is {g}"),
        None => format!("no --frac-bits is safe for inputs within ±{b}"),
    };
    let excess = match &violation {
        Violation::Layer { bits, .. } => bits - SAFE_BITS as f64,
        Violation::Input | Violation::Read(_) => f64::INFINITY,
    };
    let safe_b = safe_input_bound(model, f, bounds, excess, &fused);
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
    fused: &[(usize, usize)],
) -> Option<u32> {
    let ok = |g: u32| propagate(model, g, bounds, CompareMode::Full, fused).is_ok();
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
    fused: &[(usize, usize)],
) -> Option<String> {
    let ok = |b: f64| {
        propagate(
            model,
            frac_bits,
            &ModelBounds {
                input_bound: b,
                calibrated: bounds.calibrated.clone(),
            },
            CompareMode::Full,
            fused,
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
