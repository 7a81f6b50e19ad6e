//! 64-byte aligned u64 buffers (misaligned large buffers cost 10-15 % in the GEMM).

/// One cache line of u64 values.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([u64; 8]);

/// A heap buffer of `len` u64 values starting on a 64-byte boundary.
#[derive(Clone, Default)]
pub struct AlignedVec {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedVec {
    /// A zero-filled buffer of `len` values.
    pub fn zeros(len: usize) -> Self {
        AlignedVec {
            lines: vec![Line::default(); len.div_ceil(8)],
            len,
        }
    }

    /// Copy a slice into a new aligned buffer.
    pub fn from_slice(data: &[u64]) -> Self {
        let mut v = Self::zeros(data.len());
        v.as_mut_slice().copy_from_slice(data);
        v
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values as a slice.
    pub fn as_slice(&self) -> &[u64] {
        // SAFETY: `Line` is `repr(C)` over `[u64; 8]`, so the lines are a contiguous run of
        // `8 * lines.len() >= len` initialised u64 values.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u64, self.len) }
    }

    /// The values as a mutable slice.
    pub fn as_mut_slice(&mut self) -> &mut [u64] {
        // SAFETY: as in `as_slice`, with unique access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut u64, self.len) }
    }
}
