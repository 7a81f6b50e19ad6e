//! Import a PyTorch model exported to ONNX (`torch.onnx.export`) as a [`Sequential`] graph.
//!
//! The file is decoded with `prost` against a subset of `onnx.proto` ([`proto`]). Nodes are read
//! in the graph's (topological) order:
//!
//! - **Constants and shape arithmetic are evaluated at import** ([`constant`]): initializers,
//!   `Constant`, and `Shape`, `Gather`, `Unsqueeze`, `Squeeze`, `Concat`, `Slice`, `Cast`,
//!   `Reshape`, `ConstantOfShape`, `Identity`, `Add`/`Sub`/`Mul`/`Div`, `Neg`, `Sqrt`,
//!   `Reciprocal` on constants, with the batch size kept symbolic. So
//!   `x.view(x.size(0), -1)` exported with dynamic axes or without constant folding (Shape,
//!   Gather, Unsqueeze, Concat, Reshape) is a plain flatten.
//! - **Every other node becomes layers** ([`node`]): `Conv` (any groups: a grouped convolution
//!   is the dense one with a block-diagonal weight; symmetric padding, dilation 1), `Gemm`,
//!   `MatMul`, `Relu`, `LeakyRelu`, `Clip` (ReLU6, Hardtanh), `HardSwish`, `BatchNormalization` (eval),
//!   `MaxPool`, `AveragePool`, `GlobalAveragePool`, `GlobalMaxPool`, `ReduceMean` over H and W,
//!   `Flatten` and reshapes to `[batch, features]`, `Add`/`Sum` of data (residual
//!   connections), `Concat` of data along channels, and `Add`/`Sub`/`Mul`/`Div` by constants
//!   (per-channel affine maps). `Pad` with zeros folds into the `Conv` or `AveragePool` that
//!   reads it (a default `nn.AvgPool2d`, `count_include_pad=True`, is exported as Pad +
//!   AveragePool: the padded zeros count in the divisor exactly as in PyTorch). `Dropout` and
//!   `Identity` vanish. A trailing `Softmax`, `LogSoftmax` or `Sigmoid` is dropped with a note
//!   (only the argmax is revealed, and they do not change it); anywhere else it is refused.
//! - Affine maps are folded into adjacent Linear or Conv2d layers where exact
//!   ([`Sequential::fold_affine`]).
//!
//! A graph exported in training mode is refused, naming its first training-mode node and
//! saying to export with `model.eval()`; every other op is refused naming the node and the op,
//! with what the user can do instead.

mod constant;
mod node;
mod proto;

use std::collections::HashMap;

use crate::error::{EngineError, Result};
use crate::nn::graph::Wiring;
use crate::nn::plain::{Layer, Sequential};

use constant::Const;
use proto::{decode_model, fmt_err, tensor_values, GraphProto, NodeProto, ValueInfoProto};

/// An imported model and what the import changed that the user should know (e.g. a trailing
/// softmax dropped).
#[derive(Clone, Debug)]
pub struct OnnxImport {
    /// The model (affine maps folded where exact).
    pub model: Sequential,
    /// One line per change that leaves the predictions as they are.
    pub notes: Vec<String>,
}

/// Load an ONNX model exported from PyTorch (see the module documentation); notes on dropped
/// ops are logged.
pub fn load_onnx_model(path: &str) -> Result<Sequential> {
    let import = import_onnx(path)?;
    for n in &import.notes {
        tracing::info!("{n}");
    }
    Ok(import.model)
}

/// Import an ONNX model exported from PyTorch, with notes on what the import dropped.
pub fn import_onnx(path: &str) -> Result<OnnxImport> {
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.to_string(),
        source,
    })?;
    let graph = decode_model(path, &bytes)?;
    drop(bytes);
    Builder::new(path, &graph)?.run(&graph)
}

/// [`import_onnx`] on a file's bytes already in memory (a model exported to a buffer);
/// `name` stands for the file in error messages.
pub fn import_onnx_bytes(name: &str, bytes: &[u8]) -> Result<OnnxImport> {
    let graph = decode_model(name, bytes)?;
    Builder::new(name, &graph)?.run(&graph)
}

/// A data value of the model under construction, as the graph's nodes see it.
#[derive(Clone, Debug)]
struct Data {
    /// The model's value (0: the input; `i + 1`: layer `i`'s output).
    value: usize,
    /// Its per-sample shape.
    shape: Vec<usize>,
    /// The per-sample shape the graph gives it (a reshape or squeeze changes only this; a
    /// flatten is inserted when a layer reads a different rank-1 view).
    view: Vec<usize>,
    /// An op waiting for the node that reads it.
    pending: Option<Pending>,
}

/// An op that is folded into what reads its output, or is allowed only as the graph's last.
#[derive(Clone, Debug)]
enum Pending {
    /// Zero padding `[top, left, bottom, right]` by node `node`, for a Conv or AveragePool.
    Pad {
        /// The padding.
        pads: [usize; 4],
        /// `node 'name' (Pad)`.
        node: String,
    },
    /// A monotone map (Softmax, LogSoftmax, Sigmoid) by node `node`, dropped if last.
    Monotone {
        /// `node 'name' (Op)`.
        node: String,
    },
}

/// What a tensor name of the graph holds.
#[derive(Clone, Debug)]
enum Val {
    /// A constant, known at import.
    Const(Const),
    /// A value of the model.
    Data(Data),
}

/// The model under construction.
struct Builder<'a> {
    path: &'a str,
    layers: Vec<Layer>,
    inputs: Vec<Vec<usize>>,
    /// Per-sample shape of every value.
    shapes: Vec<Vec<usize>>,
    /// Per layer, the node it comes from (`node 'name' (Op)`).
    origin: Vec<String>,
    env: HashMap<String, Val>,
    notes: Vec<String>,
    /// The graph input's batch dimension when it is a number (a static export).
    batch: Option<i64>,
}

/// `node 'name' (Op)`.
fn describe(n: &NodeProto) -> String {
    format!("node '{}' ({})", n.name, n.op_type)
}

impl<'a> Builder<'a> {
    /// The builder for `graph`'s one data input, its initializers bound.
    fn new(path: &'a str, graph: &GraphProto) -> Result<Builder<'a>> {
        let mut env = HashMap::new();
        for t in &graph.initializer {
            env.insert(t.name.clone(), Val::Const(tensor_values(path, t)?));
        }
        let data: Vec<&ValueInfoProto> = graph
            .input
            .iter()
            .filter(|v| !env.contains_key(&v.name))
            .collect();
        let [input] = data[..] else {
            return Err(fmt_err(
                path,
                format!(
                    "the graph has {} data inputs; expected exactly one",
                    data.len()
                ),
            ));
        };
        let (batch, sample) = input_shape(path, input)?;
        env.insert(
            input.name.clone(),
            Val::Data(Data {
                value: 0,
                shape: sample.clone(),
                view: sample.clone(),
                pending: None,
            }),
        );
        Ok(Builder {
            path,
            layers: Vec::new(),
            inputs: Vec::new(),
            shapes: vec![sample],
            origin: Vec::new(),
            env,
            notes: Vec::new(),
            batch,
        })
    }

    /// Translate every node, then check and fold the model.
    fn run(mut self, graph: &GraphProto) -> Result<OnnxImport> {
        for n in &graph.node {
            self.node(n)?;
        }
        let [output] = &graph.output[..] else {
            return Err(fmt_err(
                self.path,
                format!(
                    "the graph has {} outputs; expected exactly one",
                    graph.output.len()
                ),
            ));
        };
        let out = match self.env.get(&output.name) {
            Some(Val::Data(d)) => d.clone(),
            Some(Val::Const(_)) => {
                return Err(fmt_err(
                    self.path,
                    format!(
                        "the graph output '{}' is a constant, not computed from the input",
                        output.name
                    ),
                ))
            }
            None => {
                return Err(fmt_err(
                    self.path,
                    format!("no node computes the graph output '{}'", output.name),
                ))
            }
        };
        let out = match out.pending {
            Some(Pending::Monotone { ref node }) => {
                self.notes.push(format!(
                    "{node} dropped: it is monotone and last, so the predictions (the argmax) are unchanged"
                ));
                Data {
                    pending: None,
                    ..out
                }
            }
            Some(Pending::Pad { ref node, .. }) => {
                return Err(fmt_err(
                    self.path,
                    format!("{node}: a padding as the graph's last op is not supported"),
                ))
            }
            None => out,
        };
        let out = self.materialise(out, "the graph output")?;
        if out.value == 0 {
            return Err(fmt_err(self.path, "the graph has no layers"));
        }
        // Every layer must contribute to the output (its last layer).
        for (i, origin) in self.origin.iter().enumerate() {
            let read = i + 1 == out.value || self.inputs.iter().any(|v| v.contains(&(i + 1)));
            if !read {
                return Err(fmt_err(
                    self.path,
                    format!("{origin}: its output does not reach the graph output"),
                ));
            }
        }
        let wiring = Wiring::new(self.inputs);
        let model = Sequential::graph(self.layers, self.shapes.swap_remove(0), wiring)
            .map_err(|e| fmt_err(self.path, e))?;
        Ok(OnnxImport {
            model: model.fold_affine(),
            notes: self.notes,
        })
    }

    /// Add `layer` reading `inputs`, from node `origin`; its output shape is checked here.
    fn push(&mut self, origin: &str, layer: Layer, inputs: Vec<usize>) -> Result<Data> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|&v| self.shapes[v].as_slice()).collect();
        let shape = layer
            .output_shape(&shapes)
            .map_err(|e| fmt_err(self.path, format!("{origin}: {e}")))?;
        self.layers.push(layer);
        self.inputs.push(inputs);
        self.shapes.push(shape.clone());
        self.origin.push(origin.to_string());
        Ok(Data {
            value: self.layers.len(),
            shape: shape.clone(),
            view: shape,
            pending: None,
        })
    }

    /// The value a layer reads for `d`: a rank-1 view of a larger value gets its flatten
    /// here; any other view that is not the value's shape is refused. `what` names the reader.
    fn materialise(&mut self, d: Data, what: &str) -> Result<Data> {
        if d.view == d.shape {
            return Ok(d);
        }
        if d.view.len() == 1 {
            let origin = format!("the flatten before {what}");
            return self.push(&origin, Layer::Flatten, vec![d.value]);
        }
        Err(fmt_err(
            self.path,
            format!(
                "{what} reads a value of shape {:?} viewed as {:?}; only flattening views ([batch, features]) are supported",
                d.shape, d.view
            ),
        ))
    }
}

/// The graph input's batch dimension (a number for a static export) and per-sample shape.
fn input_shape(path: &str, v: &ValueInfoProto) -> Result<(Option<i64>, Vec<usize>)> {
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
    let sample = dims[1..]
        .iter()
        .map(|d| match d.dim_value {
            Some(v) if v > 0 && v < 1 << 32 => Ok(v as usize),
            _ => Err(fmt_err(
                path,
                format!(
                    "graph input '{}' has a symbolic, empty or huge non-batch dimension ({:?})",
                    v.name,
                    d.dim_param
                        .clone()
                        .or(d.dim_value.map(|v| v.to_string()))
                        .unwrap_or_default()
                ),
            )),
        })
        .collect::<Result<Vec<usize>>>()?;
    let elems = sample.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if elems.is_none_or(|n| n > 1 << 32) {
        return Err(fmt_err(
            path,
            format!(
                "graph input '{}' has samples of shape {sample:?}, more than 2^32 values",
                v.name
            ),
        ));
    }
    Ok((dims[0].dim_value.filter(|&b| b > 0), sample))
}
