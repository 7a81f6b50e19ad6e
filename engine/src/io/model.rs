//! Load a PyTorch `nn.Sequential` state dict saved as safetensors.
//!
//! The architecture is a layer list in PyTorch order (`linear,relu,dropout,linear` or the preset
//! `vgg16-head`); the i-th entry owns the tensors `{prefix}{i}.weight` (`[out, in]`) and
//! `{prefix}{i}.bias` (`[out]`). Dtypes F32, F64, F16 and BF16 are read.

use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::error::{EngineError, Result};
use crate::nn::geometry::Window2d;
use crate::nn::plain::{parse_arch, Layer, LayerKind, Sequential, VGG16_FEATURES};

fn read_file(path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.to_string(),
        source,
    })
}

/// What to do with tensors of the file (under the prefix) that the architecture does not use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnusedTensors {
    /// Refuse the file (the architecture probably does not match it).
    #[default]
    Refuse,
    /// Ignore them.
    Allow,
}

/// How many names an error lists before "and N more".
const LISTED_NAMES: usize = 6;

/// `a, b, c and 12 more`.
fn name_list(names: &[String]) -> String {
    let shown = names.iter().take(LISTED_NAMES).cloned().collect::<Vec<_>>();
    match names.len().saturating_sub(LISTED_NAMES) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// A safetensors parse error in words.
fn describe(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::InvalidHeader => "the header is not valid UTF-8".into(),
        SafeTensorError::InvalidHeaderStart => "the header does not start with '{'".into(),
        SafeTensorError::InvalidHeaderDeserialization => "the header is not valid JSON".into(),
        SafeTensorError::HeaderTooLarge => "the header is larger than 100 MB".into(),
        SafeTensorError::HeaderTooSmall => "the file is shorter than the 8-byte header size".into(),
        SafeTensorError::InvalidHeaderLength => "the header length is larger than the file".into(),
        SafeTensorError::TensorNotFound(n) => format!("tensor '{n}' not found"),
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's shape and dtype do not match its byte range".into()
        }
        SafeTensorError::InvalidOffset(n) => {
            format!("the byte range of tensor '{n}' is invalid (overlaps, gaps or past the end)")
        }
        SafeTensorError::IoError(e) => format!("read error: {e}"),
        SafeTensorError::JsonError(e) => format!("the header is not valid JSON: {e}"),
        SafeTensorError::InvalidTensorView(d, s, n) => {
            format!("a {d:?} tensor of shape {s:?} cannot hold {n} bytes")
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "the tensors do not cover the data section exactly".into()
        }
        SafeTensorError::ValidationOverflow => "a tensor's size overflows".into(),
    }
}

/// Values of tensor `name` as f64, with its shape.
fn tensor_f64(st: &SafeTensors, name: &str, path: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    let t = st.tensor(name).map_err(|_| {
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        EngineError::Format(format!(
            "{path}: tensor '{name}' is missing (file has {}: {})",
            names.len(),
            name_list(&names)
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

/// Load a model from a safetensors file with the given architecture and tensor-name prefix,
/// refusing tensors under the prefix that the architecture does not use.
///
/// The preset `vgg16` reads a whole torchvision VGG16 state dict (`features.{i}.weight`,
/// `classifier.{i}.weight`, ...; the prefix is ignored) for `[3, 224, 224]` inputs.
pub fn load_safetensors_model(path: &str, arch: &str, prefix: &str) -> Result<Sequential> {
    load_safetensors_model_with(path, arch, prefix, UnusedTensors::Refuse)
}

/// [`load_safetensors_model`], choosing what to do with unused tensors.
pub fn load_safetensors_model_with(
    path: &str,
    arch: &str,
    prefix: &str,
    unused: UnusedTensors,
) -> Result<Sequential> {
    let bytes = read_file(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        EngineError::Format(format!(
            "{path}: not a valid safetensors file: {}",
            describe(&e)
        ))
    })?;
    if arch.trim().eq_ignore_ascii_case("vgg16") {
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
    if unused == UnusedTensors::Refuse {
        let used = |n: &str| {
            n.strip_prefix(prefix)
                .and_then(|r| r.split_once('.'))
                .and_then(|(i, t)| Some((i.parse::<usize>().ok()?, t)))
                .is_some_and(|(i, t)| {
                    matches!(kinds.get(i), Some(LayerKind::Linear))
                        && (t == "weight" || t == "bias")
                })
        };
        let mut extra: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| n.starts_with(prefix) && !used(n))
            .cloned()
            .collect();
        if !extra.is_empty() {
            extra.sort();
            return Err(EngineError::Format(format!(
                "{path}: {} tensor(s) under prefix '{prefix}' are not used by --arch {arch}: {} (check --arch and --prefix, or allow them with --allow-unused-tensors)",
                extra.len(),
                name_list(&extra)
            )));
        }
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
