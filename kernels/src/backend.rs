//! The `Backend` trait: every compute-heavy step of the protocols on u64 ring tensors.
//!
//! All arithmetic is modulo 2^64 (wrapping). Binary ops (`xor`, `and`, shifts) serve the
//! boolean-shared comparison circuits, where each u64 packs the 64 bits of one ring element.

use crate::error::{shape_err, Result};
use crate::tensor::Tensor;

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

    /// `a + b` where `b` is host data of `a`'s length (e.g. a peer's opened share): the
    /// default uploads then adds; a backend may fuse both into one pass.
    fn add_host(&self, a: &Tensor, b: &[u64]) -> Result<Tensor> {
        let t = self.upload(a.shape(), b)?;
        self.binary(BinaryOp::Add, a, &t)
    }

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

    /// Fused last step of the dealer-assisted exact truncation by `bits` (1..=62): from the
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
