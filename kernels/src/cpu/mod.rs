//! CPU backend: rayon across cores, a packed SIMD GEMM, memory-bound elementwise loops.

mod aligned;
pub mod gemm;

use std::any::Any;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

pub use aligned::{advise_huge_pages, zeroed_words, AlignedVec};

use crate::backend::{
    check_gather, check_matmul, check_same_shape, check_scalar, check_truncate, Backend,
    BeaverKind, BinaryOp, ScalarOp, GATHER_ZERO,
};
use crate::error::{shape_err, KernelError, Result};
use crate::tensor::{Storage, Tensor};

/// Elements per rayon task in elementwise loops (large enough to amortise scheduling).
const CHUNK: usize = 1 << 15;

/// Host storage: an aligned buffer plus a lazily packed copy for use as a GEMM right operand.
pub struct CpuStorage {
    data: AlignedVec,
    packed: OnceLock<Arc<gemm::PackedB>>,
}

impl CpuStorage {
    fn new(data: AlignedVec) -> Self {
        CpuStorage {
            data,
            packed: OnceLock::new(),
        }
    }
}

impl Storage for CpuStorage {
    fn backend_name(&self) -> &'static str {
        "cpu"
    }
    fn len(&self) -> usize {
        self.data.len()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The CPU backend. Stateless apart from rayon's global pool.
#[derive(Debug, Default, Clone)]
pub struct CpuBackend;

impl CpuBackend {
    /// A CPU backend using rayon's global thread pool.
    pub fn new() -> Self {
        CpuBackend
    }

    fn storage<'t>(&self, t: &'t Tensor) -> Result<&'t CpuStorage> {
        t.storage()
            .as_any()
            .downcast_ref::<CpuStorage>()
            .ok_or_else(|| KernelError::ForeignTensor {
                expected: "cpu".into(),
                found: t.storage().backend_name().into(),
            })
    }

    fn slice<'t>(&self, t: &'t Tensor) -> Result<&'t [u64]> {
        Ok(self.storage(t)?.data.as_slice())
    }

    fn wrap(shape: Vec<usize>, data: AlignedVec) -> Tensor {
        Tensor::from_storage(shape, Arc::new(CpuStorage::new(data)))
    }

    /// The packed form of a `[k, n]` right operand, built once per tensor and cached.
    fn packed(&self, b: &Tensor) -> Result<Arc<gemm::PackedB>> {
        let s = self.storage(b)?;
        let (k, n) = (b.shape()[0], b.shape()[1]);
        Ok(s.packed
            .get_or_init(|| Arc::new(gemm::PackedB::pack(k, n, s.data.as_slice())))
            .clone())
    }

    /// Map `f` over equal-length inputs into a new buffer, in parallel chunks.
    fn map_into<F>(len: usize, f: F) -> AlignedVec
    where
        F: Fn(usize, &mut [u64]) + Sync,
    {
        let mut out = AlignedVec::for_overwrite(len);
        out.as_mut_slice()
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(ci, chunk)| f(ci * CHUNK, chunk));
        out
    }
}

/// `op(a, b)` on one value: the single definition both the CPU loop and the tests use.
#[inline(always)]
pub fn apply_binary(op: BinaryOp, a: u64, b: u64) -> u64 {
    match op {
        BinaryOp::Add => a.wrapping_add(b),
        BinaryOp::Sub => a.wrapping_sub(b),
        BinaryOp::Mul => a.wrapping_mul(b),
        BinaryOp::Xor => a ^ b,
        BinaryOp::And => a & b,
    }
}

/// `op(a, s)` on one value (shift amounts are validated to be < 64 beforehand).
#[inline(always)]
pub fn apply_scalar(op: ScalarOp, a: u64, s: u64) -> u64 {
    match op {
        ScalarOp::Neg => a.wrapping_neg(),
        ScalarOp::Add => a.wrapping_add(s),
        ScalarOp::Mul => a.wrapping_mul(s),
        ScalarOp::Xor => a ^ s,
        ScalarOp::And => a & s,
        ScalarOp::ShrArith => ((a as i64) >> s) as u64,
        ScalarOp::ShrLogical => a >> s,
        ScalarOp::Shl => a << s,
    }
}

/// The fused Beaver combination on one element.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn apply_beaver(
    kind: BeaverKind,
    c: u64,
    e: u64,
    f: u64,
    a: u64,
    b: u64,
    with_ef: bool,
) -> u64 {
    match kind {
        BeaverKind::Arithmetic => {
            let mut z = c
                .wrapping_add(e.wrapping_mul(b))
                .wrapping_add(a.wrapping_mul(f));
            if with_ef {
                z = z.wrapping_add(e.wrapping_mul(f));
            }
            z
        }
        BeaverKind::Boolean => {
            let mut z = c ^ (e & b) ^ (a & f);
            if with_ef {
                z ^= e & f;
            }
            z
        }
    }
}

/// The fused truncation combine on one element (see [`Backend::truncate_combine`]).
#[inline(always)]
pub fn apply_truncate(c: u64, r_shr: u64, r_msb: u64, bits: u32, first: bool) -> u64 {
    let not_msb = (c >> 63) ^ 1;
    let mut y = r_msb
        .wrapping_mul(not_msb)
        .wrapping_shl(64 - bits)
        .wrapping_sub(r_shr);
    if first {
        y = y.wrapping_add((c >> bits).wrapping_sub(1u64 << (62 - bits)));
    }
    y
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn describe(&self) -> String {
        format!(
            "CPU, {} rayon threads, GEMM kernel: {}",
            rayon::current_num_threads(),
            gemm::kernel_name()
        )
    }

    fn upload(&self, shape: &[usize], data: &[u64]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != data.len() {
            return Err(shape_err(
                "upload",
                format!("shape {shape:?} does not hold {} values", data.len()),
            ));
        }
        Ok(Self::wrap(shape.to_vec(), AlignedVec::from_slice(data)))
    }

    fn download(&self, t: &Tensor) -> Result<Vec<u64>> {
        Ok(self.slice(t)?.to_vec())
    }

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check_same_shape("binary", a, b)?;
        let (x, y) = (self.slice(a)?, self.slice(b)?);
        let out = Self::map_into(x.len(), |off, dst| {
            let (xs, ys) = (&x[off..off + dst.len()], &y[off..off + dst.len()]);
            for ((d, &p), &q) in dst.iter_mut().zip(xs).zip(ys) {
                *d = apply_binary(op, p, q);
            }
        });
        Ok(Self::wrap(a.shape().to_vec(), out))
    }

    fn add_host(&self, a: &Tensor, b: &[u64]) -> Result<Tensor> {
        let x = self.slice(a)?;
        if x.len() != b.len() {
            return Err(shape_err(
                "add_host",
                format!("{} host values for a tensor of {:?}", b.len(), a.shape()),
            ));
        }
        let out = Self::map_into(x.len(), |off, dst| {
            let (xs, ys) = (&x[off..off + dst.len()], &b[off..off + dst.len()]);
            for ((d, &p), &q) in dst.iter_mut().zip(xs).zip(ys) {
                *d = p.wrapping_add(q);
            }
        });
        Ok(Self::wrap(a.shape().to_vec(), out))
    }

    fn scalar(&self, op: ScalarOp, a: &Tensor, s: u64) -> Result<Tensor> {
        check_scalar(op, s)?;
        let x = self.slice(a)?;
        let out = Self::map_into(x.len(), |off, dst| {
            let xs = &x[off..off + dst.len()];
            for (d, &p) in dst.iter_mut().zip(xs) {
                *d = apply_scalar(op, p, s);
            }
        });
        Ok(Self::wrap(a.shape().to_vec(), out))
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, acc: Option<&Tensor>) -> Result<Tensor> {
        let (m, _k, n) = check_matmul(a, b, acc)?;
        let packed = self.packed(b)?;
        let mut out = match acc {
            Some(c) => AlignedVec::from_slice(self.slice(c)?),
            None => AlignedVec::for_overwrite(m * n),
        };
        gemm::gemm_packed(
            m,
            self.slice(a)?,
            &packed,
            out.as_mut_slice(),
            acc.is_some(),
        );
        Ok(Self::wrap(vec![m, n], out))
    }

    #[allow(clippy::too_many_arguments)]
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
        let (cs, es, fs, as_, bs) = (
            self.slice(c)?,
            self.slice(e)?,
            self.slice(f)?,
            self.slice(a)?,
            self.slice(b)?,
        );
        let out = Self::map_into(cs.len(), |off, dst| {
            for (i, d) in dst.iter_mut().enumerate() {
                let j = off + i;
                *d = apply_beaver(kind, cs[j], es[j], fs[j], as_[j], bs[j], with_ef);
            }
        });
        Ok(Self::wrap(c.shape().to_vec(), out))
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
        let (cs, rs, rm) = (self.slice(c)?, self.slice(r_shr)?, self.slice(r_msb)?);
        let out = Self::map_into(cs.len(), |off, dst| {
            for (i, d) in dst.iter_mut().enumerate() {
                let j = off + i;
                *d = apply_truncate(cs[j], rs[j], rm[j], bits, first);
            }
        });
        Ok(Self::wrap(c.shape().to_vec(), out))
    }

    fn sum_rows(&self, a: &Tensor) -> Result<Tensor> {
        if a.shape().len() != 2 {
            return Err(shape_err(
                "sum_rows",
                format!("expected 2-D, got {:?}", a.shape()),
            ));
        }
        let (m, n) = (a.shape()[0], a.shape()[1]);
        let x = self.slice(a)?;
        let mut out = AlignedVec::for_overwrite(m);
        out.as_mut_slice()
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, d)| {
                *d = x[i * n..(i + 1) * n]
                    .iter()
                    .fold(0u64, |s, &v| s.wrapping_add(v));
            });
        Ok(Self::wrap(vec![m, 1], out))
    }

    fn gather(&self, a: &Tensor, index: &[u32], shape: &[usize]) -> Result<Tensor> {
        check_gather(a, index, shape)?;
        let x = self.slice(a)?;
        let out = Self::map_into(index.len(), |off, dst| {
            let ids = &index[off..off + dst.len()];
            for (d, &i) in dst.iter_mut().zip(ids) {
                *d = if i == GATHER_ZERO { 0 } else { x[i as usize] };
            }
        });
        Ok(Self::wrap(shape.to_vec(), out))
    }
}
