//! Nodes on constants only, evaluated at import from the known input shape, and the refusal of
//! graphs exported in training mode.

use super::*;

/// Refuse a node of a graph exported in training mode.
pub(super) fn training_mode(ctx: &Ctx, vals: &[Option<Val>]) -> Result<()> {
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
pub(super) fn constant_attr(ctx: &Ctx) -> Result<Const> {
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
pub(super) fn fold(ctx: &Ctx, c: &[Option<&Const>]) -> Result<Const> {
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
