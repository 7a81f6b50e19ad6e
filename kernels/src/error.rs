//! Errors raised by compute backends.

/// Result alias for backend operations.
pub type Result<T> = std::result::Result<T, KernelError>;

/// What can go wrong inside a backend.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Operand shapes do not fit the operation.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation that was asked for.
        op: &'static str,
        /// Which shapes were given.
        detail: String,
    },
    /// A tensor created by another backend was passed in.
    #[error("tensor belongs to backend '{found}', not '{expected}'")]
    ForeignTensor {
        /// The backend that was asked to compute.
        expected: String,
        /// The backend that owns the tensor.
        found: String,
    },
    /// No GPU adapter could be found or a device could not be created.
    #[error("GPU backend unavailable: {0}")]
    GpuUnavailable(String),
    /// The GPU reported an error while running a kernel.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// A backend name that is not known.
    #[error("unknown backend '{0}' (expected 'cpu' or 'gpu')")]
    UnknownBackend(String),
}

/// Build a [`KernelError::Shape`].
pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> KernelError {
    KernelError::Shape {
        op,
        detail: detail.into(),
    }
}
