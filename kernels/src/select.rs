//! Run-time backend selection: one switch for the library, the CLI and the benches.

use std::str::FromStr;
use std::sync::Arc;

use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::error::{KernelError, Result};
use crate::gpu::GpuBackend;

/// Which backend to compute on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The CPU backend (default).
    #[default]
    Cpu,
    /// The wgpu compute-shader backend.
    Gpu,
}

impl FromStr for BackendKind {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(BackendKind::Cpu),
            "gpu" => Ok(BackendKind::Gpu),
            other => Err(KernelError::UnknownBackend(other.to_string())),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Gpu => "gpu",
        })
    }
}

/// Construct the backend of the given kind. Asking for a GPU where none exists is an error
/// naming the cause.
pub fn backend_from_kind(kind: BackendKind) -> Result<Arc<dyn Backend>> {
    Ok(match kind {
        BackendKind::Cpu => Arc::new(CpuBackend::new()),
        BackendKind::Gpu => GpuBackend::new_shared()?,
    })
}
