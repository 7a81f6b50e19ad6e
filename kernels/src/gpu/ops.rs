//! Recording and submitting kernels: chunking over storage-binding limits, dispatch grids, and
//! host transfers.

use std::sync::Arc;

use crate::error::{KernelError, Result};

use super::context::{GpuContext, BINDING_ALIGN_BYTES};
use super::pipelines::{Kernel, MatmulKernels};
use super::pool::{BufKind, BufferPool, PooledBuffer};

/// Matmuls with at most this many rows use the skinny kernel.
pub(crate) const SKINNY_MAX_ROWS: usize = 16;
/// Columns of C per skinny-matmul workgroup (its workgroup size).
const SKINNY_COLS: usize = 64;
/// Rows with at most this many columns are summed by one invocation each.
const NARROW_MAX_COLS: usize = 64;
/// Host transfers move at most this many bytes per step (bounds staging memory).
const TRANSFER_CHUNK_BYTES: usize = 32 << 20;
/// Distance between parameter blocks in a uniform buffer (>= any offset alignment).
const PARAM_STRIDE: usize = 256;
/// Bytes bound per parameter block (the largest `Params` struct in the shaders).
const PARAM_BYTES: u64 = 32;
/// Invocations per 1-D workgroup.
const WG: usize = 256;
/// Elements per binding alignment unit.
const ALIGN_ELEMS: usize = (BINDING_ALIGN_BYTES / 8) as usize;

/// Kernel parameters: the shader's `Params` struct as u32 words (unused words are ignored).
pub(crate) type Params = [u32; 8];

/// One storage binding: `(binding index, buffer, offset bytes, size bytes)`.
type Binding<'b> = (u32, &'b wgpu::Buffer, u64, u64);

/// One dispatch of a kernel.
struct Dispatch<'b> {
    kernel: &'b Kernel,
    storage: Vec<Binding<'b>>,
    params: Params,
    groups: (u32, u32),
}

/// Bind elements `[first, first + len)` from an aligned start: returns the binding's byte
/// offset and size and the element offset of `first` inside the binding.
fn aligned(first: usize, len: usize) -> (u64, u64, u32) {
    let start = first / ALIGN_ELEMS * ALIGN_ELEMS;
    let off = first - start;
    (
        (start * 8) as u64,
        ((off + len).max(1) * 8) as u64,
        off as u32,
    )
}

fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| KernelError::Gpu(format!("{what} = {v} does not fit in u32")))
}

/// Executes kernels on one device with buffers from one pool.
pub(crate) struct Exec<'a> {
    pub(crate) ctx: &'a GpuContext,
    pub(crate) pool: &'a Arc<BufferPool>,
}

impl Exec<'_> {
    /// A storage buffer for `len` elements.
    pub(crate) fn alloc(&self, len: usize) -> Result<PooledBuffer> {
        self.pool.take(BufKind::Storage, (len * 8) as u64)
    }

    /// Record `pre` (copies, clears) then `dispatches` in one compute pass, and submit.
    fn run(
        &self,
        label: &str,
        pre: impl FnOnce(&mut wgpu::CommandEncoder),
        dispatches: &[Dispatch<'_>],
    ) -> Result<()> {
        let mut enc = self.ctx.encoder(label);
        pre(&mut enc);
        let uniform = if dispatches.is_empty() {
            None
        } else {
            let mut bytes = vec![0u8; dispatches.len() * PARAM_STRIDE];
            for (i, d) in dispatches.iter().enumerate() {
                bytes[i * PARAM_STRIDE..i * PARAM_STRIDE + 32]
                    .copy_from_slice(bytemuck::cast_slice(&d.params));
            }
            let u = self.pool.take(BufKind::Uniform, bytes.len() as u64)?;
            self.ctx.queue.write_buffer(u.buffer(), 0, &bytes);
            Some(u)
        };
        if let Some(u) = &uniform {
            let groups: Vec<wgpu::BindGroup> = dispatches
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: u.buffer(),
                            offset: (i * PARAM_STRIDE) as u64,
                            size: wgpu::BufferSize::new(PARAM_BYTES),
                        }),
                    }];
                    entries.extend(d.storage.iter().map(|&(binding, buffer, offset, size)| {
                        wgpu::BindGroupEntry {
                            binding,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer,
                                offset,
                                size: wgpu::BufferSize::new(size),
                            }),
                        }
                    }));
                    self.ctx
                        .device
                        .create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some(label),
                            layout: &d.kernel.layout,
                            entries: &entries,
                        })
                })
                .collect();
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            for (d, bg) in dispatches.iter().zip(&groups) {
                pass.set_pipeline(&d.kernel.pipeline);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
            }
        }
        self.ctx.submit(enc)
    }

    /// Copy host values into a new buffer.
    pub(crate) fn upload(&self, data: &[u64]) -> Result<PooledBuffer> {
        let buf = self.alloc(data.len())?;
        let step = TRANSFER_CHUNK_BYTES / 8;
        for (i, piece) in data.chunks(step).enumerate() {
            self.ctx.queue.write_buffer(
                buf.buffer(),
                (i * step * 8) as u64,
                bytemuck::cast_slice(piece),
            );
            if data.len() > step {
                // Flush each piece so staging memory stays bounded for huge tensors.
                self.ctx.queue.submit([]);
            }
        }
        Ok(buf)
    }

    /// Read `len` values of `src` back to the host.
    pub(crate) fn download(&self, src: &wgpu::Buffer, len: usize) -> Result<Vec<u64>> {
        let mut out = vec![0u64; len];
        if len == 0 {
            return Ok(out);
        }
        let step = (TRANSFER_CHUNK_BYTES / 8).min(len);
        let staging = self.pool.take(BufKind::Readback, (step * 8) as u64)?;
        for (i, piece) in out.chunks_mut(step).enumerate() {
            let bytes = (piece.len() * 8) as u64;
            let mut enc = self.ctx.encoder("download");
            enc.copy_buffer_to_buffer(src, (i * step * 8) as u64, staging.buffer(), 0, bytes);
            self.ctx.queue.submit([enc.finish()]);
            let slice = staging.buffer().slice(..bytes);
            let (tx, rx) = std::sync::mpsc::channel();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            self.ctx.wait_idle()?;
            rx.recv()
                .map_err(|_| KernelError::Gpu("readback callback never ran".into()))?
                .map_err(|e| KernelError::Gpu(format!("mapping the readback buffer: {e}")))?;
            {
                let view = slice
                    .get_mapped_range()
                    .map_err(|e| KernelError::Gpu(format!("reading the mapped buffer: {e}")))?;
                bytemuck::cast_slice_mut::<u64, u8>(piece).copy_from_slice(&view);
            }
            staging.buffer().unmap();
        }
        Ok(out)
    }

    /// Run an elementwise kernel over `len` elements: every binding in `inputs` and the output
    /// (at `out_binding`) is split into the same chunks. `params[0]` is set to the chunk length.
    pub(crate) fn elementwise(
        &self,
        label: &str,
        kernel: &Kernel,
        inputs: &[(u32, &wgpu::Buffer)],
        out_binding: u32,
        len: usize,
        params: Params,
    ) -> Result<PooledBuffer> {
        let out = self.alloc(len)?;
        let chunk = self
            .ctx
            .max_binding_elems
            .min(self.ctx.max_grid_groups().saturating_mul(WG) / ALIGN_ELEMS * ALIGN_ELEMS);
        let mut dispatches = Vec::new();
        for c0 in (0..len).step_by(chunk.max(1)) {
            let cl = chunk.min(len - c0);
            let (offset, size) = ((c0 * 8) as u64, (cl * 8) as u64);
            let mut storage: Vec<Binding<'_>> = inputs
                .iter()
                .map(|&(b, buf)| (b, buf, offset, size))
                .collect();
            storage.push((out_binding, out.buffer(), offset, size));
            let mut p = params;
            p[0] = to_u32(cl, "chunk length")?;
            dispatches.push(Dispatch {
                kernel,
                storage,
                params: p,
                groups: self.ctx.grid(cl.div_ceil(WG))?,
            });
        }
        self.run(label, |_| {}, &dispatches)?;
        Ok(out)
    }

    /// `a [m,k] · b [k,n] (+ acc)`, split into chunks of rows of A and C (m) and of depth (k)
    /// so every bound range fits one storage binding; k-chunks accumulate into C.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        &self,
        kernels: &MatmulKernels,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        acc: Option<&wgpu::Buffer>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<PooledBuffer> {
        let out = self.alloc(m * n)?;
        let out_bytes = (m * n * 8) as u64;
        let pre = |enc: &mut wgpu::CommandEncoder| {
            if out_bytes == 0 {
                return;
            }
            match acc {
                Some(c) => enc.copy_buffer_to_buffer(c, 0, out.buffer(), 0, out_bytes),
                None if k == 0 => enc.clear_buffer(out.buffer(), 0, Some(out_bytes)),
                None => {}
            }
        };
        if m == 0 || n == 0 || k == 0 {
            self.run("matmul", pre, &[])?;
            return Ok(out);
        }
        let skinny = m <= SKINNY_MAX_ROWS;
        let (kernel, tile_rows, tile_cols) = if skinny {
            (&kernels.skinny, 4, SKINNY_COLS)
        } else {
            (&kernels.tiled, 64, 64)
        };
        let room = self.ctx.max_binding_elems.saturating_sub(ALIGN_ELEMS - 1);
        let max_groups = self.ctx.max_groups as usize;
        let kc = k.min(room / n);
        let mc = m.min(room / k).min(room / n).min(max_groups * tile_rows);
        if kc == 0 || mc == 0 || n.div_ceil(tile_cols) > max_groups {
            return Err(KernelError::Gpu(format!(
                "matmul [{m},{k}]x[{k},{n}]: a row of A or B does not fit one storage binding \
                 of {} elements or the dispatch limit",
                self.ctx.max_binding_elems
            )));
        }
        let mut dispatches = Vec::new();
        for m0 in (0..m).step_by(mc) {
            let ml = mc.min(m - m0);
            let (c_start, c_size, c_off) = aligned(m0 * n, ml * n);
            for k0 in (0..k).step_by(kc) {
                let kl = kc.min(k - k0);
                let (a_start, a_size, a_off) = aligned(m0 * k + k0, (ml - 1) * k + kl);
                let (b_start, b_size, b_off) = aligned(k0 * n, kl * n);
                let accumulate = acc.is_some() || k0 > 0;
                dispatches.push(Dispatch {
                    kernel,
                    storage: vec![
                        (1, a, a_start, a_size),
                        (2, b, b_start, b_size),
                        (3, out.buffer(), c_start, c_size),
                    ],
                    params: [
                        to_u32(ml, "m")?,
                        to_u32(n, "n")?,
                        to_u32(kl, "k")?,
                        to_u32(k, "lda")?,
                        a_off,
                        b_off,
                        c_off,
                        u32::from(accumulate),
                    ],
                    groups: (n.div_ceil(tile_cols) as u32, ml.div_ceil(tile_rows) as u32),
                });
            }
        }
        self.run("matmul", pre, &dispatches)?;
        Ok(out)
    }

    /// Row sums of `a [m, n]` into a new `[m]` buffer, in chunks of rows.
    pub(crate) fn sum_rows(
        &self,
        wide: &Kernel,
        narrow: &Kernel,
        a: &wgpu::Buffer,
        m: usize,
        n: usize,
    ) -> Result<PooledBuffer> {
        let out = self.alloc(m)?;
        let out_bytes = (m * 8) as u64;
        if m == 0 || n == 0 {
            self.run(
                "sum_rows",
                |enc| {
                    if out_bytes > 0 {
                        enc.clear_buffer(out.buffer(), 0, Some(out_bytes));
                    }
                },
                &[],
            )?;
            return Ok(out);
        }
        let room = self.ctx.max_binding_elems.saturating_sub(ALIGN_ELEMS - 1);
        let (kernel, per_group) = if n <= NARROW_MAX_COLS {
            (narrow, WG)
        } else {
            (wide, 1)
        };
        let rc = m
            .min(room / n)
            .min(self.ctx.max_grid_groups().saturating_mul(per_group));
        if rc == 0 {
            return Err(KernelError::Gpu(format!(
                "sum_rows: a row of {n} elements does not fit one storage binding of {} elements",
                self.ctx.max_binding_elems
            )));
        }
        let mut dispatches = Vec::new();
        for r0 in (0..m).step_by(rc) {
            let rl = rc.min(m - r0);
            let (i_start, i_size, i_off) = aligned(r0 * n, rl * n);
            let (o_start, o_size, o_off) = aligned(r0, rl);
            dispatches.push(Dispatch {
                kernel,
                storage: vec![(1, a, i_start, i_size), (2, out.buffer(), o_start, o_size)],
                params: [to_u32(rl, "m")?, to_u32(n, "n")?, i_off, o_off, 0, 0, 0, 0],
                groups: self.ctx.grid(rl.div_ceil(per_group))?,
            });
        }
        self.run("sum_rows", |_| {}, &dispatches)?;
        Ok(out)
    }

    /// `out[i] = src[index[i]]` (0 for `GATHER_ZERO`) over `len` outputs: the source is bound
    /// whole, the output and index are split into chunks that fit one binding.
    pub(crate) fn gather(
        &self,
        kernel: &Kernel,
        src: &wgpu::Buffer,
        src_len: usize,
        index: &[u32],
    ) -> Result<PooledBuffer> {
        let len = index.len();
        let out = self.alloc(len)?;
        if len == 0 {
            self.run("gather", |_| {}, &[])?;
            return Ok(out);
        }
        if src_len > self.ctx.max_binding_elems {
            return Err(KernelError::Gpu(format!(
                "gather: a source of {src_len} elements does not fit one storage binding of {} \
                 elements",
                self.ctx.max_binding_elems
            )));
        }
        // Indices travel packed two to a word; chunks start where both the u64 output and the
        // u32 index bindings are aligned.
        let mut words: Vec<u64> = index
            .chunks(2)
            .map(|p| u64::from(p[0]) | (u64::from(*p.get(1).unwrap_or(&0)) << 32))
            .collect();
        if words.is_empty() {
            words.push(0);
        }
        let idx = self.upload(&words)?;
        let unit = 2 * ALIGN_ELEMS;
        let chunk = self
            .ctx
            .max_binding_elems
            .min(self.ctx.max_grid_groups().saturating_mul(WG))
            / unit
            * unit;
        let mut dispatches = Vec::new();
        for c0 in (0..len).step_by(chunk.max(unit)) {
            let cl = chunk.max(unit).min(len - c0);
            dispatches.push(Dispatch {
                kernel,
                storage: vec![
                    (1, src, 0, (src_len.max(1) * 8) as u64),
                    (
                        2,
                        idx.buffer(),
                        (c0 * 4) as u64,
                        (cl.div_ceil(2) * 8) as u64,
                    ),
                    (3, out.buffer(), (c0 * 8) as u64, (cl * 8) as u64),
                ],
                params: [to_u32(cl, "chunk length")?, 0, 0, 0, 0, 0, 0, 0],
                groups: self.ctx.grid(cl.div_ceil(WG))?,
            });
        }
        self.run("gather", |_| {}, &dispatches)?;
        Ok(out)
    }
}
