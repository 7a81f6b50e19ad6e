//! The narrow comparison: `[v < 0]` for shared values below `2^31` ring units in magnitude, in
//! four rounds, with an optional range check fused into the same rounds.
//!
//! # Construction
//! Dealer-assisted bit decomposition with one-time lookup tables (the "millionaires" of
//! CrypTFlow2, Rathee et al., CCS 2020, with each chunk's oblivious transfer replaced by a
//! dealer-made table, as in the one-time truth tables of Ishai, Kushilevitz, Meldgaard, Orlandi
//! and Paskin-Cherniavsky, TCC 2013, and TinyTable, Damgård et al., CRYPTO 2017). The dealer
//! draws a uniform mask `R ∈ Z_2^64` (arithmetic shares) and, per chunk `r_j` of `R`'s low 31
//! bits (`(8, 8, 8, 7)` bits, [`TableLayout::sign`]), XOR shares of the table
//! `T_j[i] = [i < r_j]`, `i < 2^width`, plus XOR shares of `R`'s bit 31 (material
//! [`MaterialSpec::NarrowCompare`]).
//!
//! 1. **Open** `C = v + R` (one round, 8 bytes per value). Then `v mod 2^32 = (C - R) mod 2^32`
//!    and, for `|v| < 2^31`, `[v < 0] = c_31 ⊕ r_31 ⊕ [C mod 2^31 < R mod 2^31]`.
//! 2. **Look up** (local): with `c_j` the chunks of the public `C`, `lt_j = T_j[c_j] =
//!    [c_j < r_j]` and `eq_j = T_j[c_j - 1] ⊕ T_j[c_j] = [c_j == r_j]` (entry `-1` is 1: alice
//!    holds it) — [`kernels::Backend::lookup_bits`].
//! 3. **Merge** the chunks like a carry tree (group generate `G = lt_hi ⊕ eq_hi·G_lo`,
//!    propagate `P = eq_hi·eq_lo`) with boolean Beaver triples: level 1 computes
//!    `eq_1·lt_0, eq_3·lt_2, eq_3·eq_2`, level 2 `P_32·G_10` (two rounds, 4 AND bits per value).
//!    The sign is `G ⊕ r_31 ⊕ c_31` (alice adds the public bit).
//! 4. **Select** (one round, with `select >= 1`): open `d = s ⊕ ρ` for a dealer bit `ρ`; then
//!    `[s] = d + (1 - 2d)[ρ]`. A payload `y = ±v` costs no opening: its Beaver difference is
//!    `±C`, already public, with mask `∓R`, so `[y·s] = d·y + (1 - 2d)(±C·[ρ] ∓ [R·ρ])`.
//!
//! **Fused range check** (`check_top > 0`, [`TableLayout::check`]). With `h` =
//! [`CHECK_LOW_BIT`] (30), `u = v + 2^(h-1)` and `D = ((C + 2^(h-1)) mod 2^top) >> h`, the
//! parties also look up `e_j = E_j[D_j]` and `f_j = E_j[(D - 1)_j]` in tables
//! `E_j[i] = [i == R_h,j]` of the chunks of `R_h = (R mod 2^top) >> h`, AND-reduce them in the
//! same two rounds and get `ok = [R_h ∈ {D, D - 1}]`. Since `D - R_h ≡ (u >> h) + carry
//! (mod 2^(top-h))` with `carry ∈ {0, 1}`: every `|v| < 2^(h-1)` passes, and a passing value
//! has `u >> h ∈ {-1, 0, 1}`, i.e. `|v| < 1.5·2^h < 2^31` — so a passing value's sign is
//! exact — provided `|v| < 2^(top-2)`, which the owner's range analysis proves for every
//! checked value. `ok` is turned arithmetic in the select round (its own dealer bit) and the
//! count of failures recorded for the layer ([`crate::protocols::range_check`]).
//!
//! **Security.** `C` is `v` plus a uniform `R`: uniform and independent of `v`. Every AND
//! opening is a secret bit XOR a fresh uniform triple bit, and `d` a secret bit XOR a fresh
//! uniform `ρ`: uniform. The tables are XOR shares (alice's uniform from her seed, bob's the
//! dealer's correction): each party's table bits are uniform whatever `R` is, so the bits it
//! reads at public positions are too. The only values that depend on `v` are the final
//! shares, which the protocol never opens; the dealer sees only shapes.
//!
//! **Exactness.** The sign is exact for every `|v| < 2^31` (no probabilistic failure); with the
//! check, a value outside the check's range never gives a sign without a recorded failure.
//!
//! **Cost** per value and party, online: 4 rounds (3 without `select`), `8 + (4 + 4·c)/4 + s/8`
//! bytes where `c` is the check's AND bits per value (0 to 6) and `s` the selected bits (1 or 2)
//! — 9.1 bytes for a ReLU, 10.4 with the check, plus the material check word per message.

use kernels::{BinaryOp, BitLookup, ScalarOp, Tensor};

use crate::dealer::tables::{TableLayout, CHECK_LOW_BIT, NARROW_BITS};
use crate::dealer::MaterialSpec;
use crate::error::Result;
use crate::party::Party;
use crate::share::Share;

/// What a narrow comparison hands back for a payload: nothing, `v·[v < 0]` or `-v·[v < 0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The sign only.
    None,
    /// `v·[v < 0]` (ReLU's `x - x·[x < 0]`, LeakyReLU).
    Value,
    /// `-v·[v < 0]` (a maximum: `max(l, r) = l + (r - l)·[l - r < 0]`).
    Negated,
}

/// Chunks of the check window `[CHECK_LOW_BIT, check_top)` (0 without a check).
fn check_chunks(check_top: u32) -> usize {
    if check_top == 0 {
        0
    } else {
        TableLayout::check(check_top).tables.len()
    }
}

/// AND pairs of the check's two reductions at levels 1 and 2 for `k` chunks.
fn check_pairs(k: usize) -> [usize; 2] {
    [k / 2, k.div_ceil(2) / 2]
}

/// Material specs, in consumption order, of one narrow comparison of `n` values: the masks and
/// tables, then the AND triples of the two merge levels.
pub fn narrow_specs(n: usize, check_top: u32, select: u32) -> Vec<MaterialSpec> {
    let words = n.div_ceil(64);
    let [c1, c2] = check_pairs(check_chunks(check_top));
    vec![
        MaterialSpec::NarrowCompare {
            n,
            check_top,
            select,
        },
        MaterialSpec::AndTriple {
            n: words * (3 + 2 * c1),
        },
        MaterialSpec::AndTriple {
            n: words * (1 + 2 * c2),
        },
    ]
}

/// The fused check's XOR-shared result (1: in range), packed, and its conversion material
/// (the dealer bit, packed, and its arithmetic shares).
pub(crate) struct CheckBits {
    pub(crate) ok: Tensor,
    rho: Tensor,
    rho_arith: Tensor,
    n: usize,
}

/// After the merge rounds: the XOR-shared sign, packed, and what the select round needs.
pub(crate) struct NarrowBits {
    /// XOR shares of `[v < 0]`, packed 64 to a word.
    pub(crate) sign: Tensor,
    /// The fused check, if any.
    pub(crate) check: Option<CheckBits>,
    /// The opened `C`.
    c: Tensor,
    /// The sign's conversion material: `ρ` packed, `[ρ]`, `[R·ρ]` (with a payload).
    select: Option<(Tensor, Tensor, Option<Tensor>)>,
}

impl CheckBits {
    /// This party's masked check bits to open (`ok ⊕ ρ`).
    pub(crate) fn masked(&self, p: &Party) -> Result<Tensor> {
        Ok(p.backend().binary(BinaryOp::Xor, &self.ok, &self.rho)?)
    }

    /// Finish the check from this party's masked bits and the peer's: record the number of
    /// values that failed it for the current layer.
    pub(crate) fn record(&self, p: &mut Party, mine: &Tensor, theirs: &[u64]) -> Result<()> {
        let be = p.backend_arc();
        let d = be.binary_host(BinaryOp::Xor, mine, theirs)?;
        let ok = Share::new(be.bit_select(&d, &self.rho_arith, p.index() == 0)?);
        let passed = p.sum_all(&ok)?;
        let failed = p.add_public_ring(&p.neg(&passed)?, self.n as u64)?;
        p.record_range_failures(failed);
        Ok(())
    }
}

impl Party {
    /// Steps 1-3 of the narrow comparison (see the module documentation): open `C = v + R`,
    /// look up the tables, merge in two AND rounds. `v` must be below `2^31` ring units in
    /// magnitude (proven, or checked with `check_top > 0`).
    pub(crate) fn narrow_bits(
        &mut self,
        v: &Share,
        check_top: u32,
        select: u32,
    ) -> Result<NarrowBits> {
        let n = v.len();
        if check_top > 0 && n >= 1 << 31 {
            return Err(crate::error::shape_err(
                "compare",
                format!("{n} values in one checked comparison (at most 2^31 - 1)"),
            ));
        }
        let words = n.div_ceil(64);
        let be = self.backend_arc();
        let first = self.index() == 0;
        let mut parts = self
            .material(MaterialSpec::NarrowCompare {
                n,
                check_top,
                select,
            })?
            .into_iter();
        let mut next = || parts.next().expect("the spec's parts");
        let r = next();
        let rho = (select > 0).then(&mut next);
        let rho_c = (check_top > 0).then(&mut next);
        let (sign_rows, r_top) = (next(), next());
        let check_rows = (check_top > 0).then(&mut next);
        let rho_arith = (select > 0).then(&mut next);
        let r_rho = (select == 2).then(&mut next);
        let rho_c_arith = (check_top > 0).then(&mut next);

        // 1. Open C = v + R.
        let flat = v.tensor().reshaped(vec![n]).expect("flat view");
        let masked = be.binary(BinaryOp::Add, &flat, &r)?;
        let c = self.open("compare", &[&masked])?.pop().expect("one opened");

        // 2. Look up lt_j, and the entries before them (eq_j = prev_j ⊕ lt_j).
        let sign = TableLayout::sign();
        let mut keys = Vec::new();
        for (j, t) in sign.tables.iter().enumerate() {
            for prev in [false, true] {
                if prev && j == 0 {
                    continue;
                }
                keys.push(BitLookup {
                    add: 0,
                    shift: t.lo,
                    width: t.width,
                    offset: t.offset,
                    prev,
                    underflow: first,
                });
            }
        }
        let rows = sign_rows.reshaped(vec![n, sign.words]).expect("rows");
        let bits = be.lookup_bits(&c, &rows, &keys)?;
        let block = |t: &Tensor, k: usize| be.slice(t, k * words, words);
        let xor = |a: &Tensor, b: &Tensor| be.binary(BinaryOp::Xor, a, b);
        // keys: lt0, lt1, prev1, lt2, prev2, lt3, prev3.
        let lt: Vec<Tensor> = [0, 1, 3, 5]
            .iter()
            .map(|&k| block(&bits, k))
            .collect::<kernels::Result<_>>()?;
        let eq: Vec<Tensor> = [(1, 2), (3, 4), (5, 6)]
            .iter()
            .map(|&(l, p)| xor(&block(&bits, l)?, &block(&bits, p)?))
            .collect::<kernels::Result<_>>()?;
        let (eq1, eq2, eq3) = (&eq[0], &eq[1], &eq[2]);
        // The check's lookups: e_j at D's chunks, f_j at (D - 1)'s.
        let (mut es, mut fs) = (Vec::new(), Vec::new());
        if let Some(rows) = &check_rows {
            let layout = TableLayout::check(check_top);
            let half = 1u64 << (CHECK_LOW_BIT - 1);
            let keys: Vec<BitLookup> = [half, half.wrapping_neg()]
                .iter()
                .flat_map(|&add| {
                    layout.tables.iter().map(move |t| BitLookup {
                        add,
                        shift: t.lo,
                        width: t.width,
                        offset: t.offset,
                        prev: false,
                        underflow: false,
                    })
                })
                .collect();
            let rows = rows.reshaped(vec![n, layout.words]).expect("rows");
            let bits = be.lookup_bits(&c, &rows, &keys)?;
            let k = layout.tables.len();
            for j in 0..k {
                es.push(block(&bits, j)?);
                fs.push(block(&bits, k + j)?);
            }
        }

        // 3. Two merge levels, the check's reductions in the same rounds.
        let pairs = |v: &[Tensor]| -> (Vec<Tensor>, Vec<Tensor>) {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for p in v.chunks_exact(2) {
                x.push(p[0].clone());
                y.push(p[1].clone());
            }
            (x, y)
        };
        let reduce = |v: &[Tensor], z: &[Tensor]| -> Vec<Tensor> {
            let mut out = z.to_vec();
            if v.len() % 2 == 1 {
                out.push(v.last().expect("odd").clone());
            }
            out
        };
        let (ex, ey) = pairs(&es);
        let (fx, fy) = pairs(&fs);
        let mut xs = vec![eq1.clone(), eq3.clone(), eq3.clone()];
        let mut ys = vec![lt[0].clone(), lt[2].clone(), eq2.clone()];
        xs.extend(ex.iter().chain(&fx).cloned());
        ys.extend(ey.iter().chain(&fy).cloned());
        let z = self.and_words(&xs, &ys, words)?;
        let g10 = xor(&lt[1], &z[0])?;
        let g32 = xor(&lt[3], &z[1])?;
        let p32 = z[2].clone();
        let (ne, nf) = (ex.len(), fx.len());
        es = reduce(&es, &z[3..3 + ne]);
        fs = reduce(&fs, &z[3 + ne..3 + ne + nf]);
        let (ex, ey) = pairs(&es);
        let (fx, fy) = pairs(&fs);
        let mut xs = vec![p32];
        let mut ys = vec![g10];
        xs.extend(ex.iter().chain(&fx).cloned());
        ys.extend(ey.iter().chain(&fy).cloned());
        let z = self.and_words(&xs, &ys, words)?;
        let g = xor(&g32, &z[0])?;
        let (ne, nf) = (ex.len(), fx.len());
        es = reduce(&es, &z[1..1 + ne]);
        fs = reduce(&fs, &z[1 + ne..1 + ne + nf]);
        let mut s = xor(&g, &r_top)?;
        if first {
            let top = be.scalar(ScalarOp::Shl, &c, u64::from(64 - NARROW_BITS))?;
            s = xor(&s, &be.pack_msb(&top)?)?;
        }
        let check = match (rho_c, rho_c_arith) {
            (Some(rho), Some(rho_arith)) => Some(CheckBits {
                ok: xor(&es[0], &fs[0])?,
                rho,
                rho_arith,
                n,
            }),
            _ => None,
        };
        let select = match (rho, rho_arith) {
            (Some(rho), Some(arith)) => Some((rho, arith, r_rho)),
            _ => None,
        };
        Ok(NarrowBits {
            sign: s,
            check,
            c,
            select,
        })
    }

    /// One AND round on packed word vectors (`xs[i] & ys[i]`, each `words` long); returns the
    /// results in order.
    pub(crate) fn and_words(
        &mut self,
        xs: &[Tensor],
        ys: &[Tensor],
        words: usize,
    ) -> Result<Vec<Tensor>> {
        let be = self.backend_arc();
        let xr: Vec<&Tensor> = xs.iter().collect();
        let yr: Vec<&Tensor> = ys.iter().collect();
        let (z, _) = self.and_round(&be.concat(&xr)?, &be.concat(&yr)?, &[])?;
        (0..xs.len())
            .map(|i| Ok(be.slice(&z, i * words, words)?))
            .collect()
    }

    /// `[v < 0]` (arithmetic 0/1, scale 0) and the payload times it, for `|v| < 2^31` ring units
    /// — proven by the range analysis, or checked in the same rounds with `checked` (failures
    /// are recorded for the current layer, see [`crate::protocols::range_check`]). 4 rounds.
    pub fn narrow_select(
        &mut self,
        v: &Share,
        checked: bool,
        payload: Payload,
    ) -> Result<(Share, Option<Share>)> {
        let prev = self.set_step("compare");
        let check_top = if checked {
            crate::dealer::tables::check_top_bit(self.fixed_point().frac_bits())
        } else {
            0
        };
        let select = if payload == Payload::None { 1 } else { 2 };
        let bits = self.narrow_bits(v, check_top, select)?;
        let be = self.backend_arc();
        let first = self.index() == 0;
        let (rho, rho_arith, r_rho) = bits.select.as_ref().expect("selected");
        let mut mine = vec![be.binary(BinaryOp::Xor, &bits.sign, rho)?];
        if let Some(ch) = &bits.check {
            mine.push(ch.masked(self)?);
        }
        let refs: Vec<&Tensor> = mine.iter().collect();
        let theirs = self.exchange("compare", be.download(&be.concat(&refs)?)?)?;
        let words = bits.sign.len();
        let d = be.binary_host(BinaryOp::Xor, &mine[0], &theirs[..words])?;
        if let Some(ch) = &bits.check {
            ch.record(self, &mine[1], &theirs[words..])?;
        }
        let shape = v.shape().to_vec();
        let bit = be.bit_select(&d, rho_arith, first)?;
        let out = match payload {
            Payload::None => None,
            Payload::Value | Payload::Negated => {
                // y = ±v: Beaver difference ±C (public), mask ∓R, product share ∓[R·ρ].
                let value = payload == Payload::Value;
                let r_rho = r_rho.as_ref().expect("payload material");
                let (e, prod) = if value {
                    (bits.c.clone(), be.scalar(ScalarOp::Neg, r_rho, 0)?)
                } else {
                    (be.scalar(ScalarOp::Neg, &bits.c, 0)?, r_rho.clone())
                };
                let flat = v.tensor().reshaped(vec![v.len()]).expect("flat view");
                let y = if value {
                    flat
                } else {
                    be.scalar(ScalarOp::Neg, &flat, 0)?
                };
                let sel = be.payload_select(&d, rho_arith, &e, &prod, &y)?;
                Some(Share::new(sel.reshaped(shape.clone()).expect("n values")))
            }
        };
        self.set_step(prev);
        Ok((Share::new(bit.reshaped(shape).expect("n values")), out))
    }
}
