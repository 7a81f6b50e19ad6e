//! Translation of the nodes whose attributes shape a layer: `Conv`, `Gemm`, pooling windows,
//! `Pad` folded into the next layer, `Reshape` to a per-sample view.

use super::*;

impl Builder<'_> {
    /// The per-sample view of `x` after `Reshape` to `target` (`[batch, ...]`).
    pub(super) fn reshape_view(&self, ctx: &Ctx, x: &Data, target: &Const) -> Result<Vec<usize>> {
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
    pub(super) fn pad(&self, ctx: &Ctx, vals: &[Option<Val>], x: Data) -> Result<Data> {
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
    pub(super) fn conv(&self, ctx: &Ctx, vals: &[Option<Val>], x: &Data) -> Result<Layer> {
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
pub(super) fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// The padding of a window plus a folded Pad's `[top, left, bottom, right]` (symmetric only).
pub(super) fn add_pads(ctx: &Ctx, padding: [usize; 2], pads: [usize; 4]) -> Result<[usize; 2]> {
    if pads[0] != pads[2] || pads[1] != pads[3] {
        return Err(ctx.err(format!(
            "asymmetric padding {pads:?} [top, left, bottom, right] is not supported"
        )));
    }
    Ok([padding[0] + pads[0], padding[1] + pads[1]])
}

/// Kernel, strides and symmetric pads of a Conv or pool; refuses dilation, asymmetric
/// padding, `auto_pad` and `ceil_mode`.
pub(super) fn window(ctx: &Ctx, kernel: [usize; 2]) -> Result<Window2d> {
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

pub(super) fn pool_kernel(ctx: &Ctx) -> Result<[usize; 2]> {
    match ctx.usizes("kernel_shape")? {
        Some(k) if k.len() == 2 => Ok([k[0], k[1]]),
        k => Err(ctx.err(format!("kernel_shape {k:?} is not 2-D"))),
    }
}

/// A `Gemm` with a constant `B` (and `C`) as a Linear layer.
pub(super) fn gemm(ctx: &Ctx, b: &Const, c: Option<&Const>) -> Result<Layer> {
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
pub(super) fn scalar(ctx: &Ctx, c: &Const, what: &str) -> Result<f64> {
    match c.reals().map_err(|e| ctx.err(e))?[..] {
        [v] => Ok(v),
        _ => Err(ctx.err(format!("{what} has shape {:?}; expected one value", c.dims))),
    }
}

/// A constant operand of an elementwise op on values of per-sample shape `shape`, as one value
/// per channel (the first per-sample axis): a scalar, or a constant that varies along the
/// channel axis only (`[c, 1, 1]`, `[1, c, 1, 1]`, `[c]` for features).
pub(super) fn per_channel(ctx: &Ctx, c: &Const, shape: &[usize]) -> Result<Vec<f64>> {
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
