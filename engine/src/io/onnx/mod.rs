//! Import a PyTorch model exported to ONNX (`torch.onnx.export`) as a [`Sequential`].
//!
//! The file is decoded with `prost` against the subset of `onnx.proto` below (field numbers
//! from the ONNX specification; unknown fields are skipped). Supported: `Conv` (groups 1,
//! dilation 1, symmetric padding), `BatchNormalization` (eval; folded into a preceding Conv),
//! `Relu`, `MaxPool`, `AveragePool` (`ceil_mode` 0), `GlobalAveragePool`, `Flatten` (axis 1),
//! `Reshape` to `[batch, features]`, `Gemm`, `MatMul`, `Add` of a bias, `Dropout`, `Identity`,
//! and `Constant`. The graph must be a chain from its one data input to its one output; an
//! unsupported op or any branching is refused with an error naming the node and the op.

use std::collections::HashMap;

use prost::Message;

use crate::error::{EngineError, Result};
use crate::nn::geometry::Window2d;
use crate::nn::plain::{transposed, Layer, Sequential};

/// `onnx.ModelProto` (subset).
#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

/// `onnx.GraphProto` (subset).
#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto` (subset).
#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

/// `onnx.AttributeProto` (subset).
#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(float, tag = "2")]
    f: f32,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(bytes = "vec", tag = "4")]
    s: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    t: Option<TensorProto>,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
}

/// `onnx.TensorProto` (subset).
#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(int64, repeated, tag = "7")]
    int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
    #[prost(double, repeated, tag = "10")]
    double_data: Vec<f64>,
    #[prost(int32, tag = "14")]
    data_location: i32,
}

/// `onnx.ValueInfoProto` (subset).
#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

/// `onnx.TypeProto` (tensor types only).
#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
}

/// `onnx.TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

/// `onnx.TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

/// `onnx.TensorShapeProto.Dimension` (`dim_value` or a symbolic `dim_param`).
#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

// TensorProto.DataType values.
const FLOAT: i32 = 1;
const INT64: i32 = 7;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;
const BFLOAT16: i32 = 16;

/// A constant tensor: shape and values as f64.
#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    values: Vec<f64>,
}

fn fmt_err(path: &str, msg: impl std::fmt::Display) -> EngineError {
    EngineError::Format(format!("{path}: {msg}"))
}

fn tensor_values(path: &str, t: &TensorProto) -> Result<Const> {
    let name = &t.name;
    if t.data_location == 1 {
        return Err(fmt_err(
            path,
            format!("tensor '{name}' keeps its data in an external file, which is not supported"),
        ));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| fmt_err(path, format!("tensor '{name}' has a negative dimension")))?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            fmt_err(
                path,
                format!("tensor '{name}' has dimensions {dims:?} too large"),
            )
        })?;
    let raw = &t.raw_data;
    let values: Vec<f64> = match t.data_type {
        FLOAT if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        FLOAT => t.float_data.iter().map(|&v| v as f64).collect(),
        DOUBLE if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        DOUBLE => t.double_data.clone(),
        FLOAT16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        BFLOAT16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        INT64 if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
            .collect(),
        INT64 => t.int64_data.iter().map(|&v| v as f64).collect(),
        other => {
            return Err(fmt_err(
                path,
                format!("tensor '{name}' has data type {other}; expected float, double, float16, bfloat16 or int64"),
            ))
        }
    };
    if values.len() != count {
        return Err(fmt_err(
            path,
            format!(
                "tensor '{name}' holds {} values for shape {dims:?}",
                values.len()
            ),
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(fmt_err(
            path,
            format!(
                "tensor '{name}' has a non-finite value ({}) at index {i}",
                values[i]
            ),
        ));
    }
    Ok(Const { dims, values })
}

/// One node being translated: its name and op for error messages, its attributes and its
/// constant inputs.
struct NodeCtx<'a> {
    path: &'a str,
    node: &'a NodeProto,
    consts: &'a HashMap<String, Const>,
}

impl NodeCtx<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> EngineError {
        fmt_err(
            self.path,
            format!("node '{}' ({}): {msg}", self.node.name, self.node.op_type),
        )
    }

    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }

    fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f)
    }

    fn ints(&self, name: &str) -> Option<Vec<usize>> {
        self.attr(name)
            .map(|a| a.ints.iter().map(|&v| v.max(0) as usize).collect())
    }

    /// The constant input at position `i` (`None` when absent or empty).
    fn input_const(&self, i: usize) -> Result<Option<&Const>> {
        match self.node.input.get(i).filter(|n| !n.is_empty()) {
            None => Ok(None),
            Some(n) => {
                self.consts.get(n).map(Some).ok_or_else(|| {
                    self.err(format!("input '{n}' must be a constant (initializer)"))
                })
            }
        }
    }

    fn required_const(&self, i: usize, what: &str) -> Result<&Const> {
        self.input_const(i)?
            .ok_or_else(|| self.err(format!("missing {what} input")))
    }

    /// Kernel, strides and symmetric pads of a Conv or pool; refuses dilation, asymmetric
    /// padding, `auto_pad` and `ceil_mode`.
    fn window(&self, kernel: [usize; 2]) -> Result<Window2d> {
        if let Some(a) = self.attr("auto_pad") {
            let v = String::from_utf8_lossy(&a.s);
            if !(v.is_empty() || v == "NOTSET") {
                return Err(self.err(format!("auto_pad {v} is not supported (use explicit pads)")));
            }
        }
        if let Some(d) = self.ints("dilations") {
            if d.iter().any(|&v| v != 1) {
                return Err(self.err(format!("dilations {d:?} are not supported")));
            }
        }
        if self.int("ceil_mode", 0) != 0 {
            return Err(self.err("ceil_mode 1 is not supported"));
        }
        let stride = match self.ints("strides") {
            None => [1, 1],
            Some(s) if s.len() == 2 => [s[0], s[1]],
            Some(s) => return Err(self.err(format!("strides {s:?} are not 2-D"))),
        };
        let padding = match self.ints("pads") {
            None => [0, 0],
            Some(p) if p.len() == 4 && p[0] == p[2] && p[1] == p[3] => [p[0], p[1]],
            Some(p) => {
                return Err(self.err(format!(
                    "pads {p:?} are not symmetric 2-D padding [top, left, bottom, right]"
                )))
            }
        };
        Ok(Window2d {
            kernel,
            stride,
            padding,
        })
    }

    fn pool_kernel(&self) -> Result<[usize; 2]> {
        match self.ints("kernel_shape") {
            Some(k) if k.len() == 2 => Ok([k[0], k[1]]),
            k => Err(self.err(format!("kernel_shape {k:?} is not 2-D"))),
        }
    }
}

/// The per-sample input shape from the graph input `[N, ...]`.
fn input_shape(path: &str, v: &ValueInfoProto) -> Result<Vec<usize>> {
    let dims = v
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.as_slice())
        .ok_or_else(|| {
            fmt_err(
                path,
                format!("graph input '{}' has no tensor shape", v.name),
            )
        })?;
    if dims.len() < 2 {
        return Err(fmt_err(
            path,
            format!(
                "graph input '{}' has {} dimensions; expected [N, ...]",
                v.name,
                dims.len()
            ),
        ));
    }
    dims[1..]
        .iter()
        .map(|d| match d.dim_value {
            Some(v) if v > 0 => Ok(v as usize),
            _ => Err(fmt_err(
                path,
                format!(
                    "graph input '{}' has a symbolic or empty non-batch dimension ({:?})",
                    v.name,
                    d.dim_param.clone().unwrap_or_default()
                ),
            )),
        })
        .collect()
}

/// Load an ONNX model exported from PyTorch as a [`Sequential`] (BatchNorm folded into the
/// preceding convolutions).
pub fn load_onnx_model(path: &str) -> Result<Sequential> {
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.to_string(),
        source,
    })?;
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| fmt_err(path, format!("not a valid ONNX file: {e}")))?;
    let graph = model
        .graph
        .ok_or_else(|| fmt_err(path, "not a valid ONNX file: no graph"))?;
    let mut consts: HashMap<String, Const> = HashMap::new();
    for t in &graph.initializer {
        consts.insert(t.name.clone(), tensor_values(path, t)?);
    }
    for n in graph.node.iter().filter(|n| n.op_type == "Constant") {
        let t = n
            .attribute
            .iter()
            .find(|a| a.name == "value")
            .and_then(|a| a.t.as_ref())
            .ok_or_else(|| {
                fmt_err(
                    path,
                    format!("node '{}' (Constant): no tensor 'value'", n.name),
                )
            })?;
        if let Some(out) = n.output.first() {
            consts.insert(out.clone(), tensor_values(path, t)?);
        }
    }
    let data_inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|v| !consts.contains_key(&v.name))
        .collect();
    let [input] = data_inputs[..] else {
        return Err(fmt_err(
            path,
            format!(
                "the graph has {} data inputs; expected exactly one",
                data_inputs.len()
            ),
        ));
    };
    let sample = input_shape(path, input)?;
    let [output] = &graph.output[..] else {
        return Err(fmt_err(
            path,
            format!(
                "the graph has {} outputs; expected exactly one",
                graph.output.len()
            ),
        ));
    };

    // Walk the chain: each data tensor must feed exactly one node.
    let compute: Vec<&NodeProto> = graph
        .node
        .iter()
        .filter(|n| n.op_type != "Constant")
        .collect();
    let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    for n in &compute {
        let data: Vec<&String> = n
            .input
            .iter()
            .filter(|i| !i.is_empty() && !consts.contains_key(*i))
            .collect();
        if data.len() != 1 {
            return Err(fmt_err(
                path,
                format!(
                    "node '{}' ({}) has {} data inputs {:?}; only chains of single-input layers are supported",
                    n.name,
                    n.op_type,
                    data.len(),
                    data
                ),
            ));
        }
        consumers.entry(data[0].as_str()).or_default().push(n);
    }
    let mut layers: Vec<Layer> = Vec::new();
    let mut cur = input.name.as_str();
    let mut visited = 0;
    let mut shape = sample.clone();
    while let Some(next) = consumers.get(cur) {
        let node = match next[..] {
            [n] => n,
            _ => {
                let names: Vec<String> = next
                    .iter()
                    .map(|n| format!("'{}' ({})", n.name, n.op_type))
                    .collect();
                return Err(fmt_err(
                    path,
                    format!(
                        "the graph branches: tensor '{cur}' feeds nodes {}; only chains are supported",
                        names.join(" and ")
                    ),
                ));
            }
        };
        visited += 1;
        let ctx = NodeCtx {
            path,
            node,
            consts: &consts,
        };
        if node
            .output
            .iter()
            .skip(1)
            .any(|o| consumers.contains_key(o.as_str()))
        {
            return Err(ctx.err("a secondary output is used; only chains are supported"));
        }
        for l in translate(&ctx, &shape, layers.last_mut())? {
            shape = l.output_shape(&[&shape]).map_err(|e| ctx.err(e))?;
            layers.push(l);
        }
        cur = node
            .output
            .first()
            .map(String::as_str)
            .ok_or_else(|| ctx.err("no output"))?;
    }
    if visited != compute.len() {
        let on_chain: Vec<&str> = {
            let mut v = vec![input.name.as_str()];
            let mut t = input.name.as_str();
            while let Some([n]) = consumers.get(t).map(|v| &v[..]) {
                t = n.output.first().map(String::as_str).unwrap_or("");
                v.push(t);
            }
            v
        };
        let stray = compute
            .iter()
            .find(|n| !n.input.iter().any(|i| on_chain.contains(&i.as_str())));
        return Err(fmt_err(
            path,
            match stray {
                Some(n) => format!(
                    "node '{}' ({}) is not on the chain from input '{}'",
                    n.name, n.op_type, input.name
                ),
                None => format!(
                    "{} of {} nodes are not on the chain from input '{}'",
                    compute.len() - visited,
                    compute.len(),
                    input.name
                ),
            },
        ));
    }
    if cur != output.name {
        return Err(fmt_err(
            path,
            format!(
                "the chain ends at tensor '{cur}', not at the graph output '{}'",
                output.name
            ),
        ));
    }
    Ok(Sequential::with_input(layers, sample)?.fold_affine())
}

/// Translate one node into layers (`prev` is the last layer so far, for bias folding).
fn translate(ctx: &NodeCtx, shape: &[usize], prev: Option<&mut Layer>) -> Result<Vec<Layer>> {
    let op = ctx.node.op_type.as_str();
    Ok(match op {
        "Relu" => vec![Layer::ReLU],
        "Dropout" | "Identity" => vec![Layer::Dropout],
        "Flatten" => {
            if ctx.int("axis", 1) != 1 {
                return Err(ctx.err("only axis 1 is supported"));
            }
            vec![Layer::Flatten]
        }
        "Reshape" => {
            let target = ctx.required_const(1, "shape")?;
            let per: usize = shape.iter().product();
            let t: Vec<i64> = target.values.iter().map(|&v| v as i64).collect();
            let flat = t.len() == 2 && (t[1] == -1 || t[1] == per as i64) && t[0] != per as i64;
            if !flat {
                return Err(ctx.err(format!(
                    "reshape of {shape:?} samples to {t:?} is not a flatten to [batch, {per}]"
                )));
            }
            vec![Layer::Flatten]
        }
        "Conv" => {
            if ctx.int("group", 1) != 1 {
                return Err(ctx.err("groups other than 1 are not supported"));
            }
            let w = ctx.required_const(1, "weight")?;
            let [oc, ic, kh, kw] = w.dims[..] else {
                return Err(ctx.err(format!(
                    "weight shape {:?} is not [out, in, kh, kw]",
                    w.dims
                )));
            };
            if let Some(k) = ctx.ints("kernel_shape") {
                if k != [kh, kw] {
                    return Err(ctx.err(format!(
                        "kernel_shape {k:?} does not match weight {:?}",
                        w.dims
                    )));
                }
            }
            let bias = match ctx.input_const(2)? {
                Some(b) if b.values.len() == oc => b.values.clone(),
                Some(b) => {
                    return Err(ctx.err(format!("bias shape {:?} for {oc} channels", b.dims)))
                }
                None => vec![0.0; oc],
            };
            vec![
                Layer::conv2d(ic, oc, ctx.window([kh, kw])?, w.values.clone(), bias)
                    .map_err(|e| ctx.err(e))?,
            ]
        }
        "BatchNormalization" => {
            if ctx.int("training_mode", 0) != 0 {
                return Err(ctx.err("training_mode is not supported (export in eval mode)"));
            }
            let eps = ctx.float("epsilon", 1e-5) as f64;
            let [g, b, m, v] = [1, 2, 3, 4].map(|i| ctx.required_const(i, "scale/bias/mean/var"));
            let (g, b, m, v) = (g?, b?, m?, v?);
            let c = g.values.len();
            if [b, m, v].iter().any(|t| t.values.len() != c) {
                return Err(ctx.err("scale, bias, mean and var differ in length"));
            }
            let scale: Vec<f64> = (0..c)
                .map(|i| g.values[i] / (v.values[i] + eps).sqrt())
                .collect();
            let shift = (0..c)
                .map(|i| b.values[i] - m.values[i] * scale[i])
                .collect();
            vec![Layer::Affine { scale, shift }]
        }
        "MaxPool" => {
            if ctx.int("storage_order", 0) != 0 {
                return Err(ctx.err("storage_order 1 is not supported"));
            }
            vec![Layer::MaxPool2d {
                window: ctx.window(ctx.pool_kernel()?)?,
            }]
        }
        "AveragePool" => vec![Layer::AvgPool2d {
            window: ctx.window(ctx.pool_kernel()?)?,
            count_include_pad: ctx.int("count_include_pad", 0) != 0,
        }],
        "GlobalAveragePool" => vec![Layer::AdaptiveAvgPool2d { output: [1, 1] }],
        "Gemm" => {
            if ctx.int("transA", 0) != 0 {
                return Err(ctx.err("transA 1 is not supported"));
            }
            let (alpha, beta) = (
                ctx.float("alpha", 1.0) as f64,
                ctx.float("beta", 1.0) as f64,
            );
            let b = ctx.required_const(1, "B")?;
            let [r, c] = b.dims[..] else {
                return Err(ctx.err(format!("B shape {:?} is not 2-D", b.dims)));
            };
            // PyTorch's Linear exports transB = 1: B is [out, in].
            let (out, inp, weight) = if ctx.int("transB", 0) != 0 {
                (r, c, b.values.clone())
            } else {
                (c, r, transposed(&b.values, r, c))
            };
            let weight = weight.into_iter().map(|v| v * alpha).collect();
            let bias = match ctx.input_const(2)? {
                Some(t) if t.values.len() == out => t.values.iter().map(|v| v * beta).collect(),
                Some(t) if t.values.len() == 1 => vec![t.values[0] * beta; out],
                Some(t) => return Err(ctx.err(format!("C shape {:?} for {out} outputs", t.dims))),
                None => vec![0.0; out],
            };
            vec![Layer::linear(inp, out, weight, bias).map_err(|e| ctx.err(e))?]
        }
        "MatMul" => {
            let b = ctx.required_const(1, "B")?;
            let [inp, out] = b.dims[..] else {
                return Err(ctx.err(format!("B shape {:?} is not 2-D", b.dims)));
            };
            let weight = transposed(&b.values, inp, out);
            vec![Layer::linear(inp, out, weight, vec![0.0; out]).map_err(|e| ctx.err(e))?]
        }
        "Add" => {
            let t = ctx
                .input_const(1)?
                .or(ctx.input_const(0).ok().flatten())
                .ok_or_else(|| ctx.err("needs a constant operand"))?;
            match prev {
                Some(Layer::Linear { bias, .. }) if t.values.len() == bias.len() => {
                    bias.iter_mut().zip(&t.values).for_each(|(b, v)| *b += v);
                }
                Some(Layer::Conv2d { bias, .. })
                    if t.values.len() == bias.len() && t.dims.iter().skip(1).all(|&d| d == 1) =>
                {
                    bias.iter_mut().zip(&t.values).for_each(|(b, v)| *b += v);
                }
                _ => {
                    return Err(ctx.err(format!(
                        "only a bias add directly after MatMul, Gemm or Conv is supported (constant of shape {:?})",
                        t.dims
                    )))
                }
            }
            Vec::new()
        }
        _ => return Err(ctx.err("unsupported op")),
    })
}
