//! Argmax by all pairwise comparisons at once (the narrow comparison's argmax): 8 rounds for
//! 10 classes, against 32 for a tournament of 8-round comparisons.
//!
//! For logits `x [m, k]`, class `i` of a row wins iff `x_i ≥ x_j` for every `j > i` and
//! `x_i > x_j` for every `j < i` (ties: [`super::ARGMAX_TIE_RULE`]); exactly one class wins.
//! Each literal is `¬[d < 0]` with `d = x_i - x_j` (`- 1` for `j < i`: on ring integers
//! `x_i > x_j ⟺ x_i - x_j - 1 ≥ 0`), so all `k - 1` literals of every class are one narrow
//! comparison of `(k - 1)·m·k` values, kept XOR-shared (3 rounds). The `k - 1` literals of each
//! class are AND-reduced in `⌈log2(k - 1)⌉` rounds, and the winner bits turned arithmetic in
//! one more round; the index is `Σ_i i·2^f·[win_i]`, a local sum. Literal `t` of every
//! `(row, class)` cell is laid out in a block of its own, padded to whole words, so each AND
//! level works on whole packed words. With the range check, its failures are opened in the first
//! AND round (or the conversion round) and recorded like any layer's.
//!
//! **Security:** the narrow comparison's (its openings are uniform), plus the AND openings
//! (secret bits XOR fresh triple bits) and the conversion's `win ⊕ ρ` (uniform).

use kernels::{BinaryOp, ScalarOp, Tensor, GATHER_ZERO};

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::party::Party;
use crate::share::Share;

use super::narrow::narrow_specs;

/// `(cells, padded cells)` of `[m, k]` logits.
fn cells(m: usize, k: usize) -> (usize, usize) {
    let c = m * k;
    (c, c.div_ceil(64) * 64)
}

/// Material specs of [`Party::pairwise_argmax`] on `[m, k]` with the check window `check_top`
/// (0: no check).
pub fn pairwise_argmax_specs(m: usize, k: usize, check_top: u32) -> Vec<MaterialSpec> {
    if k <= 1 || m == 0 {
        return Vec::new();
    }
    let (_, padded) = cells(m, k);
    let words = padded / 64;
    let mut v = narrow_specs((k - 1) * padded, check_top, 0);
    let mut vectors = k - 1;
    while vectors > 1 {
        let pairs = vectors / 2;
        v.push(MaterialSpec::AndTriple { n: pairs * words });
        vectors -= pairs;
    }
    v.push(MaterialSpec::BitSelect {
        n: padded,
        payloads: 0,
    });
    v
}

impl Party {
    /// Argmax over the last axis of `x [m, k]` by pairwise narrow comparisons (see the module
    /// documentation): a shared index `[m]` at the fixed-point scale. Differences of logits
    /// must be below `2^31 - 1` ring units (proven, or checked with `check_top > 0`).
    pub fn pairwise_argmax(&mut self, x: &Share, check_top: u32) -> Result<Share> {
        let (m, k) = match x.shape() {
            [m, k] if *k > 0 => (*m, *k),
            s => return Err(shape_err("argmax", format!("expected [m, k>0], got {s:?}"))),
        };
        if k == 1 || m == 0 {
            return self.mul_public_int(&x.reshape(&[m])?, 0);
        }
        let prev = self.set_step("argmax");
        let (n, padded) = cells(m, k);
        let words = padded / 64;
        let first = self.index() == 0;
        let be = self.backend_arc();
        // Literal t of cell (row, i) compares x_i with x_j, j = t (t < i) or t + 1.
        let (mut ia, mut ib) = (Vec::new(), Vec::new());
        let mut minus_one = vec![0u64; (k - 1) * padded];
        for t in 0..k - 1 {
            for cell in 0..padded {
                if cell >= n {
                    ia.push(GATHER_ZERO);
                    ib.push(GATHER_ZERO);
                    continue;
                }
                let (row, i) = (cell / k, cell % k);
                let j = if t < i { t } else { t + 1 };
                ia.push(cell as u32);
                ib.push((row * k + j) as u32);
                if j < i {
                    minus_one[t * padded + cell] = u64::MAX;
                }
            }
        }
        let len = [(k - 1) * padded];
        let d = self.sub(&self.gather(x, &ia, &len)?, &self.gather(x, &ib, &len)?)?;
        let d = self.add_public_tensor(&d, &be.upload(&len, &minus_one)?)?;
        let bits = self.narrow_bits(&d, check_top, 0)?;
        // Literals ¬[d < 0]: alice flips her share.
        let lits = if first {
            be.scalar(ScalarOp::Xor, &bits.sign, u64::MAX)?
        } else {
            bits.sign.clone()
        };
        let mut vectors: Vec<Tensor> = (0..k - 1)
            .map(|t| Ok(be.slice(&lits, t * words, words)?))
            .collect::<Result<_>>()?;
        let mut check = bits.check;
        let mut check_mine = match &check {
            Some(c) => Some(c.masked(self)?),
            None => None,
        };
        while vectors.len() > 1 {
            let pairs = vectors.len() / 2;
            let xs: Vec<&Tensor> = (0..pairs).map(|i| &vectors[2 * i]).collect();
            let ys: Vec<&Tensor> = (0..pairs).map(|i| &vectors[2 * i + 1]).collect();
            let extra: Vec<&Tensor> = check_mine.iter().collect();
            let (z, theirs) = self.and_round(&be.concat(&xs)?, &be.concat(&ys)?, &extra)?;
            if let (Some(c), Some(mine)) = (check.take(), check_mine.take()) {
                c.record(self, &mine, &be.download(&theirs)?)?;
            }
            let mut next: Vec<Tensor> = (0..pairs)
                .map(|i| Ok(be.slice(&z, i * words, words)?))
                .collect::<Result<_>>()?;
            if vectors.len() % 2 == 1 {
                next.push(vectors.pop().expect("odd"));
            }
            vectors = next;
        }
        // Winner bits to arithmetic (the check's opening rides along if still pending).
        let sel = self.material(MaterialSpec::BitSelect {
            n: padded,
            payloads: 0,
        })?;
        let masked = be.binary(BinaryOp::Xor, &vectors[0], &sel[0])?;
        let mut mine = vec![&masked];
        mine.extend(check_mine.iter());
        let theirs = self.exchange("argmax", be.download(&be.concat(&mine)?)?)?;
        let dbits = be.binary_host(BinaryOp::Xor, &masked, &theirs[..words])?;
        if let (Some(c), Some(m)) = (check.take(), check_mine.as_ref()) {
            c.record(self, m, &theirs[words..])?;
        }
        let win = Share::new(be.bit_select(&dbits, &sel[2], first)?);
        let win = Share::new(be.slice(win.tensor(), 0, n)?).reshape(&[m, k])?;
        let f = self.fixed_point().frac_bits();
        let index: Vec<u64> = (0..n).map(|c| ((c % k) as u64) << f).collect();
        let out = self.sum_last(&self.mul_public_ring_tensor(&win, &index)?)?;
        self.set_step(prev);
        Ok(out)
    }
}
