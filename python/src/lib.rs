//! Python bindings of the Secure Serving engine: the native module `secure_serving._native`,
//! re-exported by the `secure_serving` package (`python/package/secure_serving`).
//!
//! Every call that computes, reads a model or talks to the parties releases the GIL; numpy
//! arrays are read in place where their layout allows; engine errors become the exception
//! classes of [`errors`].

#![warn(missing_docs)]

use pyo3::prelude::*;

pub mod arrays;
pub mod computation;
pub mod deployment;
pub mod errors;
pub mod owner;
pub mod progress;
pub mod services;

/// The native module.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<deployment::LocalDeployment>()?;
    m.add_class::<deployment::RemoteDeployment>()?;
    m.add_class::<owner::Owner>()?;
    m.add_class::<owner::Classification>()?;
    m.add_class::<owner::UploadReport>()?;
    m.add_class::<owner::ModelInfo>()?;
    m.add_class::<computation::Computation>()?;
    m.add_class::<computation::SharedTensor>()?;
    m.add_function(wrap_pyfunction!(deployment::connect, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
