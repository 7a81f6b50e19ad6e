//! Instance, adapter and device setup, limits, and turning GPU errors into [`KernelError`]s.

use std::sync::{Arc, Mutex};

use crate::error::{KernelError, Result};

use super::{GpuOptions, U64Variant};

/// Storage bindings start at multiples of this many bytes (WebGPU guarantees alignment <= 256).
pub(crate) const BINDING_ALIGN_BYTES: u64 = 256;

/// An open device plus what the kernels need to know about it.
pub(crate) struct GpuContext {
    /// The logical device.
    pub(crate) device: wgpu::Device,
    /// Its queue.
    pub(crate) queue: wgpu::Queue,
    /// Adapter name, backend, driver.
    pub(crate) info: wgpu::AdapterInfo,
    /// Whether the device was opened with `SHADER_INT64`.
    pub(crate) has_int64: bool,
    /// Most `u64` elements one storage binding may span (a multiple of the binding alignment).
    pub(crate) max_binding_elems: usize,
    /// Largest buffer the device can create, in bytes.
    pub(crate) max_buffer_bytes: u64,
    /// Per-axis dispatch limit.
    pub(crate) max_groups: u32,
    /// Uncaptured errors and device loss, reported by callbacks.
    faults: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("has_int64", &self.has_int64)
            .field("max_binding_elems", &self.max_binding_elems)
            .finish()
    }
}

fn describe_backends(backends: wgpu::Backends) -> String {
    let env = std::env::var("WGPU_BACKEND")
        .map(|v| format!(", WGPU_BACKEND={v:?}"))
        .unwrap_or_default();
    format!("{backends:?}{env}")
}

impl GpuContext {
    /// Find an adapter for the requested backends and open a device with its full limits.
    pub(crate) fn open(opts: &GpuOptions) -> Result<Self> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if let Some(b) = opts.backends {
            desc.backends = b;
        }
        let backends = desc.backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| {
            KernelError::GpuUnavailable(format!(
                "no wgpu adapter found for backends {}: {e}",
                describe_backends(backends)
            ))
        })?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let adapter_int64 = adapter.features().contains(wgpu::Features::SHADER_INT64);
        let has_int64 = adapter_int64 && opts.u64_variant != Some(U64Variant::U32Pairs);
        if opts.u64_variant == Some(U64Variant::NativeU64) && !adapter_int64 {
            return Err(KernelError::GpuUnavailable(format!(
                "adapter '{}' ({:?}) lacks SHADER_INT64, needed for the native u64 kernels",
                info.name, info.backend
            )));
        }
        let required_features = if has_int64 {
            wgpu::Features::SHADER_INT64
        } else {
            wgpu::Features::empty()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("secure-serving kernels"),
            required_features,
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        }))
        .map_err(|e| {
            KernelError::GpuUnavailable(format!(
                "could not open a device on adapter '{}' ({:?}): {e}",
                info.name, info.backend
            ))
        })?;

        let faults = Arc::new(Mutex::new(Vec::new()));
        let sink = faults.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let sink = faults.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut v) = sink.lock() {
                v.push(format!("device lost ({reason:?}): {msg}"));
            }
        });

        let max_buffer_bytes = limits.max_buffer_size;
        let mut binding_bytes = limits
            .max_storage_buffer_binding_size
            .min(max_buffer_bytes)
            .min(u64::from(u32::MAX));
        if let Some(cap) = opts.max_binding_bytes {
            binding_bytes = binding_bytes.min(cap.max(4 * BINDING_ALIGN_BYTES));
        }
        let binding_bytes = binding_bytes / BINDING_ALIGN_BYTES * BINDING_ALIGN_BYTES;
        Ok(GpuContext {
            device,
            queue,
            info,
            has_int64,
            max_binding_elems: (binding_bytes / 8) as usize,
            max_buffer_bytes,
            max_groups: opts
                .max_workgroups_per_dim
                .map_or(u32::MAX, |c| c.max(1))
                .min(limits.max_compute_workgroups_per_dimension),
            faults,
        })
    }

    /// Fail with a [`KernelError::Gpu`] if a callback reported an uncaptured error or loss.
    pub(crate) fn check_faults(&self) -> Result<()> {
        let mut v = self
            .faults
            .lock()
            .map_err(|_| KernelError::Gpu("fault log poisoned".into()))?;
        if v.is_empty() {
            return Ok(());
        }
        let msg = v.join("; ");
        v.clear();
        Err(KernelError::Gpu(msg))
    }

    /// Run `f` inside validation, out-of-memory and internal error scopes: any error the GPU
    /// reports while `f` records or submits work becomes a [`KernelError::Gpu`] naming `what`.
    pub(crate) fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_faults()?;
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(oom.pop()),
            pollster::block_on(internal.pop()),
        ];
        if let Some(e) = errors.into_iter().flatten().next() {
            return Err(KernelError::Gpu(format!("{what}: {e}")));
        }
        self.check_faults()?;
        out
    }

    /// Block until all submitted work is done.
    pub(crate) fn wait_idle(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| KernelError::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check_faults()
    }

    /// Submit one command buffer and let wgpu reclaim finished resources without blocking.
    pub(crate) fn submit(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.queue.submit([encoder.finish()]);
        self.device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| KernelError::Gpu(format!("polling the GPU: {e}")))?;
        Ok(())
    }

    /// A new command encoder.
    pub(crate) fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Most workgroups one 2-D dispatch can hold.
    pub(crate) fn max_grid_groups(&self) -> usize {
        (self.max_groups.max(1) as usize).pow(2)
    }

    /// `(x, y)` workgroup counts covering `groups` groups within the per-axis limit.
    pub(crate) fn grid(&self, groups: usize) -> Result<(u32, u32)> {
        let max = self.max_groups.max(1) as usize;
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x).max(1);
        if y > max {
            return Err(KernelError::Gpu(format!(
                "{groups} workgroups exceed the dispatch limit {max} x {max}"
            )));
        }
        Ok((x as u32, y as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wgpu validation error inside `scoped` comes back as `KernelError::Gpu`, not a panic.
    #[test]
    fn validation_error_becomes_kernel_error() {
        let ctx = match GpuContext::open(&GpuOptions::default()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("SKIP validation_error_becomes_kernel_error: {e}");
                return;
            }
        };
        let buf = |usage| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 256,
                usage,
                mapped_at_creation: false,
            })
        };
        let (src, dst) = (
            buf(wgpu::BufferUsages::COPY_SRC),
            buf(wgpu::BufferUsages::COPY_SRC),
        );
        let r = ctx.scoped("bad copy", || {
            let mut enc = ctx.encoder("bad copy");
            // Destination lacks COPY_DST: a validation error.
            enc.copy_buffer_to_buffer(&src, 0, &dst, 0, 256);
            ctx.submit(enc)
        });
        match r {
            Err(KernelError::Gpu(msg)) => assert!(msg.starts_with("bad copy"), "{msg}"),
            other => panic!("expected KernelError::Gpu, got {other:?}"),
        }
        // The context stays usable.
        ctx.scoped("good", || Ok(())).unwrap();
        ctx.wait_idle().unwrap();
    }
}
