//! Beaver matrix products, and fixed operands masked once.
//!
//! # Fixed operands (model weights)
//!
//! A long-lived shared matrix `W [k,n]` is masked once: the dealer draws `b` (kept fixed, and
//! remembered by the dealer), the parties open `F = W - b` a single time. Each later product
//! `X·W` uses fresh dealer material `a [m,k]`, `c = a·b`, and opens only `E = X - a` — a
//! data-sized value. Party `i` computes `Z_i = E·W_i + M_i` with `M_i = a_i·F + c_i`, where `M_i`
//! does not depend on `X` and is computed in preprocessing; `Σ Z_i = E·W + a·F + a·b =
//! (E + a)·W = X·W`.
//!
//! **Why reusing `F` stays secure.** `b` is uniform on Z_2^64 and neither compute party knows it
//! (each holds one share), so `F = W - b` is a uniform value independent of `W` in each party's
//! view. Every later opening `E = X - a` uses a fresh uniform `a`, independent of `b` and of all
//! earlier masks, so the whole transcript `(F, E_1, E_2, ...)` is uniform and independent of
//! `W` and of every `X`. Reusing `b` is safe precisely because `b` only ever masks the *same*
//! value `W` (opened once); masking two different values with one `b` would leak their
//! difference, which is why `a` is never reused. The dealer knows `b` but never sees `F` (it is
//! exchanged between alice and bob only); security needs the dealer not to collude.

use kernels::BinaryOp;
use rayon::prelude::*;

use crate::dealer::{fill_words, MaterialSpec};
use crate::error::{shape_err, Result};
use crate::party::Party;
use crate::share::Share;

/// A shared matrix `W [k, n]` registered as a fixed operand (see module docs).
#[derive(Clone, Debug)]
pub struct FixedOperand {
    id: u64,
    w: Share,
}

impl FixedOperand {
    /// The fixed-operand id (shared by both parties and the dealer).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Rows (inner dimension of products with it).
    pub fn k(&self) -> usize {
        self.w.shape()[0]
    }
    /// Columns.
    pub fn n(&self) -> usize {
        self.w.shape()[1]
    }
    /// This party's share of the operand.
    pub fn share(&self) -> &Share {
        &self.w
    }
    /// Dealer material spec for one product with `m` rows of input.
    pub fn triple_spec(&self, m: usize) -> MaterialSpec {
        MaterialSpec::FixedTriple {
            fixed_id: self.id,
            m,
            k: self.k(),
            n: self.n(),
        }
    }
}

/// Rows per block when a `[k, n]` operand is streamed (about 2 M values, 16 MiB, a block).
pub(crate) fn block_rows(n: usize) -> usize {
    ((1usize << 21) / n.max(1)).max(1)
}

/// Material specs, in consumption order, of [`Party::matmul_fixed`] of `x [m, k]` by the fixed
/// operand `fixed_id [k, n]`: the product's triple, then the truncation by `frac_bits`.
pub fn matmul_fixed_specs(
    fixed_id: u64,
    m: usize,
    k: usize,
    n: usize,
    frac_bits: u32,
) -> Vec<MaterialSpec> {
    vec![
        MaterialSpec::FixedTriple { fixed_id, m, k, n },
        crate::protocols::truncate::truncate_spec(m * n, frac_bits),
    ]
}

fn check_2d(op: &'static str, x: &Share) -> Result<(usize, usize)> {
    match x.shape() {
        [r, c] => Ok((*r, *c)),
        s => Err(shape_err(op, format!("expected a 2-D share, got {s:?}"))),
    }
}

impl Party {
    /// `x [m,k] · y [k,n]` on ring values with a fresh matrix triple, no truncation (one round).
    pub fn matmul_raw(&mut self, x: &Share, y: &Share) -> Result<Share> {
        let (m, k) = check_2d("matmul", x)?;
        let (k2, n) = check_2d("matmul", y)?;
        if k != k2 {
            return Err(shape_err(
                "matmul",
                format!("cannot multiply {:?} by {:?}", x.shape(), y.shape()),
            ));
        }
        let parts = self.material(MaterialSpec::MatmulTriple { m, k, n })?;
        let a = parts[0].reshaped(vec![m, k]).expect("m*k");
        let b = parts[1].reshaped(vec![k, n]).expect("k*n");
        let c = parts[2].reshaped(vec![m, n]).expect("m*n");
        let be = self.backend();
        let e = be.binary(BinaryOp::Sub, x.tensor(), &a)?;
        let f = be.binary(BinaryOp::Sub, y.tensor(), &b)?;
        let opened = self.open("matmul", &[&e, &f])?;
        let z = self.backend().beaver_matmul_combine(
            &c,
            &opened[0],
            &opened[1],
            &a,
            &b,
            self.index() == 0,
        )?;
        Ok(Share::new(z))
    }

    /// Fixed-point `x · y` (Beaver matmul, then truncation).
    pub fn matmul(&mut self, x: &Share, y: &Share) -> Result<Share> {
        let p = self.matmul_raw(x, y)?;
        self.truncate(&p)
    }

    /// Register `w [k,n]` as a fixed operand: one dealer request and one opening of `W - b`.
    ///
    /// Streamed in row blocks: each block of the mask `b` is drawn from this party's stream,
    /// `W - b` is opened block by block, and the public `F` is built straight into the layout
    /// products use, so no weight-sized temporary exists besides `F` itself.
    pub fn fix_operand(&mut self, w: &Share) -> Result<FixedOperand> {
        let (k, n) = check_2d("fix_operand", w)?;
        let id = self.allocate_id();
        let stream = self.announce(&[MaterialSpec::FixedMask { fixed_id: id, k, n }])?;
        let mut rng = self.stream(stream);
        let be = self.backend_arc();
        let rows = block_rows(n);
        let mut mask = vec![0u64; rows.min(k) * n];
        // Backends other than the CPU read a tensor back whole: do that once, not per block.
        let host = if be.name() == "cpu" {
            None
        } else {
            Some(be.download(w.tensor())?)
        };
        let mut failed: Option<crate::EngineError> = None;
        let f = be.right_operand_from_rows(k, n, rows, &mut |p0, out| {
            if failed.is_some() {
                return;
            }
            let step = (|| -> Result<()> {
                let len = out.len();
                match &host {
                    Some(h) => out.copy_from_slice(&h[p0 * n..p0 * n + len]),
                    None => be.read_rows(w.tensor(), p0, out)?,
                }
                fill_words(&mut rng, &mut mask[..len]);
                out.par_iter_mut()
                    .zip(&mask[..len])
                    .for_each(|(d, b)| *d = d.wrapping_sub(*b));
                let theirs = self.exchange("fix_operand", out.to_vec())?;
                out.par_iter_mut()
                    .zip(&theirs)
                    .for_each(|(d, t)| *d = d.wrapping_add(*t));
                Ok(())
            })();
            if let Err(e) = step {
                failed = Some(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        self.register_fixed_public(id, f, w.tensor());
        Ok(FixedOperand { id, w: w.clone() })
    }

    /// Re-attach a registered fixed operand to its weight share (e.g. from a model's store ids).
    /// The share must be the one the operand was registered with (checked in release builds).
    pub fn fixed_operand(&self, fixed_id: u64, w: &Share) -> Result<FixedOperand> {
        check_2d("fixed_operand", w)?;
        self.check_fixed_binding(fixed_id, w.tensor())?;
        Ok(FixedOperand {
            id: fixed_id,
            w: w.clone(),
        })
    }

    /// `x [m,k] · W` on ring values for a fixed operand, no truncation: opens only `E = X - a`.
    pub fn matmul_fixed_raw(&mut self, x: &Share, w: &FixedOperand) -> Result<Share> {
        let (m, k) = check_2d("matmul_fixed", x)?;
        if k != w.k() {
            return Err(shape_err(
                "matmul_fixed",
                format!(
                    "cannot multiply {:?} by a [{}, {}] operand",
                    x.shape(),
                    w.k(),
                    w.n()
                ),
            ));
        }
        let parts = self.material(w.triple_spec(m))?;
        let (a, mm) = (&parts[0], &parts[1]);
        let e = self.backend().binary(BinaryOp::Sub, x.tensor(), a)?;
        let e = self.open("matmul", &[&e])?.pop().expect("one opened");
        let z = self.backend().matmul(&e, w.w.tensor(), Some(mm))?;
        Ok(Share::new(z))
    }

    /// Fixed-point `x · W` for a fixed operand (then truncation).
    pub fn matmul_fixed(&mut self, x: &Share, w: &FixedOperand) -> Result<Share> {
        let p = self.matmul_fixed_raw(x, w)?;
        self.truncate(&p)
    }
}
