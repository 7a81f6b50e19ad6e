//! GPU backend on wgpu compute shaders (WGSL in `shaders/` at the workspace root).
//!
//! Tensors live in pooled GPU buffers (8 bytes per element, little-endian) between calls; only
//! [`Backend::upload`] and [`Backend::download`] touch the host. Ring arithmetic runs either on
//! u32 pairs (portable) or native `u64` (`SHADER_INT64`), chosen at start-up (see
//! [`U64Variant`]). Modules: `context` (adapter/device, error capture), `pool` (buffers),
//! `pipelines` (shaders), `variant` (start-up choice), `ops` (dispatch and chunking).

mod context;
mod ops;
mod pipelines;
mod pool;
mod variant;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::backend::{
    check_2d, check_chacha, check_gather, check_lookup, check_matmul, check_same_shape,
    check_scalar, check_select, check_slice, check_truncate, Backend, BeaverKind, BinaryOp,
    BitLookup, ScalarOp, TransferCounter, TransferStats,
};
use crate::error::{shape_err, KernelError, Result};
use crate::tensor::Tensor;

use context::GpuContext;
use ops::{params, Exec, Operand};
use pipelines::Kernels;
use pool::{BufferPool, GpuStorage, PooledBuffer};

pub use pool::PoolStats;

/// How the shaders do 64-bit ring arithmetic. Both variants give identical bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum U64Variant {
    /// `vec2<u32>` (lo, hi) pairs with explicit carries: runs on every adapter.
    U32Pairs,
    /// Native WGSL `u64`: needs `wgpu::Features::SHADER_INT64`.
    NativeU64,
}

impl std::fmt::Display for U64Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            U64Variant::U32Pairs => "u32 pairs",
            U64Variant::NativeU64 => "native u64",
        })
    }
}

/// Options for [`GpuBackend::with_options`]. `Default` gives the behaviour of
/// [`GpuBackend::new`].
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to search for an adapter. `None`: the `WGPU_BACKEND` environment variable, or
    /// all backends when it is unset.
    pub backends: Option<wgpu::Backends>,
    /// Force one arithmetic variant. `None`: native u64 where offered, unless timing shows u32
    /// pairs clearly faster. Forcing `NativeU64` on an adapter without `SHADER_INT64` fails with
    /// [`KernelError::GpuUnavailable`].
    pub u64_variant: Option<U64Variant>,
    /// Cap on the bytes one storage binding may span, below the device limit (to exercise the
    /// chunking of large operands with small tensors in tests). `None`: the device limit.
    pub max_binding_bytes: Option<u64>,
    /// Cap on workgroups per dispatch axis, below the device limit (to exercise 2-D dispatch
    /// grids and row chunking in tests). `None`: the device limit.
    pub max_workgroups_per_dim: Option<u32>,
    /// Idle buffer bytes the pool keeps for reuse (returned buffers beyond this are freed).
    pub pool_cache_bytes: u64,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            backends: None,
            u64_variant: None,
            max_binding_bytes: None,
            max_workgroups_per_dim: None,
            pool_cache_bytes: 1 << 30,
        }
    }
}

/// Distinguishes backend instances, so a tensor from another device is rejected.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// The wgpu compute-shader backend.
pub struct GpuBackend {
    ctx: GpuContext,
    pool: Arc<BufferPool>,
    kernels: Kernels,
    variant: U64Variant,
    variant_reason: String,
    id: usize,
    counter: TransferCounter,
}

impl std::fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend")
            .field("ctx", &self.ctx)
            .field("variant", &self.variant)
            .finish()
    }
}

fn binary_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Xor => 3,
        BinaryOp::And => 4,
    }
}

fn scalar_code(op: ScalarOp) -> u32 {
    match op {
        ScalarOp::Neg => 0,
        ScalarOp::Add => 1,
        ScalarOp::Mul => 2,
        ScalarOp::Xor => 3,
        ScalarOp::And => 4,
        ScalarOp::ShrArith => 5,
        ScalarOp::ShrLogical => 6,
        ScalarOp::Shl => 7,
    }
}

impl GpuBackend {
    /// Open the default adapter as a shareable trait object.
    pub fn new_shared() -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self::new()?))
    }

    /// Open the default adapter (honouring `WGPU_BACKEND`) and compile the kernels.
    pub fn new() -> Result<Self> {
        Self::with_options(GpuOptions::default())
    }

    /// Open an adapter as `opts` asks and compile the kernels of the chosen variant.
    pub fn with_options(opts: GpuOptions) -> Result<Self> {
        let ctx = GpuContext::open(&opts)?;
        let pool = Arc::new(BufferPool::new(
            ctx.device.clone(),
            ctx.max_buffer_bytes,
            opts.pool_cache_bytes,
        ));
        let choice = variant::choose(&ctx, &pool, opts.u64_variant)?;
        let kernels = pipelines::build_all(&ctx, choice.variant, choice.matmul)?;
        Ok(GpuBackend {
            ctx,
            pool,
            kernels,
            variant: choice.variant,
            variant_reason: choice.reason,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            counter: TransferCounter::default(),
        })
    }

    /// The arithmetic variant the kernels use.
    pub fn variant(&self) -> U64Variant {
        self.variant
    }

    /// The adapter's name (e.g. "llvmpipe (LLVM 15.0.6, 256 bits)").
    pub fn adapter_name(&self) -> &str {
        &self.ctx.info.name
    }

    /// Buffer pool counters: after a warm-up, repeating the same ops must not change them.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Free every idle pooled buffer.
    pub fn trim_pool(&self) {
        self.pool.trim();
    }

    /// Block until all submitted GPU work has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.wait_idle()
    }

    fn exec(&self) -> Exec<'_> {
        Exec {
            ctx: &self.ctx,
            pool: &self.pool,
        }
    }

    fn storage<'t>(&self, t: &'t Tensor) -> Result<&'t GpuStorage> {
        let foreign = |found: String| KernelError::ForeignTensor {
            expected: format!("gpu #{}", self.id),
            found,
        };
        let s = t
            .storage()
            .as_any()
            .downcast_ref::<GpuStorage>()
            .ok_or_else(|| foreign(t.storage().backend_name().into()))?;
        if s.owner != self.id {
            return Err(foreign(format!("gpu #{}", s.owner)));
        }
        Ok(s)
    }

    fn buffer<'t>(&self, t: &'t Tensor) -> Result<&'t wgpu::Buffer> {
        Ok(self.storage(t)?.buffer())
    }

    /// The packed-bit operand of the select kernels (binding 1, one word per 64 elements).
    fn select_bits<'t>(&self, d: &'t Tensor) -> Result<Operand<'t>> {
        Ok(Operand {
            binding: 1,
            buf: self.buffer(d)?,
            len: d.len(),
            num: 1,
            den: 64,
        })
    }

    /// An elementwise operand of the select kernels.
    fn select_elems<'t>(&self, binding: u32, t: &'t Tensor) -> Result<Operand<'t>> {
        Ok(Operand {
            binding,
            buf: self.buffer(t)?,
            len: t.len(),
            num: 1,
            den: 1,
        })
    }

    fn wrap(&self, shape: Vec<usize>, buf: PooledBuffer) -> Tensor {
        let len = shape.iter().product();
        Tensor::from_storage(
            shape,
            Arc::new(GpuStorage {
                buf,
                len,
                owner: self.id,
            }),
        )
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn describe(&self) -> String {
        let i = &self.ctx.info;
        format!(
            "GPU '{}' ({:?}, {:?}, driver {} {}), 64-bit arithmetic: {} ({})",
            i.name,
            i.backend,
            i.device_type,
            i.driver,
            i.driver_info,
            self.variant,
            self.variant_reason
        )
    }

    fn upload(&self, shape: &[usize], data: &[u64]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != data.len() {
            return Err(shape_err(
                "upload",
                format!("shape {shape:?} does not hold {} values", data.len()),
            ));
        }
        let buf = self.ctx.scoped("upload", || self.exec().upload(data))?;
        self.counter.upload(data.len());
        Ok(self.wrap(shape.to_vec(), buf))
    }

    fn download(&self, t: &Tensor) -> Result<Vec<u64>> {
        let buf = self.buffer(t)?;
        let v = self
            .ctx
            .scoped("download", || self.exec().download(buf, t.len()))?;
        self.counter.download(v.len());
        Ok(v)
    }

    fn transfers(&self) -> TransferStats {
        self.counter.stats()
    }

    fn chacha12(&self, key: &[u8; 32], stream: u64, word_pos: u128, len: usize) -> Result<Tensor> {
        check_chacha(word_pos)?;
        let out = self.ctx.scoped("chacha12", || {
            self.exec()
                .chacha12(&self.kernels.chacha12, key, stream, word_pos, len)
        })?;
        Ok(self.wrap(vec![len], out))
    }

    fn fill(&self, shape: &[usize], value: u64) -> Result<Tensor> {
        let len = shape.iter().product();
        let out = self.ctx.scoped("fill", || {
            self.exec().elementwise(
                "fill",
                &self.kernels.fill,
                &[],
                1,
                len,
                params(&[0, 0, value as u32, (value >> 32) as u32, 0, 0, 0, 0]),
            )
        })?;
        Ok(self.wrap(shape.to_vec(), out))
    }

    fn concat(&self, parts: &[&Tensor]) -> Result<Tensor> {
        let ranges = parts
            .iter()
            .map(|t| Ok((self.buffer(t)?, 0, t.len())))
            .collect::<Result<Vec<_>>>()?;
        let out = self
            .ctx
            .scoped("concat", || self.exec().gather_ranges(&ranges))?;
        let len = ranges.iter().map(|r| r.2).sum();
        Ok(self.wrap(vec![len], out))
    }

    fn slice(&self, a: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        check_slice(a, start, len)?;
        let buf = self.buffer(a)?;
        let out = self
            .ctx
            .scoped("slice", || self.exec().gather_ranges(&[(buf, start, len)]))?;
        Ok(self.wrap(vec![len], out))
    }

    fn transpose(&self, a: &Tensor) -> Result<Tensor> {
        let (m, n) = check_2d("transpose", a)?;
        let buf = self.buffer(a)?;
        let out = self.ctx.scoped("transpose", || {
            self.exec().transpose(&self.kernels.transpose, buf, m, n)
        })?;
        Ok(self.wrap(vec![n, m], out))
    }

    fn compact_bits(&self, words: &Tensor, odd: bool) -> Result<Tensor> {
        let len = words.len().div_ceil(2);
        let src = [Operand {
            binding: 1,
            buf: self.buffer(words)?,
            len: words.len(),
            num: 2,
            den: 1,
        }];
        let out = self.ctx.scoped("compact_bits", || {
            self.exec().proportional(
                "compact_bits",
                &self.kernels.compact_bits,
                &src,
                2,
                len,
                params(&[0, 0, u32::from(odd), 0, 0, 0, 0, 0]),
            )
        })?;
        Ok(self.wrap(vec![len], out))
    }

    fn pack_msb(&self, x: &Tensor) -> Result<Tensor> {
        let len = x.len().div_ceil(64);
        let src = [Operand {
            binding: 1,
            buf: self.buffer(x)?,
            len: x.len(),
            num: 64,
            den: 1,
        }];
        let out = self.ctx.scoped("pack_msb", || {
            self.exec().proportional(
                "pack_msb",
                &self.kernels.pack_msb,
                &src,
                2,
                len,
                params(&[]),
            )
        })?;
        Ok(self.wrap(vec![len], out))
    }

    fn bit_select(&self, d: &Tensor, r: &Tensor, first: bool) -> Result<Tensor> {
        check_select(d, r, &[])?;
        let ops = [self.select_bits(d)?, self.select_elems(2, r)?];
        let out = self.ctx.scoped("bit_select", || {
            self.exec().proportional(
                "bit_select",
                &self.kernels.bit_select,
                &ops,
                6,
                r.len(),
                params(&[0, 0, u32::from(first), 0, 0, 0, 0, 0]),
            )
        })?;
        Ok(self.wrap(r.shape().to_vec(), out))
    }

    fn payload_select(
        &self,
        d: &Tensor,
        r: &Tensor,
        e: &Tensor,
        prod: &Tensor,
        y: &Tensor,
    ) -> Result<Tensor> {
        check_select(d, r, &[e, prod, y])?;
        let ops = [
            self.select_bits(d)?,
            self.select_elems(2, r)?,
            self.select_elems(3, e)?,
            self.select_elems(4, prod)?,
            self.select_elems(5, y)?,
        ];
        let out = self.ctx.scoped("payload_select", || {
            self.exec().proportional(
                "payload_select",
                &self.kernels.payload_select,
                &ops,
                6,
                r.len(),
                params(&[]),
            )
        })?;
        Ok(self.wrap(r.shape().to_vec(), out))
    }

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check_same_shape("binary", a, b)?;
        let (x, y) = (self.buffer(a)?, self.buffer(b)?);
        let out = self.ctx.scoped("binary", || {
            self.exec().elementwise(
                "binary",
                &self.kernels.binary,
                &[(1, x), (2, y)],
                3,
                a.len(),
                params(&[0, binary_code(op), 0, 0, 0, 0, 0, 0]),
            )
        })?;
        Ok(self.wrap(a.shape().to_vec(), out))
    }

    fn scalar(&self, op: ScalarOp, a: &Tensor, s: u64) -> Result<Tensor> {
        check_scalar(op, s)?;
        let x = self.buffer(a)?;
        let out = self.ctx.scoped("scalar", || {
            self.exec().elementwise(
                "scalar",
                &self.kernels.scalar,
                &[(1, x)],
                3,
                a.len(),
                params(&[0, scalar_code(op), s as u32, (s >> 32) as u32, 0, 0, 0, 0]),
            )
        })?;
        Ok(self.wrap(a.shape().to_vec(), out))
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, acc: Option<&Tensor>) -> Result<Tensor> {
        let (m, k, n) = check_matmul(a, b, acc)?;
        let (x, y) = (self.buffer(a)?, self.buffer(b)?);
        let c = acc.map(|t| self.buffer(t)).transpose()?;
        let out = self.ctx.scoped("matmul", || {
            self.exec().matmul(&self.kernels.matmul, x, y, c, m, k, n)
        })?;
        Ok(self.wrap(vec![m, n], out))
    }

    fn beaver_combine(
        &self,
        kind: BeaverKind,
        c: &Tensor,
        e: &Tensor,
        f: &Tensor,
        a: &Tensor,
        b: &Tensor,
        with_ef: bool,
    ) -> Result<Tensor> {
        for t in [e, f, a, b] {
            check_same_shape("beaver_combine", c, t)?;
        }
        let inputs = [
            (1, self.buffer(c)?),
            (2, self.buffer(e)?),
            (3, self.buffer(f)?),
            (4, self.buffer(a)?),
            (5, self.buffer(b)?),
        ];
        let kind_code = match kind {
            BeaverKind::Arithmetic => 0,
            BeaverKind::Boolean => 1,
        };
        let out = self.ctx.scoped("beaver_combine", || {
            self.exec().elementwise(
                "beaver",
                &self.kernels.beaver,
                &inputs,
                6,
                c.len(),
                params(&[0, kind_code, u32::from(with_ef), 0, 0, 0, 0, 0]),
            )
        })?;
        Ok(self.wrap(c.shape().to_vec(), out))
    }

    fn truncate_combine(
        &self,
        c: &Tensor,
        r_shr: &Tensor,
        r_msb: &Tensor,
        bits: u32,
        first: bool,
    ) -> Result<Tensor> {
        check_truncate(c, r_shr, r_msb, bits)?;
        let inputs = [
            (1, self.buffer(c)?),
            (2, self.buffer(r_shr)?),
            (3, self.buffer(r_msb)?),
        ];
        let out = self.ctx.scoped("truncate_combine", || {
            self.exec().elementwise(
                "truncate",
                &self.kernels.truncate,
                &inputs,
                4,
                c.len(),
                params(&[0, bits, u32::from(first), 0, 0, 0, 0, 0]),
            )
        })?;
        Ok(self.wrap(c.shape().to_vec(), out))
    }

    fn sum_rows(&self, a: &Tensor) -> Result<Tensor> {
        if a.shape().len() != 2 {
            return Err(shape_err(
                "sum_rows",
                format!("expected 2-D, got {:?}", a.shape()),
            ));
        }
        let (m, n) = (a.shape()[0], a.shape()[1]);
        if n > self.ctx.max_binding_elems / 2 {
            // Rows longer than a binding: a product with a ones column (chunked along k).
            let ones = self.fill(&[n, 1], 1)?;
            return self.matmul(a, &ones, None);
        }
        let x = self.buffer(a)?;
        let out = self.ctx.scoped("sum_rows", || {
            self.exec().sum_rows(
                &self.kernels.sum_rows_wide,
                &self.kernels.sum_rows_narrow,
                x,
                m,
                n,
            )
        })?;
        Ok(self.wrap(vec![m, 1], out))
    }

    fn gather(&self, a: &Tensor, index: &[u32], shape: &[usize]) -> Result<Tensor> {
        check_gather(a, index, shape)?;
        let x = self.buffer(a)?;
        let out = self.ctx.scoped("gather", || {
            self.exec().gather(&self.kernels.gather, x, a.len(), index)
        })?;
        Ok(self.wrap(shape.to_vec(), out))
    }

    fn lookup_bits(&self, c: &Tensor, tables: &Tensor, lookups: &[BitLookup]) -> Result<Tensor> {
        let (n, words) = check_lookup(c, tables, lookups)?;
        // Per lookup: one bit per element (at bit 63, padded to whole words), then packed.
        let padded = n.div_ceil(64) * 64;
        let mut blocks = Vec::with_capacity(lookups.len());
        for l in lookups {
            let ops = [
                self.select_elems(1, c)?,
                Operand {
                    binding: 2,
                    buf: self.buffer(tables)?,
                    len: tables.len(),
                    num: words.max(1),
                    den: 1,
                },
            ];
            let lead = [
                0,
                0,
                l.add as u32,
                (l.add >> 32) as u32,
                l.shift,
                l.width,
                l.offset,
                to_u32_words(words)?,
                u32::from(l.prev),
                u32::from(l.underflow),
            ];
            let bits = self.ctx.scoped("lookup_bits", || {
                self.exec().proportional(
                    "lookup_bits",
                    &self.kernels.lookup_bits,
                    &ops,
                    3,
                    padded,
                    params(&lead),
                )
            })?;
            blocks.push(self.pack_msb(&self.wrap(vec![padded], bits))?);
        }
        let refs: Vec<&Tensor> = blocks.iter().collect();
        self.concat(&refs)
    }
}

fn to_u32_words(words: usize) -> Result<u32> {
    u32::try_from(words).map_err(|_| KernelError::Gpu(format!("{words} words per table row")))
}
