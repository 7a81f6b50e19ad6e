//! Whole torchvision architectures read from their state dicts in safetensors: `--arch vgg16`
//! and `--arch resnet18`, for `[3, 224, 224]` images, or `vgg16:SIZE` / `resnet18:SIZE` for
//! `[3, SIZE, SIZE]` (e.g. `resnet18:32` at CIFAR shape). Widths are read from the tensors, so a
//! narrowed network with torchvision's names loads too. Batch norms become affine maps folded
//! into their convolutions. Tensors the architecture does not read are refused (the file is
//! probably another architecture, e.g. a ResNet-34 given as `resnet18`) unless allowed;
//! `num_batches_tracked` counters are ignored.

use std::cell::RefCell;
use std::collections::BTreeSet;

use safetensors::SafeTensors;

use super::tensors::{name_list, tensor_f64, UnusedTensors};
use crate::error::{EngineError, Result};
use crate::nn::geometry::Window2d;
use crate::nn::plain::GraphBuilder;
use crate::nn::plain::{parse_arch, Layer, LayerKind, Sequential, VGG16_FEATURES};

/// The architectures of the presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresetKind {
    /// torchvision's `vgg16`.
    Vgg16,
    /// torchvision's `resnet18`.
    ResNet18,
}

/// A preset and its input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    /// The architecture.
    pub kind: PresetKind,
    /// Height and width of the `[3, size, size]` inputs.
    pub size: usize,
}

/// The preset `arch` names (`vgg16`, `resnet18`, optionally `:SIZE`), `None` for a layer list,
/// or an error for a preset with a bad size.
pub fn parse_preset(arch: &str) -> Result<Option<Preset>> {
    let a = arch.trim().to_ascii_lowercase();
    let (name, size) = match a.split_once(':') {
        Some((n, s)) => (n.to_string(), Some(s.to_string())),
        None => (a, None),
    };
    let kind = match name.as_str() {
        "vgg16" => PresetKind::Vgg16,
        "resnet18" => PresetKind::ResNet18,
        _ => return Ok(None),
    };
    let size = match size {
        None => 224,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|v| (32..=1024).contains(v))
            .ok_or_else(|| {
                EngineError::Invalid(format!(
                    "--arch {arch}: the input size after ':' must be a number in 32..=1024"
                ))
            })?,
    };
    Ok(Some(Preset { kind, size }))
}

/// Read `preset` from the state dict `st` (file `path`).
pub(crate) fn load_preset(
    st: &SafeTensors,
    path: &str,
    preset: Preset,
    unused: UnusedTensors,
) -> Result<Sequential> {
    let sd = StateDict {
        st,
        path,
        used: RefCell::new(BTreeSet::new()),
    };
    let model = match preset.kind {
        PresetKind::Vgg16 => vgg16(&sd, preset.size),
        PresetKind::ResNet18 => resnet18(&sd, preset.size),
    }
    .map_err(|e| match e {
        EngineError::Format(m) => EngineError::Format(m),
        other => EngineError::Format(format!("{path}: {other}")),
    })?;
    if unused == UnusedTensors::Refuse {
        sd.refuse_unused()?;
    }
    Ok(model.fold_affine())
}

/// A state dict being read: which tensors were used.
struct StateDict<'a> {
    st: &'a SafeTensors<'a>,
    path: &'a str,
    used: RefCell<BTreeSet<String>>,
}

impl StateDict<'_> {
    fn err(&self, msg: String) -> EngineError {
        EngineError::Format(format!("{}: {msg}", self.path))
    }

    /// Tensor `name`'s shape and values.
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        self.used.borrow_mut().insert(name.to_string());
        tensor_f64(self.st, name, self.path)
    }

    fn has(&self, name: &str) -> bool {
        self.st.names().iter().any(|n| *n == name)
    }

    /// Convolution `name` (`.weight` `[out, in, kh, kw]`, `.bias` if `bias`).
    fn conv(&self, name: &str, stride: usize, padding: usize, bias: bool) -> Result<Layer> {
        let (ws, w) = self.tensor(&format!("{name}.weight"))?;
        let [oc, ic, kh, kw] = ws[..] else {
            return Err(self.err(format!(
                "tensor '{name}.weight' has shape {ws:?}; a Conv2d weight is [out, in, kh, kw]"
            )));
        };
        let b = if bias {
            let (bs, b) = self.tensor(&format!("{name}.bias"))?;
            if bs != [oc] {
                return Err(self.err(format!(
                    "tensor '{name}.bias' has shape {bs:?}; expected [{oc}]"
                )));
            }
            b
        } else {
            vec![0.0; oc]
        };
        let window = Window2d {
            kernel: [kh, kw],
            stride: [stride; 2],
            padding: [padding; 2],
        };
        Layer::conv2d(ic, oc, window, w, b).map_err(|e| self.err(format!("'{name}': {e}")))
    }

    /// BatchNorm2d `name` in eval mode (torchvision's eps 1e-5) as its affine map.
    fn batchnorm(&self, name: &str) -> Result<Layer> {
        let mut p = Vec::new();
        for t in ["weight", "bias", "running_mean", "running_var"] {
            p.push(self.tensor(&format!("{name}.{t}"))?.1);
        }
        let c = p[0].len();
        if p.iter().any(|v| v.len() != c) {
            return Err(self.err(format!(
                "'{name}': weight, bias, running_mean and running_var differ in length"
            )));
        }
        let scale: Vec<f64> = (0..c).map(|i| p[0][i] / (p[3][i] + 1e-5).sqrt()).collect();
        let shift = (0..c).map(|i| p[1][i] - p[2][i] * scale[i]).collect();
        Ok(Layer::Affine { scale, shift })
    }

    /// Linear `name` (`.weight` `[out, in]`, `.bias`).
    fn linear(&self, name: &str) -> Result<Layer> {
        let (ws, w) = self.tensor(&format!("{name}.weight"))?;
        let (_, b) = self.tensor(&format!("{name}.bias"))?;
        let [o, inp] = ws[..] else {
            return Err(self.err(format!(
                "tensor '{name}.weight' has shape {ws:?}; a Linear weight is [out, in]"
            )));
        };
        Layer::linear(inp, o, w, b).map_err(|e| self.err(format!("'{name}': {e}")))
    }

    /// Refuse tensors the architecture did not read (`num_batches_tracked` aside).
    fn refuse_unused(&self) -> Result<()> {
        let used = self.used.borrow();
        let mut extra: Vec<String> = self
            .st
            .names()
            .into_iter()
            .filter(|n| !used.contains(*n) && !n.ends_with("num_batches_tracked"))
            .cloned()
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        extra.sort();
        Err(self.err(format!(
            "{} tensor(s) are not used by the architecture: {} (check --arch, or allow them with --allow-unused-tensors)",
            extra.len(),
            name_list(&extra)
        )))
    }
}

/// torchvision's VGG16 (`features`, `avgpool`, `classifier`) from its state dict names.
fn vgg16(sd: &StateDict, size: usize) -> Result<Sequential> {
    let mut layers = Vec::new();
    let mut i = 0;
    for &oc in &VGG16_FEATURES {
        if oc == 0 {
            layers.push(Layer::MaxPool2d {
                window: Window2d::square(2, 2, 0),
            });
            i += 1;
        } else {
            let conv = sd.conv(&format!("features.{i}"), 1, 1, true)?;
            if let Layer::Conv2d { window, .. } = &conv {
                if window.kernel != [3, 3] {
                    return Err(sd.err(format!(
                        "'features.{i}' has a {:?} kernel; VGG16 uses 3x3 kernels",
                        window.kernel
                    )));
                }
            }
            layers.push(conv);
            layers.push(Layer::ReLU);
            i += 2;
        }
    }
    layers.push(Layer::AdaptiveAvgPool2d { output: [7, 7] });
    layers.push(Layer::Flatten);
    for (j, kind) in parse_arch("vgg16-head")?.into_iter().enumerate() {
        layers.push(match kind {
            LayerKind::Linear => sd.linear(&format!("classifier.{j}"))?,
            LayerKind::ReLU => Layer::ReLU,
            _ => Layer::Dropout,
        });
    }
    Sequential::with_input(layers, vec![3, size, size])
}

/// torchvision's ResNet-18: a 7x7 stride-2 stem with batch norm, ReLU and a 3x3 stride-2 max
/// pool; four stages of two BasicBlocks (`conv 3x3, bn, relu, conv 3x3, bn`, plus the
/// shortcut — a 1x1 strided convolution and batch norm where the file has `downsample`
/// tensors — then ReLU), the first block of stages 2-4 with stride 2; global average pooling
/// and `fc`.
fn resnet18(sd: &StateDict, size: usize) -> Result<Sequential> {
    let mut g = GraphBuilder::new();
    let mut v = g.push(sd.conv("conv1", 2, 3, false)?, &[0]);
    v = g.push(sd.batchnorm("bn1")?, &[v]);
    v = g.push(Layer::ReLU, &[v]);
    v = g.push(
        Layer::MaxPool2d {
            window: Window2d::square(3, 2, 1),
        },
        &[v],
    );
    for stage in 1..=4 {
        for block in 0..2 {
            let name = format!("layer{stage}.{block}");
            let stride = if stage > 1 && block == 0 { 2 } else { 1 };
            let mut o = g.push(sd.conv(&format!("{name}.conv1"), stride, 1, false)?, &[v]);
            o = g.push(sd.batchnorm(&format!("{name}.bn1"))?, &[o]);
            o = g.push(Layer::ReLU, &[o]);
            o = g.push(sd.conv(&format!("{name}.conv2"), 1, 1, false)?, &[o]);
            o = g.push(sd.batchnorm(&format!("{name}.bn2"))?, &[o]);
            let shortcut = if sd.has(&format!("{name}.downsample.0.weight")) {
                let d = g.push(
                    sd.conv(&format!("{name}.downsample.0"), stride, 0, false)?,
                    &[v],
                );
                g.push(sd.batchnorm(&format!("{name}.downsample.1"))?, &[d])
            } else {
                v
            };
            o = g.push(Layer::Add, &[o, shortcut]);
            v = g.push(Layer::ReLU, &[o]);
        }
    }
    v = g.push(Layer::AdaptiveAvgPool2d { output: [1, 1] }, &[v]);
    v = g.push(Layer::Flatten, &[v]);
    g.push(sd.linear("fc")?, &[v]);
    g.build(vec![3, size, size])
}
