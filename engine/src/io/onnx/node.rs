//! One ONNX node at a time: evaluated when its inputs are constants, translated into layers
//! when it computes on data (see the module documentation of [`super`]).

use super::constant::{axis, squeezed, unsqueezed, Arith, Const, Dim};
use super::proto::{
    fmt_err, is_float_type, is_integer_type, tensor_values, AttributeProto, NodeProto,
};
use super::{describe, Builder, Data, Pending, Val};
use crate::error::{EngineError, Result};
use crate::nn::geometry::Window2d;
use crate::nn::plain::{transposed, Layer};

/// Largest dense weight a grouped convolution may expand to.
const MAX_DENSE_WEIGHTS: usize = 1 << 26;

/// What the engine runs, for refusals.
const SUPPORTED: &str = "Conv, Gemm, MatMul, Relu, LeakyRelu, Clip, HardSwish, BatchNormalization, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean over H and W, Flatten/Reshape to [batch, features], Add and Concat of data, Add/Sub/Mul/Div by constants, Pad before Conv or AveragePool, Dropout, Identity, and a trailing Softmax, LogSoftmax or Sigmoid";

/// A node being translated: its attributes and its inputs, and errors naming it.
struct Ctx<'n> {
    path: &'n str,
    node: &'n NodeProto,
}

impl Ctx<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> EngineError {
        fmt_err(self.path, format!("{}: {msg}", describe(self.node)))
    }

    fn origin(&self) -> String {
        describe(self.node)
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

    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    /// A list of sizes (kernel, strides, pads), each in `0..2^24`.
    fn usizes(&self, name: &str) -> Result<Option<Vec<usize>>> {
        self.ints(name)
            .map(|v| {
                v.iter()
                    .map(|&x| {
                        usize::try_from(x)
                            .ok()
                            .filter(|&u| u < 1 << 24)
                            .ok_or_else(|| self.err(format!("{name} {v:?} are not sizes")))
                    })
                    .collect()
            })
            .transpose()
    }

    fn string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
}

impl Builder<'_> {
    /// Translate one node.
    pub(super) fn node(&mut self, n: &NodeProto) -> Result<()> {
        let ctx = Ctx {
            path: self.path,
            node: n,
        };
        if n.op_type == "Constant" {
            let c = constant_attr(&ctx)?;
            return self.bind(&ctx, Val::Const(c));
        }
        let mut vals = Vec::with_capacity(n.input.len());
        for (i, name) in n.input.iter().enumerate() {
            if name.is_empty() {
                vals.push(None);
                continue;
            }
            let v = self.env.get(name).cloned().ok_or_else(|| {
                ctx.err(format!(
                    "input {i} '{name}' is computed by no earlier node (the graph must be in topological order)"
                ))
            })?;
            vals.push(Some(v));
        }
        training_mode(&ctx, &vals)?;
        let data: Vec<usize> = (0..vals.len())
            .filter(|&i| matches!(vals[i], Some(Val::Data(_))))
            .collect();
        if data.is_empty() {
            let consts: Vec<Option<&Const>> = vals
                .iter()
                .map(|v| match v {
                    Some(Val::Const(c)) => Some(c),
                    _ => None,
                })
                .collect();
            let c = fold(&ctx, &consts)?;
            return self.bind(&ctx, Val::Const(c));
        }
        let out = self.data_node(&ctx, &vals, &data)?;
        self.bind(&ctx, out)
    }

    /// Bind the node's first output; a further output that is named is refused.
    fn bind(&mut self, ctx: &Ctx, v: Val) -> Result<()> {
        if ctx.node.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(ctx.err(format!(
                "has {} outputs; only its first is supported",
                ctx.node.output.len()
            )));
        }
        let name = ctx
            .node
            .output
            .first()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| ctx.err("has no output"))?;
        self.env.insert(name.clone(), v);
        Ok(())
    }

    /// The data input `i` as the graph gives it (its view not materialised), refusing a
    /// pending monotone op (allowed only as the graph's last) and, unless `pad`, a pending
    /// Pad (allowed only before a Conv or an AveragePool).
    fn raw(&self, ctx: &Ctx, vals: &[Option<Val>], i: usize, pad: bool) -> Result<Data> {
        let d = match vals.get(i) {
            Some(Some(Val::Data(d))) => d.clone(),
            _ => return Err(ctx.err(format!("input {i} must be computed from the model's input"))),
        };
        match &d.pending {
            Some(Pending::Monotone { node }) => Err(ctx.err(format!(
                "reads the output of {node}; Softmax, LogSoftmax and Sigmoid are supported only as the model's last op (they are dropped there, since they do not change the argmax): remove it from forward (apply it to the logits outside the model)"
            ))),
            Some(Pending::Pad { node, .. }) if !pad => Err(ctx.err(format!(
                "reads the output of {node}; a Pad is supported only right before a Conv or an AveragePool (it folds into their padding)"
            ))),
            _ => Ok(d),
        }
    }

    /// The data input `i` as a layer reads it (its view materialised, no pending op).
    fn data(&mut self, ctx: &Ctx, vals: &[Option<Val>], i: usize) -> Result<Data> {
        let d = self.raw(ctx, vals, i, false)?;
        self.materialise(d, &ctx.origin())
    }

    /// The data input `i`, possibly padded by a pending Pad (for Conv and AveragePool).
    fn padded(&mut self, ctx: &Ctx, vals: &[Option<Val>], i: usize) -> Result<Data> {
        let d = self.raw(ctx, vals, i, true)?;
        if d.pending.is_some() {
            return Ok(d);
        }
        self.materialise(d, &ctx.origin())
    }

    /// The constant input `i` (`None` when absent).
    fn constant<'v>(
        &self,
        ctx: &Ctx,
        vals: &'v [Option<Val>],
        i: usize,
    ) -> Result<Option<&'v Const>> {
        match vals.get(i) {
            None | Some(None) => Ok(None),
            Some(Some(Val::Const(c))) => Ok(Some(c)),
            Some(Some(Val::Data(_))) => Err(ctx.err(format!(
                "input {i} must be a constant (an initializer), not computed from the model's input"
            ))),
        }
    }

    fn required(&self, ctx: &Ctx, vals: &[Option<Val>], i: usize, what: &str) -> Result<Const> {
        self.constant(ctx, vals, i)?
            .cloned()
            .ok_or_else(|| ctx.err(format!("missing {what} input")))
    }

    /// Add a layer reading `inputs`, from this node.
    fn layer(&mut self, ctx: &Ctx, layer: Layer, inputs: Vec<usize>) -> Result<Val> {
        Ok(Val::Data(self.push(&ctx.origin(), layer, inputs)?))
    }

    /// A node with data inputs (positions `data`).
    fn data_node(&mut self, ctx: &Ctx, vals: &[Option<Val>], data: &[usize]) -> Result<Val> {
        let op = ctx.node.op_type.as_str();
        let single = |b: &mut Self| -> Result<Data> {
            if data != [0] {
                return Err(ctx.err(format!(
                    "reads data at inputs {data:?}; only input 0 may be computed from the model's input"
                )));
            }
            b.data(ctx, vals, 0)
        };
        Ok(match op {
            "Identity" | "Dropout" => {
                let x = single(self)?;
                Val::Data(x)
            }
            "Relu" => {
                let x = single(self)?;
                self.layer(ctx, Layer::ReLU, vec![x.value])?
            }
            "HardSwish" => {
                let x = single(self)?;
                self.layer(ctx, Layer::HardSwish, vec![x.value])?
            }
            "LeakyRelu" => {
                let x = single(self)?;
                let slope = ctx.float("alpha", 0.01) as f64;
                self.layer(ctx, Layer::LeakyReLU { slope }, vec![x.value])?
            }
            "Clip" => {
                let x = single(self)?;
                // A bound at the float range's edge (older exports' default) is no bound.
                let bound = |b: &Self, i: usize, attr: &str| -> Result<Option<f64>> {
                    let v = match b.constant(ctx, vals, i)? {
                        Some(c) => Some(scalar(ctx, c, attr)?),
                        None => ctx.attr(attr).map(|a| a.f as f64),
                    };
                    Ok(v.filter(|v| v.abs() < f32::MAX as f64))
                };
                let (min, max) = (bound(self, 1, "min")?, bound(self, 2, "max")?);
                let layer = match (min, max) {
                    (Some(0.0), None) => Layer::ReLU,
                    _ => Layer::Clip { min, max },
                };
                self.layer(ctx, layer, vec![x.value])?
            }
            "Sigmoid" | "Softmax" | "LogSoftmax" => {
                let x = single(self)?;
                if op != "Sigmoid" {
                    let a = ctx.int("axis", -1);
                    let last = axis(a, x.view.len() + 1).map_err(|e| ctx.err(e))?;
                    if x.view.len() != 1 || last != 1 {
                        return Err(ctx.err(format!(
                            "{op} over axis {a} of values of shape [batch, {:?}]: only over the classes of [batch, classes] logits",
                            x.view
                        )));
                    }
                }
                Val::Data(Data {
                    pending: Some(Pending::Monotone { node: ctx.origin() }),
                    ..x
                })
            }
            "Flatten" => {
                let x = self.raw(ctx, vals, 0, false)?;
                let rank = x.view.len() as i64 + 1;
                let a = ctx.int("axis", 1);
                if a != 1 && a != 1 - rank {
                    return Err(ctx.err(format!(
                        "axis {a}: only flattening to [batch, features] (axis 1) is supported; use torch.flatten(x, 1)"
                    )));
                }
                Val::Data(Data {
                    view: vec![x.view.iter().product()],
                    ..x
                })
            }
            "Reshape" => {
                if data != [0] {
                    return Err(ctx.err("the target shape must be known at import (a constant or shape arithmetic)"));
                }
                let x = self.raw(ctx, vals, 0, false)?;
                let target = self.required(ctx, vals, 1, "shape")?;
                let view = self.reshape_view(ctx, &x, &target)?;
                Val::Data(Data { view, ..x })
            }
            "Squeeze" | "Unsqueeze" => {
                let x = self.raw(ctx, vals, 0, false)?;
                let axes = match self.constant(ctx, vals, 1)? {
                    Some(c) => Some(c.int_values().map_err(|e| ctx.err(e))?),
                    None => ctx.ints("axes"),
                };
                let mut full = vec![0usize];
                full.extend(&x.view);
                let out = if op == "Squeeze" {
                    squeezed(&full, axes.as_deref())
                } else {
                    unsqueezed(&full, axes.as_deref().unwrap_or(&[]))
                };
                let out = out.map_err(|e| ctx.err(e))?;
                if out.first() != Some(&0) {
                    return Err(ctx.err("squeezing or unsqueezing the batch axis is not supported"));
                }
                Val::Data(Data {
                    view: out[1..].to_vec(),
                    ..x
                })
            }
            "Pad" => {
                let x = single(self)?;
                Val::Data(self.pad(ctx, vals, x)?)
            }
            "Conv" => {
                if data != [0] {
                    return Err(ctx.err("the weight must be a constant"));
                }
                let x = self.padded(ctx, vals, 0)?;
                let layer = self.conv(ctx, vals, &x)?;
                self.layer(ctx, layer, vec![x.value])?
            }
            "AveragePool" | "MaxPool" => {
                let x = self.padded(ctx, vals, 0)?;
                if let (Some(Pending::Pad { node, .. }), "MaxPool") = (&x.pending, op) {
                    return Err(ctx.err(format!(
                        "reads the output of {node}: zero padding before a max pool changes the maximum of negative windows; use MaxPool2d's own padding instead"
                    )));
                }
                if op == "MaxPool" && ctx.int("storage_order", 0) != 0 {
                    return Err(ctx.err("storage_order 1 is not supported"));
                }
                let kernel = pool_kernel(ctx)?;
                let mut window = window(ctx, kernel)?;
                let layer = if op == "MaxPool" {
                    Layer::MaxPool2d { window }
                } else {
                    let mut count_include_pad = ctx.int("count_include_pad", 0) != 0;
                    if let Some(Pending::Pad { pads, .. }) = &x.pending {
                        if window.padding != [0, 0] && !count_include_pad {
                            return Err(ctx.err(
                                "a Pad before an AveragePool that pads itself without counting its padding is not supported",
                            ));
                        }
                        window.padding = add_pads(ctx, window.padding, *pads)?;
                        count_include_pad = true;
                    }
                    Layer::AvgPool2d {
                        window,
                        count_include_pad,
                    }
                };
                self.layer(ctx, layer, vec![x.value])?
            }
            "GlobalAveragePool" => {
                let x = single(self)?;
                self.layer(ctx, Layer::AdaptiveAvgPool2d { output: [1, 1] }, vec![x.value])?
            }
            "GlobalMaxPool" => {
                let x = single(self)?;
                let (h, w) = match x.shape[..] {
                    [_, h, w] => (h, w),
                    _ => return Err(ctx.err(format!("input of shape {:?} is not [c, h, w]", x.shape))),
                };
                let window = Window2d {
                    kernel: [h, w],
                    stride: [1, 1],
                    padding: [0, 0],
                };
                self.layer(ctx, Layer::MaxPool2d { window }, vec![x.value])?
            }
            "ReduceMean" => {
                let x = single(self)?;
                let axes = match self.constant(ctx, vals, 1)? {
                    Some(c) => Some(c.int_values().map_err(|e| ctx.err(e))?),
                    None => ctx.ints("axes"),
                };
                let rank = x.shape.len() + 1;
                let mut axes = axes
                    .ok_or_else(|| ctx.err("a mean over every axis is not supported; use x.mean([2, 3])"))?
                    .iter()
                    .map(|&a| axis(a, rank))
                    .collect::<std::result::Result<Vec<usize>, String>>()
                    .map_err(|e| ctx.err(e))?;
                axes.sort_unstable();
                if rank != 4 || axes != [2, 3] {
                    return Err(ctx.err(format!(
                        "a mean over axes {axes:?} of [batch, {:?}]: only over H and W of images (x.mean([2, 3]), a global average pool)",
                        x.shape
                    )));
                }
                let pooled = self.push(&ctx.origin(), Layer::AdaptiveAvgPool2d { output: [1, 1] }, vec![x.value])?;
                if ctx.int("keepdims", 1) == 0 {
                    Val::Data(Data {
                        view: vec![pooled.shape[0]],
                        ..pooled
                    })
                } else {
                    Val::Data(pooled)
                }
            }
            "Gemm" => {
                let x = single(self)?;
                let layer = gemm(ctx, &self.required(ctx, vals, 1, "B")?, self.constant(ctx, vals, 2)?)?;
                self.layer(ctx, layer, vec![x.value])?
            }
            "MatMul" => {
                let x = single(self)?;
                let b = self.required(ctx, vals, 1, "B")?;
                let [inp, out] = b.dims[..] else {
                    return Err(ctx.err(format!("B shape {:?} is not 2-D [in, out]", b.dims)));
                };
                let w = b.reals().map_err(|e| ctx.err(e))?;
                let layer = Layer::linear(inp, out, transposed(&w, inp, out), vec![0.0; out])
                    .map_err(|e| ctx.err(e))?;
                self.layer(ctx, layer, vec![x.value])?
            }
            "BatchNormalization" => {
                let x = single(self)?;
                let eps = ctx.float("epsilon", 1e-5) as f64;
                let mut p = Vec::new();
                for i in 1..=4 {
                    let c = self.required(ctx, vals, i, "scale, bias, mean and var")?;
                    p.push(c.reals().map_err(|e| ctx.err(e))?);
                }
                let c = p[0].len();
                if p.iter().any(|v| v.len() != c) || x.shape.first() != Some(&c) {
                    return Err(ctx.err(format!(
                        "scale, bias, mean and var of lengths {:?} for input of shape {:?}",
                        p.iter().map(Vec::len).collect::<Vec<_>>(),
                        x.shape
                    )));
                }
                let scale: Vec<f64> = (0..c).map(|i| p[0][i] / (p[3][i] + eps).sqrt()).collect();
                if let Some(i) = scale.iter().position(|s| !s.is_finite()) {
                    return Err(ctx.err(format!("channel {i}: the variance makes the scale {}", scale[i])));
                }
                let shift = (0..c).map(|i| p[1][i] - p[2][i] * scale[i]).collect();
                self.layer(ctx, Layer::Affine { scale, shift }, vec![x.value])?
            }
            "Add" | "Sum" if data.len() >= 2 => {
                if data.len() != vals.len() {
                    return Err(ctx.err("adds data and constants at once; only data + data or data + constant"));
                }
                let mut ins = Vec::new();
                for &i in data {
                    ins.push(self.data(ctx, vals, i)?.value);
                }
                self.layer(ctx, Layer::Add, ins)?
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                if vals.len() != 2 || data.len() != 1 {
                    return Err(ctx.err(match op {
                        "Mul" => "an elementwise product of two data tensors (gating, attention) is not supported: only products with constants",
                        "Div" => "a division by data is not supported: only divisions by constants",
                        _ => "a difference of two data tensors is not supported: only a sum (a residual connection) or a difference with a constant",
                    }));
                }
                let di = data[0];
                let x = self.data(ctx, vals, di)?;
                let c = self.required(ctx, vals, 1 - di, "constant")?;
                let v = per_channel(ctx, &c, &x.shape)?;
                let ch = x.shape[0];
                let (scale, shift): (Vec<f64>, Vec<f64>) = match (op, di) {
                    ("Add", _) => (vec![1.0; ch], v),
                    ("Sub", 0) => (vec![1.0; ch], v.iter().map(|t| -t).collect()),
                    ("Sub", _) => (vec![-1.0; ch], v),
                    ("Mul", _) => (v, vec![0.0; ch]),
                    ("Div", 0) => {
                        if v.contains(&0.0) {
                            return Err(ctx.err("divides by zero"));
                        }
                        (v.iter().map(|d| 1.0 / d).collect(), vec![0.0; ch])
                    }
                    _ => return Err(ctx.err("a division by data is not supported: only divisions by constants")),
                };
                self.layer(ctx, Layer::Affine { scale, shift }, vec![x.value])?
            }
            "Concat" => {
                if data.len() != vals.len() {
                    return Err(ctx.err("concatenates data with constants; only data tensors"));
                }
                let first = self.data(ctx, vals, 0)?;
                let a = axis(ctx.int("axis", 1), first.shape.len() + 1).map_err(|e| ctx.err(e))?;
                if a != 1 {
                    return Err(ctx.err(format!(
                        "a concatenation along axis {a}: only along channels (axis 1)"
                    )));
                }
                let mut ins = vec![first.value];
                for &i in &data[1..] {
                    ins.push(self.data(ctx, vals, i)?.value);
                }
                self.layer(ctx, Layer::Concat, ins)?
            }
            "Shape" => {
                let x = self.raw(ctx, vals, 0, false)?;
                let mut dims = vec![Dim::Batch];
                dims.extend(x.view.iter().map(|&d| Dim::N(d as i64)));
                let c = Const::ints(vec![dims.len()], dims);
                let (start, end) = (ctx.int("start", 0), ctx.int("end", i64::MAX));
                Val::Const(c.slice(&[start], &[end], None, None).map_err(|e| ctx.err(e))?)
            }
            "Gather" | "Transpose" | "Slice" | "Expand" | "Tile" | "Split" => {
                return Err(ctx.err(format!(
                    "{op} of a data tensor (indexing, permuting or splitting activations) is not supported; the engine runs {SUPPORTED}"
                )))
            }
            "Tanh" | "Gelu" | "Erf" | "Elu" | "Selu" | "Softplus" | "HardSigmoid" | "Mish" | "Exp" | "Log" | "Sqrt" | "Pow" | "Abs" => {
                return Err(ctx.err(format!(
                    "unsupported op: the only nonlinear activations the engine runs securely are Relu, LeakyRelu, Clip (ReLU6, Hardtanh) and HardSwish; replace {op} by one of them and retrain, or export without it{}",
                    if op == "HardSigmoid" {
                        " (torch writes nn.Hardswish as HardSigmoid and Mul below opset 14: export with opset_version=14 or later)"
                    } else {
                        ""
                    }
                )))
            }
            _ => {
                return Err(ctx.err(format!(
                    "unsupported op: the engine runs {SUPPORTED}; replace it by one of these and export again"
                )))
            }
        })
    }

    /// The per-sample view of `x` after `Reshape` to `target` (`[batch, ...]`).
    fn reshape_view(&self, ctx: &Ctx, x: &Data, target: &Const) -> Result<Vec<usize>> {
        let t = target.dims_values().map_err(|e| ctx.err(e))?;
        let per: usize = x.view.iter().product();
        let shown: Vec<String> = t.iter().map(Dim::to_string).collect();
        let bad = || {
            ctx.err(format!(
                "a reshape of [batch, {:?}] to [{}] does not keep the batch axis; flatten with torch.flatten(x, 1) or x.view(x.size(0), -1)",
                x.view,
                shown.join(", ")
            ))
        };
        let batch_first = match t.first() {
            Some(Dim::Batch) | Some(Dim::N(0)) => true,
            Some(Dim::N(b)) if Some(*b) == self.batch => true,
            Some(Dim::N(-1)) => false,
            _ => return Err(bad()),
        };
        let mut view = Vec::new();
        let mut infer = None;
        for (i, d) in t.iter().enumerate().skip(1) {
            match d {
                Dim::N(-1) if infer.is_none() && batch_first => {
                    infer = Some(view.len());
                    view.push(1);
                }
                Dim::N(0) => view.push(*x.view.get(i - 1).ok_or_else(bad)?),
                Dim::N(v) if *v > 0 => view.push(*v as usize),
                _ => return Err(bad()),
            }
        }
        if let Some(i) = infer {
            let rest = checked_product(&view).ok_or_else(bad)?.max(1);
            if !per.is_multiple_of(rest) {
                return Err(bad());
            }
            view[i] = per / rest;
        }
        if checked_product(&view) != Some(per) {
            return Err(bad());
        }
        Ok(view)
    }

    /// A zero `Pad` of the spatial axes, pending for the Conv or AveragePool that reads it.
    fn pad(&self, ctx: &Ctx, vals: &[Option<Val>], x: Data) -> Result<Data> {
        let mode = ctx.string("mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(ctx.err(format!(
                "{mode} padding is not supported: only zero padding"
            )));
        }
        let pads = match self.constant(ctx, vals, 1)? {
            Some(c) => c.int_values().map_err(|e| ctx.err(e))?,
            None => ctx.ints("pads").ok_or_else(|| ctx.err("no pads"))?,
        };
        let value = match self.constant(ctx, vals, 2)? {
            Some(c) => scalar(ctx, c, "constant_value")?,
            None => ctx.float("value", 0.0) as f64,
        };
        if value != 0.0 {
            return Err(ctx.err(format!("padding with {value}: only zero padding")));
        }
        let rank = x.view.len() + 1;
        if pads.len() != 2 * rank || pads.iter().any(|&p| p < 0) {
            return Err(ctx.err(format!("pads {pads:?} for a tensor of rank {rank}")));
        }
        if pads.iter().all(|&p| p == 0) {
            return Ok(x);
        }
        let spatial = rank == 4 && [0, 1, 4, 5].iter().all(|&i| pads[i] == 0);
        if !spatial || x.pending.is_some() {
            return Err(ctx.err(format!(
                "pads {pads:?}: only zero padding of the height and width of images is supported"
            )));
        }
        let p = |i: usize| pads[i] as usize;
        Ok(Data {
            pending: Some(Pending::Pad {
                pads: [p(2), p(3), p(6), p(7)],
                node: ctx.origin(),
            }),
            ..x
        })
    }

    /// A convolution layer (groups expanded to a block-diagonal dense weight).
    fn conv(&self, ctx: &Ctx, vals: &[Option<Val>], x: &Data) -> Result<Layer> {
        let w = self.required(ctx, vals, 1, "weight")?;
        let [oc, icg, kh, kw] = w.dims[..] else {
            return Err(ctx.err(format!(
                "weight shape {:?} is not [out, in/groups, kh, kw] (only 2-D convolutions)",
                w.dims
            )));
        };
        if let Some(k) = ctx.usizes("kernel_shape")? {
            if k != [kh, kw] {
                return Err(ctx.err(format!(
                    "kernel_shape {k:?} does not match weight {:?}",
                    w.dims
                )));
            }
        }
        let groups = usize::try_from(ctx.int("group", 1))
            .ok()
            .filter(|&g| g >= 1);
        let Some(groups) = groups.filter(|g| oc % g == 0) else {
            return Err(ctx.err(format!(
                "group {} for {oc} output channels",
                ctx.int("group", 1)
            )));
        };
        let ic = icg
            .checked_mul(groups)
            .ok_or_else(|| ctx.err(format!("group {groups} is too large")))?;
        let bias = match self.constant(ctx, vals, 2)? {
            Some(b) if b.len() == oc => b.reals().map_err(|e| ctx.err(e))?,
            Some(b) => return Err(ctx.err(format!("bias shape {:?} for {oc} channels", b.dims))),
            None => vec![0.0; oc],
        };
        let values = w.reals().map_err(|e| ctx.err(e))?;
        let weight = if groups == 1 {
            values
        } else {
            let dense = oc
                .checked_mul(ic)
                .and_then(|v| v.checked_mul(kh * kw))
                .filter(|&n| n <= MAX_DENSE_WEIGHTS)
                .ok_or_else(|| {
                    ctx.err(format!(
                        "group {groups}: run as a dense convolution with a block-diagonal weight, it needs {oc}x{ic}x{kh}x{kw} weights, more than the {MAX_DENSE_WEIGHTS} supported"
                    ))
                })?;
            let mut out = vec![0.0; dense];
            let per_group = oc / groups;
            let k = kh * kw;
            for o in 0..oc {
                let g = o / per_group;
                for c in 0..icg {
                    let src = (o * icg + c) * k;
                    let dst = (o * ic + g * icg + c) * k;
                    out[dst..dst + k].copy_from_slice(&values[src..src + k]);
                }
            }
            out
        };
        let mut window = window(ctx, [kh, kw])?;
        if let Some(Pending::Pad { pads, .. }) = &x.pending {
            window.padding = add_pads(ctx, window.padding, *pads)?;
        }
        Layer::conv2d(ic, oc, window, weight, bias).map_err(|e| ctx.err(e))
    }
}

/// The number of elements of a shape, `None` on overflow.
fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// The padding of a window plus a folded Pad's `[top, left, bottom, right]` (symmetric only).
fn add_pads(ctx: &Ctx, padding: [usize; 2], pads: [usize; 4]) -> Result<[usize; 2]> {
    if pads[0] != pads[2] || pads[1] != pads[3] {
        return Err(ctx.err(format!(
            "asymmetric padding {pads:?} [top, left, bottom, right] is not supported"
        )));
    }
    Ok([padding[0] + pads[0], padding[1] + pads[1]])
}

/// Kernel, strides and symmetric pads of a Conv or pool; refuses dilation, asymmetric
/// padding, `auto_pad` and `ceil_mode`.
fn window(ctx: &Ctx, kernel: [usize; 2]) -> Result<Window2d> {
    if let Some(v) = ctx.string("auto_pad") {
        if !(v.is_empty() || v == "NOTSET") {
            return Err(ctx.err(format!("auto_pad {v} is not supported (use explicit pads)")));
        }
    }
    if let Some(d) = ctx.ints("dilations") {
        if d.iter().any(|&v| v != 1) {
            return Err(ctx.err(format!("dilations {d:?} are not supported")));
        }
    }
    if ctx.int("ceil_mode", 0) != 0 {
        return Err(ctx.err("ceil_mode 1 is not supported"));
    }
    let stride = match ctx.usizes("strides")? {
        None => [1, 1],
        Some(s) if s.len() == 2 => [s[0], s[1]],
        Some(s) => return Err(ctx.err(format!("strides {s:?} are not 2-D"))),
    };
    let padding = match ctx.usizes("pads")? {
        None => [0, 0],
        Some(p) if p.len() == 4 && p[0] == p[2] && p[1] == p[3] => [p[0], p[1]],
        Some(p) => {
            return Err(ctx.err(format!(
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

fn pool_kernel(ctx: &Ctx) -> Result<[usize; 2]> {
    match ctx.usizes("kernel_shape")? {
        Some(k) if k.len() == 2 => Ok([k[0], k[1]]),
        k => Err(ctx.err(format!("kernel_shape {k:?} is not 2-D"))),
    }
}

/// A `Gemm` with a constant `B` (and `C`) as a Linear layer.
fn gemm(ctx: &Ctx, b: &Const, c: Option<&Const>) -> Result<Layer> {
    if ctx.int("transA", 0) != 0 {
        return Err(ctx.err("transA 1 is not supported"));
    }
    let (alpha, beta) = (
        ctx.float("alpha", 1.0) as f64,
        ctx.float("beta", 1.0) as f64,
    );
    let [r, cols] = b.dims[..] else {
        return Err(ctx.err(format!("B shape {:?} is not 2-D", b.dims)));
    };
    let values = b.reals().map_err(|e| ctx.err(e))?;
    // PyTorch's Linear exports transB = 1: B is [out, in].
    let (out, inp, weight) = if ctx.int("transB", 0) != 0 {
        (r, cols, values)
    } else {
        (cols, r, transposed(&values, r, cols))
    };
    let weight = weight.into_iter().map(|v| v * alpha).collect();
    let bias = match c {
        Some(t) if t.len() == out || t.len() == 1 => {
            let v = t.reals().map_err(|e| ctx.err(e))?;
            (0..out).map(|i| v[i % v.len()] * beta).collect()
        }
        Some(t) => return Err(ctx.err(format!("C shape {:?} for {out} outputs", t.dims))),
        None => vec![0.0; out],
    };
    Layer::linear(inp, out, weight, bias).map_err(|e| ctx.err(e))
}

/// The one value of a constant.
fn scalar(ctx: &Ctx, c: &Const, what: &str) -> Result<f64> {
    match c.reals().map_err(|e| ctx.err(e))?[..] {
        [v] => Ok(v),
        _ => Err(ctx.err(format!("{what} has shape {:?}; expected one value", c.dims))),
    }
}

/// A constant operand of an elementwise op on values of per-sample shape `shape`, as one value
/// per channel (the first per-sample axis): a scalar, or a constant that varies along the
/// channel axis only (`[c, 1, 1]`, `[1, c, 1, 1]`, `[c]` for features).
fn per_channel(ctx: &Ctx, c: &Const, shape: &[usize]) -> Result<Vec<f64>> {
    let v = c.reals().map_err(|e| ctx.err(e))?;
    let channels = shape[0];
    if v.len() == 1 {
        return Ok(vec![v[0]; channels]);
    }
    let rank = shape.len() + 1;
    let bad = || {
        ctx.err(format!(
            "a constant of shape {:?} applied to values of shape [batch, {shape:?}]: only a scalar or one value per channel ([{channels}, 1, 1]) is supported",
            c.dims
        ))
    };
    if c.dims.len() > rank {
        return Err(bad());
    }
    let mut padded = vec![1; rank - c.dims.len()];
    padded.extend(&c.dims);
    let per_channel =
        padded[0] == 1 && padded[1] == channels && padded[2..].iter().all(|&d| d == 1);
    if per_channel {
        Ok(v)
    } else {
        Err(bad())
    }
}

/// Refuse a node of a graph exported in training mode.
fn training_mode(ctx: &Ctx, vals: &[Option<Val>]) -> Result<()> {
    let n = ctx.node;
    let training = match n.op_type.as_str() {
        // Batch statistics and running averages are further outputs.
        "BatchNormalization" => {
            ctx.int("training_mode", 0) != 0 || n.output.iter().skip(1).any(|o| !o.is_empty())
        }
        // A random mask: training_mode true (opset 12+), or a mask output (opset <= 11).
        "Dropout" => {
            let flag = match vals.get(2) {
                Some(Some(Val::Const(c))) => c.reals().is_ok_and(|v| v.iter().any(|&x| x != 0.0)),
                Some(Some(Val::Data(_))) => true,
                _ => false,
            };
            flag || n.output.iter().skip(1).any(|o| !o.is_empty())
        }
        _ => false,
    };
    if training {
        return Err(ctx.err(
            "the graph was exported in training mode (batch statistics, random dropout); export with model.eval() (and the default training=TrainingMode.EVAL)",
        ));
    }
    Ok(())
}

/// The value of a `Constant` node.
fn constant_attr(ctx: &Ctx) -> Result<Const> {
    let a = ctx
        .node
        .attribute
        .first()
        .ok_or_else(|| ctx.err("no value"))?;
    Ok(match a.name.as_str() {
        "value" => {
            let t = a.t.as_ref().ok_or_else(|| ctx.err("no tensor 'value'"))?;
            tensor_values(ctx.path, t).map_err(|e| ctx.err(e))?
        }
        "value_float" => Const::floats(vec![], vec![a.f as f64]),
        "value_floats" => Const::floats(
            vec![a.floats.len()],
            a.floats.iter().map(|&v| v as f64).collect(),
        ),
        "value_int" => Const::int_vec(&[a.i])
            .reshaped(vec![])
            .map_err(|e| ctx.err(e))?,
        "value_ints" => Const::int_vec(&a.ints),
        other => return Err(ctx.err(format!("a constant given as '{other}' is not supported"))),
    })
}

/// Evaluate a node whose inputs are all constants.
fn fold(ctx: &Ctx, c: &[Option<&Const>]) -> Result<Const> {
    let op = ctx.node.op_type.as_str();
    let arg = |i: usize| -> Result<&Const> {
        c.get(i)
            .copied()
            .flatten()
            .ok_or_else(|| ctx.err(format!("missing input {i}")))
    };
    let ints = |i: usize, attr: &str| -> Result<Option<Vec<i64>>> {
        match c.get(i).copied().flatten() {
            Some(v) => v.int_values().map(Some).map_err(|e| ctx.err(e)),
            None => Ok(ctx.ints(attr)),
        }
    };
    let r = match op {
        "Identity" | "Dropout" => Ok(arg(0)?.clone()),
        "Cast" => {
            let to = ctx.int("to", 1);
            if is_float_type(to) {
                arg(0)?.cast(true)
            } else if is_integer_type(to) {
                arg(0)?.cast(false)
            } else {
                Err(format!("a cast to type {to}"))
            }
        }
        "Shape" => {
            let dims: Vec<i64> = arg(0)?.dims.iter().map(|&d| d as i64).collect();
            let (start, end) = (ctx.int("start", 0), ctx.int("end", i64::MAX));
            Const::int_vec(&dims).slice(&[start], &[end], None, None)
        }
        "Gather" => arg(0)?.gather(arg(1)?, ctx.int("axis", 0)),
        "Unsqueeze" => match ints(1, "axes")? {
            Some(a) => arg(0)?.unsqueeze(&a),
            None => Err("no axes".into()),
        },
        "Squeeze" => arg(0)?.squeeze(ints(1, "axes")?.as_deref()),
        "Concat" => {
            let parts: Vec<&Const> = c.iter().flatten().copied().collect();
            Const::concat(&parts, ctx.int("axis", 0))
        }
        "Slice" => {
            let starts = ints(1, "starts")?.ok_or_else(|| ctx.err("no starts"))?;
            let ends = ints(2, "ends")?.ok_or_else(|| ctx.err("no ends"))?;
            let axes = ints(3, "axes")?;
            let steps = ints(4, "steps")?;
            arg(0)?.slice(&starts, &ends, axes.as_deref(), steps.as_deref())
        }
        "Reshape" => arg(0)?.reshape(&arg(1)?.int_values().map_err(|e| ctx.err(e))?),
        "ConstantOfShape" => {
            let value = match &ctx.attr("value").and_then(|a| a.t.as_ref()) {
                Some(t) => tensor_values(ctx.path, t).map_err(|e| ctx.err(e))?,
                None => Const::floats(vec![1], vec![0.0]),
            };
            Const::of_shape(&arg(0)?.int_values().map_err(|e| ctx.err(e))?, &value)
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let a = match op {
                "Add" => Arith::Add,
                "Sub" => Arith::Sub,
                "Mul" => Arith::Mul,
                _ => Arith::Div,
            };
            arg(0)?.binary(arg(1)?, a)
        }
        "Neg" => arg(0)?.map_reals(|v| -v),
        "Sqrt" => arg(0)?.map_reals(f64::sqrt),
        "Reciprocal" => arg(0)?.map_reals(|v| 1.0 / v),
        _ => {
            return Err(ctx.err(
                "unsupported op on constants: the importer evaluates Shape, Gather, Unsqueeze, Squeeze, Concat, Slice, Cast, Reshape, ConstantOfShape, Identity, Add, Sub, Mul, Div, Neg, Sqrt and Reciprocal of constants; compute this value before export",
            ))
        }
    };
    r.map_err(|e| ctx.err(e))
}
