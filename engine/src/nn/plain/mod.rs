//! Plaintext models (the model owner's side): PyTorch's layers, connected as a chain
//! (`nn.Sequential`) or as a graph ([`Wiring`]: residual connections, concatenations).

mod builder;
mod eval;

pub use builder::GraphBuilder;

use rand::Rng;

use crate::error::{shape_err, EngineError, Result};
use crate::fixed::FixedPoint;
use crate::nn::geometry::Window2d;
use crate::nn::graph::Wiring;

/// One layer of a plaintext model (PyTorch semantics; images are NCHW). `Add` and `Concat` read
/// two or more values, every other layer one.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Layer {
    /// `y = x·Wᵀ + b` with PyTorch's layout: `weight [out, in]`, `bias [out]`.
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
        /// Row-major `[out, in]`.
        weight: Vec<f64>,
        /// `[out]`.
        bias: Vec<f64>,
    },
    /// 2-D convolution, groups = 1, dilation = 1: `weight [out, in, kh, kw]`, `bias [out]` (a
    /// grouped convolution is imported as the dense one with a block-diagonal weight).
    Conv2d {
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Kernel, stride and padding.
        window: Window2d,
        /// Row-major `[out, in, kh, kw]`.
        weight: Vec<f64>,
        /// `[out]`.
        bias: Vec<f64>,
    },
    /// `max(x, 0)`.
    ReLU,
    /// Identity at inference.
    Dropout,
    /// Flattens `[batch, ...]` to `[batch, features]`.
    Flatten,
    /// Max over each window (padding never wins, as PyTorch's -inf padding).
    MaxPool2d {
        /// Kernel, stride and padding.
        window: Window2d,
    },
    /// Mean over each window.
    AvgPool2d {
        /// Kernel, stride and padding.
        window: Window2d,
        /// Whether padding taps count in the divisor (PyTorch's default: true).
        count_include_pad: bool,
    },
    /// Mean over PyTorch's adaptive windows, to an `output` of `[height, width]`.
    AdaptiveAvgPool2d {
        /// Output height and width.
        output: [usize; 2],
    },
    /// A per-channel affine map `x·scale[c] + shift[c]`, the channel being the first
    /// per-sample axis (`[c]` features or `[c, h, w]` images): a BatchNorm in eval mode
    /// (`scale = γ/√(var+ε)`, `shift = β - mean·scale`), a normalisation in `forward`, a Mul,
    /// Div, Add or Sub by a constant. [`Sequential::fold_affine`] merges it into an adjacent
    /// Linear or Conv2d where that is exact; otherwise it is shared like a weight (a diagonal
    /// fixed operand), never sent in plaintext.
    Affine {
        /// Per-channel scale.
        scale: Vec<f64>,
        /// Per-channel shift.
        shift: Vec<f64>,
    },
    /// `min(max(x, min), max)` with either bound optional (ReLU6: `0, 6`; Hardtanh: `-1, 1`);
    /// the bounds are public hyperparameters, like a kernel size.
    Clip {
        /// Lower bound, if any.
        min: Option<f64>,
        /// Upper bound, if any.
        max: Option<f64>,
    },
    /// `x` for `x >= 0`, `slope·x` below (the slope is a public hyperparameter).
    LeakyReLU {
        /// Slope for negative inputs (PyTorch's `negative_slope`).
        slope: f64,
    },
    /// `x · clip(x + 3, 0, 6) / 6` (PyTorch's `nn.Hardswish`, MobileNetV3's activation).
    HardSwish,
    /// Elementwise sum of two or more values of one shape (a residual connection).
    Add,
    /// Concatenation of two or more values along the first per-sample axis (channels of
    /// `[c, h, w]` images, features of `[f]` vectors).
    Concat,
}

impl Layer {
    /// Number of parameters of this layer.
    pub fn parameters(&self) -> usize {
        match self {
            Layer::Linear { weight, bias, .. } | Layer::Conv2d { weight, bias, .. } => {
                weight.len() + bias.len()
            }
            Layer::Affine { scale, shift } => scale.len() + shift.len(),
            _ => 0,
        }
    }

    /// Whether this layer reads two or more values (`Add`, `Concat`) rather than one.
    pub fn is_multi_input(&self) -> bool {
        matches!(self, Layer::Add | Layer::Concat)
    }

    /// A `Linear` layer from PyTorch-layout parameters, checking their sizes.
    pub fn linear(
        in_features: usize,
        out_features: usize,
        weight: Vec<f64>,
        bias: Vec<f64>,
    ) -> Result<Layer> {
        if weight.len() != in_features * out_features || bias.len() != out_features {
            return Err(shape_err(
                "Linear",
                format!(
                    "weight has {} values and bias {} for Linear({in_features}, {out_features})",
                    weight.len(),
                    bias.len()
                ),
            ));
        }
        Ok(Layer::Linear {
            in_features,
            out_features,
            weight,
            bias,
        })
    }

    /// A `Conv2d` layer from PyTorch-layout parameters, checking their sizes.
    pub fn conv2d(
        in_channels: usize,
        out_channels: usize,
        window: Window2d,
        weight: Vec<f64>,
        bias: Vec<f64>,
    ) -> Result<Layer> {
        let k = in_channels * window.kernel[0] * window.kernel[1];
        if weight.len() != out_channels * k || bias.len() != out_channels || k == 0 {
            return Err(shape_err(
                "Conv2d",
                format!(
                    "weight has {} values and bias {} for Conv2d({in_channels}, {out_channels}, kernel_size={:?})",
                    weight.len(),
                    bias.len(),
                    window.kernel
                ),
            ));
        }
        Ok(Layer::Conv2d {
            in_channels,
            out_channels,
            window,
            weight,
            bias,
        })
    }

    /// PyTorch-style name.
    pub fn name(&self) -> String {
        match self {
            Layer::Linear {
                in_features,
                out_features,
                ..
            } => format!("Linear({in_features}, {out_features})"),
            Layer::Conv2d {
                in_channels,
                out_channels,
                window,
                ..
            } => format!(
                "Conv2d({in_channels}, {out_channels}, kernel_size={:?}, stride={:?}, padding={:?})",
                window.kernel, window.stride, window.padding
            ),
            Layer::ReLU => "ReLU".into(),
            Layer::Dropout => "Dropout".into(),
            Layer::Flatten => "Flatten".into(),
            Layer::MaxPool2d { window } => format!(
                "MaxPool2d(kernel_size={:?}, stride={:?}, padding={:?})",
                window.kernel, window.stride, window.padding
            ),
            Layer::AvgPool2d { window, .. } => format!(
                "AvgPool2d(kernel_size={:?}, stride={:?}, padding={:?})",
                window.kernel, window.stride, window.padding
            ),
            Layer::AdaptiveAvgPool2d { output } => format!("AdaptiveAvgPool2d({output:?})"),
            Layer::Affine { scale, .. } => format!("Affine({})", scale.len()),
            Layer::Clip { min, max } => {
                let b = |v: &Option<f64>| v.map_or("None".to_string(), |v| v.to_string());
                format!("Clip(min={}, max={})", b(min), b(max))
            }
            Layer::LeakyReLU { slope } => format!("LeakyReLU(negative_slope={slope})"),
            Layer::HardSwish => "Hardswish()".into(),
            Layer::Add => "Add".into(),
            Layer::Concat => "Concat".into(),
        }
    }

    /// Per-sample output shape for the per-sample shapes of the values the layer reads, or a
    /// precise error (also for hyperparameters that make no sense, e.g. a Clip whose `min`
    /// exceeds its `max`).
    pub fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let arity_ok = if self.is_multi_input() {
            inputs.len() >= 2
        } else {
            inputs.len() == 1
        };
        if !arity_ok {
            return Err(shape_err(
                "Sequential",
                format!("{} reads {} values", self.name(), inputs.len()),
            ));
        }
        let input = inputs[0];
        let chw = |op: &'static str| match input {
            [c, h, w] => Ok([*c, *h, *w]),
            s => Err(shape_err(
                op,
                format!("{} expects [c, h, w], got {s:?}", self.name()),
            )),
        };
        match self {
            Layer::Linear {
                in_features,
                out_features,
                ..
            } => {
                if input != [*in_features] {
                    return Err(shape_err(
                        "Sequential",
                        format!("{} receives input of shape {input:?}", self.name()),
                    ));
                }
                Ok(vec![*out_features])
            }
            Layer::Conv2d {
                in_channels,
                out_channels,
                window,
                ..
            } => {
                let [c, h, w] = chw("Conv2d")?;
                if c != *in_channels {
                    return Err(shape_err(
                        "Sequential",
                        format!("{} receives {c} channels", self.name()),
                    ));
                }
                let [oh, ow] = window.output_size("Conv2d", h, w)?;
                Ok(vec![*out_channels, oh, ow])
            }
            Layer::ReLU | Layer::Dropout | Layer::HardSwish => Ok(input.to_vec()),
            Layer::Clip { min, max } => {
                let finite = [min, max].iter().all(|b| b.is_none_or(f64::is_finite));
                if !finite || matches!((min, max), (Some(a), Some(b)) if a > b) {
                    return Err(shape_err(
                        "Clip",
                        format!("{}: bounds must be finite with min <= max", self.name()),
                    ));
                }
                Ok(input.to_vec())
            }
            Layer::LeakyReLU { slope } => {
                if !slope.is_finite() {
                    return Err(shape_err("LeakyReLU", format!("slope {slope}")));
                }
                Ok(input.to_vec())
            }
            Layer::Flatten => Ok(vec![input.iter().product()]),
            Layer::MaxPool2d { window } | Layer::AvgPool2d { window, .. } => {
                let [c, h, w] = chw("pool2d")?;
                window.check_pool("pool2d")?;
                let [oh, ow] = window.output_size("pool2d", h, w)?;
                Ok(vec![c, oh, ow])
            }
            Layer::AdaptiveAvgPool2d { output } => {
                let [c, h, w] = chw("AdaptiveAvgPool2d")?;
                if output.contains(&0) || h == 0 || w == 0 {
                    return Err(shape_err(
                        "AdaptiveAvgPool2d",
                        format!("output {output:?} from input {input:?}"),
                    ));
                }
                Ok(vec![c, output[0], output[1]])
            }
            Layer::Affine { scale, shift } => {
                let c = input.first().copied().unwrap_or(0);
                if scale.len() != c || shift.len() != c {
                    return Err(shape_err(
                        "Sequential",
                        format!(
                            "{} with {} shifts receives input of shape {input:?} ({c} channels)",
                            self.name(),
                            shift.len()
                        ),
                    ));
                }
                Ok(input.to_vec())
            }
            Layer::Add => match inputs.iter().find(|s| **s != input) {
                Some(other) => Err(shape_err(
                    "Add",
                    format!("adds values of shapes {input:?} and {other:?}"),
                )),
                None => Ok(input.to_vec()),
            },
            Layer::Concat => {
                let mut out = input.to_vec();
                for s in &inputs[1..] {
                    if s.len() != input.len() || s.is_empty() || s[1..] != input[1..] {
                        return Err(shape_err(
                            "Concat",
                            format!(
                                "concatenates values of shapes {input:?} and {s:?} along their first axis"
                            ),
                        ));
                    }
                    out[0] += s[0];
                }
                Ok(out)
            }
        }
    }

    /// Range analysis in real numbers: a bound on `max |y|` given `max |x| <= input_bounds[i]`
    /// for each value read (worst case over every input within the bounds, exact arithmetic).
    ///
    /// - Linear / Conv2d: `max_o (Σ_i |W[o, i]| · bound + |b[o]|)` — each output is a dot
    ///   product of one weight row (a convolution: one output channel's `in·kh·kw` weights)
    ///   with inputs within the bound; zero padding only lowers it.
    /// - ReLU, Dropout, Flatten, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Concat: the largest
    ///   input bound (a max, a mean or a selection of values within it stays within it).
    /// - Affine: `max_c (|scale[c]| · bound + |shift[c]|)`.
    /// - Clip: the input bound, capped by the larger magnitude of the two bounds when both are
    ///   set; LeakyReLU: `max(1, |slope|) · bound`; Add: the sum of the input bounds.
    pub fn output_bound(&self, input_bounds: &[f64]) -> f64 {
        let bound = input_bounds.iter().copied().fold(0.0, f64::max);
        let rows = |w: &[f64], b: &[f64]| {
            let k = w.len() / b.len().max(1);
            b.iter()
                .enumerate()
                .map(|(o, bo)| {
                    w[o * k..(o + 1) * k].iter().map(|v| v.abs()).sum::<f64>() * bound + bo.abs()
                })
                .fold(0.0, f64::max)
        };
        match self {
            Layer::Linear { weight, bias, .. } | Layer::Conv2d { weight, bias, .. } => {
                rows(weight, bias)
            }
            Layer::Affine { scale, shift } => scale
                .iter()
                .zip(shift)
                .map(|(s, t)| s.abs() * bound + t.abs())
                .fold(0.0, f64::max),
            Layer::Clip {
                min: Some(a),
                max: Some(b),
            } => bound.min(a.abs().max(b.abs())),
            Layer::Clip { min, max } => [min, max]
                .iter()
                .flat_map(|v| v.map(f64::abs))
                .fold(bound, f64::max),
            Layer::LeakyReLU { slope } => slope.abs().max(1.0) * bound,
            Layer::Add => input_bounds.iter().sum(),
            // |x·clip(x + 3, 0, 6)/6| <= |x|: the factor lies in [0, 1].
            Layer::ReLU
            | Layer::HardSwish
            | Layer::Dropout
            | Layer::Flatten
            | Layer::MaxPool2d { .. }
            | Layer::AvgPool2d { .. }
            | Layer::AdaptiveAvgPool2d { .. }
            | Layer::Concat => bound,
        }
    }

    /// Plaintext f64 forward of the values `xs` (each `[batch, ...shape]`, row-major) this layer
    /// reads, of per-sample shapes `inputs` (checked with [`Layer::output_shape`]).
    pub fn forward_f64(&self, xs: &[&[f64]], batch: usize, inputs: &[&[usize]]) -> Vec<f64> {
        eval::forward(self, xs, batch, inputs)
    }
}

/// A plaintext model: layers in topological order, connected by a [`Wiring`] (a chain, as
/// PyTorch's `nn.Sequential`, unless built with [`Sequential::graph`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Sequential {
    /// The layers in order.
    pub layers: Vec<Layer>,
    /// Shape of one input sample: `[features]`, or `[channels, height, width]` for images.
    pub input: Vec<usize>,
    /// Which values each layer reads.
    pub wiring: Wiring,
}

impl Sequential {
    /// Build from layers taking `[in_features]` samples (the first Linear's width), checking
    /// that consecutive shapes fit. Models starting with a convolution or pool need
    /// [`Sequential::with_input`].
    pub fn new(layers: Vec<Layer>) -> Result<Sequential> {
        let first = layers
            .iter()
            .find(|l| !matches!(l, Layer::ReLU | Layer::Dropout | Layer::Flatten));
        let input = match first {
            Some(Layer::Linear { in_features, .. }) => vec![*in_features],
            Some(l) => {
                return Err(EngineError::Invalid(format!(
                    "the input shape of a model starting with {} must be given",
                    l.name()
                )))
            }
            None => return Err(EngineError::Invalid("model has no Linear layer".into())),
        };
        Self::with_input(layers, input)
    }

    /// The tutorial's model: `Linear(1, 1)` with weight 0.5 and bias 0 (its one input 0.0 with
    /// label 0 is classified as class 0), as `demo` runs it.
    pub fn tutorial_linear() -> Sequential {
        Sequential::new(vec![
            Layer::linear(1, 1, vec![0.5], vec![0.0]).expect("a valid 1x1 layer")
        ])
        .expect("a valid model")
    }

    /// Build a chain from layers and the shape of one input sample, checking every layer's
    /// shape.
    pub fn with_input(layers: Vec<Layer>, input: Vec<usize>) -> Result<Sequential> {
        let wiring = Wiring::chain(layers.len());
        Self::graph(layers, input, wiring)
    }

    /// Build a graph: layer `i` reads the values `wiring.inputs(i)` (value 0 is the input,
    /// value `j + 1` the output of layer `j`); checks the wiring and every layer's shapes.
    pub fn graph(layers: Vec<Layer>, input: Vec<usize>, wiring: Wiring) -> Result<Sequential> {
        let model = Sequential {
            layers,
            input,
            wiring,
        };
        model.check()?;
        Ok(model)
    }

    fn check(&self) -> Result<()> {
        if !self
            .layers
            .iter()
            .any(|l| matches!(l, Layer::Linear { .. }))
        {
            return Err(EngineError::Invalid("model has no Linear layer".into()));
        }
        if self.input.contains(&0) || self.input.is_empty() {
            return Err(EngineError::Invalid(format!(
                "input shape {:?} has no elements",
                self.input
            )));
        }
        let elems = self.input.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if elems.is_none_or(|n| n > 1 << 32) {
            return Err(EngineError::Invalid(format!(
                "input shape {:?} has more than 2^32 elements",
                self.input
            )));
        }
        let names: Vec<String> = self.layers.iter().map(Layer::name).collect();
        check_layer_outputs(&names, &self.shapes()?)
    }

    /// Per-sample shapes of the values: the input, then the output of each layer
    /// (`layers.len() + 1` entries; in a chain, entry `i` is what layer `i` receives), or the
    /// first layer whose inputs do not fit.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>> {
        self.wiring.check(self.layers.len())?;
        let mut shapes = vec![self.input.clone()];
        for (i, l) in self.layers.iter().enumerate() {
            let inputs: Vec<&[usize]> = self
                .wiring
                .inputs(i)
                .iter()
                .map(|&v| shapes[v].as_slice())
                .collect();
            let next = l
                .output_shape(&inputs)
                .map_err(|e| EngineError::Invalid(format!("layer {i} {}: {e}", l.name())))?;
            shapes.push(next);
        }
        Ok(shapes)
    }

    /// Input width: elements per sample.
    pub fn in_features(&self) -> usize {
        self.input.iter().product()
    }

    /// Output width (classes).
    pub fn out_features(&self) -> usize {
        self.shapes()
            .ok()
            .and_then(|s| s.last().map(|o| o.iter().product()))
            .unwrap_or(0)
    }

    /// Total parameter count.
    pub fn parameters(&self) -> usize {
        self.layers.iter().map(Layer::parameters).sum()
    }

    /// Multiply-accumulates of one sample's forward pass (Linear and Conv2d products).
    pub fn macs_per_sample(&self) -> u64 {
        let shapes = self.shapes().unwrap_or_default();
        self.layers
            .iter()
            .zip(shapes.iter().skip(1))
            .map(|(l, out)| match l {
                Layer::Linear { weight, .. } => weight.len() as u64,
                Layer::Conv2d {
                    weight,
                    out_channels,
                    ..
                } => (weight.len() / out_channels) as u64 * out.iter().product::<usize>() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Plaintext f64 forward pass of `x [batch, ...input]` (row-major) -> `[batch, out]`.
    pub fn forward_f64(&self, x: &[f64], batch: usize) -> Result<Vec<f64>> {
        self.forward_f64_observed(x, batch, &mut |_, _| {})
    }

    /// [`Self::forward_f64`], calling `observe(layer, output)` after every layer (calibration).
    pub fn forward_f64_observed(
        &self,
        x: &[f64],
        batch: usize,
        observe: &mut dyn FnMut(&Layer, &[f64]),
    ) -> Result<Vec<f64>> {
        let width = self.in_features();
        if x.len() != batch * width {
            return Err(shape_err(
                "forward",
                format!("{} values for batch {batch} x {width}", x.len()),
            ));
        }
        let shapes = self.shapes()?;
        self.wiring.evaluate(x.to_vec(), |i, xs| {
            let l = &self.layers[i];
            let xs: Vec<&[f64]> = xs.iter().map(|v| v.as_slice()).collect();
            let inputs: Vec<&[usize]> = self
                .wiring
                .inputs(i)
                .iter()
                .map(|&v| shapes[v].as_slice())
                .collect();
            let out = l.forward_f64(&xs, batch, &inputs);
            observe(l, &out);
            Ok(out)
        })
    }

    /// Check that every parameter is finite and fits the fixed-point range (before anything is
    /// shared, so a bad model shares nothing).
    pub fn check_encodable(&self, fx: &FixedPoint) -> Result<()> {
        for (i, l) in self.layers.iter().enumerate() {
            check_layer_encodable(l, fx)
                .map_err(|e| EngineError::Format(format!("layer {i} {e}")))?;
        }
        Ok(())
    }
}

/// Check that one layer's parameters and hyperparameters are finite and encodable in `fx`.
pub(crate) fn check_layer_encodable(l: &Layer, fx: &FixedPoint) -> Result<()> {
    let clip_bounds: Vec<f64>;
    let params: Vec<(&str, &[f64])> = match l {
        Layer::Linear { weight, bias, .. } | Layer::Conv2d { weight, bias, .. } => {
            vec![("weight", weight), ("bias", bias)]
        }
        Layer::Affine { scale, shift } => vec![("scale", scale), ("shift", shift)],
        Layer::Clip { min, max } => {
            clip_bounds = [min, max].iter().filter_map(|v| **v).collect();
            vec![("bounds", &clip_bounds)]
        }
        Layer::LeakyReLU { slope } => vec![("slope", std::slice::from_ref(slope))],
        _ => Vec::new(),
    };
    for (what, v) in params {
        fx.check(v)
            .map_err(|e| EngineError::Format(format!("{what}: {e}")))?;
    }
    Ok(())
}

/// Layer kinds for building an architecture from a comma-separated list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// `linear`
    Linear,
    /// `relu`
    ReLU,
    /// `dropout`
    Dropout,
    /// `flatten`
    Flatten,
}

/// Check the per-sample `shapes` (input, then each layer's output) of layers named `names`:
/// no layer may output nothing, and the model must end in `[classes]`.
pub(crate) fn check_layer_outputs(names: &[String], shapes: &[Vec<usize>]) -> Result<()> {
    for (i, (name, out)) in names.iter().zip(&shapes[1..]).enumerate() {
        if out.contains(&0) {
            return Err(shape_err(
                "Sequential",
                format!("layer {i} {name} has no features"),
            ));
        }
    }
    let out = shapes.last().expect("input shape first");
    if out.len() != 1 {
        return Err(shape_err(
            "Sequential",
            format!("the model's output has shape {out:?}; expected [classes] (add a Flatten and a Linear)"),
        ));
    }
    Ok(())
}

/// Parse `linear,relu,dropout,linear` (or the preset `vgg16-head`) into layer kinds.
pub fn parse_arch(arch: &str) -> Result<Vec<LayerKind>> {
    if arch.trim().eq_ignore_ascii_case("vgg16-head") {
        return parse_arch("linear,relu,dropout,linear,relu,dropout,linear");
    }
    arch.split(',')
        .enumerate()
        .map(|(i, s)| match s.trim().to_ascii_lowercase().as_str() {
            "linear" => Ok(LayerKind::Linear),
            "relu" => Ok(LayerKind::ReLU),
            "dropout" => Ok(LayerKind::Dropout),
            "flatten" => Ok(LayerKind::Flatten),
            other => Err(EngineError::Invalid(format!(
                "unknown layer '{other}' at position {i} of --arch (expected linear, relu, dropout, flatten or the preset vgg16-head)"
            ))),
        })
        .collect()
}

/// The torchvision VGG16 classifier head with configurable widths and random weights
/// (PyTorch's default `U(-1/sqrt(in), 1/sqrt(in))` initialisation).
pub fn vgg16_head(input: usize, hidden: usize, classes: usize, rng: &mut impl Rng) -> Sequential {
    let mut linear = |i: usize, o: usize| {
        let bound = 1.0 / (i as f64).sqrt();
        let weight = (0..i * o).map(|_| rng.gen_range(-bound..bound)).collect();
        let bias = (0..o).map(|_| rng.gen_range(-bound..bound)).collect();
        Layer::linear(i, o, weight, bias).expect("sizes match")
    };
    let l0 = linear(input, hidden);
    let l3 = linear(hidden, hidden);
    let l6 = linear(hidden, classes);
    Sequential::new(vec![
        l0,
        Layer::ReLU,
        Layer::Dropout,
        l3,
        Layer::ReLU,
        Layer::Dropout,
        l6,
    ])
    .expect("consistent widths")
}

/// torchvision VGG16's `features`: output channels of each 3x3 convolution (padding 1, each
/// followed by a ReLU), 0 for a 2x2 max pool (stride 2). Entry `i` of the state dict's
/// `features.{i}` numbering advances by 2 per convolution (conv, ReLU) and 1 per pool.
pub const VGG16_FEATURES: [usize; 18] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];

/// A VGG16 on `[3, size, size]` inputs with random weights: the 13 convolutions of
/// [`VGG16_FEATURES`] (He-uniform weights `U(±√(6/fan_in))`, so activations keep their scale
/// through the ReLUs and stay far inside the fixed-point range), then `avgpool` (torchvision:
/// `AdaptiveAvgPool2d((7, 7))`; `None` for the CIFAR-10 variant), Flatten, and the classifier
/// `Linear(·, hidden), ReLU, Dropout, Linear(hidden, hidden), ReLU, Dropout, Linear(hidden,
/// classes)` with PyTorch's default initialisation.
pub fn vgg16(
    size: usize,
    avgpool: Option<[usize; 2]>,
    hidden: usize,
    classes: usize,
    rng: &mut impl Rng,
) -> Result<Sequential> {
    let mut layers = Vec::new();
    let mut c = 3;
    for &oc in &VGG16_FEATURES {
        if oc == 0 {
            layers.push(Layer::MaxPool2d {
                window: Window2d::square(2, 2, 0),
            });
            continue;
        }
        let fan_in = c * 9;
        let b = (6.0 / fan_in as f64).sqrt();
        let weight = (0..oc * fan_in).map(|_| rng.gen_range(-b..b)).collect();
        let bias = (0..oc).map(|_| rng.gen_range(-0.01..0.01)).collect();
        layers.push(Layer::conv2d(
            c,
            oc,
            Window2d::square(3, 1, 1),
            weight,
            bias,
        )?);
        layers.push(Layer::ReLU);
        c = oc;
    }
    let side = size >> 5;
    let features = match avgpool {
        Some(o) => {
            layers.push(Layer::AdaptiveAvgPool2d { output: o });
            c * o[0] * o[1]
        }
        None => c * side * side,
    };
    layers.push(Layer::Flatten);
    let head = vgg16_head(features, hidden, classes, rng);
    layers.extend(head.layers);
    Sequential::with_input(layers, vec![3, size, size])
}

/// Transpose a row-major `[rows, cols]` matrix (cache-blocked: a PyTorch `[out, in]` weight
/// becomes the `[in, out]` right operand of products).
pub fn transposed<T: Copy + Default>(data: &[T], rows: usize, cols: usize) -> Vec<T> {
    const B: usize = 32;
    let mut out = vec![T::default(); rows * cols];
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_the_definition() {
        let (r, c) = (37, 70);
        let m: Vec<usize> = (0..r * c).collect();
        let t = transposed(&m, r, c);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(t[j * r + i], m[i * c + j]);
            }
        }
    }
}
