//! GPU backend on wgpu compute shaders (WGSL in `shaders/`).

use crate::error::{KernelError, Result};

/// The wgpu backend (placeholder until the shader backend lands).
#[derive(Debug)]
pub struct GpuBackend {
    _private: (),
}

impl GpuBackend {
    /// Open the default adapter as a shareable trait object.
    pub fn new_shared() -> Result<std::sync::Arc<dyn crate::Backend>> {
        Err(KernelError::GpuUnavailable(
            "the GPU backend is not built yet".into(),
        ))
    }

    /// Open the default adapter and compile the kernels.
    pub fn new() -> Result<Self> {
        Err(KernelError::GpuUnavailable(
            "the GPU backend is not built yet".into(),
        ))
    }
}
