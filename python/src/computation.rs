//! Custom secure computations from Python: a small set of named operations, each one program
//! run by alice and bob on their shares ([`engine::Computation::run`]), as `examples/embed.rs`
//! does with Rust closures.

use std::sync::{Arc, Mutex};

use engine::party::Party;
use engine::service::computation::agreed_id;
use engine::{FixedPoint, PartyId};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::arrays::floats;
use crate::errors::{bad_input, Error, IntoPy};
use crate::services::{lock, Services};

/// A secret tensor held as shares by alice and bob (a handle: no data here).
#[pyclass(frozen, module = "secure_serving")]
pub struct SharedTensor {
    id: u64,
    shape: Vec<usize>,
    /// The computation it belongs to.
    computation: u64,
}

#[pymethods]
impl SharedTensor {
    /// The tensor's shape.
    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn __repr__(&self) -> String {
        format!("SharedTensor(shape={:?})", self.shape)
    }
}

/// A custom secure computation on a local deployment's services (see
/// `LocalDeployment.computation`). Its client and model owner share inputs and receive what is
/// revealed to them; every operation runs on shares. Closing it (or leaving its `with` block)
/// drops its shares at the parties.
#[pyclass(frozen, module = "secure_serving")]
pub struct Computation {
    inner: Mutex<Option<engine::Computation>>,
    id: u64,
    fixed: FixedPoint,
    /// Keeps the services running while the computation lives.
    _services: Arc<Services>,
}

/// `"client"` or `"model_owner"` as the data owner it names.
fn data_owner(name: &str) -> PyResult<PartyId> {
    match name {
        "client" => Ok(PartyId::Client),
        "model_owner" | "model-owner" => Ok(PartyId::ModelOwner),
        other => Err(bad_input(format!(
            "owner must be 'client' or 'model_owner', not '{other}'"
        ))),
    }
}

impl Computation {
    /// Open a computation on `services` (kept running while it lives).
    pub fn open(
        py: Python<'_>,
        services: &Arc<Services>,
        fixed: FixedPoint,
    ) -> PyResult<Computation> {
        let d = services.running()?;
        let c = py
            .detach(|| engine::Computation::open(&d, fixed))
            .py_err()?;
        Ok(Computation {
            id: c.id(),
            inner: Mutex::new(Some(c)),
            fixed,
            _services: services.clone(),
        })
    }

    /// Run `f` on the open computation without the GIL.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut engine::Computation) -> engine::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| match lock(&self.inner).as_mut() {
            Some(c) => Ok(f(c)),
            None => Err(()),
        })
        .map_err(|_| Error::new_err("the computation is closed"))?
        .py_err()
    }

    /// Check that `x` belongs to this computation.
    fn mine(&self, x: &SharedTensor) -> PyResult<()> {
        if x.computation != self.id {
            return Err(bad_input("the tensor belongs to another computation"));
        }
        Ok(())
    }

    /// Run `op` on both parties: it computes a share from this party's kept shares, which is
    /// kept under an id both parties agree on.
    fn apply(
        &self,
        py: Python<'_>,
        shape: Vec<usize>,
        op: impl Fn(&mut Party) -> engine::Result<engine::Share> + Send + Sync + 'static,
    ) -> PyResult<SharedTensor> {
        let [a, b] = self.with(py, |c| {
            c.run(move |p| {
                let s = op(p)?;
                Ok(p.keep(s))
            })
        })?;
        Ok(SharedTensor {
            id: agreed_id(a, b).py_err()?,
            shape,
            computation: self.id,
        })
    }
}

#[pymethods]
impl Computation {
    /// `owner` ("client" or "model_owner") fixed-point encodes `values` (float32/float64, any
    /// shape) and shares them with alice and bob.
    fn share(
        &self,
        py: Python<'_>,
        owner: &str,
        values: &Bound<'_, PyAny>,
    ) -> PyResult<SharedTensor> {
        let who = data_owner(owner)?;
        let v = floats(values, "values")?;
        let (shape, data) = (v.shape().to_vec(), v.values());
        let t = self.with(py, |c| c.share(who, &shape, data))?;
        Ok(SharedTensor {
            id: t.id(),
            shape,
            computation: self.id,
        })
    }

    /// Fixed-point `x @ y` for `x` [m, k] and `y` [k, n] (Beaver product, then truncation).
    fn matmul(&self, py: Python<'_>, x: &SharedTensor, y: &SharedTensor) -> PyResult<SharedTensor> {
        self.mine(x)?;
        self.mine(y)?;
        let (m, n) = match (&x.shape[..], &y.shape[..]) {
            ([m, k], [k2, n]) if k == k2 => (*m, *n),
            _ => {
                return Err(bad_input(format!(
                    "matmul: shapes {:?} and {:?} do not multiply ([m, k] @ [k, n])",
                    x.shape, y.shape
                )))
            }
        };
        let (a, b) = (x.id, y.id);
        self.apply(py, vec![m, n], move |p| p.matmul(&p.kept(a)?, &p.kept(b)?))
    }

    /// `x + y` (same shapes; local, no communication).
    fn add(&self, py: Python<'_>, x: &SharedTensor, y: &SharedTensor) -> PyResult<SharedTensor> {
        self.mine(x)?;
        self.mine(y)?;
        if x.shape != y.shape {
            return Err(bad_input(format!(
                "add: shapes {:?} and {:?} differ",
                x.shape, y.shape
            )));
        }
        let (a, b) = (x.id, y.id);
        self.apply(py, x.shape.clone(), move |p| {
            p.add(&p.kept(a)?, &p.kept(b)?)
        })
    }

    /// `max(x, 0)` elementwise (a secure comparison).
    fn relu(&self, py: Python<'_>, x: &SharedTensor) -> PyResult<SharedTensor> {
        self.mine(x)?;
        let a = x.id;
        self.apply(py, x.shape.clone(), move |p| p.relu(&p.kept(a)?))
    }

    /// Index of the largest entry of every row of `x` [m, n] ([m], shared; ties: the lowest
    /// index), as the tutorial's encrypted argmax.
    fn argmax(&self, py: Python<'_>, x: &SharedTensor) -> PyResult<SharedTensor> {
        self.mine(x)?;
        let m = match x.shape[..] {
            [m, n] if n > 0 => m,
            _ => {
                return Err(bad_input(format!(
                    "argmax: expected a matrix [m, n > 0], got {:?}",
                    x.shape
                )))
            }
        };
        let a = x.id;
        self.apply(py, vec![m], move |p| p.argmax_last(&p.kept(a)?))
    }

    /// Reveal `x` to `owner` ("client" or "model_owner") alone: the values it reconstructs
    /// (float64, in `x`'s shape).
    fn reveal<'py>(
        &self,
        py: Python<'py>,
        owner: &str,
        x: &SharedTensor,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.mine(x)?;
        let who = data_owner(owner)?;
        let handle = engine::Computation::handle(x.id, &x.shape);
        let v = self.with(py, |c| c.reveal(who, &handle))?;
        let flat = PyArray1::from_vec(py, v);
        Ok(flat.reshape(x.shape.clone())?.into_any())
    }

    /// Drop `x`'s shares at both parties.
    fn delete(&self, py: Python<'_>, x: &SharedTensor) -> PyResult<()> {
        self.mine(x)?;
        let id = x.id;
        self.with(py, |c| {
            c.run(move |p| {
                p.forget(id);
                Ok(())
            })
        })?;
        Ok(())
    }

    /// Fractional bits of the fixed-point encoding.
    #[getter]
    fn frac_bits(&self) -> u32 {
        self.fixed.frac_bits()
    }

    /// End the computation: the parties drop its shares. Idempotent.
    fn close(&self, py: Python<'_>) {
        let c = lock(&self.inner).take();
        py.detach(move || drop(c));
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _ty: Option<&Bound<'_, PyType>>,
        _value: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close(py);
        false
    }
}
