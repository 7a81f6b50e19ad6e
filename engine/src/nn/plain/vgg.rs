//! VGG16 with random weights for benchmarks and tests: torchvision's classifier head, and the
//! whole network (He-uniform or PyTorch's default initialisation).

use rand::Rng;

use crate::error::Result;
use crate::nn::geometry::Window2d;

use super::{Layer, Sequential};

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
    vgg16_init(size, avgpool, hidden, classes, false, rng)
}

/// [`vgg16`] with PyTorch's default initialisation of every layer, as `torchvision.models.
/// vgg16()` before training without its own init: convolution weights and biases
/// `U(±1/√fan_in)` (`kaiming_uniform_(a=√5)`), so activations shrink layer by layer while the
/// worst-case interval bounds grow (the deep network the range analysis must not refuse).
pub fn vgg16_torch_default(
    size: usize,
    avgpool: Option<[usize; 2]>,
    hidden: usize,
    classes: usize,
    rng: &mut impl Rng,
) -> Result<Sequential> {
    vgg16_init(size, avgpool, hidden, classes, true, rng)
}

/// [`vgg16`] (He-uniform convolutions) or [`vgg16_torch_default`] (`torch_default`).
fn vgg16_init(
    size: usize,
    avgpool: Option<[usize; 2]>,
    hidden: usize,
    classes: usize,
    torch_default: bool,
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
        let (b, bb) = if torch_default {
            let b = 1.0 / (fan_in as f64).sqrt();
            (b, b)
        } else {
            ((6.0 / fan_in as f64).sqrt(), 0.01)
        };
        let weight = (0..oc * fan_in).map(|_| rng.gen_range(-b..b)).collect();
        let bias = (0..oc).map(|_| rng.gen_range(-bb..bb)).collect();
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
