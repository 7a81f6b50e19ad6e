//! Secure comparison: the sign bit of a shared ring value, and everything built on it.
//!
//! # Protocol
//! `x = x_0 + x_1 mod 2^64` is negative iff its most significant bit is set. Each party's share
//! is one addend of a 64-bit addition, so `msb(x) = msb(x_0) ⊕ msb(x_1) ⊕ carry_63`, where the
//! carry into bit 63 comes from a Kogge–Stone parallel-prefix adder evaluated on XOR-shared
//! bits packed 64 to a word (CrypTen-style arithmetic-to-binary conversion, with the dealer
//! supplying boolean AND triples under the same seed compression as arithmetic triples):
//!
//! - generate `G = x_0 & x_1` (one AND round), propagate `P = x_0 ^ x_1` (local);
//! - for `s = 1, 2, 4, 8, 16, 32`: `G ^= P & (G << s)`, `P &= P << s` (both ANDs in one round;
//!   the last level needs only `G`), so bit 62 of `G` is the carry into bit 63.
//!
//! That is 7 rounds and 12 AND words per element. The XOR-shared sign bit is then turned into
//! an arithmetic share with a dealer random bit `r` (shared both ways): the parties open
//! `d = msb ⊕ r` (1 round, one bit per element, packed) and `[msb] = d + [r] - 2d[r]`.
//! Multiplying a payload `y` by the secret bit costs no extra round: the payload's Beaver
//! difference `y - a` (dealer material `a`, `a·r`) is opened together with the first AND round.
//!
//! **Exactness.** The adder computes the carry exactly, so the result is correct for every
//! ring value (no probabilistic failure at all). Comparisons of two values `x < y` use
//! `msb(x - y)`, exact when `|x - y| < 2^63` (always true within the fixed-point range).
//!
//! **Cost per comparison** (per element, per party): 8 rounds, `12 · 2 · 8 = 192` bytes of AND
//! openings plus 1/8 byte for the masked bit, plus 8 bytes per payload. All elements of a tensor
//! share the same messages.

use kernels::{BeaverKind, BinaryOp, ScalarOp, Tensor};

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::party::Party;
use crate::share::Share;

/// How ties are broken by [`Party::argmax_last`] and [`Party::max_last`].
pub const ARGMAX_TIE_RULE: &str = "lowest index wins among equal maxima";

/// Prefix-adder shift distances.
const LEVELS: [u64; 6] = [1, 2, 4, 8, 16, 32];

/// Material specs, in consumption order, of one batched comparison of `n` elements with
/// `payloads` payload vectors.
pub fn compare_specs(n: usize, payloads: usize) -> Vec<MaterialSpec> {
    let mut v = vec![
        MaterialSpec::BitSelect { n, payloads },
        MaterialSpec::AndTriple { n },
    ];
    for (i, _) in LEVELS.iter().enumerate() {
        v.push(MaterialSpec::AndTriple { n });
        if i + 1 < LEVELS.len() {
            v.push(MaterialSpec::AndTriple { n });
        }
    }
    v
}

/// Pack the low bit of each word, 64 per word.
fn pack_bits(words: &[u64]) -> Vec<u64> {
    words
        .chunks(64)
        .map(|c| c.iter().enumerate().fold(0u64, |acc, (i, &w)| acc | ((w & 1) << i)))
        .collect()
}

/// Inverse of [`pack_bits`] for `n` bits.
fn unpack_bits(packed: &[u64], n: usize) -> Vec<u64> {
    (0..n).map(|i| (packed[i / 64] >> (i % 64)) & 1).collect()
}

impl Party {
    /// One round of AND gates on XOR-shared words: `x_j & y_j` for every pair, plus extra
    /// arithmetic tensors sent in the same message (their peer values are returned).
    fn and_round(
        &mut self,
        pairs: &[(&Tensor, &Tensor)],
        extra: &[&Tensor],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut triples = Vec::with_capacity(pairs.len());
        let mut masked = Vec::with_capacity(2 * pairs.len() + extra.len());
        for (x, y) in pairs {
            let t = self.material(MaterialSpec::AndTriple { n: x.len() })?;
            let be = self.backend();
            masked.push(be.binary(BinaryOp::Xor, x, &t[0])?);
            masked.push(be.binary(BinaryOp::Xor, y, &t[1])?);
            triples.push(t);
        }
        let mut send: Vec<&Tensor> = masked.iter().collect();
        send.extend_from_slice(extra);
        let theirs = self.exchange_tensors("compare", &send)?;
        let be = self.backend();
        let mut outs = Vec::with_capacity(pairs.len());
        for (j, t) in triples.iter().enumerate() {
            let e = be.binary(BinaryOp::Xor, &masked[2 * j], &theirs[2 * j])?;
            let f = be.binary(BinaryOp::Xor, &masked[2 * j + 1], &theirs[2 * j + 1])?;
            outs.push(be.beaver_combine(
                BeaverKind::Boolean,
                &t[2],
                &e,
                &f,
                &t[0],
                &t[1],
                self.index() == 0,
            )?);
        }
        Ok((outs, theirs[2 * pairs.len()..].to_vec()))
    }

    /// The core comparison: arithmetic shares of `[x < 0]` (0/1 at scale 0) for every element of
    /// `x`, and `y_p · [x < 0]` for each payload `y_p` (same shape as `x`), in 8 rounds.
    pub fn ltz_select(&mut self, x: &Share, payloads: &[&Share]) -> Result<(Share, Vec<Share>)> {
        let n = x.len();
        let shape = x.shape().to_vec();
        for p in payloads {
            if p.len() != n {
                return Err(shape_err(
                    "compare",
                    format!("payload {:?} does not match {:?}", p.shape(), shape),
                ));
            }
        }
        let prev = self.set_step("compare");
        let sel = self.material(MaterialSpec::BitSelect {
            n,
            payloads: payloads.len(),
        })?;
        let np = payloads.len();
        let (rbit, masks, rarith, prods) = (&sel[0], &sel[1..1 + np], &sel[1 + np], &sel[2 + np..]);
        let be = self.backend();
        let xf = x.tensor().reshaped(vec![n]).expect("n");
        let mut pay_e = Vec::with_capacity(np);
        for (p, a) in payloads.iter().zip(masks) {
            let pf = p.tensor().reshaped(vec![n]).expect("n");
            pay_e.push(be.binary(BinaryOp::Sub, &pf, a)?);
        }
        // Inputs of the adder as XOR sharings: alice holds (x_0, 0), bob (0, x_1).
        let zero = be.scalar(ScalarOp::And, &xf, 0)?;
        let (in_a, in_b) = if self.index() == 0 {
            (xf.clone(), zero)
        } else {
            (zero, xf.clone())
        };
        let pay_refs: Vec<&Tensor> = pay_e.iter().collect();
        let (mut g, their_pay) = self.and_round(&[(&in_a, &in_b)], &pay_refs)?;
        let mut g = g.pop().expect("one AND");
        let mut p = xf.clone(); // propagate share: x_0 ^ x_1 split as (x_0, x_1)
        for (i, &s) in LEVELS.iter().enumerate() {
            let be = self.backend();
            let g_s = be.scalar(ScalarOp::Shl, &g, s)?;
            if i + 1 < LEVELS.len() {
                let p_s = be.scalar(ScalarOp::Shl, &p, s)?;
                let (outs, _) = self.and_round(&[(&p, &g_s), (&p, &p_s)], &[])?;
                g = self.backend().binary(BinaryOp::Xor, &g, &outs[0])?;
                p = outs[1].clone();
            } else {
                let (outs, _) = self.and_round(&[(&p, &g_s)], &[])?;
                g = self.backend().binary(BinaryOp::Xor, &g, &outs[0])?;
            }
        }
        // msb share = (x_i >> 63) ^ (G >> 62), low bit.
        let be = self.backend();
        let msb = be.binary(
            BinaryOp::Xor,
            &be.scalar(ScalarOp::ShrLogical, &xf, 63)?,
            &be.scalar(ScalarOp::ShrLogical, &g, 62)?,
        )?;
        let msb = be.scalar(ScalarOp::And, &msb, 1)?;
        // Open d = msb ^ r, one bit per element.
        let masked = be.binary(BinaryOp::Xor, &msb, rbit)?;
        let mine = pack_bits(&be.download(&masked)?);
        let theirs = self.exchange("compare", mine.clone())?;
        let d_words: Vec<u64> = mine.iter().zip(&theirs).map(|(a, b)| a ^ b).collect();
        let be = self.backend();
        let d = be.upload(&[n], &unpack_bits(&d_words, n))?;
        // u = 1 - 2d; [bit] = [alice] d + u·[r].
        let u = be.scalar(ScalarOp::Add, &be.scalar(ScalarOp::Mul, &d, 2u64.wrapping_neg())?, 1)?;
        let mut bit = be.binary(BinaryOp::Mul, &u, rarith)?;
        if self.index() == 0 {
            bit = be.binary(BinaryOp::Add, &bit, &d)?;
        }
        // Payloads: [y·r] = c + E·[r]; [y·bit] = u·[y·r] + d·y.
        let mut selected = Vec::with_capacity(np);
        for j in 0..np {
            let e = be.binary(BinaryOp::Add, &pay_e[j], &their_pay[j])?;
            let yr = be.binary(BinaryOp::Add, &prods[j], &be.binary(BinaryOp::Mul, &e, rarith)?)?;
            let yf = payloads[j].tensor().reshaped(vec![n]).expect("n");
            let s = be.binary(
                BinaryOp::Add,
                &be.binary(BinaryOp::Mul, &u, &yr)?,
                &be.binary(BinaryOp::Mul, &d, &yf)?,
            )?;
            selected.push(Share::new(s.reshaped(shape.clone()).expect("n")));
        }
        self.set_step(prev);
        Ok((Share::new(bit.reshaped(shape).expect("n")), selected))
    }

    /// `[x < 0]` as an arithmetic 0/1 share (scale 0).
    pub fn ltz(&mut self, x: &Share) -> Result<Share> {
        Ok(self.ltz_select(x, &[])?.0)
    }

    /// `[x < y]` as an arithmetic 0/1 share (scale 0).
    pub fn lt(&mut self, x: &Share, y: &Share) -> Result<Share> {
        let d = self.sub(x, y)?;
        self.ltz(&d)
    }

    /// `[x > y]` as an arithmetic 0/1 share (scale 0).
    pub fn gt(&mut self, x: &Share, y: &Share) -> Result<Share> {
        self.lt(y, x)
    }

    /// `[x < v]` against a public real `v`.
    pub fn lt_public(&mut self, x: &Share, v: f64) -> Result<Share> {
        let d = self.add_public(x, -v)?;
        self.ltz(&d)
    }

    /// `[x > v]` against a public real `v`.
    pub fn gt_public(&mut self, x: &Share, v: f64) -> Result<Share> {
        let c = self.fixed_point().encode_one(v, 0)?;
        let d = self.neg(x)?;
        let d = self.add_public_ring(&d, c)?;
        self.ltz(&d)
    }

    /// `max(x, 0)` elementwise (8 rounds).
    pub fn relu(&mut self, x: &Share) -> Result<Share> {
        let (_, sel) = self.ltz_select(x, &[x])?;
        self.sub(x, &sel[0])
    }

    /// Sign as a fixed-point value: `+1` for `x >= 0`, `-1` for `x < 0`.
    pub fn sign(&mut self, x: &Share) -> Result<Share> {
        let b = self.ltz(x)?;
        let one = 1u64 << self.fixed_point().frac_bits();
        let t = self.mul_public_int(&b, -2 * one as i64)?;
        self.add_public_ring(&t, one)
    }

    /// `[x == y]` as an arithmetic 0/1 share: `1 - [x < y] - [y < x]`, both comparisons batched
    /// in the same 8 rounds.
    pub fn eq(&mut self, x: &Share, y: &Share) -> Result<Share> {
        if x.shape() != y.shape() {
            return Err(shape_err("eq", format!("{:?} vs {:?}", x.shape(), y.shape())));
        }
        let d = self.sub(x, y)?;
        let nd = self.neg(&d)?;
        let both = self.concat(&[&d, &nd])?;
        let bits = self.ltz(&both)?;
        let parts = self.split(&bits, 2)?;
        let s = self.add(&parts[0], &parts[1])?;
        let s = self.neg(&s)?;
        let s = self.add_public_ring(&s, 1)?;
        s.reshape(x.shape())
    }

    /// `[x == v]` against a public real `v`.
    pub fn eq_public(&mut self, x: &Share, v: f64) -> Result<Share> {
        let c = self.fixed_point().encode_one(v, 0)?;
        let zero = self.mul_public_int(x, 0)?;
        let y = self.add_public_ring(&zero, c)?;
        self.eq(x, &y)
    }

    /// Max over the last axis of `x [m, n] -> [m]` (tree: ceil(log2 n) comparison rounds).
    pub fn max_last(&mut self, x: &Share) -> Result<Share> {
        Ok(self.tree_max(x, false)?.0)
    }

    /// Argmax over the last axis of `x [m, n]`: a shared index `[m]`, fixed-point encoded
    /// (index `j` is `j · 2^f`, comparable with fixed-point labels). Ties: [`ARGMAX_TIE_RULE`].
    pub fn argmax_last(&mut self, x: &Share) -> Result<Share> {
        Ok(self.tree_max(x, true)?.1.expect("index tracked"))
    }

    /// Pairwise tournament over columns; left (lower indices) wins unless right is strictly larger.
    fn tree_max(&mut self, x: &Share, track_index: bool) -> Result<(Share, Option<Share>)> {
        let (m, n) = match x.shape() {
            [m, n] if *n > 0 => (*m, *n),
            s => return Err(shape_err("argmax", format!("expected [m, n>0], got {s:?}"))),
        };
        let mut vals = self.columns(x)?;
        let one = 1u64 << self.fixed_point().frac_bits();
        let mut idx: Vec<Share> = Vec::new();
        if track_index {
            let zero = self.mul_public_int(&vals[0], 0)?;
            for j in 0..n {
                idx.push(self.add_public_ring(&zero, one.wrapping_mul(j as u64))?);
            }
        }
        while vals.len() > 1 {
            let pairs = vals.len() / 2;
            let mut diffs = Vec::with_capacity(pairs);
            let mut val_gain = Vec::with_capacity(pairs);
            let mut idx_gain = Vec::with_capacity(pairs);
            for j in 0..pairs {
                let (l, r) = (&vals[2 * j], &vals[2 * j + 1]);
                diffs.push(self.sub(l, r)?);
                val_gain.push(self.sub(r, l)?);
                if track_index {
                    idx_gain.push(self.sub(&idx[2 * j + 1], &idx[2 * j])?);
                }
            }
            let dref: Vec<&Share> = diffs.iter().collect();
            let d = self.concat(&dref)?;
            let vref: Vec<&Share> = val_gain.iter().collect();
            let mut pay = vec![self.concat(&vref)?];
            if track_index {
                let iref: Vec<&Share> = idx_gain.iter().collect();
                pay.push(self.concat(&iref)?);
            }
            let pref: Vec<&Share> = pay.iter().collect();
            let (_, sel) = self.ltz_select(&d, &pref)?;
            let vsel = self.split(&sel[0], pairs)?;
            let isel = if track_index {
                self.split(&sel[1], pairs)?
            } else {
                Vec::new()
            };
            let mut next_vals = Vec::with_capacity(pairs + 1);
            let mut next_idx = Vec::with_capacity(pairs + 1);
            for j in 0..pairs {
                next_vals.push(self.add(&vals[2 * j], &vsel[j])?);
                if track_index {
                    next_idx.push(self.add(&idx[2 * j], &isel[j])?);
                }
            }
            if vals.len() % 2 == 1 {
                next_vals.push(vals.last().expect("odd").clone());
                if track_index {
                    next_idx.push(idx.last().expect("odd").clone());
                }
            }
            vals = next_vals;
            idx = next_idx;
        }
        let v = vals.pop().expect("one column left").reshape(&[m])?;
        let i = match idx.pop() {
            Some(i) => Some(i.reshape(&[m])?),
            None => None,
        };
        Ok((v, i))
    }

    /// Columns of a 2-D share as `[m]` shares (a local re-layout of this party's own share).
    fn columns(&self, x: &Share) -> Result<Vec<Share>> {
        let (m, n) = (x.shape()[0], x.shape()[1]);
        let be = self.backend();
        let host = be.download(x.tensor())?;
        (0..n)
            .map(|j| {
                let col: Vec<u64> = (0..m).map(|i| host[i * n + j]).collect();
                Ok(Share::new(be.upload(&[m], &col)?))
            })
            .collect()
    }

    /// Concatenate flat shares (a local re-layout of this party's own shares).
    pub fn concat(&self, parts: &[&Share]) -> Result<Share> {
        let be = self.backend();
        let mut host = Vec::new();
        for p in parts {
            host.extend(be.download(p.tensor())?);
        }
        Ok(Share::new(be.upload(&[host.len()], &host)?))
    }

    /// Split a flat share into `k` equal flat pieces.
    pub fn split(&self, x: &Share, k: usize) -> Result<Vec<Share>> {
        if k == 0 || x.len() % k != 0 {
            return Err(shape_err("split", format!("{} values into {k} parts", x.len())));
        }
        let be = self.backend();
        let host = be.download(x.tensor())?;
        let len = host.len() / k;
        (0..k)
            .map(|j| Ok(Share::new(be.upload(&[len], &host[j * len..(j + 1) * len])?)))
            .collect()
    }
}
