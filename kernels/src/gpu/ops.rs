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
/// A skinny product is split along k only with at least this depth per segment.
const SPLIT_K_MIN_DEPTH: usize = 512;
/// Split a skinny product along k until about this many workgroups run.
const SPLIT_K_TARGET_GROUPS: usize = 1024;
/// Rows with at most this many columns are summed by one invocation each.
const NARROW_MAX_COLS: usize = 64;
/// Host transfers move at most this many bytes per step (bounds staging memory).
const TRANSFER_CHUNK_BYTES: usize = 32 << 20;
/// Distance between parameter blocks in a uniform buffer (>= any offset alignment).
const PARAM_STRIDE: usize = 256;
/// Bytes bound per parameter block (the largest `Params` struct in the shaders).
const PARAM_BYTES: u64 = 64;
/// Invocations per 1-D workgroup.
const WG: usize = 256;
/// Elements per binding alignment unit.
const ALIGN_ELEMS: usize = (BINDING_ALIGN_BYTES / 8) as usize;

/// Kernel parameters: the shader's `Params` struct as u32 words (unused words are ignored).
pub(crate) type Params = [u32; 16];

/// Parameters from their leading words (the rest zero).
pub(crate) fn params(lead: &[u32]) -> Params {
    let mut p = [0u32; 16];
    p[..lead.len()].copy_from_slice(lead);
    p
}

/// One storage binding: `(binding index, buffer, offset bytes, size bytes)`.
type Binding<'b> = (u32, &'b wgpu::Buffer, u64, u64);

/// One dispatch of a kernel.
struct Dispatch<'b> {
    kernel: &'b Kernel,
    storage: Vec<Binding<'b>>,
    params: Params,
    groups: (u32, u32),
    /// Workgroups along z (k-segments of a split product; 1 otherwise).
    z: u32,
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
                bytes[i * PARAM_STRIDE..i * PARAM_STRIDE + PARAM_BYTES as usize]
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
                pass.dispatch_workgroups(d.groups.0, d.groups.1, d.z);
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
                z: 1,
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
        // Columns per chunk: all of them when a B row fits half a binding, else tile multiples.
        let mut nc = n.min(max_groups * tile_cols);
        if nc > room / 2 {
            let half = room / 2;
            nc = if half >= tile_cols {
                half / tile_cols * tile_cols
            } else {
                half.max(1)
            };
        }
        // Depth per chunk: the B span (kc - 1) n + nc and the A row piece kc must fit.
        let kc = k.min((room - nc) / n + 1).min(room / 2).max(1);
        // Rows per chunk: the A span (mc - 1) k + kc and the C span (mc - 1) n + nc must fit.
        let mc = m
            .min((room - kc) / k + 1)
            .min((room - nc) / n + 1)
            .min(max_groups * tile_rows);
        if mc == 0
            || kc + (mc - 1) * k > room
            || nc + (mc - 1) * n > room
            || nc + (kc - 1) * n > room
        {
            return Err(KernelError::Gpu(format!(
                "matmul [{m},{k}]x[{k},{n}]: no chunk fits one storage binding of {} elements",
                self.ctx.max_binding_elems
            )));
        }
        if skinny && mc == m && kc == k && nc == n {
            if let Some(segs) = self.skinny_segments(m, k, n) {
                self.matmul_split_k(kernels, a, b, acc, &out, pre, (m, k, n), segs)?;
                return Ok(out);
            }
        }
        let mut dispatches = Vec::new();
        for n0 in (0..n).step_by(nc) {
            let nl = nc.min(n - n0);
            for m0 in (0..m).step_by(mc) {
                let ml = mc.min(m - m0);
                let (c_start, c_size, c_off) = aligned(m0 * n + n0, (ml - 1) * n + nl);
                for k0 in (0..k).step_by(kc) {
                    let kl = kc.min(k - k0);
                    let (a_start, a_size, a_off) = aligned(m0 * k + k0, (ml - 1) * k + kl);
                    let (b_start, b_size, b_off) = aligned(k0 * n + n0, (kl - 1) * n + nl);
                    let accumulate = acc.is_some() || k0 > 0;
                    dispatches.push(Dispatch {
                        kernel,
                        storage: vec![
                            (1, a, a_start, a_size),
                            (2, b, b_start, b_size),
                            (3, out.buffer(), c_start, c_size),
                        ],
                        params: params(&[
                            to_u32(ml, "m")?,
                            to_u32(nl, "n")?,
                            to_u32(kl, "k")?,
                            to_u32(k, "lda")?,
                            a_off | (b_off << 8) | (c_off << 16),
                            u32::from(accumulate),
                            to_u32(n, "ldn")?,
                            to_u32(kl, "k_seg")?,
                            0,
                        ]),
                        groups: (nl.div_ceil(tile_cols) as u32, ml.div_ceil(tile_rows) as u32),
                        z: 1,
                    });
                }
            }
        }
        self.run("matmul", pre, &dispatches)?;
        Ok(out)
    }

    /// How many k-segments a skinny product that fits one binding should run in parallel:
    /// `None` when its columns and rows alone give enough workgroups or k is short.
    fn skinny_segments(&self, m: usize, k: usize, n: usize) -> Option<usize> {
        let groups = n.div_ceil(SKINNY_COLS) * m.div_ceil(4);
        let room = self.ctx.max_binding_elems / (m * n).max(1);
        let segs = (k / SPLIT_K_MIN_DEPTH)
            .min(SPLIT_K_TARGET_GROUPS / groups.max(1))
            .min(self.ctx.max_groups as usize)
            .min(room);
        (segs >= 2).then_some(segs)
    }

    /// A skinny product split along k: `segs` partial products in one dispatch (workgroup z =
    /// segment), then one pass summing them (onto the accumulator already copied into `out`).
    #[allow(clippy::too_many_arguments)]
    fn matmul_split_k(
        &self,
        kernels: &MatmulKernels,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        acc: Option<&wgpu::Buffer>,
        out: &PooledBuffer,
        pre: impl FnOnce(&mut wgpu::CommandEncoder),
        (m, k, n): (usize, usize, usize),
        segs: usize,
    ) -> Result<()> {
        let k_seg = k.div_ceil(segs);
        let segs = k.div_ceil(k_seg);
        let mn = m * n;
        let partial = self.alloc(segs * mn)?;
        let dispatches = [
            Dispatch {
                kernel: &kernels.skinny,
                storage: vec![
                    (1, a, 0, (m * k * 8) as u64),
                    (2, b, 0, (k * n * 8) as u64),
                    (3, partial.buffer(), 0, (segs * mn * 8) as u64),
                ],
                params: params(&[
                    to_u32(m, "m")?,
                    to_u32(n, "n")?,
                    to_u32(k, "k")?,
                    to_u32(k, "lda")?,
                    0,
                    0,
                    to_u32(n, "ldn")?,
                    to_u32(k_seg, "k_seg")?,
                    to_u32(mn, "seg_stride")?,
                ]),
                groups: (n.div_ceil(SKINNY_COLS) as u32, m.div_ceil(4) as u32),
                z: to_u32(segs, "segments")?,
            },
            Dispatch {
                kernel: &kernels.sum_segments,
                storage: vec![
                    (1, partial.buffer(), 0, (segs * mn * 8) as u64),
                    (3, out.buffer(), 0, (mn * 8) as u64),
                ],
                params: params(&[
                    to_u32(mn, "outputs")?,
                    0,
                    to_u32(segs, "segments")?,
                    0,
                    0,
                    u32::from(acc.is_some()),
                ]),
                groups: self.ctx.grid(mn.div_ceil(64))?,
                z: 1,
            },
        ];
        self.run("matmul (split k)", pre, &dispatches)
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
                params: params(&[to_u32(rl, "m")?, to_u32(n, "n")?, i_off, o_off, 0, 0, 0, 0]),
                groups: self.ctx.grid(rl.div_ceil(per_group))?,
                z: 1,
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
                params: params(&[to_u32(cl, "chunk length")?]),
                groups: self.ctx.grid(cl.div_ceil(WG))?,
                z: 1,
            });
        }
        self.run("gather", |_| {}, &dispatches)?;
        Ok(out)
    }

    /// Copy element ranges `(src, first, len)` one after another into a new buffer.
    pub(crate) fn gather_ranges(
        &self,
        ranges: &[(&wgpu::Buffer, usize, usize)],
    ) -> Result<PooledBuffer> {
        let total: usize = ranges.iter().map(|r| r.2).sum();
        let out = self.alloc(total)?;
        self.run(
            "copy",
            |enc| {
                let mut off = 0u64;
                for &(src, first, len) in ranges {
                    if len > 0 {
                        let bytes = (len * 8) as u64;
                        enc.copy_buffer_to_buffer(
                            src,
                            (first * 8) as u64,
                            out.buffer(),
                            off,
                            bytes,
                        );
                        off += bytes;
                    }
                }
            },
            &[],
        )?;
        Ok(out)
    }

    /// Run a kernel whose output element `i` reads operand elements around `i · num / den`
    /// (e.g. 2/1 for bit compaction, 1/64 for packed bits). The output (at `out_binding`) is
    /// split into chunks whose starts are aligned for every operand, so each binding starts at
    /// its chunk's first element; `params[0]` is set to the chunk length and `params[1]` to the
    /// valid length of the first operand in the chunk.
    pub(crate) fn proportional(
        &self,
        label: &str,
        kernel: &Kernel,
        operands: &[Operand<'_>],
        out_binding: u32,
        len: usize,
        params: Params,
    ) -> Result<PooledBuffer> {
        let out = self.alloc(len)?;
        if len == 0 {
            return Ok(out);
        }
        let room = self.ctx.max_binding_elems;
        let gcd = |mut a: usize, mut b: usize| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        // Smallest chunk-start step keeping every operand's start a multiple of ALIGN_ELEMS.
        let mut unit = ALIGN_ELEMS;
        let mut chunk = room.min(self.ctx.max_grid_groups().saturating_mul(WG));
        for o in operands {
            let need = o.den * ALIGN_ELEMS;
            let u = need / gcd(o.num, need);
            unit = unit / gcd(unit, u) * u;
            chunk = chunk.min(room.saturating_mul(o.den) / o.num.max(1));
        }
        let chunk = chunk / unit * unit;
        if chunk == 0 {
            return Err(KernelError::Gpu(format!(
                "{label}: storage bindings of {room} elements are too small for one aligned chunk"
            )));
        }
        let mut dispatches = Vec::new();
        for c0 in (0..len).step_by(chunk) {
            let cl = chunk.min(len - c0);
            let mut storage: Vec<Binding<'_>> = Vec::with_capacity(operands.len() + 1);
            let mut first_valid = 0;
            for (k, o) in operands.iter().enumerate() {
                let first = c0 * o.num / o.den;
                let end = ((c0 + cl) * o.num).div_ceil(o.den).min(o.len);
                let span = end.saturating_sub(first);
                if k == 0 {
                    first_valid = span;
                }
                let (offset, size) = if span == 0 {
                    (0, 8)
                } else {
                    ((first * 8) as u64, (span * 8) as u64)
                };
                storage.push((o.binding, o.buf, offset, size));
            }
            storage.push((out_binding, out.buffer(), (c0 * 8) as u64, (cl * 8) as u64));
            let mut p = params;
            p[0] = to_u32(cl, "chunk length")?;
            p[1] = to_u32(first_valid, "chunk operand length")?;
            dispatches.push(Dispatch {
                kernel,
                storage,
                params: p,
                groups: self.ctx.grid(cl.div_ceil(WG))?,
                z: 1,
            });
        }
        self.run(label, |_| {}, &dispatches)?;
        Ok(out)
    }

    /// Transpose `a [m, n]` into a new `[n, m]` buffer, in tiles that fit one binding each.
    pub(crate) fn transpose(
        &self,
        kernel: &Kernel,
        a: &wgpu::Buffer,
        m: usize,
        n: usize,
    ) -> Result<PooledBuffer> {
        let out = self.alloc(m * n)?;
        if m == 0 || n == 0 {
            return Ok(out);
        }
        let room = self.ctx.max_binding_elems.saturating_sub(ALIGN_ELEMS - 1);
        let most = 16 * self.ctx.max_groups.max(1) as usize;
        // Output tile: `rl` rows (input columns) by `cl` columns (input rows); each binding
        // spans at most (tile extent - 1) * stride + other extent <= room.
        let rl = (room / (2 * m)).clamp(1, n.min(most));
        let cl = (room / (2 * n)).clamp(1, m.min(most));
        if rl + (cl - 1) * n > room || cl + (rl - 1) * m > room {
            return Err(KernelError::Gpu(format!(
                "transpose [{m},{n}]: no tile fits one storage binding of {} elements",
                self.ctx.max_binding_elems
            )));
        }
        let mut dispatches = Vec::new();
        for r0 in (0..n).step_by(rl) {
            let rows = rl.min(n - r0);
            for c0 in (0..m).step_by(cl) {
                let cols = cl.min(m - c0);
                let (i_start, i_size, i_off) = aligned(c0 * n + r0, (cols - 1) * n + rows);
                let (o_start, o_size, o_off) = aligned(r0 * m + c0, (rows - 1) * m + cols);
                dispatches.push(Dispatch {
                    kernel,
                    storage: vec![(2, a, i_start, i_size), (3, out.buffer(), o_start, o_size)],
                    params: params(&[
                        to_u32(rows, "rows")?,
                        to_u32(cols, "cols")?,
                        to_u32(n, "n")?,
                        to_u32(m, "m")?,
                        i_off,
                        o_off,
                        0,
                        0,
                    ]),
                    groups: (cols.div_ceil(16) as u32, rows.div_ceil(16) as u32),
                    z: 1,
                });
            }
        }
        self.run("transpose", |_| {}, &dispatches)?;
        Ok(out)
    }

    /// `len` u64 words of the ChaCha12 keystream from 32-bit word `word_pos` (even), in chunks
    /// of at most one binding; one invocation per 64-byte block.
    pub(crate) fn chacha12(
        &self,
        kernel: &Kernel,
        key: &[u8; 32],
        stream: u64,
        word_pos: u128,
        len: usize,
    ) -> Result<PooledBuffer> {
        let out = self.alloc(len)?;
        let key_words: Vec<u32> = key
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let chunk = self
            .ctx
            .max_binding_elems
            .min(self.ctx.max_grid_groups().saturating_mul(64 * 8))
            / ALIGN_ELEMS
            * ALIGN_ELEMS;
        let mut dispatches = Vec::new();
        for c0 in (0..len).step_by(chunk.max(1)) {
            let cl = chunk.min(len - c0);
            let word = word_pos + 2 * c0 as u128;
            let block = (word / 16) as u64;
            let skip = (word % 16) as u32;
            let blocks = (skip as usize + 2 * cl).div_ceil(16);
            let mut p = params(&key_words);
            p[8..14].copy_from_slice(&[
                stream as u32,
                (stream >> 32) as u32,
                block as u32,
                (block >> 32) as u32,
                skip,
                to_u32(cl, "chunk length")?,
            ]);
            dispatches.push(Dispatch {
                kernel,
                storage: vec![(1, out.buffer(), (c0 * 8) as u64, (cl * 8) as u64)],
                params: p,
                groups: self.ctx.grid(blocks.div_ceil(64))?,
                z: 1,
            });
        }
        self.run("chacha12", |_| {}, &dispatches)?;
        Ok(out)
    }
}

/// One operand of [`Exec::proportional`]: `num / den` operand elements per output element.
pub(crate) struct Operand<'b> {
    pub(crate) binding: u32,
    pub(crate) buf: &'b wgpu::Buffer,
    pub(crate) len: usize,
    pub(crate) num: usize,
    pub(crate) den: usize,
}
