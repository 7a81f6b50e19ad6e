//! Load a PyTorch `nn.Sequential` state dict saved as safetensors.
//!
//! The architecture is a layer list in PyTorch order (`linear,relu,dropout,linear` or the preset
//! `vgg16-head`); the i-th entry owns the tensors `{prefix}{i}.weight` (`[out, in]`) and
//! `{prefix}{i}.bias` (`[out]`). Dtypes F32, F64, F16 and BF16 are read. The presets `vgg16` and
//! `resnet18` read a whole torchvision state dict instead ([`super::presets`]).
//!
//! [`ModelFile`] maps the file into memory and reads each tensor in place when it is shared
//! ([`ModelSource`]): the model is never converted to f64 as a whole. Before mapping anything
//! it checks that the path is a regular file and that the header's length fits in the file.

use std::borrow::Cow;
use std::fs::File;
use std::ops::Range;

use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::error::{EngineError, Result};
use crate::fixed::FixedPoint;
use crate::io::presets::{load_preset, parse_preset};
use crate::io::tensors::{describe, name_list, UnusedTensors};
use crate::nn::plain::{check_layer_outputs, parse_arch, Layer, LayerKind, Sequential};
use crate::nn::source::{encode_transposed, to_sequential, LayerShape, ModelSource};

/// Largest safetensors header accepted (the format's own limit).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// One tensor's place in the file.
#[derive(Clone, Debug)]
struct TensorRef {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Range<usize>,
}

/// A Linear layer's two tensors.
#[derive(Clone, Debug)]
struct LinearRefs {
    weight: TensorRef,
    bias: TensorRef,
}

/// A safetensors model file, memory-mapped, with its architecture resolved and checked.
pub struct ModelFile {
    path: String,
    map: Mmap,
    layers: Vec<(LayerShape, Option<LinearRefs>)>,
}

fn io_err(path: &str, source: std::io::Error) -> EngineError {
    EngineError::Io {
        path: path.to_string(),
        source,
    }
}

impl ModelFile {
    /// Open `path` and resolve the layers of `arch` (tensor names prefixed by `prefix`).
    pub fn open(path: &str, arch: &str, prefix: &str) -> Result<ModelFile> {
        Self::open_with(path, arch, prefix, UnusedTensors::Refuse)
    }

    /// [`ModelFile::open`], choosing what to do with tensors under `prefix` that `arch` does
    /// not use.
    pub fn open_with(
        path: &str,
        arch: &str,
        prefix: &str,
        unused: UnusedTensors,
    ) -> Result<ModelFile> {
        let kinds = parse_arch(arch)?;
        let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
        if !meta.is_file() {
            return Err(EngineError::Format(format!(
                "{path}: not a regular file (a model must be a safetensors file)"
            )));
        }
        let len = meta.len();
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        let mut head = [0u8; 8];
        std::io::Read::read_exact(&mut file, &mut head).map_err(|_| {
            EngineError::Format(format!(
                "{path}: not a valid safetensors file: the file is shorter than the 8-byte header size ({len} bytes)"
            ))
        })?;
        let header = u64::from_le_bytes(head);
        if header > MAX_HEADER_BYTES {
            return Err(EngineError::Format(format!(
                "{path}: not a valid safetensors file: the header is larger than 100 MB (its header claims {header} bytes but the file holds {len})"
            )));
        }
        if 8 + header > len {
            return Err(EngineError::Format(format!(
                "{path}: not a valid safetensors file: the header length is larger than the file (its header claims {header} bytes but the file holds {len})"
            )));
        }
        // SAFETY: the map is read-only; like every reader of a file it assumes no other process
        // truncates or rewrites the file while the model is being loaded.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| {
            EngineError::Format(format!(
                "{path}: not a valid safetensors file: {}",
                describe(&e)
            ))
        })?;
        let base = map.as_ptr() as usize;
        let find = |name: &str| -> Result<TensorRef> {
            let t = st.tensor(name).map_err(|_| {
                let mut names: Vec<String> =
                    st.names().into_iter().map(|s| s.to_string()).collect();
                names.sort();
                EngineError::Format(format!(
                    "{path}: tensor '{name}' is missing (file has {}: {})",
                    names.len(),
                    name_list(&names)
                ))
            })?;
            if !matches!(
                t.dtype(),
                Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16
            ) {
                return Err(EngineError::Format(format!(
                    "{path}: tensor '{name}' has dtype {:?}; expected F32, F64, F16 or BF16",
                    t.dtype()
                )));
            }
            let start = t.data().as_ptr() as usize - base;
            Ok(TensorRef {
                name: name.to_string(),
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                bytes: start..start + t.data().len(),
            })
        };
        let mut layers = Vec::with_capacity(kinds.len());
        let mut width: Option<usize> = None;
        for (i, kind) in kinds.iter().enumerate() {
            layers.push(match kind {
                LayerKind::Linear => {
                    let wname = format!("{prefix}{i}.weight");
                    let bname = format!("{prefix}{i}.bias");
                    let (weight, bias) = (find(&wname)?, find(&bname)?);
                    let (ws, bs) = (&weight.shape, &bias.shape);
                    if ws.len() != 2 {
                        return Err(EngineError::Format(format!(
                            "{path}: tensor '{wname}' has shape {ws:?}; a Linear weight is [out, in]"
                        )));
                    }
                    let (out_f, in_f) = (ws[0], ws[1]);
                    if bs != &[out_f] {
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
                    (
                        LayerShape::Linear {
                            in_features: in_f,
                            out_features: out_f,
                        },
                        Some(LinearRefs { weight, bias }),
                    )
                }
                LayerKind::ReLU => (LayerShape::ReLU, None),
                LayerKind::Dropout => (LayerShape::Dropout, None),
                LayerKind::Flatten => (LayerShape::Flatten, None),
            });
        }
        if width.is_none() {
            return Err(EngineError::Invalid("model has no Linear layer".into()));
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
        drop(st);
        let file = ModelFile {
            path: path.to_string(),
            map,
            layers,
        };
        let names: Vec<String> = file
            .layers
            .iter()
            .map(|(l, _)| match *l {
                LayerShape::Linear {
                    in_features,
                    out_features,
                } => format!("Linear({in_features}, {out_features})"),
                other => format!("{other:?}"),
            })
            .collect();
        if file.in_features() == 0 {
            return Err(EngineError::Invalid(
                "input shape [0] has no elements".into(),
            ));
        }
        check_layer_outputs(&names, &file.shapes()?)?;
        Ok(file)
    }

    /// Input width (of the first Linear layer).
    pub fn in_features(&self) -> usize {
        self.layers
            .iter()
            .find_map(|(l, _)| match l {
                LayerShape::Linear { in_features, .. } => Some(*in_features),
                _ => None,
            })
            .expect("checked at open: has a Linear layer")
    }

    /// Output width (of the last Linear layer).
    pub fn out_features(&self) -> usize {
        self.layers
            .iter()
            .rev()
            .find_map(|(l, _)| match l {
                LayerShape::Linear { out_features, .. } => Some(*out_features),
                _ => None,
            })
            .expect("checked at open: has a Linear layer")
    }

    fn refs(&self, layer: usize) -> Result<&LinearRefs> {
        self.layers
            .get(layer)
            .and_then(|(_, r)| r.as_ref())
            .ok_or_else(|| EngineError::Invalid(format!("layer {layer} is not a Linear layer")))
    }

    /// The raw bytes of a tensor, and a reader of its values as f64.
    fn reader<'a>(&'a self, t: &TensorRef) -> (usize, Box<dyn Fn(usize) -> f64 + Sync + 'a>) {
        let b = &self.map[t.bytes.clone()];
        match t.dtype {
            Dtype::F32 => (
                b.len() / 4,
                Box::new(move |i| {
                    f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes")) as f64
                }),
            ),
            Dtype::F64 => (
                b.len() / 8,
                Box::new(move |i| {
                    f64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"))
                }),
            ),
            Dtype::F16 => (
                b.len() / 2,
                Box::new(move |i| half::f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f64()),
            ),
            _ => (
                b.len() / 2,
                Box::new(move |i| half::bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f64()),
            ),
        }
    }

    /// Check every value of a tensor (finite, encodable), in parallel, without allocating.
    fn check_tensor(&self, t: &TensorRef, fx: &FixedPoint) -> Result<()> {
        let (n, get) = self.reader(t);
        let path = &self.path;
        (0..n)
            .into_par_iter()
            .with_min_len(1 << 16)
            .try_for_each(|i| {
                let v = get(i);
                if !v.is_finite() {
                    return Err(EngineError::Format(format!(
                        "{path}: tensor '{}' has a non-finite value ({v}) at index {i}",
                        t.name
                    )));
                }
                fx.encode_one(v, i)
                    .map(|_| ())
                    .map_err(|e| EngineError::Format(format!("{path}: tensor '{}': {e}", t.name)))
            })
    }

    /// Let the kernel drop the mapped pages of a tensor that has been shared (they are re-read
    /// from the file if needed again), so the mapping does not stay resident.
    fn release(&self, t: &TensorRef) {
        #[cfg(unix)]
        // SAFETY: the map is a private read-only file mapping: dropping its pages only makes
        // later reads fetch them from the file again; no reference into them is held here.
        unsafe {
            let _ = self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                t.bytes.start,
                t.bytes.len(),
            );
        }
        #[cfg(not(unix))]
        let _ = t;
    }

    /// Read the whole model into memory as f64 (for plaintext evaluation of small models).
    pub fn to_sequential(&self) -> Result<Sequential> {
        to_sequential(self)
    }

    /// Values of a tensor as f64 (checked finite).
    fn read_f64(&self, t: &TensorRef) -> Result<Vec<f64>> {
        let (n, get) = self.reader(t);
        let v: Vec<f64> = (0..n).into_par_iter().map(&*get).collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(EngineError::Format(format!(
                "{}: tensor '{}' has a non-finite value ({}) at index {i}",
                self.path, t.name, v[i]
            )));
        }
        Ok(v)
    }
}

impl ModelSource for ModelFile {
    fn layer_shapes(&self) -> Vec<LayerShape> {
        self.layers.iter().map(|(l, _)| *l).collect()
    }

    fn input_shape(&self) -> Vec<usize> {
        vec![self.in_features()]
    }

    fn shapes(&self) -> Result<Vec<Vec<usize>>> {
        let mut shapes = vec![self.input_shape()];
        for (l, _) in &self.layers {
            let next = match *l {
                LayerShape::Linear { out_features, .. } => vec![out_features],
                _ => shapes.last().expect("the input shape").clone(),
            };
            shapes.push(next);
        }
        Ok(shapes)
    }

    fn layer(&self, layer: usize) -> Result<Cow<'_, Layer>> {
        Ok(Cow::Owned(match self.layers.get(layer) {
            Some((
                LayerShape::Linear {
                    in_features,
                    out_features,
                },
                Some(r),
            )) => Layer::linear(
                *in_features,
                *out_features,
                self.read_f64(&r.weight)?,
                self.read_f64(&r.bias)?,
            )?,
            Some((LayerShape::ReLU, _)) => Layer::ReLU,
            Some((LayerShape::Dropout, _)) => Layer::Dropout,
            Some((LayerShape::Flatten, _)) => Layer::Flatten,
            _ => {
                return Err(EngineError::Invalid(format!(
                    "{}: the model has no layer {layer}",
                    self.path
                )))
            }
        }))
    }

    fn check_encodable(&self, fx: &FixedPoint) -> Result<()> {
        for (_, refs) in &self.layers {
            if let Some(r) = refs {
                self.check_tensor(&r.weight, fx)?;
                self.check_tensor(&r.bias, fx)?;
            }
        }
        Ok(())
    }

    fn encode_weight(&self, layer: usize, fx: &FixedPoint, out: &mut [u64]) -> Result<()> {
        let r = self.refs(layer)?;
        let (rows, cols) = (r.weight.shape[0], r.weight.shape[1]);
        let (_, get) = self.reader(&r.weight);
        let label = format!("{}: tensor '{}'", self.path, r.weight.name);
        encode_transposed(rows, cols, get.as_ref(), fx, &label, out)?;
        self.release(&r.weight);
        Ok(())
    }

    fn encode_bias(&self, layer: usize, fx: &FixedPoint, out: &mut [u64]) -> Result<()> {
        let r = self.refs(layer)?;
        let (n, get) = self.reader(&r.bias);
        if n != out.len() {
            return Err(EngineError::Invalid(format!(
                "tensor '{}' has {n} values, {} expected",
                r.bias.name,
                out.len()
            )));
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = fx.encode_one(get(i), i).map_err(|e| {
                EngineError::Format(format!("{}: tensor '{}': {e}", self.path, r.bias.name))
            })?;
        }
        Ok(())
    }
}

/// Load a model from a safetensors file with the given architecture and tensor-name prefix,
/// refusing tensors under the prefix that the architecture does not use, as an in-memory f64
/// model (small models; large ones are shared straight from a [`ModelFile`]).
///
/// The presets `vgg16` and `resnet18` read a whole torchvision state dict (`features.{i}.weight`,
/// `classifier.{i}.weight`, `layer1.0.conv1.weight`, ...; the prefix is ignored) for
/// `[3, 224, 224]` inputs, or `[3, SIZE, SIZE]` with `vgg16:SIZE` / `resnet18:SIZE` (see
/// [`super::presets`]).
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
    if let Some(preset) = parse_preset(arch)? {
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            EngineError::Format(format!(
                "{path}: not a valid safetensors file: {}",
                describe(&e)
            ))
        })?;
        return load_preset(&st, path, preset, unused);
    }
    ModelFile::open_with(path, arch, prefix, unused)?.to_sequential()
}
