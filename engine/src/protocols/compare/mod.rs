//! Secure comparison: the sign bit of a shared ring value, and everything built on it.
//!
//! # Protocol
//! `x = x_0 + x_1 mod 2^64` is negative iff its most significant bit is set. Each party's share
//! is one addend of a 64-bit addition, so `msb(x) = msb(x_0) ⊕ msb(x_1) ⊕ c_63`, where `c_63`,
//! the carry into bit 63, is the group-generate bit of bits 0..62. It is computed by a carry
//! tree on XOR-shared bits (CrypTen-style arithmetic-to-binary conversion; the dealer supplies
//! boolean AND triples under the same seed compression as arithmetic triples):
//!
//! - level 0: generate `G = A & B`, propagate `P = A ^ B` for the addends `A = x_0 | 2^63`
//!   (alice's input) and `B = x_1 & (2^63 - 1)` (bob's): forcing bit 63 to "propagate" makes the
//!   group over all 64 bits generate exactly `c_63`;
//! - levels 1..6: pairs of groups merge, `G' = G_hi ^ (P_hi & G_lo)`, `P' = P_hi & P_lo`, and the
//!   bits are compacted so level `j` works on `64 >> j` bits per element
//!   (`circuit`; one round per level, the top level needs only `G`).
//!
//! That is 7 rounds and about 3 AND words per element. The XOR-shared sign bit is then turned
//! into an arithmetic share with a dealer random bit `r` (shared both ways): the parties open
//! `d = msb ⊕ r` (1 round, one bit per element, packed) and `[msb] = d + [r] - 2d[r]`.
//! Multiplying a payload `y` by the secret bit costs no extra round: the payload's Beaver
//! difference `y - a` (dealer material `a`, `a·r`) is opened together with the level-0 ANDs.
//!
//! **Exactness.** The tree computes the carry exactly, so the sign is correct for every ring
//! value (no probabilistic failure at all). Comparisons `x < y` use `msb(x - y)`, exact when
//! `|x - y| < 2^63` (always true within the fixed-point range).
//!
//! **Cost** per comparison of `n` elements, per party: 8 rounds; `16·(n + 2⌈n/2⌉ + 2⌈n/4⌉ +
//! 2⌈n/8⌉ + 2⌈n/16⌉ + 2⌈n/32⌉ + ⌈n/64⌉) + 8⌈n/64⌉` bytes (≈ 47.5 bytes per element for large
//! `n`), plus 8 bytes per element and payload.
//!
//! **Where it runs.** Every step is a [`kernels::Backend`] op (bit compaction, sign packing,
//! the boolean Beaver combination, the select tails), so on the GPU backend shares, masks and
//! material stay on the device: per round one download of the masked words sent to the peer
//! and one upload of the peer's words are the only host transfers.

mod circuit;
mod eq_index;
mod piecewise;

pub use eq_index::{eq_index_bits, eq_index_specs, MAX_EQ_INDEX_TABLE_WORDS};
pub use piecewise::{clip_specs, hardswish_specs, leaky_relu_specs, HardSwishConstants};

use kernels::{BeaverKind, BinaryOp, ScalarOp, Tensor};

use circuit::and_batch_words;

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::party::Party;
use crate::share::Share;

/// How ties are broken by [`Party::argmax_last`] and [`Party::max_last`].
pub const ARGMAX_TIE_RULE: &str = "lowest index wins among equal maxima";

/// Material specs, in consumption order, of one batched comparison of `n` elements with
/// `payloads` payload vectors.
pub fn compare_specs(n: usize, payloads: usize) -> Vec<MaterialSpec> {
    let mut v = vec![MaterialSpec::BitSelect { n, payloads }];
    v.extend(
        and_batch_words(n)
            .into_iter()
            .map(|words| MaterialSpec::AndTriple { n: words }),
    );
    v
}

/// Material specs of [`Party::relu`] on `n` elements.
pub fn relu_specs(n: usize) -> Vec<MaterialSpec> {
    compare_specs(n, 1)
}

/// Material specs of [`Party::argmax_last`] (`track_index`) or [`Party::max_last`] on `[m, n]`.
pub fn tree_max_specs(m: usize, n: usize, track_index: bool) -> Vec<MaterialSpec> {
    let mut specs = Vec::new();
    let mut cols = n;
    while cols > 1 {
        let pairs = cols / 2;
        specs.extend(compare_specs(m * pairs, if track_index { 2 } else { 1 }));
        cols = pairs + cols % 2;
    }
    specs
}

/// Material specs of [`Party::eq`] on `n` elements (both comparisons in one batch).
pub fn eq_specs(n: usize) -> Vec<MaterialSpec> {
    compare_specs(2 * n, 0)
}

impl Party {
    /// One round of AND gates `xs & ys` on XOR-shared words (all gates of the round in one
    /// batch), with `extra` words sent in the same message. Returns this party's share of the
    /// ANDs and the peer's extra words (on the backend).
    fn and_round(
        &mut self,
        xs: &Tensor,
        ys: &Tensor,
        extra: &[&Tensor],
    ) -> Result<(Tensor, Tensor)> {
        let be = self.backend_arc();
        let words = xs.len();
        let t = self.material(MaterialSpec::AndTriple { n: words })?;
        let e = be.binary(BinaryOp::Xor, xs, &t[0])?;
        let f = be.binary(BinaryOp::Xor, ys, &t[1])?;
        let mut parts = vec![&e, &f];
        parts.extend_from_slice(extra);
        let mine = be.concat(&parts)?;
        let theirs = self.exchange("compare", be.download(&mine)?)?;
        let theirs = be.upload(&[theirs.len()], &theirs)?;
        let e = be.binary(BinaryOp::Xor, &e, &be.slice(&theirs, 0, words)?)?;
        let f = be.binary(BinaryOp::Xor, &f, &be.slice(&theirs, words, words)?)?;
        let z = be.beaver_combine(
            BeaverKind::Boolean,
            &t[2],
            &e,
            &f,
            &t[0],
            &t[1],
            self.index() == 0,
        )?;
        let rest = be.slice(&theirs, 2 * words, theirs.len() - 2 * words)?;
        Ok((z, rest))
    }

    /// The core comparison: arithmetic shares of `[x < 0]` (0/1 at scale 0) for every element of
    /// `x`, and `y_p · [x < 0]` for each payload `y_p` (same shape as `x`), in 8 rounds.
    pub fn ltz_select(&mut self, x: &Share, payloads: &[&Share]) -> Result<(Share, Vec<Share>)> {
        let n = x.len();
        let np = payloads.len();
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
        let be = self.backend_arc();
        let sel = self.material(MaterialSpec::BitSelect { n, payloads: np })?;
        let (rbits, masks, rarith, prods) = (&sel[0], &sel[1], &sel[2], &sel[3]);
        let xs = x.tensor().reshaped(vec![n]).expect("flat view");
        let ys: Vec<Tensor> = payloads
            .iter()
            .map(|p| p.tensor().reshaped(vec![n]).expect("flat view"))
            .collect();
        // Beaver differences of the payloads, opened with the level-0 ANDs.
        let mut pay_e = Vec::with_capacity(np);
        for (j, y) in ys.iter().enumerate() {
            pay_e.push(be.binary(BinaryOp::Sub, y, &be.slice(masks, j * n, n)?)?);
        }
        // Level 0: the addends as XOR sharings (alice holds A, bob holds B).
        const TOP: u64 = 1 << 63;
        let first = self.index() == 0;
        let mut own = be.scalar(ScalarOp::And, &xs, !TOP)?;
        if first {
            own = be.scalar(ScalarOp::Xor, &own, TOP)?;
        }
        let zero = be.fill(&[n], 0)?;
        let (a_in, b_in) = if first { (&own, &zero) } else { (&zero, &own) };
        let pay_refs: Vec<&Tensor> = pay_e.iter().collect();
        let (mut g, their_pay) = self.and_round(a_in, b_in, &pay_refs)?;
        let mut p = own; // P = A ^ B: each party's addend is its share of P
        for level in 1..=6 {
            let g_hi = be.compact_bits(&g, true)?;
            let g_lo = be.compact_bits(&g, false)?;
            let p_hi = be.compact_bits(&p, true)?;
            let half = g_hi.len();
            let (xs_in, ys_in) = if level < 6 {
                let p_lo = be.compact_bits(&p, false)?;
                (be.concat(&[&p_hi, &p_hi])?, be.concat(&[&g_lo, &p_lo])?)
            } else {
                (p_hi, g_lo)
            };
            let (z, _) = self.and_round(&xs_in, &ys_in, &[])?;
            g = be.binary(BinaryOp::Xor, &g_hi, &be.slice(&z, 0, half)?)?;
            if level < 6 {
                p = be.slice(&z, half, half)?;
            }
        }
        // Packed sign-bit shares: msb(x_i) ^ carry share, masked by r and opened.
        let top = be.pack_msb(&xs)?;
        let masked = be.binary(BinaryOp::Xor, &be.binary(BinaryOp::Xor, &g, &top)?, rbits)?;
        let theirs = self.exchange("compare", be.download(&masked)?)?;
        let d = be.binary_host(BinaryOp::Xor, &masked, &theirs)?;
        // [bit] = [alice] d + (1 - 2d)[r];  [y·bit] = (1 - 2d)(c + E[r]) + d·y.
        let bit = be.bit_select(&d, rarith, first)?;
        let mut selected = Vec::with_capacity(np);
        for (j, y) in ys.iter().enumerate() {
            let big_e = be.binary(BinaryOp::Add, &pay_e[j], &be.slice(&their_pay, j * n, n)?)?;
            let prod = be.slice(prods, j * n, n)?;
            let out = be.payload_select(&d, rarith, &big_e, &prod, y)?;
            selected.push(Share::new(out.reshaped(shape.clone()).expect("n values")));
        }
        self.set_step(prev);
        Ok((Share::new(bit.reshaped(shape).expect("n values")), selected))
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
            return Err(shape_err(
                "eq",
                format!("{:?} vs {:?}", x.shape(), y.shape()),
            ));
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
        let t = be.transpose(x.tensor())?;
        (0..n)
            .map(|j| Ok(Share::new(be.slice(&t, j * m, m)?)))
            .collect()
    }

    /// Concatenate flat shares (a local re-layout of this party's own shares).
    pub fn concat(&self, parts: &[&Share]) -> Result<Share> {
        let tensors: Vec<&Tensor> = parts.iter().map(|p| p.tensor()).collect();
        Ok(Share::new(self.backend().concat(&tensors)?))
    }

    /// Split a flat share into `k` equal flat pieces.
    pub fn split(&self, x: &Share, k: usize) -> Result<Vec<Share>> {
        if k == 0 || !x.len().is_multiple_of(k) {
            return Err(shape_err(
                "split",
                format!("{} values into {k} parts", x.len()),
            ));
        }
        let len = x.len() / k;
        (0..k)
            .map(|j| {
                Ok(Share::new(self.backend().slice(
                    x.tensor(),
                    j * len,
                    len,
                )?))
            })
            .collect()
    }
}
