//! u64 wrapping GEMM over the ring Z_2^64: `c [m,n] (+)= a [m,k] · b [k,n]` mod 2^64.
//!
//! The structure follows the classic BLIS/Goto scheme:
//!
//! * `B` is packed into vertical strips of [`NR`] = 16 columns (zero padded), each strip holding
//!   all `k` rows contiguously (`NR` values = two cache lines per row, 64-byte aligned). A
//!   [`PackedB`] is built once per long-lived right operand (model weights) and reused by every
//!   product; plain [`gemm`] packs `B` strip by strip just before use (or once up front when
//!   several row blocks share it).
//! * `C` is cut into a grid of row blocks (at most `MC` = 96 rows) and column blocks (at most
//!   `NC` = 1024 columns), balanced so that every rayon thread gets the same number of equal
//!   tasks (`64 x 25088 x 4096` splits over `N`, `1024^3` over `M`). Inside a task the reduction
//!   dimension is walked in `KC` = 256 deep slices: the `MC x KC` block of `A` is packed into
//!   [`MR`]-row panels (L2 resident), then each `KC x NR` strip of `B` (L1 resident, the next
//!   one prefetched) is multiplied against all the `A` panels by the register-blocked kernel.
//! * The AVX-512 micro-kernel keeps an `MR x NR` = 8 x 16 tile of `C` in 16 zmm accumulators
//!   (`vpmullq` + `vpaddq`, each add issued 13 multiplies after the one feeding it). AVX2 and
//!   portable kernels compute the same tile; the best one is selected at run time.
//!
//! Every kernel path is bit-exact with the naive triple loop for any shape (tested below).

use rayon::prelude::*;

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// Rows of the register tile (rows of `A` per packed panel).
pub const MR: usize = 8;
/// Columns of the register tile (columns of `B` per packed strip): two 512-bit vectors.
pub const NR: usize = 16;

/// Default cache blocking.
const DEFAULT_BLOCKING: Blocking = Blocking {
    mc: 96,
    kc: 256,
    nc: 1024,
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

// The AVX-512 intrinsics and `avx512*` target features are stable since Rust 1.89, the
// workspace `rust-version`.
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
    /// Per k step: load the two B vectors, then issue the 16 products row by row (one broadcast
    /// of `a[i]` per row) and add product `q` into its accumulator only after product `q + 13`
    /// has been issued (the last ones after the step's final multiply). Measured on this Zen 4
    /// class core: with each add right behind its multiply (what the compiler emits when left
    /// alone) the kernel runs at ~80 % of the multiply-add peak, with a distance of 11 at ~94 %
    /// and 13 at ~98 % (L1-resident operands). 13 in-flight products + 16 accumulators + 2 B
    /// vectors + 1 broadcast is all 32 zmm registers (the last products reuse the dead B and
    /// broadcast registers), which is why the tile is 8 x 16 and not 8 x 24: 24 accumulators
    /// leave room for a distance of only 3-4, measured at ~82 %.
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
        // Fetch the C tile early: its rows are `ldc` apart and only touched after the loop.
        {
            for i in 0..MR {
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + 8) as *const i8);
            }
        }
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
                _mm_prefetch::<_MM_HINT_T1>(pfp as *const i8);
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
                let a6 = _mm512_set1_epi64(*ap.add(6) as i64);
                let p12 = _mm512_mullo_epi64(a6, b0);
                let p13 = _mm512_mullo_epi64(a6, b1);
                acc[0] = _mm512_add_epi64(acc[0], after!(p0, p13));
                let a7 = _mm512_set1_epi64(*ap.add(7) as i64);
                let p14 = _mm512_mullo_epi64(a7, b0);
                acc[1] = _mm512_add_epi64(acc[1], after!(p1, p14));
                let p15 = _mm512_mullo_epi64(a7, b1);
                acc[2] = _mm512_add_epi64(acc[2], after!(p2, p15));
                acc[3] = _mm512_add_epi64(acc[3], after!(p3, p15));
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
    /// swapped, accumulated in 32-bit lanes and folded once at the end. The 8 x 16 tile is computed
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

/// A zero-initialised heap buffer of `u64` starting on a 64-byte boundary.
///
/// Allocated through `alloc_zeroed` with the natural alignment and aligned by hand: large
/// buffers then come straight from fresh zero pages (no single-threaded memset), and the pages
/// are first touched by whoever fills them, in parallel.
struct Buf {
    /// Start of the allocation (None when empty).
    base: Option<NonNull<u8>>,
    /// The first aligned value.
    ptr: NonNull<u64>,
    len: usize,
}

// SAFETY: `Buf` owns its allocation exclusively, like `Vec<u64>`.
unsafe impl Send for Buf {}
// SAFETY: shared access only reads, like `&[u64]`.
unsafe impl Sync for Buf {}

impl Buf {
    fn layout(len: usize) -> Layout {
        let bytes = len
            .checked_mul(8)
            .and_then(|b| b.checked_add(64))
            .expect("GEMM buffer size overflows");
        Layout::from_size_align(bytes, 8).expect("GEMM buffer too large")
    }

    /// `len` zeros.
    fn zeroed(len: usize) -> Buf {
        if len == 0 {
            return Buf {
                base: None,
                ptr: NonNull::dangling(),
                len: 0,
            };
        }
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(base) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        super::advise_huge_pages(raw, layout.size());
        let offset = (64 - raw as usize % 64) % 64;
        // SAFETY: the allocation has 64 spare bytes, so the first 64-byte boundary plus `len`
        // values stays inside it (and is non-null).
        let ptr = unsafe { NonNull::new_unchecked(raw.add(offset) as *mut u64) };
        Buf {
            base: Some(base),
            ptr,
            len,
        }
    }

    fn as_slice(&self) -> &[u64] {
        // SAFETY: `ptr` is aligned and valid for `len` initialised (zeroed or written) values
        // (dangling but aligned when `len == 0`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u64] {
        // SAFETY: as in `as_slice`, with unique access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Some(base) = self.base {
            // SAFETY: `base` came from `alloc_zeroed` with this very layout.
            unsafe { dealloc(base.as_ptr(), Self::layout(self.len)) };
        }
    }
}

impl Clone for Buf {
    fn clone(&self) -> Buf {
        let mut b = Buf::zeroed(self.len);
        b.as_mut_slice().copy_from_slice(self.as_slice());
        b
    }
}

/// The right-hand operand `B [k, n]` packed into the layout the micro-kernel streams.
///
/// Layout: `ceil(n / NR)` strips of `NR` columns (the last zero padded); strip `s` occupies
/// `k * NR` values starting at `s * k * NR`, row `p` of the strip at `s * k * NR + p * NR`.
/// The buffer is 64-byte aligned and every strip row is 2 whole cache lines.
#[derive(Clone)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Buf,
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
        let mut data = Buf::zeroed(strips * k * NR);
        if k > 0 {
            // Groups of PACK_STRIPS strips, each packed by walking B row by row (contiguous
            // reads of PACK_STRIPS * NR values), the groups in parallel for large operands.
            let fill = |(g, dst): (usize, &mut [u64])| {
                let s = g * PACK_STRIPS;
                pack_b_block(b, n, 0, k, s, dst.len() / (k * NR), dst)
            };
            let group = k * NR * PACK_STRIPS;
            if k * n >= 1 << 16 {
                data.as_mut_slice()
                    .par_chunks_mut(group)
                    .enumerate()
                    .for_each(fill);
            } else {
                data.as_mut_slice()
                    .chunks_mut(group)
                    .enumerate()
                    .for_each(fill);
            }
        }
        PackedB { k, n, data }
    }

    /// An all-zero packed `B [k, n]`, to be filled row block by row block with
    /// [`PackedB::pack_rows`] (so a large operand never exists in row-major form as well).
    pub fn zeroed(k: usize, n: usize) -> PackedB {
        PackedB {
            k,
            n,
            data: Buf::zeroed(n.div_ceil(NR) * k * NR),
        }
    }

    /// Pack the row-major rows `p0 .. p0 + rows.len() / n` of `B` into place.
    pub fn pack_rows(&mut self, p0: usize, rows: &[u64]) {
        let (k, n) = (self.k, self.n);
        assert!(
            n > 0 && rows.len().is_multiple_of(n),
            "pack_rows: whole rows of {n} values"
        );
        let count = rows.len() / n;
        assert!(
            p0 + count <= k,
            "pack_rows: rows {p0}..{} of {k}",
            p0 + count
        );
        if count == 0 {
            return;
        }
        let fill = |(s, strip): (usize, &mut [u64])| {
            let dst = &mut strip[p0 * NR..(p0 + count) * NR];
            pack_b_block(rows, n, 0, count, s, 1, dst);
        };
        let data = self.data.as_mut_slice();
        if rows.len() >= 1 << 16 {
            data.par_chunks_mut(k * NR).enumerate().for_each(fill);
        } else {
            data.chunks_mut(k * NR).enumerate().for_each(fill);
        }
    }

    /// Copy rows `p0 .. p0 + out.len() / n` of `B` back out in row-major order.
    pub fn unpack_rows(&self, p0: usize, out: &mut [u64]) {
        let (k, n) = (self.k, self.n);
        assert!(
            n > 0 && out.len().is_multiple_of(n),
            "unpack_rows: whole rows of {n} values"
        );
        let count = out.len() / n;
        assert!(
            p0 + count <= k,
            "unpack_rows: rows {p0}..{} of {k}",
            p0 + count
        );
        let data = self.data.as_slice();
        let unpack = |(p, row): (usize, &mut [u64])| {
            for (s, seg) in row.chunks_mut(NR).enumerate() {
                let src = s * k * NR + (p0 + p) * NR;
                seg.copy_from_slice(&data[src..src + seg.len()]);
            }
        };
        if out.len() >= 1 << 16 {
            out.par_chunks_mut(n).enumerate().for_each(unpack);
        } else {
            out.chunks_mut(n).enumerate().for_each(unpack);
        }
    }

    /// Values held (the packed size, including the zero padding of the last strip).
    pub fn packed_len(&self) -> usize {
        self.data.len
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

/// Pack rows `p0 .. p0 + kc` of `count` consecutive strips starting at strip `s` of row-major
/// `b [.., n]` into `dst`: strip after strip, each `kc` rows of `NR` values (zero padding the
/// columns past `n`), walking `B` row by row so that every row segment is read contiguously.
fn pack_b_block(
    b: &[u64],
    n: usize,
    p0: usize,
    kc: usize,
    s: usize,
    count: usize,
    dst: &mut [u64],
) {
    let j0 = s * NR;
    let width = (count * NR).min(n - j0);
    for p in 0..kc {
        let row = &b[(p0 + p) * n + j0..(p0 + p) * n + j0 + width];
        for (t, seg) in row.chunks(NR).enumerate() {
            let d = &mut dst[t * kc * NR + p * NR..t * kc * NR + (p + 1) * NR];
            d[..seg.len()].copy_from_slice(seg);
            d[seg.len()..].fill(0);
        }
    }
}

/// Prefetch columns `j0 .. j0 + width` of `rows` of row-major `b [.., n]` into L2.
fn prefetch_l2(b: &[u64], n: usize, rows: std::ops::Range<usize>, j0: usize, width: usize) {
    #[cfg(target_arch = "x86_64")]
    for p in rows {
        let row = &b[p * n + j0..p * n + j0 + width];
        for line in row.chunks(8) {
            // SAFETY: SSE is part of x86-64; a prefetch of a valid address has no other effect.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                    line.as_ptr() as *const i8
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (b, n, rows, j0, width);
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

/// The task grid: `mb` row blocks x `nb` column blocks of `C`, cut on panel / strip boundaries
/// so that block sizes differ by at most one panel (strip).
#[derive(Clone, Copy, Debug)]
struct Grid {
    /// `MR`-row panels of `A` / `C`.
    panels: usize,
    /// Row blocks.
    mb: usize,
    /// `NR`-column strips of `B` / `C`.
    strips: usize,
    /// Column blocks.
    nb: usize,
}

impl Grid {
    /// Panels `[start, end)` of row block `ib`.
    fn panel_range(&self, ib: usize) -> (usize, usize) {
        (ib * self.panels / self.mb, (ib + 1) * self.panels / self.mb)
    }

    /// Strips `[start, end)` of column block `jb`.
    fn strip_range(&self, jb: usize) -> (usize, usize) {
        (jb * self.strips / self.nb, (jb + 1) * self.strips / self.nb)
    }

    /// Most panels in one row block.
    fn max_panels(&self) -> usize {
        self.panels.div_ceil(self.mb)
    }
}

/// Plan the task grid: blocks of at most `blk.mc` rows and `blk.nc` columns, then (when the
/// product is worth parallelising) the fewest extra splits that give every thread the same
/// number of equal-sized tasks.
fn plan(m: usize, k: usize, n: usize, blk: &Blocking, threads: usize) -> Grid {
    let panels = m.div_ceil(MR).max(1);
    let strips = n.div_ceil(NR).max(1);
    let mb = panels.div_ceil((blk.mc / MR).max(1));
    let nb = strips.div_ceil((blk.nc / NR).max(1));
    let mut grid = Grid {
        panels,
        mb,
        strips,
        nb,
    };
    if threads <= 1 || m.saturating_mul(n).saturating_mul(k) < blk.par_min_macs {
        return grid;
    }
    let (max_m, max_n) = (panels.min(mb + threads), strips.min(nb + threads));
    let mut best: Option<(usize, usize)> = None;
    for mm in mb..=max_m {
        for nn in nb..=max_n {
            let better = match best {
                None => true,
                Some((bm, bn)) => mm * nn < bm * bn,
            };
            if (mm * nn) % threads == 0 && better {
                best = Some((mm, nn));
            }
        }
    }
    // Fewer panels and strips than needed for an even split: use as many tasks as possible.
    let (mm, nn) = best.unwrap_or((max_m, max_n));
    grid.mb = mm;
    grid.nb = nn;
    grid
}

/// The right operand as the driver sees it.
#[derive(Clone, Copy)]
enum BSource<'a> {
    /// Packed once ahead of time.
    Packed(&'a PackedB),
    /// Row-major `[k, n]`, packed strip by strip just before use (no up-front copy of `B`).
    Raw { b: &'a [u64], k: usize, n: usize },
}

/// Strips per group (and per rayon task) in [`PackedB::pack`]: rows of 1 KiB are read at a time.
const PACK_STRIPS: usize = 8;

/// Strips of an unpacked `B` packed together (256 columns: `KC x 256` values = 512 KiB, L2).
const RAW_STRIPS: usize = 16;

/// Per-thread scratch: the packed `A` block, (for [`BSource::Raw`]) a block of packed `B`
/// strips, and a tile for the edges of `C`.
struct Scratch {
    a: Buf,
    b: Buf,
    tile: Buf,
}

fn gemm_driver(
    kernel: Kernel,
    blk: &Blocking,
    m: usize,
    a: &[u64],
    b: BSource<'_>,
    c: &mut [u64],
    accumulate: bool,
) {
    let (k, n) = match b {
        BSource::Packed(p) => (p.k, p.n),
        BSource::Raw { b, k, n } => {
            assert_eq!(b.len(), k * n, "gemm: b must hold k*n values");
            (k, n)
        }
    };
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
    let grid = plan(m, k, n, blk, threads);
    if let BSource::Raw { b, .. } = b {
        if grid.mb > 2 {
            // Several row blocks would each pack the same strips: pack B once instead (a cost
            // of k*n copies against m*k*n multiply-adds).
            let packed = PackedB::pack(k, n, b);
            return gemm_driver(kernel, blk, m, a, BSource::Packed(&packed), c, accumulate);
        }
    }
    let kc_max = blk.kc.min(k);
    let cptr = CPtr(c.as_mut_ptr());

    let task = |scratch: &mut Scratch, t: usize| {
        let (ib, jb) = (t / grid.nb, t % grid.nb);
        let (r0, r1) = grid.panel_range(ib);
        let i0 = r0 * MR;
        let rows = (r1 * MR).min(m) - i0;
        let panels = r1 - r0;
        let (s0, s1) = grid.strip_range(jb);
        let mut p0 = 0;
        while p0 < k {
            let kc = kc_max.min(k - p0);
            let apack = &mut scratch.a.as_mut_slice()[..panels * kc * MR];
            pack_a(a, k, i0, rows, p0, kc, apack);
            let apack = &*apack;
            let overwrite = p0 == 0 && !accumulate;
            for s in s0..s1 {
                let j0 = s * NR;
                // The kc x NR strip of this slice, and where the next one starts (prefetched).
                let (strip, next): (&[u64], *const u64) = match b {
                    BSource::Packed(pb) => {
                        let d = pb.data.as_slice();
                        let strip = &d[s * k * NR + p0 * NR..s * k * NR + (p0 + kc) * NR];
                        let next = if s + 1 < s1 {
                            d[(s + 1) * k * NR + p0 * NR..].as_ptr()
                        } else if p0 + kc < k {
                            d[s0 * k * NR + (p0 + kc) * NR..].as_ptr()
                        } else {
                            strip.as_ptr()
                        };
                        (strip, next)
                    }
                    BSource::Raw { b, .. } => {
                        // Pack RAW_STRIPS strips at a time, reading whole row segments of B.
                        let t = (s - s0) % RAW_STRIPS;
                        let buf = scratch.b.as_mut_slice();
                        if t == 0 {
                            let count = RAW_STRIPS.min(s1 - s);
                            pack_b_block(b, n, p0, kc, s, count, &mut buf[..count * kc * NR]);
                        }
                        // Meanwhile pull the rows of the block packed next towards L2, a
                        // 1/RAW_STRIPS share per strip.
                        let sb = s - t;
                        let upcoming = if sb + RAW_STRIPS < s1 {
                            Some((p0, sb + RAW_STRIPS))
                        } else if p0 + kc < k {
                            Some((p0 + kc, s0))
                        } else {
                            None
                        };
                        if let Some((np0, ns)) = upcoming {
                            let nkc = kc_max.min(k - np0);
                            let rows = nkc.div_ceil(RAW_STRIPS);
                            let first = (np0 + t * rows).min(np0 + nkc);
                            let last = (first + rows).min(np0 + nkc);
                            let width = (RAW_STRIPS.min(s1 - ns) * NR).min(n - ns * NR);
                            prefetch_l2(b, n, first..last, ns * NR, width);
                        }
                        let strip = &buf[t * kc * NR..(t + 1) * kc * NR];
                        let next = if t + 1 < RAW_STRIPS && s + 1 < s1 {
                            buf[(t + 1) * kc * NR..].as_ptr()
                        } else {
                            strip.as_ptr()
                        };
                        (strip, next)
                    }
                };
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
                        let t = scratch.tile.as_mut_slice();
                        // SAFETY: as above, with the full tile written to the local `tile`.
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

    let new_scratch = || Scratch {
        a: Buf::zeroed(grid.max_panels() * MR * kc_max),
        b: Buf::zeroed(match b {
            BSource::Packed(_) => 0,
            BSource::Raw { .. } => kc_max * NR * RAW_STRIPS,
        }),
        tile: Buf::zeroed(MR * NR),
    };
    let tasks = grid.mb * grid.nb;
    if tasks == 1 || threads == 1 || m.saturating_mul(n).saturating_mul(k) < blk.par_min_macs {
        let mut scratch = new_scratch();
        (0..tasks).for_each(|t| task(&mut scratch, t));
    } else {
        (0..tasks)
            .into_par_iter()
            .with_max_len(1)
            .for_each_init(new_scratch, |scratch, t| task(scratch, t));
    }
}

/// `c [m,n] (+)= a [m,k] · b [k,n]` mod 2^64, all row-major and contiguous, on the fastest kernel.
///
/// With `accumulate == false` `c` is overwritten (zeroed when `k == 0`); otherwise the product is
/// added to it. Panics if a slice length does not match its shape. `B` is packed during the call
/// (strip blocks just before use when few row blocks share them, else all of it up front): for a
/// reused right operand, pack it once with [`PackedB::pack`] and call [`gemm_packed`].
pub fn gemm(m: usize, k: usize, n: usize, a: &[u64], b: &[u64], c: &mut [u64], accumulate: bool) {
    gemm_with(Kernel::detect(), m, k, n, a, b, c, accumulate)
}

/// `c [m,n] (+)= a [m,k] · B` mod 2^64 with a pre-packed `B [k, n]`, on the fastest kernel.
///
/// Same contract as [`gemm`], with `k` and `n` taken from `b`.
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
    gemm_driver(
        kernel,
        &DEFAULT_BLOCKING,
        m,
        a,
        BSource::Raw { b, k, n },
        c,
        accumulate,
    )
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
    gemm_driver(
        kernel,
        &DEFAULT_BLOCKING,
        m,
        a,
        BSource::Packed(b),
        c,
        accumulate,
    )
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
    use crate::cpu::AlignedVec;
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
        let sources = [BSource::Packed(&packed), BSource::Raw { b: &b, k, n }];
        for kern in kernels() {
            for (si, &src) in sources.iter().enumerate() {
                let mut c = c0.clone();
                gemm_driver(kern, blk, m, &a, src, &mut c, false);
                assert!(c == want, "{kern:?} {m}x{k}x{n} {blk:?} src {si} overwrite");
                let mut c = c0.clone();
                gemm_driver(kern, blk, m, &a, src, &mut c, true);
                assert!(
                    c == want_acc,
                    "{kern:?} {m}x{k}x{n} {blk:?} src {si} accumulate"
                );
            }
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
    fn row_block_packing_equals_whole_packing() {
        let mut rng = rng();
        for (k, n, block) in [
            (1, 1, 1),
            (7, 7, 3),
            (33, 16, 8),
            (65, 47, 64),
            (300, 130, 7),
        ] {
            let b = values(&mut rng, k * n);
            let whole = PackedB::pack(k, n, &b);
            let mut blocks = PackedB::zeroed(k, n);
            for p0 in (0..k).step_by(block) {
                let p1 = (p0 + block).min(k);
                blocks.pack_rows(p0, &b[p0 * n..p1 * n]);
            }
            assert!(
                whole.data.as_slice() == blocks.data.as_slice(),
                "{k}x{n}/{block}"
            );
            let mut back = vec![0u64; k * n];
            for p0 in (0..k).step_by(block) {
                let p1 = (p0 + block).min(k);
                blocks.unpack_rows(p0, &mut back[p0 * n..p1 * n]);
            }
            assert_eq!(back, b, "{k}x{n}/{block}");
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
                let g = plan(m, 1 << 20, n, &DEFAULT_BLOCKING, threads);
                assert_eq!(g.panels, m.div_ceil(MR));
                assert_eq!(g.strips, n.div_ceil(NR));
                assert!(g.mb >= 1 && g.mb <= g.panels && g.nb >= 1 && g.nb <= g.strips);
                let (mut next_p, mut next_s) = (0, 0);
                for ib in 0..g.mb {
                    let (a, b) = g.panel_range(ib);
                    assert!(a == next_p && b > a && b - a <= g.max_panels(), "{g:?}");
                    next_p = b;
                }
                for jb in 0..g.nb {
                    let (a, b) = g.strip_range(jb);
                    assert!(a == next_s && b > a, "{g:?}");
                    next_s = b;
                }
                assert_eq!((next_p, next_s), (g.panels, g.strips));
                let tasks = g.mb * g.nb;
                if threads > 1 && tasks >= threads {
                    assert_eq!(tasks % threads, 0, "{m}x{n} on {threads}: {g:?}");
                }
            }
        }
        let g = plan(1024, 1024, 1024, &DEFAULT_BLOCKING, 2);
        assert_eq!((g.mb * g.nb) % 2, 0);
    }

    #[test]
    fn peak_probe_positive() {
        assert!(measure_mac_peak(1) > 0.0);
        assert!(!kernel_name().is_empty());
    }

    /// Process CPU time in seconds: timings robust to other jobs on a shared machine.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn cpu_seconds() -> Option<f64> {
        extern "C" {
            fn clock_gettime(clock: i32, ts: *mut [i64; 2]) -> i32;
        }
        let mut ts = [0i64; 2];
        // SAFETY: CLOCK_PROCESS_CPUTIME_ID (2) with a buffer laid out as Linux x86-64's timespec.
        let rc = unsafe { clock_gettime(2, &mut ts) };
        (rc == 0).then(|| ts[0] as f64 + ts[1] as f64 * 1e-9)
    }

    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    fn cpu_seconds() -> Option<f64> {
        None
    }

    /// Timing harness, not a correctness test:
    /// `cargo test --release -p kernels --lib -- --ignored --nocapture bench_gemm`
    /// (`GEMM_KERNEL=avx2|portable` forces a kernel, `GEMM_SHAPES="m,k,n;..."` sets the shapes,
    /// `RAYON_NUM_THREADS` the thread count).
    ///
    /// Prints the measured peak, the micro-kernel alone on L1-resident operands, and for each
    /// shape the best wall-clock rate of `gemm_packed` (B packed ahead) and `gemm` (B unpacked),
    /// plus a rate from process CPU time (MACs / (CPU seconds / threads)), which stays
    /// meaningful when other jobs share the machine.
    #[test]
    #[ignore]
    fn bench_gemm() {
        use std::time::Instant;
        let kern = match std::env::var("GEMM_KERNEL").as_deref() {
            Ok("avx2") => Kernel::Avx2,
            Ok("portable") => Kernel::Portable,
            _ => Kernel::detect(),
        };
        let threads = rayon::current_num_threads();
        let peak = measure_mac_peak(threads);
        let peak1 = measure_mac_peak(1);
        eprintln!(
            "kernel {}, {threads} threads: peak {:.1} GMAC/s ({:.1} on 1 thread)",
            kern.name(),
            peak / 1e9,
            peak1 / 1e9
        );
        let pct = |g: f64| g * 1e11 / peak;
        let mut rng = ChaCha20Rng::seed_from_u64(1);

        let kc = DEFAULT_BLOCKING.kc;
        let a = AlignedVec::from_slice(&values(&mut rng, kc * MR));
        let b = AlignedVec::from_slice(&values(&mut rng, kc * NR));
        let mut c = AlignedVec::zeros(MR * NR);
        let micro = kern.micro();
        let reps = (1usize << 30) / (kc * MR * NR);
        let mut best = 0.0f64;
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..reps {
                // SAFETY: aligned buffers sized for one kc-deep tile; `micro` checked the CPU.
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
            best = best.max((reps * kc * MR * NR) as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        eprintln!(
            "micro-kernel alone (kc={kc}, L1): {best:.1} GMAC/s ({:.0}% of 1-thread peak)",
            best * 1e11 / peak1
        );

        // GEMM_SHAPES="m,k,n;m,k,n" replaces the default shapes.
        let shapes: Vec<(usize, usize, usize)> = match std::env::var("GEMM_SHAPES") {
            Ok(v) => v
                .split(';')
                .map(|t| {
                    let d: Vec<usize> = t.split(',').map(|x| x.trim().parse().unwrap()).collect();
                    (d[0], d[1], d[2])
                })
                .collect(),
            Err(_) => vec![(256, 256, 256), (1024, 1024, 1024), (64, 25088, 4096)],
        };
        for (m, k, n) in shapes {
            let a = AlignedVec::from_slice(&values(&mut rng, m * k));
            let b = AlignedVec::from_slice(&values(&mut rng, k * n));
            let mut c = AlignedVec::zeros(m * n);
            let t = Instant::now();
            let packed = PackedB::pack(k, n, b.as_slice());
            let pack_s = t.elapsed().as_secs_f64();
            let macs = (m * k * n) as f64;
            let reps = ((4e9 / macs) as usize).clamp(3, 200);
            // (best wall GMAC/s, best CPU-time GMAC/s)
            let mut time = |packed_b: bool| {
                let (mut wall, mut cpu) = (0.0f64, 0.0f64);
                for rep in 0..=reps {
                    let (t, c0) = (Instant::now(), cpu_seconds());
                    if packed_b {
                        gemm_packed_with(kern, m, a.as_slice(), &packed, c.as_mut_slice(), false);
                    } else {
                        let (a, b) = (a.as_slice(), b.as_slice());
                        gemm_with(kern, m, k, n, a, b, c.as_mut_slice(), false);
                    }
                    let e = t.elapsed().as_secs_f64();
                    if rep > 0 {
                        wall = wall.max(macs / e / 1e9);
                        if let (Some(c0), Some(c1)) = (c0, cpu_seconds()) {
                            cpu = cpu.max(macs / ((c1 - c0) / threads as f64) / 1e9);
                        }
                    }
                }
                (wall, cpu)
            };
            let (pw, pc) = time(true);
            let (uw, uc) = time(false);
            eprintln!(
                "{m}x{k}x{n}: packed {pw:.1} GMAC/s ({:.0}%) [cpu-time {pc:.1}], \
                 plain {uw:.1} GMAC/s ({:.0}%) [cpu-time {uc:.1}]; PackedB::pack {:.1} ms",
                pct(pw),
                pct(uw),
                pack_s * 1e3
            );
        }
    }
}
