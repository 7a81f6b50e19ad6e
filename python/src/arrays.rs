//! numpy arrays in: a float64 array in C order is read in place (no copy); float32, other real
//! dtypes, Fortran order and strided slices are copied once into row-major float64. Anything
//! array-like that is not an ndarray goes through `numpy.asarray` first.

use numpy::{PyArrayDescrMethods, PyArrayMethods};
use numpy::{PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;

use crate::errors::bad_input;

/// Real values and their shape, borrowed from the caller's array or copied (see the module
/// documentation).
pub struct Floats<'py> {
    shape: Vec<usize>,
    held: Held<'py>,
}

enum Held<'py> {
    Borrowed(PyReadonlyArrayDyn<'py, f64>),
    Owned(Vec<f64>),
}

impl Floats<'_> {
    /// The values in row-major (C) order.
    pub fn values(&self) -> &[f64] {
        match &self.held {
            // C-contiguous was checked when borrowing.
            Held::Borrowed(a) => a.as_slice().unwrap_or_default(),
            Held::Owned(v) => v,
        }
    }

    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Whether the values were copied (not read in place).
    pub fn copied(&self) -> bool {
        matches!(self.held, Held::Owned(_))
    }
}

/// The ndarray `obj` is, or `numpy.asarray(obj)`.
fn ndarray<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyUntypedArray>> {
    if let Ok(a) = obj.cast::<PyUntypedArray>() {
        return Ok(a.clone());
    }
    let np = obj.py().import("numpy")?;
    let a = np.call_method1("asarray", (obj,))?;
    Ok(a.cast_into::<PyUntypedArray>()?)
}

/// The dtype's one-letter kind (`f` float, `i` signed, `u` unsigned, `b` bool, ...).
fn kind(a: &Bound<'_, PyUntypedArray>) -> u8 {
    a.dtype().kind()
}

/// `obj` as real values (`what` names it in errors): see the module documentation.
pub fn floats<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Floats<'py>> {
    let a = ndarray(obj)?;
    let shape = a.shape().to_vec();
    if let Ok(f) = a.cast::<PyArrayDyn<f64>>() {
        let ro = f.try_readonly()?;
        if a.is_c_contiguous() && ro.as_slice().is_ok() {
            return Ok(Floats {
                shape,
                held: Held::Borrowed(ro),
            });
        }
        let v = ro.as_array().iter().copied().collect();
        return Ok(Floats {
            shape,
            held: Held::Owned(v),
        });
    }
    if let Ok(f) = a.cast::<PyArrayDyn<f32>>() {
        let ro = f.try_readonly()?;
        let v = ro.as_array().iter().map(|&x| x as f64).collect();
        return Ok(Floats {
            shape,
            held: Held::Owned(v),
        });
    }
    match kind(&a) {
        // float16, long double, non-native byte order, integers: converted exactly (or to the
        // nearest float64) by numpy.
        b'f' | b'i' | b'u' => {
            let c = a.call_method1("astype", ("float64",))?;
            let f = c.cast::<PyArrayDyn<f64>>()?;
            let v = f.try_readonly()?.as_array().iter().copied().collect();
            Ok(Floats {
                shape,
                held: Held::Owned(v),
            })
        }
        _ => Err(bad_input(format!(
            "{what}: dtype {} is not supported; pass real numbers (float32 or float64)",
            a.dtype()
        ))),
    }
}

/// `obj` as class indices (`what` names it in errors): a 1-D array of integers.
pub fn labels(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    let a = ndarray(obj)?;
    if a.ndim() != 1 {
        return Err(bad_input(format!(
            "{what}: expected a 1-D integer array [N], got shape {:?}",
            a.shape()
        )));
    }
    if !matches!(kind(&a), b'i' | b'u') {
        return Err(bad_input(format!(
            "{what}: dtype {} is not supported; pass integer class indices (int64 or int32)",
            a.dtype()
        )));
    }
    if let Ok(i) = a.cast::<PyArrayDyn<i64>>() {
        return Ok(i.try_readonly()?.as_array().iter().copied().collect());
    }
    // Other integer dtypes: numpy refuses (OverflowError) nothing here, every int fits i64 but
    // uint64 above 2^63, which cannot be a class index anyway.
    let c = a.call_method1("astype", ("int64",))?;
    let i = c.cast::<PyArrayDyn<i64>>()?;
    let v = i.try_readonly()?.as_array().iter().copied().collect();
    Ok(v)
}
