//! u64 wrapping GEMM (placeholder implementation; to be replaced by the packed SIMD kernel).

/// The right-hand operand `B [k, n]` packed into the layout the micro-kernel streams.
#[derive(Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<u64>,
}

impl PackedB {
    /// Pack a row-major `B [k, n]`.
    pub fn pack(k: usize, n: usize, b: &[u64]) -> PackedB {
        assert_eq!(b.len(), k * n);
        PackedB {
            k,
            n,
            data: b.to_vec(),
        }
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

/// `c [m,n] (+)= a [m,k] · b [k,n]` mod 2^64, all row-major and contiguous.
pub fn gemm(m: usize, k: usize, n: usize, a: &[u64], b: &[u64], c: &mut [u64], accumulate: bool) {
    let packed = PackedB::pack(k, n, b);
    gemm_packed(m, a, &packed, c, accumulate)
}

/// `c [m,n] (+)= a [m,k] · B` with a pre-packed `B`.
pub fn gemm_packed(m: usize, a: &[u64], b: &PackedB, c: &mut [u64], accumulate: bool) {
    let (k, n) = (b.k, b.n);
    assert_eq!(a.len(), m * k);
    assert_eq!(c.len(), m * n);
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        if !accumulate {
            row.fill(0);
        }
        for p in 0..k {
            let av = a[i * k + p];
            let brow = &b.data[p * n..(p + 1) * n];
            for (cv, bv) in row.iter_mut().zip(brow) {
                *cv = cv.wrapping_add(av.wrapping_mul(*bv));
            }
        }
    }
}

/// Measure this machine's u64 multiply-add peak in MAC/s on `threads` threads.
pub fn measure_mac_peak(threads: usize) -> f64 {
    let _ = threads;
    1.0
}

/// Name of the micro-kernel selected on this CPU.
pub fn kernel_name() -> &'static str {
    "portable"
}
