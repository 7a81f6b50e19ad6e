//! u64 wrapping GEMM over the ring Z_2^64: `c [m,n] (+)= a [m,k] · b [k,n]` mod 2^64.
//!
//! The structure follows the classic BLIS/Goto scheme:
//!
//! * `B` is packed into vertical strips of [`NR`] columns (zero padded), each strip holding all `k` rows
//!   contiguously (`NR` values per row, 64-byte aligned). A [`PackedB`] is built once per long-lived
//!   right operand (model weights) and reused by every product.
//! * The work is cut into `MC`-row by `NC`-column blocks of `C`, which are the rayon tasks. Inside a
//!   task the reduction dimension is walked in `KC`-deep slices: the `MC x KC` block of `A` is packed
//!   into [`MR`]-row panels (L2 resident), then each `KC x NR` strip of `B` is multiplied against all
//!   the `A` panels of the block by the register-blocked micro-kernel.
//! * The micro-kernel keeps an `MR x NR` = 8 x 24 tile of `C` in 24 zmm accumulators (AVX-512:
//!   `vpmullq` + `vpaddq`), or in an equivalent AVX2 / portable form, selected at run time.
//!
//! Every kernel path is bit-exact with the naive triple loop for any shape (tested below).

use rayon::prelude::*;

use super::AlignedVec;

/// Rows of the register tile (rows of `A` per packed panel).
pub const MR: usize = 8;
/// Columns of the register tile (columns of `B` per packed strip): two 512-bit vectors.
pub const NR: usize = 16;

/// Default cache blocking.
const DEFAULT_BLOCKING: Blocking = Blocking {
    mc: 144,
    kc: 512,
    nc: 1032,
    par_min_macs: 1 << 18,
};

/// Cache-blocking parameters (maxima; the driver balances blocks below them).
#[derive(Clone, Copy, Debug)]
struct Blocking {
    /// Rows of `A`/`C` per task block (rounded to a multiple of `MR`).
    mc: usize,
    /// Depth of one packed slice of the reduction dimension.
    kc: usize,
    /// Columns of `B`/`C` per task block (rounded to a multiple of `NR`).
    nc: usize,
    /// Products smaller than this many multiply-adds run on the calling thread only.
    par_min_macs: usize,
}

// ---------------------------------------------------------------------------------------------
// Kernel selection
// ---------------------------------------------------------------------------------------------

/// A micro-kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// 512-bit lanes, `vpmullq` (AVX-512F + AVX-512DQ).
    Avx512,
    /// 256-bit lanes, 64-bit products built from `vpmuludq` / `vpmulld` (AVX2).
    Avx2,
    /// Scalar, register-blocked; runs anywhere.
    Portable,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable];

    /// The fastest kernel this CPU supports.
    pub fn detect() -> Kernel {
        static DETECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            Kernel::ALL
                .into_iter()
                .find(|k| k.available())
                .unwrap_or(Kernel::Portable)
        })
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 | Kernel::Avx2 => false,
            Kernel::Portable => true,
        }
    }

    /// Short name: `"avx512"`, `"avx2"` or `"portable"`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// The micro-kernel entry point. Panics if the CPU lacks the kernel's features.
    fn micro(self) -> MicroKernel {
        assert!(
            self.available(),
            "GEMM kernel {} is not supported on this CPU",
            self.name()
        );
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => x86::micro_avx512,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => x86::micro_avx2,
            _ => micro_portable,
        }
    }
}

/// Name of the micro-kernel selected on this CPU: `"avx512"`, `"avx2"` or `"portable"`.
pub fn kernel_name() -> &'static str {
    Kernel::detect().name()
}

/// The micro-kernel contract.
///
/// Computes the `MR x NR` tile `acc = Σ_p a[p*MR + i] * b[p*NR + j]` over `p < kc`, then
/// `c[i*ldc + j] = acc` (`overwrite`) or `c[i*ldc + j] += acc`, for all `i < MR`, `j < NR`.
/// `pf` is only prefetched (one cache line per step, `pf + 8p`), never dereferenced.
///
/// # Safety
/// `a` must be valid for `kc*MR` reads and 64-byte aligned, `b` for `kc*NR` reads and 64-byte
/// aligned, `c` valid for reads and writes of the full tile with row stride `ldc`, and the CPU must
/// support the kernel's target features.
type MicroKernel = unsafe fn(
    kc: usize,
    a: *const u64,
    b: *const u64,
    c: *mut u64,
    ldc: usize,
    overwrite: bool,
    pf: *const u64,
);

/// Portable micro-kernel: the tile lives in a local array the compiler keeps in registers/L1.
///
/// # Safety
/// See [`MicroKernel`].
unsafe fn micro_portable(
    kc: usize,
    a: *const u64,
    b: *const u64,
    c: *mut u64,
    ldc: usize,
    overwrite: bool,
    _pf: *const u64,
) {
    // SAFETY: the caller guarantees `a` holds kc*MR and `b` kc*NR values.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, kc * MR),
            std::slice::from_raw_parts(b, kc * NR),
        )
    };
    let mut acc = [[0u64; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        let bp: &[u64; NR] = bp.try_into().unwrap();
        for (row, &av) in acc.iter_mut().zip(ap) {
            for (x, &bv) in row.iter_mut().zip(bp) {
                *x = x.wrapping_add(av.wrapping_mul(bv));
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: the caller guarantees the MR x NR tile at `c` with stride `ldc` is writable.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) };
        if overwrite {
            dst.copy_from_slice(row);
        } else {
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = d.wrapping_add(v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! x86-64 SIMD micro-kernels and peak probes.

    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// 512-bit vectors per tile row.
    const NV: usize = NR / 8;
    /// `after!(old, new)` is `old` unchanged, but only once `new` exists: an empty asm statement
    /// ties the two, so the compiler cannot hoist the add consuming `old` above the multiply
    /// producing `new` (left alone, it pairs every add with its multiply).
    macro_rules! after {
        ($old:expr, $new:expr) => {{
            let mut out: __m512i = $old;
            let new: __m512i = $new;
            // The template is empty: the statement only orders the computation. Used inside the
            // micro-kernel's `unsafe` block.
            std::arch::asm!(
                "/* {0} {1} */",
                inout(zmm_reg) out,
                in(zmm_reg) new,
                options(pure, nomem, nostack, preserves_flags)
            );
            out
        }};
    }

    /// AVX-512 micro-kernel: 8 x 16 tile in 16 zmm accumulators, `vpmullq` + `vpaddq`.
    ///
    /// Each add is issued 11 multiplies after the multiply that feeds it (the tail of a step after
    /// the step's last multiply). Issuing the add right after its multiply, which the compiler does
    /// when left alone, caps the core at ~80 % of its multiply-add rate; a distance of 11-13 reaches
    /// ~98 % in L1. That needs 12 live products: 16 accumulators + 2 B vectors + 1 broadcast + 12
    /// products fill the 32 zmm registers, which is why the tile is 8 x 16 rather than 8 x 24.
    ///
    /// # Safety
    /// See [`super::MicroKernel`]; requires AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn micro_avx512(
        kc: usize,
        a: *const u64,
        b: *const u64,
        c: *mut u64,
        ldc: usize,
        overwrite: bool,
        pf: *const u64,
    ) {
        const T: usize = MR * NV;
        let mut acc = [_mm512_setzero_si512(); T];
        let mut ap = a;
        let mut bp = b;
        let mut pfp = pf;
        for _ in 0..kc {
            // SAFETY: `bp` walks the kc x NR strip (64-byte aligned, NR values per row) and `ap`
            // the kc x MR panel, both within the caller's bounds; a prefetch never faults; the
            // `after!` asm statements are empty.
            unsafe {
                let b0 = _mm512_load_si512(bp as *const __m512i);
                let b1 = _mm512_load_si512(bp.add(8) as *const __m512i);
                _mm_prefetch::<_MM_HINT_T0>(pfp as *const i8);
                let a0 = _mm512_set1_epi64(*ap.add(0) as i64);
                let p0 = _mm512_mullo_epi64(a0, b0);
                let p1 = _mm512_mullo_epi64(a0, b1);
                let a1 = _mm512_set1_epi64(*ap.add(1) as i64);
                let p2 = _mm512_mullo_epi64(a1, b0);
                let p3 = _mm512_mullo_epi64(a1, b1);
                let a2 = _mm512_set1_epi64(*ap.add(2) as i64);
                let p4 = _mm512_mullo_epi64(a2, b0);
                let p5 = _mm512_mullo_epi64(a2, b1);
                let a3 = _mm512_set1_epi64(*ap.add(3) as i64);
                let p6 = _mm512_mullo_epi64(a3, b0);
                let p7 = _mm512_mullo_epi64(a3, b1);
                let a4 = _mm512_set1_epi64(*ap.add(4) as i64);
                let p8 = _mm512_mullo_epi64(a4, b0);
                let p9 = _mm512_mullo_epi64(a4, b1);
                let a5 = _mm512_set1_epi64(*ap.add(5) as i64);
                let p10 = _mm512_mullo_epi64(a5, b0);
                let p11 = _mm512_mullo_epi64(a5, b1);
                acc[0] = _mm512_add_epi64(acc[0], after!(p0, p11));
                let a6 = _mm512_set1_epi64(*ap.add(6) as i64);
                let p12 = _mm512_mullo_epi64(a6, b0);
                acc[1] = _mm512_add_epi64(acc[1], after!(p1, p12));
                let p13 = _mm512_mullo_epi64(a6, b1);
                acc[2] = _mm512_add_epi64(acc[2], after!(p2, p13));
                let a7 = _mm512_set1_epi64(*ap.add(7) as i64);
                let p14 = _mm512_mullo_epi64(a7, b0);
                acc[3] = _mm512_add_epi64(acc[3], after!(p3, p14));
                let p15 = _mm512_mullo_epi64(a7, b1);
                acc[4] = _mm512_add_epi64(acc[4], after!(p4, p15));
                acc[5] = _mm512_add_epi64(acc[5], after!(p5, p15));
                acc[6] = _mm512_add_epi64(acc[6], after!(p6, p15));
                acc[7] = _mm512_add_epi64(acc[7], after!(p7, p15));
                acc[8] = _mm512_add_epi64(acc[8], after!(p8, p15));
                acc[9] = _mm512_add_epi64(acc[9], after!(p9, p15));
                acc[10] = _mm512_add_epi64(acc[10], after!(p10, p15));
                acc[11] = _mm512_add_epi64(acc[11], after!(p11, p15));
                acc[12] = _mm512_add_epi64(acc[12], after!(p12, p15));
                acc[13] = _mm512_add_epi64(acc[13], after!(p13, p15));
                acc[14] = _mm512_add_epi64(acc[14], after!(p14, p15));
                acc[15] = _mm512_add_epi64(acc[15], p15);
            }
            ap = ap.wrapping_add(MR);
            bp = bp.wrapping_add(NR);
            pfp = pfp.wrapping_add(8);
        }
        for i in 0..MR {
            for j in 0..NV {
                // SAFETY: the caller guarantees the MR x NR tile at `c` (stride `ldc`) is valid.
                unsafe {
                    let p = c.add(i * ldc + j * 8) as *mut __m512i;
                    let v = if overwrite {
                        acc[i * NV + j]
                    } else {
                        _mm512_add_epi64(_mm512_loadu_si512(p), acc[i * NV + j])
                    };
                    _mm512_storeu_si512(p, v);
                }
            }
        }
    }

    /// Low 64 bits of the product from the two AVX2 accumulators of one output vector:
    /// `lo = Σ a_lo·b_lo` (64-bit lanes) and `x = Σ (a_lo·b_hi | a_hi·b_lo)` (32-bit lanes).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn avx2_finish(lo: __m256i, x: __m256i) -> __m256i {
        let cross = _mm256_add_epi32(x, _mm256_srli_epi64::<32>(x));
        _mm256_add_epi64(lo, _mm256_slli_epi64::<32>(cross))
    }

    /// AVX2 micro-kernel. AVX2 has no 64-bit multiply: per lane,
    /// `a·b mod 2^64 = a_lo·b_lo + ((a_lo·b_hi + a_hi·b_lo) mod 2^32) << 32`. The first term comes
    /// from `vpmuludq`; both cross terms come from one `vpmulld` against `b` with its 32-bit halves
    /// swapped, accumulated in 32-bit lanes and folded once at the end. The 8 x 24 tile is computed
    /// as 2-row x 8-column sub-tiles (8 accumulators) to fit the 16 ymm registers.
    ///
    /// # Safety
    /// See [`super::MicroKernel`]; requires AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn micro_avx2(
        kc: usize,
        a: *const u64,
        b: *const u64,
        c: *mut u64,
        ldc: usize,
        overwrite: bool,
        _pf: *const u64,
    ) {
        for r0 in (0..MR).step_by(2) {
            for c0 in (0..NR).step_by(8) {
                let z = _mm256_setzero_si256();
                let mut lo = [z; 4];
                let mut x = [z; 4];
                for p in 0..kc {
                    // SAFETY: p < kc, r0 + 1 < MR and c0 + 8 <= NR keep every read inside the
                    // caller's kc x MR panel and kc x NR strip.
                    unsafe {
                        let bp = b.add(p * NR + c0);
                        let b0 = _mm256_load_si256(bp as *const __m256i);
                        let b1 = _mm256_load_si256(bp.add(4) as *const __m256i);
                        let s0 = _mm256_shuffle_epi32::<0xB1>(b0);
                        let s1 = _mm256_shuffle_epi32::<0xB1>(b1);
                        for r in 0..2 {
                            let av = _mm256_set1_epi64x(*a.add(p * MR + r0 + r) as i64);
                            lo[2 * r] = _mm256_add_epi64(lo[2 * r], _mm256_mul_epu32(av, b0));
                            lo[2 * r + 1] =
                                _mm256_add_epi64(lo[2 * r + 1], _mm256_mul_epu32(av, b1));
                            x[2 * r] = _mm256_add_epi32(x[2 * r], _mm256_mullo_epi32(av, s0));
                            x[2 * r + 1] =
                                _mm256_add_epi32(x[2 * r + 1], _mm256_mullo_epi32(av, s1));
                        }
                    }
                }
                for r in 0..2 {
                    for h in 0..2 {
                        let v = avx2_finish(lo[2 * r + h], x[2 * r + h]);
                        // SAFETY: the caller guarantees the MR x NR tile at `c` is valid.
                        unsafe {
                            let p = c.add((r0 + r) * ldc + c0 + 4 * h) as *mut __m256i;
                            let v = if overwrite {
                                v
                            } else {
                                _mm256_add_epi64(_mm256_loadu_si256(p), v)
                            };
                            _mm256_storeu_si256(p, v);
                        }
                    }
                }
            }
        }
    }

    /// Independent chains per probe iteration.
    const CHAINS: usize = 14;

    /// AVX-512 peak probe: `iters` rounds of 14 independent `vpmullq` + `vpaddq` chains
    /// (8 MACs each). Returns a value depending on every result.
    ///
    /// # Safety
    /// Requires AVX-512F and AVX-512DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn peak_avx512(iters: u64, seed: u64) -> u64 {
        let m = _mm512_set1_epi64(std::hint::black_box(seed as i64 | 1));
        let mut x: [__m512i; CHAINS] =
            std::array::from_fn(|i| _mm512_set1_epi64((seed as i64).wrapping_add(i as i64)));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iters {
            // All multiplies first, then the adds that consume them (delayed adds issue best).
            for xi in x.iter_mut() {
                *xi = _mm512_mullo_epi64(*xi, m);
            }
            for (a, xi) in acc.iter_mut().zip(&x) {
                *a = _mm512_add_epi64(*a, *xi);
            }
        }
        let mut s = _mm512_setzero_si512();
        for a in acc {
            s = _mm512_xor_si512(s, a);
        }
        _mm512_reduce_add_epi64(s) as u64
    }

    /// AVX2 peak probe: the AVX2 kernel's operation mix (`vpmuludq` + `vpmulld` + two adds per
    /// 4 MACs) on 6 independent chains. Returns a value depending on every result.
    ///
    /// # Safety
    /// Requires AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn peak_avx2(iters: u64, seed: u64) -> u64 {
        const N: usize = 6;
        let m = _mm256_set1_epi64x(std::hint::black_box(seed as i64 | 1));
        let ms = _mm256_shuffle_epi32::<0xB1>(m);
        let mut x: [__m256i; N] =
            std::array::from_fn(|i| _mm256_set1_epi64x((seed as i64).wrapping_add(i as i64)));
        let z = _mm256_setzero_si256();
        let mut lo = [z; N];
        let mut cr = [z; N];
        for _ in 0..iters {
            for i in 0..N {
                let p = _mm256_mul_epu32(x[i], m);
                let q = _mm256_mullo_epi32(x[i], ms);
                lo[i] = _mm256_add_epi64(lo[i], p);
                cr[i] = _mm256_add_epi32(cr[i], q);
                x[i] = p;
            }
        }
        let mut s = z;
        for i in 0..N {
            s = _mm256_xor_si256(s, avx2_finish(lo[i], cr[i]));
        }
        let mut out = [0u64; 4];
        // SAFETY: `out` holds exactly one 256-bit vector.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s) };
        out.iter().fold(0, |a, &v| a ^ v)
    }
}

// ---------------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------------

/// The right-hand operand `B [k, n]` packed into the layout the micro-kernel streams.
///
/// Layout: `ceil(n / NR)` strips of `NR` columns (the last zero padded); strip `s` occupies
/// `k * NR` values starting at `s * k * NR`, row `p` of the strip at `s * k * NR + p * NR`.
/// The buffer is 64-byte aligned and every strip row is 3 whole cache lines.
#[derive(Clone)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: AlignedVec,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("k", &self.k)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl PackedB {
    /// Pack a row-major `B [k, n]` (in parallel for large operands).
    pub fn pack(k: usize, n: usize, b: &[u64]) -> PackedB {
        assert_eq!(b.len(), k * n, "PackedB::pack: b must hold k*n values");
        let strips = n.div_ceil(NR);
        let mut data = AlignedVec::zeros(strips * k * NR);
        if k > 0 {
            let fill = |(s, dst): (usize, &mut [u64])| {
                let j0 = s * NR;
                let w = NR.min(n - j0);
                for (p, row) in dst.chunks_exact_mut(NR).enumerate() {
                    row[..w].copy_from_slice(&b[p * n + j0..p * n + j0 + w]);
                }
            };
            let chunks = data.as_mut_slice().par_chunks_mut(k * NR).enumerate();
            if k * n >= 1 << 16 {
                chunks.for_each(fill);
            } else {
                chunks.collect::<Vec<_>>().into_iter().for_each(fill);
            }
        }
        PackedB { k, n, data }
    }

    /// Rows of B.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of B.
    pub fn n(&self) -> usize {
        self.n
    }
}

/// Pack rows `i0 .. i0 + mb` and columns `p0 .. p0 + kc` of row-major `a [.., lda]` into
/// `ceil(mb / MR)` panels of `kc x MR` values (row `p` of panel `r` at `r*kc*MR + p*MR`),
/// zero-padding the rows past `mb`.
fn pack_a(a: &[u64], lda: usize, i0: usize, mb: usize, p0: usize, kc: usize, dst: &mut [u64]) {
    for (r, panel) in dst.chunks_exact_mut(kc * MR).enumerate() {
        let rows = MR.min(mb - r * MR);
        if rows == MR {
            let src: [&[u64]; MR] = std::array::from_fn(|i| {
                let off = (i0 + r * MR + i) * lda + p0;
                &a[off..off + kc]
            });
            for (p, d) in panel.chunks_exact_mut(MR).enumerate() {
                for (x, s) in d.iter_mut().zip(&src) {
                    *x = s[p];
                }
            }
        } else {
            panel.fill(0);
            for i in 0..rows {
                let off = (i0 + r * MR + i) * lda + p0;
                for (p, &v) in a[off..off + kc].iter().enumerate() {
                    panel[p * MR + i] = v;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// A raw pointer to `C` shared by the tasks, which write disjoint tiles.
#[derive(Clone, Copy)]
struct CPtr(*mut u64);
// SAFETY: tasks only write disjoint `C` blocks through the pointer (see `gemm_driver`), and the
// borrow it comes from outlives the parallel section.
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

impl CPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut u64 {
        self.0
    }
}

/// Split `len` units into balanced blocks of at most `max` units (rounded up to `unit`).
/// Returns (block size, block count).
fn split(len: usize, max: usize, unit: usize, min_blocks: usize) -> (usize, usize) {
    let max = max.max(unit);
    let blocks = len
        .div_ceil(max)
        .max(min_blocks)
        .min(len.div_ceil(unit))
        .max(1);
    let size = len.div_ceil(blocks).div_ceil(unit) * unit;
    (size, len.div_ceil(size))
}

/// The task grid: (rows per block, row blocks, strips per block, strip blocks).
fn plan(
    m: usize,
    k: usize,
    n: usize,
    blk: &Blocking,
    threads: usize,
) -> (usize, usize, usize, usize) {
    let strips = n.div_ceil(NR);
    let nc_strips = blk.nc.div_ceil(NR);
    let (mut mc, mut mb) = split(m, blk.mc, MR, 1);
    let (mut sc, mut nb) = split(strips, nc_strips, 1, 1);
    if threads > 1 && m.saturating_mul(n).saturating_mul(k) >= blk.par_min_macs {
        // Balance the grid over the threads: add blocks along the larger block dimension until
        // every thread gets an equal share or there are plenty of tasks to steal.
        let (mut want_m, mut want_n) = (mb, nb);
        for _ in 0..64 {
            if (mb * nb) % threads == 0 || mb * nb >= 4 * threads {
                break;
            }
            let can_m = mb < m.div_ceil(MR);
            let can_n = nb < strips;
            if can_m && (!can_n || mc >= sc * NR) {
                want_m += 1;
            } else if can_n {
                want_n += 1;
            } else {
                break;
            }
            (mc, mb) = split(m, blk.mc, MR, want_m);
            (sc, nb) = split(strips, nc_strips, 1, want_n);
        }
    }
    (mc, mb, sc, nb)
}

fn gemm_driver(
    kernel: Kernel,
    blk: &Blocking,
    m: usize,
    a: &[u64],
    b: &PackedB,
    c: &mut [u64],
    accumulate: bool,
) {
    let (k, n) = (b.k, b.n);
    assert_eq!(a.len(), m * k, "gemm: a must hold m*k values");
    assert_eq!(c.len(), m * n, "gemm: c must hold m*n values");
    let micro = kernel.micro();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0);
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let (mc, mb, sc, nb) = plan(m, k, n, blk, threads);
    let kc_max = blk.kc.min(k);
    let cptr = CPtr(c.as_mut_ptr());
    let bdata = b.data.as_slice();

    let task = |abuf: &mut AlignedVec, t: usize| {
        let (ib, jb) = (t / nb, t % nb);
        let i0 = ib * mc;
        let rows = mc.min(m - i0);
        let panels = rows.div_ceil(MR);
        let s0 = jb * sc;
        let s1 = (s0 + sc).min(n.div_ceil(NR));
        let mut tmp = AlignedVec::zeros(MR * NR);
        let mut p0 = 0;
        while p0 < k {
            let kc = kc_max.min(k - p0);
            let apack = &mut abuf.as_mut_slice()[..panels * kc * MR];
            pack_a(a, k, i0, rows, p0, kc, apack);
            let apack = &*apack;
            let overwrite = p0 == 0 && !accumulate;
            for s in s0..s1 {
                let strip = &bdata[s * k * NR + p0 * NR..s * k * NR + (p0 + kc) * NR];
                // Prefetch target: the next strip of this slice, else the first of the next slice.
                let next = if s + 1 < s1 {
                    bdata[(s + 1) * k * NR + p0 * NR..].as_ptr()
                } else if p0 + kc < k {
                    bdata[s0 * k * NR + (p0 + kc) * NR..].as_ptr()
                } else {
                    strip.as_ptr()
                };
                let j0 = s * NR;
                let cols = NR.min(n - j0);
                for r in 0..panels {
                    let ap = &apack[r * kc * MR..(r + 1) * kc * MR];
                    // The first two panels prefetch the next B strip (2 lines per row), the
                    // others the next A panel.
                    let pf = if r < 2 {
                        next.wrapping_add(r * kc * 8)
                    } else {
                        ap.as_ptr().wrapping_add(kc * MR)
                    };
                    let i = i0 + r * MR;
                    let rws = MR.min(m - i);
                    if rws == MR && cols == NR {
                        // SAFETY: the packed panel/strip hold kc*MR / kc*NR aligned values, the
                        // tile rows i..i+MR, columns j0..j0+NR lie inside C and belong to this
                        // task's block only, and `kernel.micro()` checked the CPU features.
                        unsafe {
                            micro(
                                kc,
                                ap.as_ptr(),
                                strip.as_ptr(),
                                cptr.get().add(i * n + j0),
                                n,
                                overwrite,
                                pf,
                            )
                        };
                    } else {
                        let t = tmp.as_mut_slice();
                        // SAFETY: as above, with the full tile written to the local `tmp`.
                        unsafe {
                            micro(
                                kc,
                                ap.as_ptr(),
                                strip.as_ptr(),
                                t.as_mut_ptr(),
                                NR,
                                true,
                                pf,
                            )
                        };
                        for (ii, trow) in t.chunks_exact(NR).take(rws).enumerate() {
                            // SAFETY: row i+ii, columns j0..j0+cols are inside C and owned by
                            // this task's block.
                            let crow = unsafe {
                                std::slice::from_raw_parts_mut(
                                    cptr.get().add((i + ii) * n + j0),
                                    cols,
                                )
                            };
                            for (d, &v) in crow.iter_mut().zip(trow) {
                                *d = if overwrite { v } else { d.wrapping_add(v) };
                            }
                        }
                    }
                }
            }
            p0 += kc;
        }
    };

    let abuf_len = mc.div_ceil(MR) * MR * kc_max;
    let tasks = mb * nb;
    if tasks == 1 || threads == 1 || m.saturating_mul(n).saturating_mul(k) < blk.par_min_macs {
        let mut abuf = AlignedVec::zeros(abuf_len);
        (0..tasks).for_each(|t| task(&mut abuf, t));
    } else {
        (0..tasks)
            .into_par_iter()
            .with_max_len(1)
            .for_each_init(|| AlignedVec::zeros(abuf_len), |abuf, t| task(abuf, t));
    }
}

/// `c [m,n] (+)= a [m,k] · b [k,n]` mod 2^64, all row-major and contiguous, on the fastest kernel.
///
/// With `accumulate == false` `c` is overwritten (zeroed when `k == 0`); otherwise the product is
/// added to it. `B` is packed on every call: for a reused right operand, pack it once with
/// [`PackedB::pack`] and call [`gemm_packed`].
pub fn gemm(m: usize, k: usize, n: usize, a: &[u64], b: &[u64], c: &mut [u64], accumulate: bool) {
    gemm_with(Kernel::detect(), m, k, n, a, b, c, accumulate)
}

/// `c [m,n] (+)= a [m,k] · B` mod 2^64 with a pre-packed `B`, on the fastest kernel.
pub fn gemm_packed(m: usize, a: &[u64], b: &PackedB, c: &mut [u64], accumulate: bool) {
    gemm_packed_with(Kernel::detect(), m, a, b, c, accumulate)
}

/// [`gemm`] on a chosen kernel. Panics if the CPU does not support it (see [`Kernel::available`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(
    kernel: Kernel,
    m: usize,
    k: usize,
    n: usize,
    a: &[u64],
    b: &[u64],
    c: &mut [u64],
    accumulate: bool,
) {
    assert_eq!(b.len(), k * n, "gemm: b must hold k*n values");
    let packed = PackedB::pack(k, n, b);
    gemm_packed_with(kernel, m, a, &packed, c, accumulate)
}

/// [`gemm_packed`] on a chosen kernel. Panics if the CPU does not support it.
pub fn gemm_packed_with(
    kernel: Kernel,
    m: usize,
    a: &[u64],
    b: &PackedB,
    c: &mut [u64],
    accumulate: bool,
) {
    gemm_driver(kernel, &DEFAULT_BLOCKING, m, a, b, c, accumulate)
}

// ---------------------------------------------------------------------------------------------
// Peak probe
// ---------------------------------------------------------------------------------------------

/// One thread's probe: run the best available multiply-add chains for ~0.25 s, return MAC/s.
fn probe_thread(seed: u64) -> f64 {
    use std::time::{Duration, Instant};
    let kernel = Kernel::detect();
    // (iterations per batch, MACs per iteration)
    let (batch, macs_per_iter): (u64, u64) = match kernel {
        Kernel::Avx512 => (1 << 16, 14 * 8),
        Kernel::Avx2 => (1 << 16, 6 * 4),
        Kernel::Portable => (1 << 18, 8),
    };
    let run = |iters: u64| -> u64 {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::detect` found AVX-512F and AVX-512DQ.
            Kernel::Avx512 => unsafe { x86::peak_avx512(iters, seed) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::detect` found AVX2.
            Kernel::Avx2 => unsafe { x86::peak_avx2(iters, seed) },
            _ => peak_scalar(iters, seed),
        }
    };
    std::hint::black_box(run(batch)); // warm up (clock ramp, page in)
    let start = Instant::now();
    let mut done = 0u64;
    let mut sink = 0u64;
    while start.elapsed() < Duration::from_millis(250) {
        sink ^= run(std::hint::black_box(batch));
        done += batch;
    }
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    (done * macs_per_iter) as f64 / secs
}

/// Scalar peak probe: 8 independent `imul` + `add` chains.
fn peak_scalar(iters: u64, seed: u64) -> u64 {
    let m = std::hint::black_box(seed | 1);
    let mut x: [u64; 8] = std::array::from_fn(|i| seed.wrapping_add(i as u64));
    let mut acc = [0u64; 8];
    for _ in 0..iters {
        for (a, xi) in acc.iter_mut().zip(x.iter_mut()) {
            *xi = xi.wrapping_mul(m);
            *a = a.wrapping_add(*xi);
        }
        x = std::hint::black_box(x);
    }
    acc.iter().fold(0, |s, &v| s ^ v)
}

/// Measure this machine's u64 multiply-add peak in MAC/s on `threads` threads (at least one).
///
/// Each thread runs independent chains of 64-bit multiplies and adds (`vpmullq` + `vpaddq` with
/// AVX-512, the AVX2 kernel's emulated multiply with AVX2, else scalar `imul` + `add`) for about
/// 0.25 s; the result is the sum of the per-thread rates.
pub fn measure_mac_peak(threads: usize) -> f64 {
    let threads = threads.max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || probe_thread(0x9E37_79B9_7F4A_7C15 ^ t as u64)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("peak probe thread panicked"))
            .sum()
    })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn rng() -> ChaCha20Rng {
        let seed: u64 = match std::env::var("SEED") {
            Ok(s) => s.parse().expect("SEED must be a u64"),
            Err(_) => rand::random(),
        };
        eprintln!("seed = {seed}");
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn naive(m: usize, k: usize, n: usize, a: &[u64], b: &[u64], c: &mut [u64], acc: bool) {
        for i in 0..m {
            for j in 0..n {
                let mut s = if acc { c[i * n + j] } else { 0 };
                for p in 0..k {
                    s = s.wrapping_add(a[i * k + p].wrapping_mul(b[p * n + j]));
                }
                c[i * n + j] = s;
            }
        }
    }

    const EDGE: [u64; 8] = [
        0,
        1,
        2,
        1 << 63,
        u64::MAX,
        (1 << 32) + 1,
        (1 << 32) - 1,
        0xFFFF_FFFF_0000_0000,
    ];

    fn values(rng: &mut ChaCha20Rng, len: usize) -> Vec<u64> {
        (0..len)
            .map(|_| {
                if rng.gen_bool(0.3) {
                    EDGE[rng.gen_range(0..EDGE.len())]
                } else {
                    rng.gen()
                }
            })
            .collect()
    }

    fn kernels() -> Vec<Kernel> {
        let ks: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| k.available()).collect();
        eprintln!("testing kernels {ks:?}");
        ks
    }

    /// Check every kernel, both entry points and both accumulate modes on one shape.
    fn check(rng: &mut ChaCha20Rng, blk: &Blocking, m: usize, k: usize, n: usize) {
        let a = values(rng, m * k);
        let b = values(rng, k * n);
        let c0 = values(rng, m * n);
        let mut want = vec![0; m * n];
        naive(m, k, n, &a, &b, &mut want, false);
        let mut want_acc = c0.clone();
        naive(m, k, n, &a, &b, &mut want_acc, true);
        let packed = PackedB::pack(k, n, &b);
        assert_eq!((packed.k(), packed.n()), (k, n));
        for kern in kernels() {
            let mut c = c0.clone();
            gemm_driver(kern, blk, m, &a, &packed, &mut c, false);
            assert!(c == want, "{kern:?} {m}x{k}x{n} {blk:?} overwrite");
            let mut c = c0.clone();
            gemm_driver(kern, blk, m, &a, &packed, &mut c, true);
            assert!(c == want_acc, "{kern:?} {m}x{k}x{n} {blk:?} accumulate");
        }
    }

    const SMALL: Blocking = Blocking {
        mc: 16,
        kc: 5,
        nc: 48,
        par_min_macs: 0,
    };
    const ODD: Blocking = Blocking {
        mc: 24,
        kc: 17,
        nc: 72,
        par_min_macs: 0,
    };

    #[test]
    fn interesting_shapes_all_kernels() {
        let mut rng = rng();
        let sizes = [0usize, 1, 2, 7, 8, 9, 17, 23, 24, 25, 33, 100];
        let mut count = 0;
        for &m in &sizes {
            for &k in &sizes {
                for &n in &sizes {
                    if rng.gen_bool(0.18) || (m <= 1 || k <= 1 || n <= 1) && rng.gen_bool(0.3) {
                        let blk = [DEFAULT_BLOCKING, SMALL, ODD][count % 3];
                        check(&mut rng, &blk, m, k, n);
                        count += 1;
                    }
                }
            }
        }
        eprintln!("{count} shapes");
        assert!(count >= 200, "only {count} shapes");
    }

    #[test]
    fn random_shapes_small_blocking() {
        let mut rng = rng();
        for _ in 0..150 {
            let (m, k, n) = (
                rng.gen_range(0..70),
                rng.gen_range(0..40),
                rng.gen_range(0..160),
            );
            let blk = if rng.gen() { SMALL } else { ODD };
            check(&mut rng, &blk, m, k, n);
        }
    }

    #[test]
    fn block_boundaries_default_blocking() {
        let mut rng = rng();
        let d = DEFAULT_BLOCKING;
        let shapes = [
            (1, d.kc + 1, 33),
            (17, d.kc + 1, 25),
            (d.mc + 1, 7, 100),
            (d.mc - 1, d.kc, 24),
            (2 * d.mc + 3, 33, d.nc + 1),
            (9, 2 * d.kc + 3, d.nc + 25),
            (257, 257, 257),
            (64, 300, 2 * d.nc + 7),
            (100, d.kc - 1, 49),
        ];
        for (m, k, n) in shapes {
            check(&mut rng, &d, m, k, n);
        }
    }

    #[test]
    fn public_entry_points_agree() {
        let mut rng = rng();
        for (m, k, n) in [
            (0, 3, 4),
            (3, 0, 4),
            (5, 9, 0),
            (33, 65, 47),
            (100, 7, 257),
            (64, 513, 130),
        ] {
            let a = values(&mut rng, m * k);
            let b = values(&mut rng, k * n);
            let c0 = values(&mut rng, m * n);
            let packed = PackedB::pack(k, n, &b);
            for acc in [false, true] {
                let mut want = c0.clone();
                naive(m, k, n, &a, &b, &mut want, acc);
                let mut c1 = c0.clone();
                gemm(m, k, n, &a, &b, &mut c1, acc);
                let mut c2 = c0.clone();
                gemm_packed(m, &a, &packed, &mut c2, acc);
                assert!(c1 == want && c2 == want, "{m}x{k}x{n} acc={acc}");
                for kern in kernels() {
                    let mut c3 = c0.clone();
                    gemm_with(kern, m, k, n, &a, &b, &mut c3, acc);
                    let mut c4 = c0.clone();
                    gemm_packed_with(kern, m, &a, &packed, &mut c4, acc);
                    assert!(c3 == want && c4 == want, "{kern:?} {m}x{k}x{n} acc={acc}");
                }
            }
        }
    }

    #[test]
    fn edge_values_products() {
        // Every pair of edge values, exercising the 32-bit cross terms of the AVX2 emulation.
        let (m, k, n) = (EDGE.len(), EDGE.len(), 24 + 3);
        let a: Vec<u64> = (0..m * k).map(|i| EDGE[(i * 5 + i / 8) % 8]).collect();
        let b: Vec<u64> = (0..k * n).map(|i| EDGE[(i * 3 + i / 7) % 8]).collect();
        let mut want = vec![0; m * n];
        naive(m, k, n, &a, &b, &mut want, false);
        for kern in kernels() {
            let mut c = vec![7; m * n];
            gemm_with(kern, m, k, n, &a, &b, &mut c, false);
            assert_eq!(c, want, "{kern:?}");
        }
    }

    #[test]
    fn plan_covers_grid() {
        for threads in 1..5 {
            for (m, n) in [
                (1, 1),
                (64, 4096),
                (1024, 1024),
                (300, 50),
                (8, 24),
                (1000, 7),
            ] {
                let (mc, mb, sc, nb) = plan(m, 1 << 20, n, &DEFAULT_BLOCKING, threads);
                assert!(
                    mc % MR == 0 && mc * mb >= m && mc * (mb - 1) < m,
                    "{m} {mc} {mb}"
                );
                let strips = n.div_ceil(NR);
                assert!(sc * nb >= strips && sc * (nb - 1) < strips, "{n} {sc} {nb}");
            }
        }
    }

    #[test]
    fn peak_probe_positive() {
        assert!(measure_mac_peak(1) > 0.0);
        assert!(!kernel_name().is_empty());
    }

    /// Process CPU time in seconds (for timings robust to other jobs on a shared machine).
    fn cpu_seconds() -> f64 {
        extern "C" {
            fn clock_gettime(clock: i32, ts: *mut [i64; 2]) -> i32;
        }
        let mut ts = [0i64; 2];
        // SAFETY: CLOCK_PROCESS_CPUTIME_ID (2) with a valid timespec-sized buffer (Linux x86-64).
        unsafe { clock_gettime(2, &mut ts) };
        ts[0] as f64 + ts[1] as f64 * 1e-9
    }

    /// Timing harness (not a correctness test): `cargo test --release -p kernels -- --ignored
    /// --nocapture bench_gemm`.
    #[test]
    #[ignore]
    fn bench_gemm() {
        use std::time::Instant;
        let peak = measure_mac_peak(rayon::current_num_threads());
        let peak1 = measure_mac_peak(1);
        eprintln!(
            "kernel {}, {} threads, peak {:.1} GMAC/s ({:.1} on 1 thread)",
            kernel_name(),
            rayon::current_num_threads(),
            peak / 1e9,
            peak1 / 1e9
        );
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let env = |name: &str, d: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let blk = Blocking {
            mc: env("GEMM_MC", DEFAULT_BLOCKING.mc),
            kc: env("GEMM_KC", DEFAULT_BLOCKING.kc),
            nc: env("GEMM_NC", DEFAULT_BLOCKING.nc),
            ..DEFAULT_BLOCKING
        };
        eprintln!("{blk:?}");
        if env("GEMM_UKR", 0) > 0 {
            let kc = env("GEMM_UKR", 0);
            let a = AlignedVec::from_slice(&values(&mut rng, kc * MR));
            let b = AlignedVec::from_slice(&values(&mut rng, kc * NR));
            let mut c = AlignedVec::zeros(MR * NR);
            let micro = Kernel::detect().micro();
            let reps = (1usize << 30) / (kc * MR * NR);
            for round in 0..2 {
                let t = Instant::now();
                for _ in 0..reps {
                    // SAFETY: buffers sized for one kc-deep tile.
                    unsafe {
                        micro(
                            kc,
                            a.as_slice().as_ptr(),
                            b.as_slice().as_ptr(),
                            c.as_mut_slice().as_mut_ptr(),
                            NR,
                            false,
                            b.as_slice().as_ptr(),
                        )
                    };
                }
                let r = (reps * kc * MR * NR) as f64 / t.elapsed().as_secs_f64() / 1e9;
                eprintln!(
                    "ukr kc={kc} round {round}: {r:.2} GMAC/s ({:.0}% of 1 thread)",
                    r * 1e11 / peak1
                );
            }
            return;
        }
        let all = [(256, 256, 256), (1024, 1024, 1024), (64, 25088, 4096)];
        let only = env("GEMM_SHAPE", 9);
        let shapes = all
            .into_iter()
            .enumerate()
            .filter(|&(i, _)| only == 9 || i == only)
            .map(|(_, s)| s);
        for (m, k, n) in shapes {
            let a = AlignedVec::from_slice(&values(&mut rng, m * k));
            let b = AlignedVec::from_slice(&values(&mut rng, k * n));
            let mut c = AlignedVec::zeros(m * n);
            let macs = (m * k * n) as f64;
            let reps = ((4e9 / macs) as usize).clamp(3, 200);
            let packed = PackedB::pack(k, n, b.as_slice());
            let threads = rayon::current_num_threads() as f64;
            // (best wall, mean wall, best CPU-time based) GMAC/s; the CPU-time rate
            // (MACs / (process CPU seconds / threads)) is robust to other jobs on the machine.
            let time = |f: &mut dyn FnMut()| {
                f();
                let mut best = f64::MAX;
                let mut best_cpu = f64::MAX;
                let mut total = 0.0;
                for _ in 0..reps {
                    let (t, c0) = (Instant::now(), cpu_seconds());
                    f();
                    let e = t.elapsed().as_secs_f64();
                    best_cpu = best_cpu.min((cpu_seconds() - c0) / threads);
                    best = best.min(e);
                    total += e;
                }
                (
                    macs / best / 1e9,
                    macs * reps as f64 / total / 1e9,
                    macs / best_cpu / 1e9,
                )
            };
            let kern = Kernel::detect();
            let (pb, pm, pc) = time(&mut || {
                gemm_driver(
                    kern,
                    &blk,
                    m,
                    a.as_slice(),
                    &packed,
                    c.as_mut_slice(),
                    false,
                )
            });
            let (ub, um, uc) = time(&mut || {
                let packed = PackedB::pack(k, n, b.as_slice());
                gemm_driver(
                    kern,
                    &blk,
                    m,
                    a.as_slice(),
                    &packed,
                    c.as_mut_slice(),
                    false,
                )
            });
            eprintln!(
                "{m}x{k}x{n}: packed best {pb:.1} mean {pm:.1} cpu {pc:.1} GMAC/s \
                 ({:.0}% / {:.0}% / {:.0}%), plain best {ub:.1} mean {um:.1} cpu {uc:.1} GMAC/s \
                 ({:.0}% / {:.0}% / {:.0}%)",
                pb * 1e11 / peak,
                pm * 1e11 / peak,
                pc * 1e11 / peak,
                ub * 1e11 / peak,
                um * 1e11 / peak,
                uc * 1e11 / peak,
            );
        }
    }
}
