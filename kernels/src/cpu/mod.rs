//! CPU backend: rayon across cores, a packed SIMD GEMM, memory-bound elementwise loops.

mod aligned;
pub mod gemm;
pub mod prg;

use std::any::Any;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

pub use aligned::{advise_huge_pages, zeroed_words, AlignedVec};

use crate::backend::{
    check_2d, check_chacha, check_gather, check_lookup, check_matmul, check_read_rows,
    check_same_shape, check_scalar, check_select, check_slice, check_truncate, compact_word,
    select_bit_word, select_payload_word, Backend, BeaverKind, BinaryOp, BitLookup, ScalarOp,
    TransferCounter, TransferStats, GATHER_ZERO,
};
use crate::error::{shape_err, KernelError, Result};
use crate::tensor::{Storage, Tensor};

/// Elements per rayon task in elementwise loops (large enough to amortise scheduling).
const CHUNK: usize = 1 << 15;

/// Host storage: an aligned buffer plus a lazily packed copy for use as a GEMM right operand,
/// or — for operands built with [`Backend::right_operand_from_rows`] — the packed form alone.
pub struct CpuStorage {
    /// Row-major values; empty for a packed-only operand.
    data: AlignedVec,
    packed: OnceLock<Arc<gemm::PackedB>>,
    len: usize,
}

impl CpuStorage {
    fn new(data: AlignedVec) -> Self {
        CpuStorage {
            len: data.len(),
            data,
            packed: OnceLock::new(),
        }
    }

    fn packed_only(p: gemm::PackedB) -> Self {
        let len = p.k() * p.n();
        let packed = OnceLock::new();
        let _ = packed.set(Arc::new(p));
        CpuStorage {
            data: AlignedVec::default(),
            packed,
            len,
        }
    }

    fn is_packed_only(&self) -> bool {
        self.data.len() != self.len
    }
}

impl Storage for CpuStorage {
    fn backend_name(&self) -> &'static str {
        "cpu"
    }
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The CPU backend: rayon's global pool, plus transfer counters (host copies in and out).
#[derive(Debug, Default, Clone)]
pub struct CpuBackend {
    counter: Arc<TransferCounter>,
}

impl CpuBackend {
    /// A CPU backend using rayon's global thread pool.
    pub fn new() -> Self {
        CpuBackend::default()
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

    fn words<'t>(&self, t: &'t Tensor) -> Result<&'t [u64]> {
        let s = self.storage(t)?;
        if s.is_packed_only() {
            return Err(shape_err(
                "cpu",
                format!(
                    "tensor {:?} is kept only as a packed product operand",
                    t.shape()
                ),
            ));
        }
        Ok(s.data.as_slice())
    }

    fn wrap(shape: Vec<usize>, data: AlignedVec) -> Tensor {
        Tensor::from_storage(shape, Arc::new(CpuStorage::new(data)))
    }

    /// The packed form of a `[k, n]` right operand, built once per tensor and cached.
    fn packed(&self, b: &Tensor) -> Result<Arc<gemm::PackedB>> {
        let s = self.storage(b)?;
        let (k, n) = (b.shape()[0], b.shape()[1]);
        let p = s
            .packed
            .get_or_init(|| Arc::new(gemm::PackedB::pack(k, n, s.data.as_slice())))
            .clone();
        if (p.k(), p.n()) != (k, n) {
            return Err(shape_err(
                "matmul",
                format!(
                    "right operand {:?} was packed as [{}, {}]",
                    b.shape(),
                    p.k(),
                    p.n()
                ),
            ));
        }
        Ok(p)
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
        self.counter.upload(data.len());
        Ok(Self::wrap(shape.to_vec(), AlignedVec::from_slice(data)))
    }

    fn download(&self, t: &Tensor) -> Result<Vec<u64>> {
        if self.storage(t)?.is_packed_only() {
            let mut out = vec![0u64; t.len()];
            self.read_rows(t, 0, &mut out)?;
            self.counter.download(out.len());
            return Ok(out);
        }
        let v = self.words(t)?.to_vec();
        self.counter.download(v.len());
        Ok(v)
    }

    fn right_operand_from_rows(
        &self,
        k: usize,
        n: usize,
        block_rows: usize,
        fill: &mut dyn FnMut(usize, &mut [u64]),
    ) -> Result<Tensor> {
        let mut packed = gemm::PackedB::zeroed(k, n);
        if n > 0 && k > 0 {
            let rows = block_rows.clamp(1, k);
            let mut block = AlignedVec::for_overwrite(rows * n);
            for p0 in (0..k).step_by(rows) {
                let len = (k - p0).min(rows) * n;
                let buf = &mut block.as_mut_slice()[..len];
                fill(p0, buf);
                packed.pack_rows(p0, buf);
            }
        }
        Ok(Tensor::from_storage(
            vec![k, n],
            Arc::new(CpuStorage::packed_only(packed)),
        ))
    }

    fn read_rows(&self, t: &Tensor, first_row: usize, out: &mut [u64]) -> Result<()> {
        let s = self.storage(t)?;
        let n = check_read_rows(t, first_row, out.len())?;
        if s.is_packed_only() {
            let p = s
                .packed
                .get()
                .expect("packed-only storage holds its packed form");
            p.unpack_rows(first_row, out);
        } else {
            out.copy_from_slice(&s.data.as_slice()[first_row * n..first_row * n + out.len()]);
        }
        Ok(())
    }

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check_same_shape("binary", a, b)?;
        let (x, y) = (self.words(a)?, self.words(b)?);
        let out = Self::map_into(x.len(), |off, dst| {
            let (xs, ys) = (&x[off..off + dst.len()], &y[off..off + dst.len()]);
            for ((d, &p), &q) in dst.iter_mut().zip(xs).zip(ys) {
                *d = apply_binary(op, p, q);
            }
        });
        Ok(Self::wrap(a.shape().to_vec(), out))
    }

    fn transfers(&self) -> TransferStats {
        self.counter.stats()
    }

    fn binary_host(&self, op: BinaryOp, a: &Tensor, b: &[u64]) -> Result<Tensor> {
        let x = self.words(a)?;
        if x.len() != b.len() {
            return Err(shape_err(
                "binary_host",
                format!("{} host values for a tensor of {:?}", b.len(), a.shape()),
            ));
        }
        self.counter.upload(b.len());
        let out = Self::map_into(x.len(), |off, dst| {
            let (xs, ys) = (&x[off..off + dst.len()], &b[off..off + dst.len()]);
            for ((d, &p), &q) in dst.iter_mut().zip(xs).zip(ys) {
                *d = apply_binary(op, p, q);
            }
        });
        Ok(Self::wrap(a.shape().to_vec(), out))
    }

    fn chacha12(&self, key: &[u8; 32], stream: u64, word_pos: u128, len: usize) -> Result<Tensor> {
        check_chacha(word_pos)?;
        let mut out = AlignedVec::for_overwrite(len);
        prg::fill_words(
            &mut prg::chacha12_at(key, stream, word_pos),
            out.as_mut_slice(),
        );
        Ok(Self::wrap(vec![len], out))
    }

    fn fill(&self, shape: &[usize], value: u64) -> Result<Tensor> {
        let len = shape.iter().product();
        let out = Self::map_into(len, |_, dst| dst.fill(value));
        Ok(Self::wrap(shape.to_vec(), out))
    }

    fn concat(&self, parts: &[&Tensor]) -> Result<Tensor> {
        let len = parts.iter().map(|t| t.len()).sum();
        let mut out = AlignedVec::for_overwrite(len);
        let mut off = 0;
        for t in parts {
            let src = self.words(t)?;
            out.as_mut_slice()[off..off + src.len()].copy_from_slice(src);
            off += src.len();
        }
        Ok(Self::wrap(vec![len], out))
    }

    fn slice(&self, a: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        check_slice(a, start, len)?;
        let src = &self.words(a)?[start..start + len];
        Ok(Self::wrap(vec![len], AlignedVec::from_slice(src)))
    }

    fn transpose(&self, a: &Tensor) -> Result<Tensor> {
        let (m, n) = check_2d("transpose", a)?;
        let x = self.words(a)?;
        let mut out = AlignedVec::for_overwrite(m * n);
        if m > 0 {
            out.as_mut_slice()
                .par_chunks_mut(m)
                .enumerate()
                .for_each(|(j, row)| {
                    for (i, d) in row.iter_mut().enumerate() {
                        *d = x[i * n + j];
                    }
                });
        }
        Ok(Self::wrap(vec![n, m], out))
    }

    fn compact_bits(&self, words: &Tensor, odd: bool) -> Result<Tensor> {
        let x = self.words(words)?;
        let len = x.len().div_ceil(2);
        let out = Self::map_into(len, |off, dst| {
            for (i, d) in dst.iter_mut().enumerate() {
                let j = 2 * (off + i);
                *d = compact_word(x[j], x.get(j + 1).copied().unwrap_or(0), odd);
            }
        });
        Ok(Self::wrap(vec![len], out))
    }

    fn pack_msb(&self, x: &Tensor) -> Result<Tensor> {
        let xs = self.words(x)?;
        let len = xs.len().div_ceil(64);
        let out = Self::map_into(len, |off, dst| {
            for (i, d) in dst.iter_mut().enumerate() {
                let k = off + i;
                *d = xs[k * 64..((k + 1) * 64).min(xs.len())]
                    .iter()
                    .enumerate()
                    .fold(0u64, |acc, (b, v)| acc | ((v >> 63) << b));
            }
        });
        Ok(Self::wrap(vec![len], out))
    }

    fn bit_select(&self, d: &Tensor, r: &Tensor, first: bool) -> Result<Tensor> {
        check_select(d, r, &[])?;
        let (ds, rs) = (self.words(d)?, self.words(r)?);
        let out = Self::map_into(rs.len(), |off, dst| {
            for (i, o) in dst.iter_mut().enumerate() {
                let e = off + i;
                *o = select_bit_word((ds[e / 64] >> (e % 64)) & 1, rs[e], first);
            }
        });
        Ok(Self::wrap(r.shape().to_vec(), out))
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
        let (ds, rs) = (self.words(d)?, self.words(r)?);
        let (es, ps, ys) = (self.words(e)?, self.words(prod)?, self.words(y)?);
        let out = Self::map_into(rs.len(), |off, dst| {
            for (i, o) in dst.iter_mut().enumerate() {
                let j = off + i;
                let bit = (ds[j / 64] >> (j % 64)) & 1;
                *o = select_payload_word(bit, rs[j], es[j], ps[j], ys[j]);
            }
        });
        Ok(Self::wrap(r.shape().to_vec(), out))
    }

    fn scalar(&self, op: ScalarOp, a: &Tensor, s: u64) -> Result<Tensor> {
        check_scalar(op, s)?;
        let x = self.words(a)?;
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
            Some(c) => AlignedVec::from_slice(self.words(c)?),
            None => AlignedVec::for_overwrite(m * n),
        };
        gemm::gemm_packed(
            m,
            self.words(a)?,
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
            self.words(c)?,
            self.words(e)?,
            self.words(f)?,
            self.words(a)?,
            self.words(b)?,
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
        let (cs, rs, rm) = (self.words(c)?, self.words(r_shr)?, self.words(r_msb)?);
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
        let x = self.words(a)?;
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
        let x = self.words(a)?;
        let out = Self::map_into(index.len(), |off, dst| {
            let ids = &index[off..off + dst.len()];
            for (d, &i) in dst.iter_mut().zip(ids) {
                *d = if i == GATHER_ZERO { 0 } else { x[i as usize] };
            }
        });
        Ok(Self::wrap(shape.to_vec(), out))
    }

    fn lookup_bits(&self, c: &Tensor, tables: &Tensor, lookups: &[BitLookup]) -> Result<Tensor> {
        let (n, words) = check_lookup(c, tables, lookups)?;
        let (cs, rows) = (self.words(c)?, self.words(tables)?);
        let block = n.div_ceil(64);
        let out = Self::map_into(lookups.len() * block, |off, dst| {
            for (i, d) in dst.iter_mut().enumerate() {
                let (l, w) = (&lookups[(off + i) / block], (off + i) % block);
                let mut bits = 0u64;
                for e in 64 * w..(64 * w + 64).min(n) {
                    bits |= l.read(cs[e], &rows[e * words..(e + 1) * words]) << (e % 64);
                }
                *d = bits;
            }
        });
        Ok(Self::wrap(vec![lookups.len() * block], out))
    }
}
