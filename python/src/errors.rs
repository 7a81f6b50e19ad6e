//! The exception hierarchy: one Python class per [`ErrorKind`], all under `secure_serving.Error`,
//! each carrying the engine's message.

use engine::error::{EngineError, ErrorKind};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    secure_serving,
    Error,
    PyException,
    "Base class of every error the engine reports."
);
create_exception!(
    secure_serving,
    BadInput,
    Error,
    "The input (a file, an option, a shape, a value) is not acceptable; fix it and retry."
);
create_exception!(
    secure_serving,
    Refused,
    Error,
    "Refused by the deployment's policy: who may do what, a name already taken, a limit."
);
create_exception!(
    secure_serving,
    UnknownModel,
    Error,
    "No model of that name is served."
);
create_exception!(
    secure_serving,
    Busy,
    Error,
    "The parties run as many requests as they take at once; retry later."
);
create_exception!(
    secure_serving,
    OutOfStep,
    Error,
    "Alice and bob (or a peer and this side) are out of step; the request was stopped."
);
create_exception!(
    secure_serving,
    PeerLost,
    Error,
    "A peer (alice, bob or the dealer) died, stalled or closed its link."
);
create_exception!(
    secure_serving,
    OverflowDetected,
    Error,
    "A value left (or could leave) the range the protocols are exact on."
);
create_exception!(
    secure_serving,
    Internal,
    Error,
    "Anything else: an internal error or an I/O failure."
);

/// The Python exception of an engine error, by its kind, with its message.
pub fn to_py(e: EngineError) -> PyErr {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::BadInput => BadInput::new_err(msg),
        ErrorKind::Refused => Refused::new_err(msg),
        ErrorKind::UnknownModel => UnknownModel::new_err(msg),
        ErrorKind::Busy => Busy::new_err(msg),
        ErrorKind::OutOfStep => OutOfStep::new_err(msg),
        ErrorKind::PeerLost => PeerLost::new_err(msg),
        ErrorKind::OverflowDetected => OverflowDetected::new_err(msg),
        ErrorKind::Internal => Internal::new_err(msg),
    }
}

/// [`to_py`] for results.
pub trait IntoPy<T> {
    /// The value, or the engine error as a Python exception.
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for engine::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// A `BadInput` with `msg` (errors the bindings find before calling the engine).
pub fn bad_input(msg: impl Into<String>) -> PyErr {
    BadInput::new_err(msg.into())
}

/// Add the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("BadInput", py.get_type::<BadInput>())?;
    m.add("Refused", py.get_type::<Refused>())?;
    m.add("UnknownModel", py.get_type::<UnknownModel>())?;
    m.add("Busy", py.get_type::<Busy>())?;
    m.add("OutOfStep", py.get_type::<OutOfStep>())?;
    m.add("PeerLost", py.get_type::<PeerLost>())?;
    m.add("OverflowDetected", py.get_type::<OverflowDetected>())?;
    m.add("Internal", py.get_type::<Internal>())?;
    Ok(())
}
