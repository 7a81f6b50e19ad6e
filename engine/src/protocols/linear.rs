//! Local (communication-free) operations on shares.

use kernels::{BinaryOp, ScalarOp};

use crate::error::{shape_err, Result};
use crate::party::Party;
use crate::share::Share;

impl Party {
    /// `x + y`.
    pub fn add(&self, x: &Share, y: &Share) -> Result<Share> {
        Ok(Share::new(self.backend().binary(
            BinaryOp::Add,
            x.tensor(),
            y.tensor(),
        )?))
    }

    /// `x - y`.
    pub fn sub(&self, x: &Share, y: &Share) -> Result<Share> {
        Ok(Share::new(self.backend().binary(
            BinaryOp::Sub,
            x.tensor(),
            y.tensor(),
        )?))
    }

    /// `-x`.
    pub fn neg(&self, x: &Share) -> Result<Share> {
        Ok(Share::new(self.backend().scalar(
            ScalarOp::Neg,
            x.tensor(),
            0,
        )?))
    }

    /// `x + c` for a public ring constant `c` (alice adds it, bob keeps his share).
    pub fn add_public_ring(&self, x: &Share, c: u64) -> Result<Share> {
        if self.index() == 0 {
            Ok(Share::new(self.backend().scalar(
                ScalarOp::Add,
                x.tensor(),
                c,
            )?))
        } else {
            Ok(x.clone())
        }
    }

    /// `x + v` for a public real `v` (fixed-point encoded).
    pub fn add_public(&self, x: &Share, v: f64) -> Result<Share> {
        let c = self.fixed_point().encode_one(v, 0)?;
        self.add_public_ring(x, c)
    }

    /// `x * c` for a public integer `c` (no truncation needed).
    pub fn mul_public_int(&self, x: &Share, c: i64) -> Result<Share> {
        Ok(Share::new(self.backend().scalar(
            ScalarOp::Mul,
            x.tensor(),
            c as u64,
        )?))
    }

    /// `x * v` for a public real `v`: multiply by its encoding, then truncate (1 round).
    pub fn mul_public(&mut self, x: &Share, v: f64) -> Result<Share> {
        let c = self.fixed_point().encode_one(v, 0)?;
        let p = Share::new(self.backend().scalar(ScalarOp::Mul, x.tensor(), c)?);
        self.truncate(&p)
    }

    /// Add a public tensor of ring values (same shape) — alice adds, bob keeps.
    pub fn add_public_tensor(&self, x: &Share, c: &kernels::Tensor) -> Result<Share> {
        if self.index() == 0 {
            Ok(Share::new(self.backend().binary(
                BinaryOp::Add,
                x.tensor(),
                c,
            )?))
        } else {
            if x.shape() != c.shape() {
                return Err(shape_err(
                    "add_public_tensor",
                    format!("{:?} vs {:?}", x.shape(), c.shape()),
                ));
            }
            Ok(x.clone())
        }
    }

    /// Add a row vector `bias [n]` to every row of `x [m, n]`.
    pub fn add_row_broadcast(&self, x: &Share, bias: &Share) -> Result<Share> {
        let (s, b) = (x.shape(), bias.shape());
        if s.len() != 2 || b.iter().product::<usize>() != s[1] {
            return Err(shape_err(
                "add_row_broadcast",
                format!("cannot add bias {b:?} to rows of {s:?}"),
            ));
        }
        let be = self.backend();
        let (m, n) = (s[0], s[1]);
        // Broadcast by a rank-1 product: ones[m,1] · bias[1,n] + x.
        let ones = be.fill(&[m, 1], 1)?;
        let row = bias.tensor().reshaped(vec![1, n]).expect("same length");
        Ok(Share::new(be.matmul(&ones, &row, Some(x.tensor()))?))
    }

    /// Sum over the last axis of a 2-D share `[m, n] -> [m]`.
    pub fn sum_last(&self, x: &Share) -> Result<Share> {
        let s = x.shape();
        if s.len() != 2 {
            return Err(shape_err("sum", format!("expected a 2-D share, got {s:?}")));
        }
        let t = self.backend().sum_rows(x.tensor())?;
        Ok(Share::new(t.reshaped(vec![s[0]]).expect("m values")))
    }

    /// Sum of all elements `-> [1]`.
    pub fn sum_all(&self, x: &Share) -> Result<Share> {
        let flat = x.reshape(&[1, x.len()])?;
        let t = self.backend().sum_rows(flat.tensor())?;
        Ok(Share::new(t.reshaped(vec![1]).expect("one value")))
    }

    /// A local re-layout of this party's share (im2col, pooling windows, NHWC to NCHW): element
    /// `i` of the result is `x[index[i]]`, or 0 for [`kernels::GATHER_ZERO`]. Linear, so it
    /// maps shares of `x` to shares of the re-laid-out `x`; no communication.
    pub fn gather(&self, x: &Share, index: &[u32], shape: &[usize]) -> Result<Share> {
        Ok(Share::new(self.backend().gather(
            x.tensor(),
            index,
            shape,
        )?))
    }

    /// `x * c` elementwise for public ring values `c` (one per element; no truncation).
    pub fn mul_public_ring_tensor(&self, x: &Share, c: &[u64]) -> Result<Share> {
        let be = self.backend();
        let t = be.upload(x.shape(), c)?;
        Ok(Share::new(be.binary(BinaryOp::Mul, x.tensor(), &t)?))
    }
}
