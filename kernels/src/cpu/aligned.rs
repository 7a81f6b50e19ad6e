//! 64-byte aligned u64 buffers (misaligned large buffers cost 10-15 % in the GEMM), recycled
//! through a bounded pool: a fresh multi-megabyte buffer costs a page fault per 4 KiB on first
//! touch, which made allocation, not arithmetic, the largest cost of elementwise share ops.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Idle bytes the pool keeps at most.
const POOL_MAX_BYTES: usize = 1 << 30;
/// Buffers below this size are left to the allocator.
const POOL_MIN_BYTES: usize = 1 << 16;

#[derive(Default)]
struct Pool {
    idle: HashMap<usize, Vec<Vec<Line>>>,
    bytes: usize,
}

fn pool() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// `n` zeroed lines from the allocator's zeroed memory, advised as huge pages before first touch.
fn zeroed_lines(n: usize) -> Vec<Line> {
    if n == 0 {
        return Vec::new();
    }
    let layout = std::alloc::Layout::array::<Line>(n).expect("buffer size overflows");
    // SAFETY: the layout has non-zero size; `alloc_zeroed` returns memory valid for it, which is
    // an initialised `[Line; n]` (all-zero bytes are a valid `Line`); `Vec::from_raw_parts` gets
    // the pointer, length and capacity of that allocation, made with the global allocator and
    // `Line`'s alignment, so the Vec may free it.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut Line;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        advise_huge_pages(ptr as *mut u8, n * 64);
        Vec::from_raw_parts(ptr, n, n)
    }
}

/// Ask the kernel for transparent huge pages on a large, not yet touched buffer: one fault per
/// 2 MiB instead of per 4 KiB (page faults dominated loading a model on a VM). A hint only.
pub fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    const HUGE: usize = 2 << 20;
    if bytes < 2 * HUGE {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: madvise with MADV_HUGEPAGE only changes how the kernel backs the pages of
            // this range, which lies inside the caller's allocation; it never changes contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = ptr;
}

/// A zeroed `Vec<u64>` of `len` values, advised as huge pages when large.
pub fn zeroed_words(len: usize) -> Vec<u64> {
    let mut v = vec![0u64; len];
    advise_huge_pages(v.as_mut_ptr() as *mut u8, len * 8);
    v
}

fn take_lines(lines: usize) -> Option<Vec<Line>> {
    if lines * 64 < POOL_MIN_BYTES {
        return None;
    }
    let mut p = pool().lock().ok()?;
    let v = p.idle.get_mut(&lines)?.pop()?;
    p.bytes -= lines * 64;
    Some(v)
}

fn give_lines(v: Vec<Line>) {
    let bytes = v.len() * 64;
    if bytes < POOL_MIN_BYTES {
        return;
    }
    if let Ok(mut p) = pool().lock() {
        if p.bytes + bytes <= POOL_MAX_BYTES {
            p.bytes += bytes;
            p.idle.entry(v.len()).or_default().push(v);
        }
    }
}

/// One cache line of u64 values.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([u64; 8]);

/// A heap buffer of `len` u64 values starting on a 64-byte boundary.
#[derive(Default)]
pub struct AlignedVec {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedVec {
    /// A zero-filled buffer of `len` values (fresh zero pages, transparent huge pages asked for
    /// large ones).
    pub fn zeros(len: usize) -> Self {
        AlignedVec {
            lines: zeroed_lines(len.div_ceil(8)),
            len,
        }
    }

    /// A buffer of `len` values whose contents are unspecified (recycled when possible): for
    /// results that overwrite every element.
    pub fn for_overwrite(len: usize) -> Self {
        match take_lines(len.div_ceil(8)) {
            Some(lines) => AlignedVec { lines, len },
            None => Self::zeros(len),
        }
    }

    /// Copy a slice into a new aligned buffer.
    pub fn from_slice(data: &[u64]) -> Self {
        let mut v = Self::for_overwrite(data.len());
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

impl Clone for AlignedVec {
    fn clone(&self) -> Self {
        Self::from_slice(self.as_slice())
    }
}

impl Drop for AlignedVec {
    fn drop(&mut self) {
        give_lines(std::mem::take(&mut self.lines));
    }
}
