//! The `Backend` trait: every compute-heavy step of the protocols on u64 ring tensors.
//!
//! All arithmetic is modulo 2^64 (wrapping). Binary ops (`xor`, `and`, shifts) serve the
//! boolean-shared comparison circuits, where each u64 packs the 64 bits of one ring element.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{shape_err, Result};
use crate::tensor::Tensor;

/// Host<->device transfer counts of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Host-to-device copies.
    pub uploads: u64,
    /// Bytes copied host-to-device.
    pub upload_bytes: u64,
    /// Device-to-host copies.
    pub downloads: u64,
    /// Bytes copied device-to-host.
    pub download_bytes: u64,
}

impl TransferStats {
    /// `self - earlier` (the transfers of one operation).
    pub fn since(&self, earlier: &TransferStats) -> TransferStats {
        TransferStats {
            uploads: self.uploads - earlier.uploads,
            upload_bytes: self.upload_bytes - earlier.upload_bytes,
            downloads: self.downloads - earlier.downloads,
            download_bytes: self.download_bytes - earlier.download_bytes,
        }
    }
}

/// Thread-safe transfer counters a backend updates on every host<->device copy.
#[derive(Debug, Default)]
pub struct TransferCounter {
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    downloads: AtomicU64,
    download_bytes: AtomicU64,
}

impl TransferCounter {
    /// Count one upload of `words` u64 values.
    pub fn upload(&self, words: usize) {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.upload_bytes
            .fetch_add(8 * words as u64, Ordering::Relaxed);
    }

    /// Count one download of `words` u64 values.
    pub fn download(&self, words: usize) {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        self.download_bytes
            .fetch_add(8 * words as u64, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn stats(&self) -> TransferStats {
        TransferStats {
            uploads: self.uploads.load(Ordering::Relaxed),
            upload_bytes: self.upload_bytes.load(Ordering::Relaxed),
            downloads: self.downloads.load(Ordering::Relaxed),
            download_bytes: self.download_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Gather the odd (`shift = 1`) or even (`shift = 0`) bits of a word into its low 32 bits.
#[inline(always)]
pub fn gather_bits(x: u64, shift: u32) -> u64 {
    let mut x = (x >> shift) & 0x5555_5555_5555_5555;
    x = (x | (x >> 1)) & 0x3333_3333_3333_3333;
    x = (x | (x >> 2)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x >> 8)) & 0x0000_FFFF_0000_FFFF;
    (x | (x >> 16)) & 0x0000_0000_FFFF_FFFF
}

/// One output word of [`Backend::compact_bits`] from input words `lo` and `hi`.
#[inline(always)]
pub fn compact_word(lo: u64, hi: u64, odd: bool) -> u64 {
    let s = odd as u32;
    gather_bits(lo, s) | (gather_bits(hi, s) << 32)
}

/// One element of [`Backend::bit_select`]: `d` the opened bit (0 or 1), `r` the mask-bit share.
#[inline(always)]
pub fn select_bit_word(d: u64, r: u64, first: bool) -> u64 {
    let u = 1u64.wrapping_sub(d << 1);
    u.wrapping_mul(r).wrapping_add(if first { d } else { 0 })
}

/// One element of [`Backend::payload_select`]: `d` the opened bit (0 or 1).
#[inline(always)]
pub fn select_payload_word(d: u64, r: u64, e: u64, prod: u64, y: u64) -> u64 {
    let u = 1u64.wrapping_sub(d << 1);
    let yr = prod.wrapping_add(e.wrapping_mul(r));
    u.wrapping_mul(yr).wrapping_add(d.wrapping_mul(y))
}

/// Check the operands of [`Backend::bit_select`] / [`Backend::payload_select`].
pub fn check_select(d: &Tensor, r: &Tensor, rest: &[&Tensor]) -> Result<()> {
    if d.len() != r.len().div_ceil(64) {
        return Err(shape_err(
            "select",
            format!(
                "{} packed bit words for {} elements (need {})",
                d.len(),
                r.len(),
                r.len().div_ceil(64)
            ),
        ));
    }
    for t in rest {
        if t.len() != r.len() {
            return Err(shape_err(
                "select",
                format!("operand of {} elements for {} bits", t.len(), r.len()),
            ));
        }
    }
    Ok(())
}

/// One table lookup of [`Backend::lookup_bits`]: the index is bits `shift .. shift + width` of
/// the element's public word plus `add` (mod 2^64); the bit read is entry `index` (or, with
/// `prev`, entry `index - 1`, where entry `-1` is `underflow`) of the table that starts at bit
/// `offset` of the element's table row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BitLookup {
    /// Added to the public word before the index is read.
    pub add: u64,
    /// First bit of the index.
    pub shift: u32,
    /// Index bits (at most [`BitLookup::MAX_WIDTH`]; 0: a one-entry table).
    pub width: u32,
    /// Bit offset of the table in the element's row.
    pub offset: u32,
    /// Read the entry before the indexed one.
    pub prev: bool,
    /// What entry `-1` reads (with `prev` and index 0).
    pub underflow: bool,
}

impl BitLookup {
    /// Widest index a lookup may take (tables of 2^16 bits).
    pub const MAX_WIDTH: u32 = 16;

    /// The bit (0 or 1) this lookup reads for the public word `c` from the table row `row`
    /// (the one definition both backends follow).
    #[inline(always)]
    pub fn read(&self, c: u64, row: &[u64]) -> u64 {
        let mask = (1u64 << self.width) - 1;
        let mut idx = c
            .wrapping_add(self.add)
            .checked_shr(self.shift)
            .unwrap_or(0)
            & mask;
        if self.prev {
            if idx == 0 {
                return u64::from(self.underflow);
            }
            idx -= 1;
        }
        let pos = u64::from(self.offset) + idx;
        (row[(pos / 64) as usize] >> (pos % 64)) & 1
    }
}

/// Check the operands of [`Backend::lookup_bits`]; returns `(elements, words per row)`.
pub fn check_lookup(c: &Tensor, tables: &Tensor, lookups: &[BitLookup]) -> Result<(usize, usize)> {
    let n = c.len();
    let words = match tables.shape() {
        [rows, w] if *rows == n => *w,
        s => {
            return Err(shape_err(
                "lookup_bits",
                format!("tables {s:?} are not one row per each of {n} elements"),
            ))
        }
    };
    for l in lookups {
        let end = u64::from(l.offset) + (1u64 << l.width.min(63));
        if l.width > BitLookup::MAX_WIDTH || l.shift > 63 || end > 64 * words as u64 {
            return Err(shape_err(
                "lookup_bits",
                format!("{l:?} does not fit rows of {words} words"),
            ));
        }
    }
    Ok((n, words))
}

/// Check the start of a [`Backend::chacha12`] stream (whole u64 words, 64-bit block counter).
pub fn check_chacha(word_pos: u128) -> Result<()> {
    if !word_pos.is_multiple_of(2) || word_pos >> 68 != 0 {
        return Err(shape_err(
            "chacha12",
            format!("word position {word_pos} (must be even and below 2^68)"),
        ));
    }
    Ok(())
}

/// Check a slice range of [`Backend::slice`].
pub fn check_slice(a: &Tensor, start: usize, len: usize) -> Result<()> {
    if start.checked_add(len).is_none_or(|end| end > a.len()) {
        return Err(shape_err(
            "slice",
            format!("[{start}, {start}+{len}) of {} elements", a.len()),
        ));
    }
    Ok(())
}

/// Check that a tensor is 2-D; returns `(m, n)`.
pub fn check_2d(op: &'static str, a: &Tensor) -> Result<(usize, usize)> {
    match a.shape() {
        [m, n] => Ok((*m, *n)),
        s => Err(shape_err(op, format!("expected a 2-D tensor, got {s:?}"))),
    }
}

/// Which elementwise binary operation to run (shared by both backends and their kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b` mod 2^64.
    Add,
    /// `a - b` mod 2^64.
    Sub,
    /// `a * b` mod 2^64.
    Mul,
    /// `a ^ b`.
    Xor,
    /// `a & b`.
    And,
}

/// Which unary operation with a public scalar to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScalarOp {
    /// `-a` mod 2^64 (the scalar is ignored).
    Neg,
    /// `a + s` mod 2^64.
    Add,
    /// `a * s` mod 2^64.
    Mul,
    /// `a ^ s`.
    Xor,
    /// `a & s`.
    And,
    /// Arithmetic (sign-extending) right shift of the two's-complement value by `s` bits (s < 64).
    ShrArith,
    /// Logical right shift by `s` bits (s < 64).
    ShrLogical,
    /// Left shift by `s` bits (s < 64).
    Shl,
}

/// Fused Beaver combination flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BeaverKind {
    /// Arithmetic: `z = c + e*b + a*f (+ e*f)` mod 2^64.
    Arithmetic,
    /// Boolean (XOR shares, AND gates): `z = c ^ (e&b) ^ (a&f) (^ (e&f))`.
    Boolean,
}

/// A compute backend over u64 ring tensors. Implementations must agree bit-for-bit.
///
/// Tensors stay in the backend's own storage between calls; only [`Backend::upload`] and
/// [`Backend::download`] cross the host boundary.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Short name (`"cpu"` or `"gpu"`).
    fn name(&self) -> &'static str;

    /// Human-readable description of the device (CPU features, GPU adapter name).
    fn describe(&self) -> String;

    /// Copy host data into a new tensor of the given shape.
    fn upload(&self, shape: &[usize], data: &[u64]) -> Result<Tensor>;

    /// Copy a tensor's elements back to the host (row-major).
    fn download(&self, t: &Tensor) -> Result<Vec<u64>>;

    /// Host<->device transfers counted since the backend was created (every
    /// [`Backend::upload`], [`Backend::download`] and host operand of [`Backend::binary_host`]).
    fn transfers(&self) -> TransferStats;

    /// `op(a, b)` where `b` is host data of `a`'s length (e.g. a peer's opened share): one
    /// upload of `b` (counted) and one elementwise pass.
    fn binary_host(&self, op: BinaryOp, a: &Tensor, b: &[u64]) -> Result<Tensor> {
        let t = self.upload(a.shape(), b)?;
        self.binary(op, a, &t)
    }

    /// Build a `[k, n]` tensor used only as the right operand of [`Backend::matmul`] (a model
    /// weight) from row blocks: `fill(first_row, block)` writes rows
    /// `first_row .. first_row + block.len() / n` in row-major order, blocks in order, each at
    /// most `block_rows` rows. The CPU backend keeps only its packed GEMM form, so the operand
    /// never exists in two layouts; [`Backend::download`] and [`Backend::read_rows`] still work
    /// on it, elementwise operations may refuse it. The default builds a plain tensor.
    fn right_operand_from_rows(
        &self,
        k: usize,
        n: usize,
        block_rows: usize,
        fill: &mut dyn FnMut(usize, &mut [u64]),
    ) -> Result<Tensor> {
        let mut all = vec![0u64; k * n];
        if n > 0 {
            for (b, block) in all.chunks_mut(block_rows.max(1) * n).enumerate() {
                fill(b * block_rows.max(1), block);
            }
        }
        self.upload(&[k, n], &all)
    }

    /// Copy rows `first_row .. first_row + out.len() / n` of a 2-D tensor `[k, n]` into `out`
    /// (row-major). The default downloads the whole tensor.
    fn read_rows(&self, t: &Tensor, first_row: usize, out: &mut [u64]) -> Result<()> {
        let n = check_read_rows(t, first_row, out.len())?;
        let all = self.download(t)?;
        out.copy_from_slice(&all[first_row * n..first_row * n + out.len()]);
        Ok(())
    }

    /// `len` u64 words of the ChaCha12 keystream of rand_chacha's `ChaCha12Rng` seeded with
    /// `key`, on stream `stream`, starting at 32-bit word position `word_pos` (even): what
    /// `fill_bytes` writes into `len` u64s after `set_stream(stream)` and
    /// `set_word_pos(word_pos)`. Computed on the device; only the key crosses.
    fn chacha12(&self, key: &[u8; 32], stream: u64, word_pos: u128, len: usize) -> Result<Tensor>;

    /// A new tensor of `shape` with every element `value` (made on the device, no transfer).
    fn fill(&self, shape: &[usize], value: u64) -> Result<Tensor>;

    /// The elements of `parts` one after another, as a flat tensor (a device-side copy).
    fn concat(&self, parts: &[&Tensor]) -> Result<Tensor>;

    /// Elements `[start, start + len)` of `a` (row-major) as a flat tensor (a device-side copy).
    fn slice(&self, a: &Tensor, start: usize, len: usize) -> Result<Tensor>;

    /// Transpose of a 2-D tensor `[m, n] -> [n, m]`.
    fn transpose(&self, a: &Tensor) -> Result<Tensor>;

    /// Bit compaction of the comparison carry tree: from `k` words, the odd (`odd`) or even bits
    /// of word `2i` in the low and of word `2i + 1` in the high half of output word `i`
    /// (`ceil(k / 2)` words; a missing last word counts as zero). See [`compact_word`].
    fn compact_bits(&self, words: &Tensor, odd: bool) -> Result<Tensor>;

    /// Sign bits packed 64 to a word: bit `i` of output word `w` is bit 63 of element
    /// `64 w + i` (`ceil(len / 64)` words; missing elements count as zero).
    fn pack_msb(&self, x: &Tensor) -> Result<Tensor>;

    /// Arithmetic share of a secret bit from its opened masked bit `d` (packed 64 to a word)
    /// and this party's arithmetic share `r` of the mask bit: `[first]·d + (1 - 2d)·r` per
    /// element (`d: [ceil(n/64)]`, `r: [n]`, result shaped like `r`). See [`select_bit_word`].
    fn bit_select(&self, d: &Tensor, r: &Tensor, first: bool) -> Result<Tensor>;

    /// Share of `y · bit` for the bit of [`Backend::bit_select`]: with the opened payload
    /// difference `e = y - a`, this party's share `prod` of `a·r` and its share `y`:
    /// `(1 - 2d)·(prod + e·r) + d·y` per element (all of `r`'s length). See
    /// [`select_payload_word`].
    fn payload_select(
        &self,
        d: &Tensor,
        r: &Tensor,
        e: &Tensor,
        prod: &Tensor,
        y: &Tensor,
    ) -> Result<Tensor>;

    /// Elementwise `op(a, b)`; shapes must be equal.
    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor>;

    /// Elementwise `op(a, s)` with a public scalar `s`.
    fn scalar(&self, op: ScalarOp, a: &Tensor, s: u64) -> Result<Tensor>;

    /// Matrix product `a [m,k] · b [k,n] (+ acc [m,n])` mod 2^64.
    fn matmul(&self, a: &Tensor, b: &Tensor, acc: Option<&Tensor>) -> Result<Tensor>;

    /// Elementwise fused Beaver combination (all operands the same shape):
    /// arithmetic `c + e*b + a*f (+ e*f if with_ef)`, boolean `c ^ e&b ^ a&f (^ e&f)`.
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
    ) -> Result<Tensor>;

    /// Matrix Beaver combination for a triple `c = a·b` with openings `e = x - a`, `f = y - b`:
    /// `c + e·b + a·f (+ e·f if with_ef)`, shapes `a, e: [m,k]`, `b, f: [k,n]`, `c: [m,n]`.
    fn beaver_matmul_combine(
        &self,
        c: &Tensor,
        e: &Tensor,
        f: &Tensor,
        a: &Tensor,
        b: &Tensor,
        with_ef: bool,
    ) -> Result<Tensor> {
        // e·b + e·f = e·(b + f): one product instead of two.
        let rhs = if with_ef {
            self.binary(BinaryOp::Add, b, f)?
        } else {
            b.clone()
        };
        let partial = self.matmul(e, &rhs, Some(c))?;
        self.matmul(a, f, Some(&partial))
    }

    /// Fused last step of the dealer-assisted truncation (randomised rounding, error < 1 ulp) by `bits` (1..=62): from the
    /// opened masked value `c = x + 2^62 + r` and this party's shares of `r >> bits` (logical)
    /// and `msb(r)`, this party's share of `x >> bits` (error < 1 ulp):
    /// `[first](c >> bits) - r_shr + r_msb·(1 - msb(c))·2^(64-bits) - [first]·2^(62-bits)`.
    fn truncate_combine(
        &self,
        c: &Tensor,
        r_shr: &Tensor,
        r_msb: &Tensor,
        bits: u32,
        first: bool,
    ) -> Result<Tensor>;

    /// Sum over the last axis of a 2-D tensor `[m, n] -> [m, 1]` mod 2^64.
    fn sum_rows(&self, a: &Tensor) -> Result<Tensor>;

    /// Bit lookups in per-element tables (the narrow comparison's dealer tables): for lookup
    /// `k` and element `e`, [`BitLookup::read`] of `c[e]` in row `e` of `tables` (`[n, words]`),
    /// packed 64 to a word. The result holds `lookups.len()` blocks of `ceil(n / 64)` words,
    /// lookup `k`'s bits in block `k` (bit `e % 64` of its word `e / 64`; bits past `n` are 0).
    fn lookup_bits(&self, c: &Tensor, tables: &Tensor, lookups: &[BitLookup]) -> Result<Tensor>;

    /// Gather (a local re-layout: im2col, pooling windows, NHWC to NCHW): a new tensor of
    /// `shape` whose element `i` is `a[index[i]]`, or 0 where `index[i]` is [`GATHER_ZERO`]
    /// (padding). `index` holds one entry per output element; every other entry must be below
    /// `a.len()`.
    fn gather(&self, a: &Tensor, index: &[u32], shape: &[usize]) -> Result<Tensor>;
}

/// The [`Backend::gather`] index that yields a zero (padding) instead of a source element.
pub const GATHER_ZERO: u32 = u32::MAX;

/// Validate the operands of [`Backend::gather`].
pub fn check_gather(a: &Tensor, index: &[u32], shape: &[usize]) -> Result<()> {
    if shape.iter().product::<usize>() != index.len() {
        return Err(shape_err(
            "gather",
            format!("shape {shape:?} does not hold {} indices", index.len()),
        ));
    }
    if a.len() >= GATHER_ZERO as usize {
        return Err(shape_err(
            "gather",
            format!(
                "a source of {} elements is not addressable by u32 indices",
                a.len()
            ),
        ));
    }
    if let Some((i, &v)) = index
        .iter()
        .enumerate()
        .find(|(_, &v)| v != GATHER_ZERO && v as usize >= a.len())
    {
        return Err(shape_err(
            "gather",
            format!(
                "index {v} at position {i} is out of range for {} elements",
                a.len()
            ),
        ));
    }
    Ok(())
}

/// Check that two operands of an elementwise op have one shape.
pub fn check_same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(shape_err(op, format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    Ok(())
}

/// Validate matmul operand shapes; returns `(m, k, n)`.
pub fn check_matmul(a: &Tensor, b: &Tensor, acc: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() != 2 || sb.len() != 2 || sa[1] != sb[0] {
        return Err(shape_err(
            "matmul",
            format!("cannot multiply {sa:?} by {sb:?}"),
        ));
    }
    if let Some(c) = acc {
        if c.shape() != [sa[0], sb[1]] {
            return Err(shape_err(
                "matmul",
                format!(
                    "accumulator {:?} does not match product shape [{}, {}]",
                    c.shape(),
                    sa[0],
                    sb[1]
                ),
            ));
        }
    }
    Ok((sa[0], sa[1], sb[1]))
}

/// Validate the operands of [`Backend::truncate_combine`].
pub fn check_truncate(c: &Tensor, r_shr: &Tensor, r_msb: &Tensor, bits: u32) -> Result<()> {
    check_same_shape("truncate_combine", c, r_shr)?;
    check_same_shape("truncate_combine", c, r_msb)?;
    if !(1..=62).contains(&bits) {
        return Err(shape_err(
            "truncate_combine",
            format!("truncation by {bits} bits (must be 1..=62)"),
        ));
    }
    Ok(())
}

/// Validate a scalar op's public operand (shift amounts must be below 64).
pub fn check_scalar(op: ScalarOp, s: u64) -> Result<()> {
    if matches!(
        op,
        ScalarOp::ShrArith | ScalarOp::ShrLogical | ScalarOp::Shl
    ) && s >= 64
    {
        return Err(shape_err(
            "scalar",
            format!("shift by {s} bits (must be < 64)"),
        ));
    }
    Ok(())
}

/// Check a [`Backend::read_rows`] request; returns the row length `n` of the `[k, n]` tensor.
pub(crate) fn check_read_rows(t: &Tensor, first_row: usize, len: usize) -> Result<usize> {
    let n = match t.shape() {
        [_, n] => *n,
        s => return Err(shape_err("read_rows", format!("expected 2-D, got {s:?}"))),
    };
    if n == 0 || !len.is_multiple_of(n) || first_row * n + len > t.len() {
        return Err(shape_err(
            "read_rows",
            format!("{len} values from row {first_row} of {:?}", t.shape()),
        ));
    }
    Ok(n)
}
