//! Buffer pool keyed by (usage, size class), and the GPU tensor storage that returns its buffer
//! to the pool when dropped.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{KernelError, Result};
use crate::tensor::Storage;

/// What a pooled buffer is used for (each kind has its own usage flags and free lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BufKind {
    /// Tensor data: storage binding, copy source and destination.
    Storage,
    /// Kernel parameters: uniform binding, copy destination.
    Uniform,
    /// Host readback staging: mappable for reading, copy destination.
    Readback,
}

impl BufKind {
    fn usage(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            BufKind::Storage => U::STORAGE | U::COPY_SRC | U::COPY_DST,
            BufKind::Uniform => U::UNIFORM | U::COPY_DST,
            BufKind::Readback => U::MAP_READ | U::COPY_DST,
        }
    }
}

/// Counters of the GPU buffer pool (see [`super::GpuBackend::pool_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers that exist now (in use or cached for reuse).
    pub live_buffers: usize,
    /// Bytes held by those buffers.
    pub live_bytes: u64,
    /// Of those, buffers idle in the free lists.
    pub cached_buffers: usize,
    /// Buffers created since start-up (a reuse does not count).
    pub allocations: u64,
    /// Bytes of all buffers created since start-up.
    pub allocated_bytes: u64,
}

#[derive(Default)]
struct PoolState {
    free: HashMap<(BufKind, u64), Vec<wgpu::Buffer>>,
    cached_bytes: u64,
    stats: PoolStats,
}

/// Free lists of buffers by size class. Classes are quarter octaves (sizes 1, 1.25, 1.5 and
/// 1.75 times a power of two, at least 256 bytes), so a reused buffer wastes at most 25%.
pub(crate) struct BufferPool {
    device: wgpu::Device,
    max_buffer_bytes: u64,
    /// Idle bytes kept for reuse; buffers returned beyond this are destroyed.
    cache_limit: u64,
    state: Mutex<PoolState>,
}

impl BufferPool {
    /// An empty pool on `device`.
    pub(crate) fn new(device: wgpu::Device, max_buffer_bytes: u64, cache_limit: u64) -> Self {
        BufferPool {
            device,
            max_buffer_bytes,
            cache_limit,
            state: Mutex::new(PoolState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state stays consistent even if a holder panicked (plain counter updates).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The size class holding `bytes`.
    pub(crate) fn size_class(&self, bytes: u64) -> Result<u64> {
        let b = bytes.max(256);
        let class = if b <= 4096 {
            b.next_power_of_two()
        } else {
            let step = (1u64 << (63 - b.leading_zeros())) / 4;
            b.div_ceil(step) * step
        };
        let exact = b.div_ceil(256) * 256;
        let class = if class > self.max_buffer_bytes {
            exact
        } else {
            class
        };
        if class > self.max_buffer_bytes {
            return Err(KernelError::Gpu(format!(
                "a buffer of {bytes} bytes exceeds the device limit of {} bytes",
                self.max_buffer_bytes
            )));
        }
        Ok(class)
    }

    /// A buffer of at least `bytes` bytes for `kind`, reused when one is free.
    pub(crate) fn take(self: &Arc<Self>, kind: BufKind, bytes: u64) -> Result<PooledBuffer> {
        let class = self.size_class(bytes)?;
        let reused = {
            let mut st = self.lock();
            let buf = st.free.get_mut(&(kind, class)).and_then(Vec::pop);
            if buf.is_some() {
                st.cached_bytes -= class;
                st.stats.cached_buffers -= 1;
            }
            buf
        };
        let buffer = match reused {
            Some(b) => b,
            None => {
                let b = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("pooled"),
                    size: class,
                    usage: kind.usage(),
                    mapped_at_creation: false,
                });
                let mut st = self.lock();
                st.stats.live_buffers += 1;
                st.stats.live_bytes += class;
                st.stats.allocations += 1;
                st.stats.allocated_bytes += class;
                b
            }
        };
        Ok(PooledBuffer {
            buffer: Some(buffer),
            kind,
            class,
            pool: self.clone(),
        })
    }

    fn give_back(&self, kind: BufKind, class: u64, buffer: wgpu::Buffer) {
        let mut st = self.lock();
        if st.cached_bytes + class <= self.cache_limit {
            st.cached_bytes += class;
            st.stats.cached_buffers += 1;
            st.free.entry((kind, class)).or_default().push(buffer);
        } else {
            st.stats.live_buffers -= 1;
            st.stats.live_bytes -= class;
            drop(st);
            buffer.destroy();
        }
    }

    /// Destroy every idle buffer.
    pub(crate) fn trim(&self) {
        let mut st = self.lock();
        let free = std::mem::take(&mut st.free);
        for ((_, class), bufs) in free {
            for b in bufs {
                st.stats.live_buffers -= 1;
                st.stats.live_bytes -= class;
                st.stats.cached_buffers -= 1;
                b.destroy();
            }
        }
        st.cached_bytes = 0;
    }

    /// Current counters.
    pub(crate) fn stats(&self) -> PoolStats {
        self.lock().stats
    }
}

/// A buffer on loan from the pool; goes back to its free list when dropped.
pub(crate) struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    kind: BufKind,
    class: u64,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    /// The wgpu buffer.
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.buffer
            .as_ref()
            .expect("pooled buffer present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.pool.give_back(self.kind, self.class, b);
        }
    }
}

/// A GPU-resident tensor's storage: a pooled buffer holding `len` u64 values (8 bytes
/// little-endian each, read by the shaders as `vec2<u32>(lo, hi)` or `u64`).
pub(crate) struct GpuStorage {
    pub(crate) buf: PooledBuffer,
    pub(crate) len: usize,
    /// Identity of the backend instance (device) that owns the buffer.
    pub(crate) owner: usize,
}

impl GpuStorage {
    /// The wgpu buffer.
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer()
    }
}

impl Storage for GpuStorage {
    fn backend_name(&self) -> &'static str {
        "gpu"
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
