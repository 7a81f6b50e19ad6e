//! Constant tensors of an ONNX graph and the operations on them that the importer evaluates
//! (the shape arithmetic torch writes around `x.view(x.size(0), -1)`: Shape, Gather, Unsqueeze,
//! Concat, Slice, Cast, ConstantOfShape, and arithmetic on constants).
//!
//! The batch size is unknown at import, so an integer element is either a number or the
//! symbol [`Dim::Batch`] (what `Shape` gives for the batch axis). Moving such an element around
//! (gather, concatenate, slice, reshape) keeps the symbol; arithmetic on it is refused, except
//! multiplying or dividing it by 1 and adding 0, since the batch size must never leak into a
//! weight or a shape other than the batch axis. Every result's size is checked before it is
//! allocated.

use std::fmt;

/// Largest number of elements of a constant the importer computes.
pub(super) const MAX_CONST_ELEMS: usize = 1 << 26;

/// One integer element: a number, or the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dim {
    /// A known number.
    N(i64),
    /// The batch size (symbolic).
    Batch,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::N(v) => write!(f, "{v}"),
            Dim::Batch => write!(f, "N"),
        }
    }
}

/// The elements of a constant.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Elems {
    /// Floating-point values.
    F(Vec<f64>),
    /// Integer (or boolean) values.
    I(Vec<Dim>),
}

/// A constant tensor.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Const {
    /// Its shape.
    pub dims: Vec<usize>,
    /// Its elements, row-major.
    pub elems: Elems,
}

type R<T> = std::result::Result<T, String>;

/// The element count of `dims`, or an error if it exceeds [`MAX_CONST_ELEMS`].
fn checked_count(dims: &[usize]) -> R<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_CONST_ELEMS)
        .ok_or_else(|| {
            format!("a constant of shape {dims:?} is larger than the {MAX_CONST_ELEMS} elements the importer computes")
        })
}

/// Normalise an axis (negative from the end) for a tensor of rank `rank`.
pub(super) fn axis(a: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if (0..r).contains(&v) {
        Ok(v as usize)
    } else {
        Err(format!("axis {a} is out of range for rank {rank}"))
    }
}

/// The shape after ONNX `Unsqueeze` of `dims` at `axes` (of the output rank).
pub(super) fn unsqueezed(dims: &[usize], axes: &[i64]) -> R<Vec<usize>> {
    let rank = dims.len() + axes.len();
    let mut at: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<R<_>>()?;
    at.sort_unstable();
    at.dedup();
    if at.len() != axes.len() {
        return Err(format!("repeated axes {axes:?}"));
    }
    let mut out = dims.to_vec();
    for a in at {
        out.insert(a, 1);
    }
    Ok(out)
}

/// The shape after ONNX `Squeeze` of `dims` at `axes` (every axis of size 1 without).
pub(super) fn squeezed(dims: &[usize], axes: Option<&[i64]>) -> R<Vec<usize>> {
    let rank = dims.len();
    let drop: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&x| axis(x, rank)).collect::<R<_>>()?,
        None => (0..rank).filter(|&i| dims[i] == 1).collect(),
    };
    if let Some(&a) = drop.iter().find(|&&a| dims[a] != 1) {
        return Err(format!("axis {a} of {dims:?} is not of size 1"));
    }
    Ok((0..rank)
        .filter(|i| !drop.contains(i))
        .map(|i| dims[i])
        .collect())
}

impl Const {
    /// A float constant.
    pub fn floats(dims: Vec<usize>, values: Vec<f64>) -> Const {
        Const {
            dims,
            elems: Elems::F(values),
        }
    }

    /// An integer constant.
    pub fn ints(dims: Vec<usize>, values: Vec<Dim>) -> Const {
        Const {
            dims,
            elems: Elems::I(values),
        }
    }

    /// A 1-D integer constant of known numbers.
    pub fn int_vec(values: &[i64]) -> Const {
        Const::ints(
            vec![values.len()],
            values.iter().map(|&v| Dim::N(v)).collect(),
        )
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.elems {
            Elems::F(v) => v.len(),
            Elems::I(v) => v.len(),
        }
    }

    /// The values as reals (integers converted; the batch symbol refused).
    pub fn reals(&self) -> R<Vec<f64>> {
        match &self.elems {
            Elems::F(v) => Ok(v.clone()),
            Elems::I(v) => v
                .iter()
                .map(|d| match d {
                    Dim::N(n) => Ok(*n as f64),
                    Dim::Batch => Err("a value depends on the batch size".to_string()),
                })
                .collect(),
        }
    }

    /// The values as integer elements (floats must be whole numbers).
    pub fn dims_values(&self) -> R<Vec<Dim>> {
        match &self.elems {
            Elems::I(v) => Ok(v.clone()),
            Elems::F(v) => v
                .iter()
                .map(|&x| {
                    if x.fract() == 0.0 && x.abs() < 9e15 {
                        Ok(Dim::N(x as i64))
                    } else {
                        Err(format!("{x} is not an integer"))
                    }
                })
                .collect(),
        }
    }

    /// The values as known integers (the batch symbol refused).
    pub fn int_values(&self) -> R<Vec<i64>> {
        self.dims_values()?
            .into_iter()
            .map(|d| match d {
                Dim::N(n) => Ok(n),
                Dim::Batch => Err("a value depends on the batch size".to_string()),
            })
            .collect()
    }

    /// Elements at flat `indices`, as a constant of shape `dims`.
    fn pick(&self, dims: Vec<usize>, indices: &[usize]) -> Const {
        let elems = match &self.elems {
            Elems::F(v) => Elems::F(indices.iter().map(|&i| v[i]).collect()),
            Elems::I(v) => Elems::I(indices.iter().map(|&i| v[i]).collect()),
        };
        Const { dims, elems }
    }

    /// Row-major strides.
    fn strides(dims: &[usize]) -> Vec<usize> {
        let mut s = vec![1; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * dims[i + 1];
        }
        s
    }

    /// The same elements under another shape (same count).
    pub fn reshaped(&self, dims: Vec<usize>) -> R<Const> {
        if checked_count(&dims)? != self.len() {
            return Err(format!("{} values cannot take shape {dims:?}", self.len()));
        }
        Ok(Const {
            dims,
            elems: self.elems.clone(),
        })
    }

    /// ONNX `Reshape` of a constant to `target` (`0` copies a dimension, `-1` is inferred).
    pub fn reshape(&self, target: &[i64]) -> R<Const> {
        let mut dims = Vec::with_capacity(target.len());
        let mut infer = None;
        for (i, &t) in target.iter().enumerate() {
            match t {
                0 => dims.push(*self.dims.get(i).ok_or("0 copies a missing dimension")?),
                -1 if infer.is_none() => {
                    infer = Some(i);
                    dims.push(1);
                }
                t if t > 0 => dims.push(t as usize),
                t => return Err(format!("reshape target {target:?} has {t}")),
            }
        }
        if let Some(i) = infer {
            let rest = checked_count(&dims)?.max(1);
            if !self.len().is_multiple_of(rest) {
                return Err(format!("{} values do not fit {target:?}", self.len()));
            }
            dims[i] = self.len() / rest;
        }
        self.reshaped(dims)
    }

    /// ONNX `Unsqueeze`: insert axes of size 1 (`axes` of the output rank).
    pub fn unsqueeze(&self, axes: &[i64]) -> R<Const> {
        self.reshaped(unsqueezed(&self.dims, axes)?)
    }

    /// ONNX `Squeeze`: drop the given axes (all of size 1), or every axis of size 1.
    pub fn squeeze(&self, axes: Option<&[i64]>) -> R<Const> {
        self.reshaped(squeezed(&self.dims, axes)?)
    }

    /// ONNX `Gather` along `axis` with integer `indices` (negative from the end).
    pub fn gather(&self, indices: &Const, ax: i64) -> R<Const> {
        let a = axis(ax, self.dims.len())?;
        let n = self.dims[a] as i64;
        let idx: Vec<usize> = indices
            .int_values()?
            .into_iter()
            .map(|i| {
                let j = if i < 0 { i + n } else { i };
                if (0..n).contains(&j) {
                    Ok(j as usize)
                } else {
                    Err(format!("index {i} is out of range for size {n}"))
                }
            })
            .collect::<R<_>>()?;
        let mut dims = self.dims[..a].to_vec();
        dims.extend(&indices.dims);
        dims.extend(&self.dims[a + 1..]);
        checked_count(&dims)?;
        let outer: usize = self.dims[..a].iter().product();
        let inner: usize = self.dims[a + 1..].iter().product();
        let mut flat = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in &idx {
                let base = (o * self.dims[a] + i) * inner;
                flat.extend(base..base + inner);
            }
        }
        Ok(self.pick(dims, &flat))
    }

    /// ONNX `Concat` of constants along `axis`.
    pub fn concat(parts: &[&Const], ax: i64) -> R<Const> {
        let first = parts.first().ok_or("no inputs")?;
        let a = axis(ax, first.dims.len())?;
        let floats = matches!(first.elems, Elems::F(_));
        let mut dims = first.dims.clone();
        dims[a] = 0;
        for p in parts {
            let same_rest = p.dims.len() == first.dims.len()
                && (0..dims.len()).all(|i| i == a || p.dims[i] == first.dims[i]);
            if !same_rest || matches!(p.elems, Elems::F(_)) != floats {
                return Err(format!(
                    "cannot concatenate {:?} and {:?} along axis {a}",
                    first.dims, p.dims
                ));
            }
            dims[a] += p.dims[a];
        }
        checked_count(&dims)?;
        let outer: usize = dims[..a].iter().product();
        let mut elems = match first.elems {
            Elems::F(_) => Elems::F(Vec::new()),
            Elems::I(_) => Elems::I(Vec::new()),
        };
        for o in 0..outer {
            for p in parts {
                let block: usize = p.dims[a..].iter().product();
                match (&mut elems, &p.elems) {
                    (Elems::F(out), Elems::F(v)) => {
                        out.extend_from_slice(&v[o * block..(o + 1) * block])
                    }
                    (Elems::I(out), Elems::I(v)) => {
                        out.extend_from_slice(&v[o * block..(o + 1) * block])
                    }
                    _ => unreachable!("element types checked above"),
                }
            }
        }
        Ok(Const { dims, elems })
    }

    /// ONNX `Slice` with `starts`, `ends`, optional `axes` and `steps` (clamped like numpy).
    pub fn slice(
        &self,
        starts: &[i64],
        ends: &[i64],
        axes: Option<&[i64]>,
        steps: Option<&[i64]>,
    ) -> R<Const> {
        let rank = self.dims.len();
        let axes: Vec<usize> = match axes {
            Some(a) => a.iter().map(|&x| axis(x, rank)).collect::<R<_>>()?,
            None => (0..starts.len()).collect(),
        };
        if starts.len() != axes.len() || ends.len() != axes.len() {
            return Err("starts, ends and axes differ in length".into());
        }
        // Per axis: the kept indices.
        let mut keep: Vec<Vec<usize>> = self.dims.iter().map(|&d| (0..d).collect()).collect();
        for (k, &a) in axes.iter().enumerate() {
            let step = steps.and_then(|s| s.get(k)).copied().unwrap_or(1);
            if step == 0 {
                return Err("a slice step of 0".into());
            }
            let n = self.dims[a] as i64;
            let clamp = |v: i64, lo: i64, hi: i64| {
                let v = if v < 0 { v + n } else { v };
                v.clamp(lo, hi)
            };
            let mut idx = Vec::new();
            if step > 0 {
                let (mut i, e) = (clamp(starts[k], 0, n), clamp(ends[k], 0, n));
                while i < e {
                    idx.push(i as usize);
                    i += step;
                }
            } else {
                let (mut i, e) = (clamp(starts[k], -1, n - 1), clamp(ends[k], -1, n - 1));
                while i > e {
                    idx.push(i as usize);
                    i += step;
                }
            }
            keep[a] = idx;
        }
        let dims: Vec<usize> = keep.iter().map(Vec::len).collect();
        checked_count(&dims)?;
        let strides = Self::strides(&self.dims);
        let mut flat = vec![0usize];
        for (k, &stride) in keep.iter().zip(&strides) {
            flat = flat
                .iter()
                .flat_map(|base| k.iter().map(move |i| base + i * stride))
                .collect();
        }
        Ok(self.pick(dims, &flat))
    }

    /// ONNX `Cast` to a float (`true`) or an integer type.
    pub fn cast(&self, to_float: bool) -> R<Const> {
        Ok(match (&self.elems, to_float) {
            (Elems::F(_), true) | (Elems::I(_), false) => self.clone(),
            (Elems::I(_), true) => Const::floats(self.dims.clone(), self.reals()?),
            (Elems::F(v), false) => Const::ints(
                self.dims.clone(),
                v.iter().map(|x| Dim::N(x.trunc() as i64)).collect(),
            ),
        })
    }

    /// ONNX `ConstantOfShape`: a tensor of shape `shape` filled with `value`'s one element.
    pub fn of_shape(shape: &[i64], value: &Const) -> R<Const> {
        let dims: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
            .collect::<R<_>>()?;
        let n = checked_count(&dims)?;
        if value.len() != 1 {
            return Err(format!("value has {} elements, not 1", value.len()));
        }
        Ok(value.pick(dims, &vec![0; n]))
    }

    /// Elementwise `op` of two constants with numpy broadcasting.
    pub fn binary(&self, other: &Const, op: Arith) -> R<Const> {
        let rank = self.dims.len().max(other.dims.len());
        let pad = |d: &[usize]| {
            let mut v = vec![1; rank - d.len()];
            v.extend_from_slice(d);
            v
        };
        let (a, b) = (pad(&self.dims), pad(&other.dims));
        let mut dims = Vec::with_capacity(rank);
        for i in 0..rank {
            dims.push(match (a[i], b[i]) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => {
                    return Err(format!(
                        "shapes {:?} and {:?} do not broadcast",
                        self.dims, other.dims
                    ))
                }
            });
        }
        let n = checked_count(&dims)?;
        let (sa, sb) = (Self::strides(&a), Self::strides(&b));
        let source = |i: usize, s: &[usize], d: &[usize]| {
            let (mut rem, mut at) = (i, 0);
            for k in (0..rank).rev() {
                let coord = rem % dims[k];
                rem /= dims[k];
                if d[k] != 1 {
                    at += coord * s[k];
                }
            }
            at
        };
        let ia: Vec<usize> = (0..n).map(|i| source(i, &sa, &a)).collect();
        let ib: Vec<usize> = (0..n).map(|i| source(i, &sb, &b)).collect();
        let elems = match (&self.elems, &other.elems) {
            (Elems::F(x), Elems::F(y)) => Elems::F(
                ia.iter()
                    .zip(&ib)
                    .map(|(&i, &j)| op.real(x[i], y[j]))
                    .collect::<R<_>>()?,
            ),
            (Elems::I(x), Elems::I(y)) => Elems::I(
                ia.iter()
                    .zip(&ib)
                    .map(|(&i, &j)| op.int(x[i], y[j]))
                    .collect::<R<_>>()?,
            ),
            _ => return Err("operands of different element types".into()),
        };
        Ok(Const { dims, elems })
    }

    /// Elementwise `f` of a float constant.
    pub fn map_reals(&self, f: impl Fn(f64) -> f64) -> R<Const> {
        let v: Vec<f64> = self.reals()?.into_iter().map(f).collect();
        if let Some(x) = v.iter().find(|x| !x.is_finite()) {
            return Err(format!("the result has a non-finite value ({x})"));
        }
        Ok(Const::floats(self.dims.clone(), v))
    }
}

/// Arithmetic on constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arith {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` (integers: truncated).
    Div,
}

impl Arith {
    fn real(self, a: f64, b: f64) -> R<f64> {
        let v = match self {
            Arith::Add => a + b,
            Arith::Sub => a - b,
            Arith::Mul => a * b,
            Arith::Div => a / b,
        };
        if v.is_finite() {
            Ok(v)
        } else {
            Err(format!("{a} {self:?} {b} is not finite"))
        }
    }

    fn int(self, a: Dim, b: Dim) -> R<Dim> {
        let batch = || Err("arithmetic on the batch size is not supported".to_string());
        match (a, b) {
            (Dim::N(x), Dim::N(y)) => {
                let v = match self {
                    Arith::Add => x.checked_add(y),
                    Arith::Sub => x.checked_sub(y),
                    Arith::Mul => x.checked_mul(y),
                    Arith::Div => x.checked_div(y),
                };
                v.map(Dim::N)
                    .ok_or_else(|| format!("{x} {self:?} {y} overflows or divides by zero"))
            }
            (Dim::Batch, Dim::N(1)) if matches!(self, Arith::Mul | Arith::Div) => Ok(Dim::Batch),
            (Dim::N(1), Dim::Batch) if self == Arith::Mul => Ok(Dim::Batch),
            (Dim::Batch, Dim::N(0)) if matches!(self, Arith::Add | Arith::Sub) => Ok(Dim::Batch),
            (Dim::N(0), Dim::Batch) if self == Arith::Add => Ok(Dim::Batch),
            _ => batch(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_arithmetic_keeps_the_batch_symbolic() {
        // Shape -> Gather(0) -> Unsqueeze -> Concat with [-1]: [N, -1].
        let shape = Const::ints(vec![4], vec![Dim::Batch, Dim::N(3), Dim::N(5), Dim::N(5)]);
        let n = shape
            .gather(&Const::ints(vec![], vec![Dim::N(0)]), 0)
            .unwrap();
        assert_eq!(n.dims, Vec::<usize>::new());
        let n = n.unsqueeze(&[0]).unwrap();
        let t = Const::concat(&[&n, &Const::int_vec(&[-1])], 0).unwrap();
        assert_eq!(t.dims_values().unwrap(), vec![Dim::Batch, Dim::N(-1)]);
        // Slices and products of the known dimensions.
        let hw = shape.slice(&[2], &[4], None, None).unwrap();
        assert_eq!(hw.int_values().unwrap(), vec![5, 5]);
        let c = shape.gather(&Const::int_vec(&[1]), 0).unwrap();
        let p = c.binary(&Const::int_vec(&[25]), Arith::Mul).unwrap();
        assert_eq!(p.int_values().unwrap(), vec![75]);
        assert!(n.binary(&Const::int_vec(&[2]), Arith::Mul).is_err());
        assert_eq!(
            n.binary(&Const::int_vec(&[1]), Arith::Mul)
                .unwrap()
                .dims_values()
                .unwrap(),
            vec![Dim::Batch]
        );
        // Reversed slices, gathers of matrices, broadcasting.
        let v = Const::int_vec(&[0, 1, 2, 3, 4]);
        assert_eq!(
            v.slice(&[-1], &[-100], None, Some(&[-2]))
                .unwrap()
                .int_values()
                .unwrap(),
            vec![4, 2, 0]
        );
        let m = Const::floats(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(
            m.gather(&Const::int_vec(&[2, 0]), 1)
                .unwrap()
                .reals()
                .unwrap(),
            vec![3.0, 1.0, 6.0, 4.0]
        );
        let col = Const::floats(vec![2, 1], vec![10.0, 20.0]);
        assert_eq!(
            m.binary(&col, Arith::Add).unwrap().reals().unwrap(),
            vec![11.0, 12.0, 13.0, 24.0, 25.0, 26.0]
        );
        // Sizes are checked before anything is allocated.
        let e =
            Const::of_shape(&[1 << 20, 1 << 20], &Const::floats(vec![1], vec![0.0])).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
    }
}
