//! Load a PyTorch `nn.Sequential` state dict saved as safetensors.
//!
//! The architecture is a layer list in PyTorch order (`linear,relu,dropout,linear` or the preset
//! `vgg16-head`); the i-th entry owns the tensors `{prefix}{i}.weight` (`[out, in]`) and
//! `{prefix}{i}.bias` (`[out]`). Dtypes F32, F64, F16 and BF16 are read.

use safetensors::{Dtype, SafeTensors};

use crate::error::{EngineError, Result};
use crate::nn::geometry::Window2d;
use crate::nn::plain::{parse_arch, Layer, LayerKind, Sequential, VGG16_FEATURES};

fn read_file(path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.to_string(),
        source,
    })
}

/// Values of tensor `name` as f64, with its shape.
fn tensor_f64(st: &SafeTensors, name: &str, path: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    let t = st.tensor(name).map_err(|_| {
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        EngineError::Format(format!(
            "{path}: tensor '{name}' is missing (file has: {})",
            names.join(", ")
        ))
    })?;
    let bytes = t.data();
    let vals: Vec<f64> = match t.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        other => {
            return Err(EngineError::Format(format!(
                "{path}: tensor '{name}' has dtype {other:?}; expected F32, F64, F16 or BF16"
            )))
        }
    };
    if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
        return Err(EngineError::Format(format!(
            "{path}: tensor '{name}' has a non-finite value ({}) at index {i}",
            vals[i]
        )));
    }
    Ok((t.shape().to_vec(), vals))
}

/// Load a model from a safetensors file with the given architecture and tensor-name prefix.
///
/// The preset `vgg16` reads a whole torchvision VGG16 state dict (`features.{i}.weight`,
/// `classifier.{i}.weight`, ...; the prefix is ignored) for `[3, 224, 224]` inputs.
pub fn load_safetensors_model(path: &str, arch: &str, prefix: &str) -> Result<Sequential> {
    let bytes = read_file(path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| EngineError::Format(format!("{path}: not a valid safetensors file: {e}")))?;
    if arch.trim() == "vgg16" {
        return load_vgg16(&st, path);
    }
    let kinds = parse_arch(arch)?;
    let mut layers = Vec::with_capacity(kinds.len());
    let mut width: Option<usize> = None;
    for (i, kind) in kinds.iter().enumerate() {
        layers.push(match kind {
            LayerKind::Linear => {
                let wname = format!("{prefix}{i}.weight");
                let bname = format!("{prefix}{i}.bias");
                let (ws, w) = tensor_f64(&st, &wname, path)?;
                let (bs, b) = tensor_f64(&st, &bname, path)?;
                if ws.len() != 2 {
                    return Err(EngineError::Format(format!(
                        "{path}: tensor '{wname}' has shape {ws:?}; a Linear weight is [out, in]"
                    )));
                }
                let (out_f, in_f) = (ws[0], ws[1]);
                if bs != [out_f] {
                    return Err(EngineError::Format(format!(
                        "{path}: tensor '{bname}' has shape {bs:?}; expected [{out_f}] to match '{wname}' {ws:?}"
                    )));
                }
                if let Some(prev) = width {
                    if prev != in_f {
                        return Err(EngineError::Format(format!(
                            "{path}: tensor '{wname}' expects {in_f} input features but the previous Linear produces {prev}"
                        )));
                    }
                }
                width = Some(out_f);
                Layer::linear(in_f, out_f, w, b)?
            }
            LayerKind::ReLU => Layer::ReLU,
            LayerKind::Dropout => Layer::Dropout,
            LayerKind::Flatten => Layer::Flatten,
        });
    }
    Sequential::new(layers)
}

/// A `[out, in, kh, kw]` convolution from `{name}.weight` and `{name}.bias`.
fn conv_from(st: &SafeTensors, name: &str, path: &str) -> Result<Layer> {
    let (ws, w) = tensor_f64(st, &format!("{name}.weight"), path)?;
    let (bs, b) = tensor_f64(st, &format!("{name}.bias"), path)?;
    let [oc, ic, kh, kw] = ws[..] else {
        return Err(EngineError::Format(format!(
            "{path}: tensor '{name}.weight' has shape {ws:?}; a Conv2d weight is [out, in, kh, kw]"
        )));
    };
    if bs != [oc] || kh != 3 || kw != 3 {
        return Err(EngineError::Format(format!(
            "{path}: '{name}' has weight {ws:?} and bias {bs:?}; VGG16 uses 3x3 kernels and [out] biases"
        )));
    }
    Layer::conv2d(ic, oc, Window2d::square(3, 1, 1), w, b)
}

/// torchvision's VGG16 (`features`, `avgpool`, `classifier`) from its state dict names.
fn load_vgg16(st: &SafeTensors, path: &str) -> Result<Sequential> {
    let mut layers = Vec::new();
    let mut i = 0;
    for &oc in &VGG16_FEATURES {
        if oc == 0 {
            layers.push(Layer::MaxPool2d {
                window: Window2d::square(2, 2, 0),
            });
            i += 1;
        } else {
            layers.push(conv_from(st, &format!("features.{i}"), path)?);
            layers.push(Layer::ReLU);
            i += 2;
        }
    }
    layers.push(Layer::AdaptiveAvgPool2d { output: [7, 7] });
    layers.push(Layer::Flatten);
    for (j, kind) in parse_arch("vgg16-head")?.into_iter().enumerate() {
        layers.push(match kind {
            LayerKind::Linear => {
                let name = format!("classifier.{j}");
                let (ws, w) = tensor_f64(st, &format!("{name}.weight"), path)?;
                let (_, b) = tensor_f64(st, &format!("{name}.bias"), path)?;
                let [o, inp] = ws[..] else {
                    return Err(EngineError::Format(format!(
                        "{path}: tensor '{name}.weight' has shape {ws:?}; a Linear weight is [out, in]"
                    )));
                };
                Layer::linear(inp, o, w, b)
                    .map_err(|e| EngineError::Format(format!("{path}: '{name}': {e}")))?
            }
            LayerKind::ReLU => Layer::ReLU,
            _ => Layer::Dropout,
        });
    }
    Sequential::with_input(layers, vec![3, 224, 224])
        .map_err(|e| EngineError::Format(format!("{path}: {e}")))
}
