//! Load a PyTorch `nn.Sequential` state dict saved as safetensors.
//!
//! The architecture is a layer list in PyTorch order (`linear,relu,dropout,linear` or the preset
//! `vgg16-head`); the i-th entry owns the tensors `{prefix}{i}.weight` (`[out, in]`) and
//! `{prefix}{i}.bias` (`[out]`). Dtypes F32, F64, F16 and BF16 are read.
//!
//! [`ModelFile`] maps the file into memory and reads each tensor in place when it is shared
//! ([`ModelSource`]): the model is never converted to f64 as a whole. Before mapping anything
//! it checks that the path is a regular file and that the header's length fits in the file.

use std::fs::File;
use std::ops::Range;

use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::error::{EngineError, Result};
use crate::fixed::FixedPoint;
use crate::nn::plain::{parse_arch, Layer, LayerKind, Sequential};
use crate::nn::source::{encode_transposed, LayerShape, ModelSource};

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
                "{path}: not a valid safetensors file: {len} bytes, shorter than its 8-byte header length"
            ))
        })?;
        let header = u64::from_le_bytes(head);
        if header > MAX_HEADER_BYTES || 8 + header > len {
            return Err(EngineError::Format(format!(
                "{path}: not a valid safetensors file: its header claims {header} bytes but the file holds {len}"
            )));
        }
        // SAFETY: the map is read-only; like every reader of a file it assumes no other process
        // truncates or rewrites the file while the model is being loaded.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| {
            EngineError::Format(format!("{path}: not a valid safetensors file: {e}"))
        })?;
        let base = map.as_ptr() as usize;
        let find = |name: &str| -> Result<TensorRef> {
            let t = st.tensor(name).map_err(|_| {
                let mut names: Vec<String> =
                    st.names().into_iter().map(|s| s.to_string()).collect();
                names.sort();
                EngineError::Format(format!(
                    "{path}: tensor '{name}' is missing (file has: {})",
                    names.join(", ")
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
        drop(st);
        Ok(ModelFile {
            path: path.to_string(),
            map,
            layers,
        })
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
        let mut layers = Vec::with_capacity(self.layers.len());
        for (shape, refs) in &self.layers {
            layers.push(match (shape, refs) {
                (
                    LayerShape::Linear {
                        in_features,
                        out_features,
                    },
                    Some(r),
                ) => {
                    let read = |t: &TensorRef| -> Result<Vec<f64>> {
                        let (n, get) = self.reader(t);
                        let v: Vec<f64> = (0..n).map(get).collect();
                        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                            return Err(EngineError::Format(format!(
                                "{}: tensor '{}' has a non-finite value ({}) at index {i}",
                                self.path, t.name, v[i]
                            )));
                        }
                        Ok(v)
                    };
                    Layer::linear(
                        *in_features,
                        *out_features,
                        read(&r.weight)?,
                        read(&r.bias)?,
                    )?
                }
                (LayerShape::ReLU, _) => Layer::ReLU,
                (LayerShape::Dropout, _) => Layer::Dropout,
                (LayerShape::Flatten, _) => Layer::Flatten,
                (LayerShape::Linear { .. }, None) => unreachable!("Linear layers carry tensors"),
            });
        }
        Sequential::new(layers)
    }
}

impl ModelSource for ModelFile {
    fn layer_shapes(&self) -> Vec<LayerShape> {
        self.layers.iter().map(|(l, _)| *l).collect()
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

/// Load a model from a safetensors file with the given architecture and tensor-name prefix, as
/// an in-memory f64 model (small models; large ones are shared straight from a [`ModelFile`]).
pub fn load_safetensors_model(path: &str, arch: &str, prefix: &str) -> Result<Sequential> {
    ModelFile::open(path, arch, prefix)?.to_sequential()
}
