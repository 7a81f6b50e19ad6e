//! The dealer's side of one request: it answers bob's material requests with correction words
//! ([`Dealer::serve_batch`]), checking every request's streams and parameters first, and keeps
//! the fixed masks of uploaded models ([`FixedMasks`]).
//!
//! **Stream assignment.** The dealer numbers material streams itself, from its own counter, in
//! the order requests arrive; each stream is served at most once. A request
//! `[OP_BATCH, first, count, specs...]` states the stream bob expects to be assigned (`first`);
//! the dealer refuses it unless `first` equals its counter, so a request for a stream already
//! served (a replay, "twice") or for a later one ("out of order") is refused, never served.
//! The reply `[STATUS_OK, first, corrections...]` echoes the assigned stream and bob checks it.
//!
//! Why alice and bob can never be served different streams for one request: alice never talks
//! to the dealer after her seed; she expands item `i` of her `j`-th fetch at stream
//! `s_j + i`, where `s_j` is the number of items fetched before (her counter). Bob keeps the
//! same counter (both run the same program) and the dealer serves him exactly the streams
//! `[s_j, s_j + count)`, checked on both ends of the request. A party whose counter has drifted
//! (or that deviates) is refused at its next request instead of getting material that does not
//! match alice's. A refused request whose stream check passed still *consumes* its `count`
//! streams (unserved), so honest parties that both advanced their counters stay in step.
//!
//! **Parameter checks.** Before serving anything, every spec of a request is validated against
//! the [`DealerPolicy`]: sizes must not overflow and the whole request must stay under a word
//! limit; truncation must be by the session's fractional bits; a fixed mask is issued once per
//! id and a fixed triple needs a registered id of matching shape. One invalid spec refuses the
//! whole request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kernels::cpu::gemm::{gemm, gemm_packed, PackedB};
use kernels::cpu::zeroed_words;
use kernels::GATHER_ZERO;
use rayon::prelude::*;

use super::material::{
    draw_random_parts, expand_party_share, fill_words, Correction, MaterialSpec,
};
use super::streams::{material_stream, StreamSpace};
use super::tables::narrow_values;
use crate::error::{EngineError, Result};
use crate::nn::geometry::ConvShape;

use crate::wire::dealer::{decode_material_request, STATUS_OK};

/// What the dealer agrees to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DealerPolicy {
    /// The only truncation width served: the session's fractional bits.
    pub trunc_bits: u32,
    /// Most words one request may make the dealer draw for one party (all parts of all specs).
    pub max_request_words: u64,
}

impl DealerPolicy {
    /// Default word limit per request: 2^28 words (2 GiB per party share).
    pub const DEFAULT_MAX_REQUEST_WORDS: u64 = 1 << 28;

    /// The policy for a session with `frac_bits` fractional bits.
    pub fn for_session(frac_bits: u32) -> DealerPolicy {
        DealerPolicy {
            trunc_bits: frac_bits,
            max_request_words: Self::DEFAULT_MAX_REQUEST_WORDS,
        }
    }
}

/// Where a fixed mask came from: enough to draw it again from the seeds of the request that
/// issued it (what the dealer service persists for an uploaded model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaskRecord {
    /// The fixed operand's id.
    pub fixed_id: u64,
    /// The stream it was drawn at.
    pub stream: u64,
    /// Rows.
    pub k: usize,
    /// Columns.
    pub n: usize,
}

/// The fixed masks the dealer keeps (shared by the threads serving bob's two links).
#[derive(Default)]
pub(crate) struct FixedMasks {
    /// The packed mask `b` of each live fixed operand, by id.
    live: HashMap<u64, Arc<PackedB>>,
    /// Every id a mask was ever issued for (a forgotten id is never issued again).
    issued: HashSet<u64>,
    /// How each mask was drawn, in issue order.
    minted: Vec<MaskRecord>,
}

impl FixedMasks {
    /// Refuse unless fixed operand `fixed_id` is live and `k x n`.
    fn check(&self, fixed_id: u64, k: usize, n: usize) -> Result<()> {
        let Some(b) = self.live.get(&fixed_id) else {
            return Err(EngineError::Protocol(format!(
                "unknown fixed operand {fixed_id}"
            )));
        };
        if (b.k(), b.n()) != (k, n) {
            return Err(EngineError::Protocol(format!(
                "fixed operand {fixed_id} is {}x{}, request says {k}x{n}",
                b.k(),
                b.n()
            )));
        }
        Ok(())
    }

    /// How each mask was drawn.
    pub(crate) fn records(&self) -> &[MaskRecord] {
        &self.minted
    }

    /// Draw the masks of `records` again from the `seeds` that issued them.
    pub(crate) fn regenerate(
        seeds: [[u8; 32]; 2],
        records: &[MaskRecord],
        policy: DealerPolicy,
    ) -> Result<Arc<RwLock<FixedMasks>>> {
        let fixed = Arc::new(RwLock::new(FixedMasks::default()));
        let dealer = Dealer::new(seeds, fixed.clone(), policy);
        for r in records {
            let spec = MaterialSpec::FixedMask {
                fixed_id: r.fixed_id,
                k: r.k,
                n: r.n,
            };
            dealer.validate(&[spec])?;
            dealer.corrections(&spec, r.stream, &mut Vec::new())?;
        }
        Ok(fixed)
    }
}

/// The dealer's state for one request: the two seeds, the policy and the fixed masks it keeps.
#[derive(Clone)]
pub(crate) struct Dealer {
    seeds: [[u8; 32]; 2],
    fixed: Arc<RwLock<FixedMasks>>,
    policy: DealerPolicy,
}

fn add(x: &[u64], y: &[u64]) -> Vec<u64> {
    x.par_iter()
        .zip(y)
        .map(|(a, b)| a.wrapping_add(*b))
        .collect()
}

impl Dealer {
    /// A dealer serving material from `seeds`, with the fixed masks `fixed`, under `policy`.
    pub(crate) fn new(
        seeds: [[u8; 32]; 2],
        fixed: Arc<RwLock<FixedMasks>>,
        policy: DealerPolicy,
    ) -> Dealer {
        Dealer {
            seeds,
            fixed,
            policy,
        }
    }

    /// Append bob's correction words for one spec at stream `stream` to `out` (written once,
    /// straight into the reply, which [`Self::serve_batch`] sizes for the whole request: a copy
    /// per spec cost a pass over fresh pages).
    fn corrections(&self, spec: &MaterialSpec, stream: u64, out: &mut Vec<u64>) -> Result<()> {
        let mut r0 = material_stream(self.seeds[0], stream);
        let mut r1 = material_stream(self.seeds[1], stream);
        if let MaterialSpec::FixedMask { fixed_id, k, n } = *spec {
            // b = b0 + b1, drawn and packed row block by row block: the dealer holds each mask
            // once, in the layout its products use.
            let mut packed = PackedB::zeroed(k, n);
            if n > 0 {
                let rows = crate::protocols::matmul::block_rows(n).min(k.max(1));
                let (mut b0, mut b1) = (zeroed_words(rows * n), zeroed_words(rows * n));
                for p0 in (0..k).step_by(rows) {
                    let len = (k - p0).min(rows) * n;
                    fill_words(&mut r0, &mut b0[..len]);
                    fill_words(&mut r1, &mut b1[..len]);
                    b0[..len]
                        .par_iter_mut()
                        .zip(&b1[..len])
                        .for_each(|(x, y)| *x = x.wrapping_add(*y));
                    packed.pack_rows(p0, &b0[..len]);
                }
            }
            let mut fixed = self
                .fixed
                .write()
                .map_err(|_| EngineError::Protocol("dealer state poisoned".into()))?;
            // Checked by `validate`; checked again here, under the lock, against a request
            // for the same id on the other link in between.
            if !fixed.issued.insert(fixed_id) {
                return Err(EngineError::Protocol(format!(
                    "fixed operand {fixed_id} already has a mask (issued once per id)"
                )));
            }
            fixed.live.insert(fixed_id, Arc::new(packed));
            fixed.minted.push(MaskRecord {
                fixed_id,
                stream,
                k,
                n,
            });
            return Ok(());
        }
        let p0 = expand_party_share(spec, 0, &mut r0, None)?;
        let mut p1 = draw_random_parts(spec, &mut r1);
        let nr = spec.parts().random.len();
        let values: Vec<Vec<u64>> = match *spec {
            MaterialSpec::MulTriple { .. } => {
                let (a, b) = (add(&p0[0], &p1[0]), add(&p0[1], &p1[1]));
                vec![a
                    .par_iter()
                    .zip(&b)
                    .map(|(x, y)| x.wrapping_mul(*y))
                    .collect()]
            }
            MaterialSpec::MatmulTriple { m, k, n } => {
                let (a, b) = (add(&p0[0], &p1[0]), add(&p0[1], &p1[1]));
                let mut c = vec![0u64; m * n];
                gemm(m, k, n, &a, &b, &mut c, false);
                vec![c]
            }
            MaterialSpec::FixedMask { .. } => unreachable!("handled above"),
            MaterialSpec::FixedTriple { fixed_id, m, k, n } => {
                let b = self.fixed_mask(fixed_id, k, n)?;
                let a = sum_into_bobs(&mut p1[0], &p0[0]);
                let mut c = vec![0u64; m * n];
                gemm_packed(m, a, &b, &mut c, false);
                vec![c]
            }
            MaterialSpec::FixedConv { fixed_id, conv } => {
                let b = self.fixed_mask(fixed_id, conv.depth(), conv.out_channels())?;
                let a = sum_into_bobs(&mut p1[0], &p0[0]);
                vec![convolve_mask(&conv, a, &b)]
            }
            MaterialSpec::Trunc { bits, .. } => {
                let r = add(&p0[0], &p1[0]);
                vec![
                    r.par_iter().map(|x| x >> bits).collect(),
                    r.par_iter().map(|x| x >> 63).collect(),
                ]
            }
            MaterialSpec::AndTriple { .. } => {
                let (a0, a1, b0, b1) = (&p0[0], &p1[0], &p0[1], &p1[1]);
                vec![(0..a0.len())
                    .into_par_iter()
                    .map(|i| (a0[i] ^ a1[i]) & (b0[i] ^ b1[i]))
                    .collect()]
            }
            MaterialSpec::BitSelect { n, payloads } => {
                let packed: Vec<u64> = p0[0].iter().zip(&p1[0]).map(|(x, y)| x ^ y).collect();
                let bit: Vec<u64> = (0..n).map(|e| (packed[e / 64] >> (e % 64)) & 1).collect();
                let a = add(&p0[1], &p1[1]);
                let c: Vec<u64> = (0..payloads * n)
                    .into_par_iter()
                    .map(|i| a[i].wrapping_mul(bit[i % n]))
                    .collect();
                vec![bit, c]
            }
            MaterialSpec::OneHot { n, bits } => {
                let mask = (1u64 << bits) - 1;
                let r = add(&p0[0], &p1[0]);
                let mut table = vec![0u64; n << bits];
                for (e, &r) in r.iter().enumerate() {
                    table[(e << bits) + (r & mask) as usize] = 1;
                }
                vec![table]
            }
            MaterialSpec::NarrowCompare {
                check_top, select, ..
            } => {
                let xor = |a: &[u64], b: &[u64]| a.iter().zip(b).map(|(x, y)| x ^ y).collect();
                let bits: Vec<Vec<u64>> = (1..nr).map(|i| xor(&p0[i], &p1[i])).collect();
                let r = add(&p0[0], &p1[0]);
                narrow_values(&r, check_top, select, &bits)
            }
        };
        let corrections = spec.corrections();
        for (i, v) in values.iter().enumerate() {
            let alice = v.par_iter().zip(&p0[nr + i]);
            match corrections[i] {
                Correction::Arithmetic => out.par_extend(alice.map(|(x, y)| x.wrapping_sub(*y))),
                Correction::Boolean => out.par_extend(alice.map(|(x, y)| x ^ y)),
            }
        }
        Ok(())
    }

    /// Check every spec of a request against the policy and the dealer's state (the one check,
    /// for requests on either link).
    fn validate(&self, specs: &[MaterialSpec]) -> Result<()> {
        let fixed = self
            .fixed
            .read()
            .map_err(|_| EngineError::Protocol("dealer state poisoned".into()))?;
        let refuse = |msg: String| Err(EngineError::Protocol(msg));
        let mut total = 0u64;
        let mut new_fixed = Vec::new();
        for spec in specs {
            let words = spec
                .checked_words()
                .ok_or_else(|| EngineError::Protocol(format!("{spec:?}: size overflows")))?;
            total = total.saturating_add(words);
            if total > self.policy.max_request_words {
                return refuse(format!(
                    "request needs more than {} words of material per party (the dealer's \
                     limit, limits.max_material_words)",
                    self.policy.max_request_words
                ));
            }
            match *spec {
                MaterialSpec::Trunc { bits, .. } if bits != self.policy.trunc_bits => {
                    return refuse(format!(
                        "truncation by {bits} bits refused (this session truncates by {})",
                        self.policy.trunc_bits
                    ));
                }
                MaterialSpec::FixedMask { fixed_id, .. } => {
                    if fixed.issued.contains(&fixed_id) || new_fixed.contains(&fixed_id) {
                        return refuse(format!(
                            "fixed operand {fixed_id} already has a mask (issued once per id)"
                        ));
                    }
                    new_fixed.push(fixed_id);
                }
                MaterialSpec::FixedTriple { fixed_id, k, n, .. } => {
                    fixed.check(fixed_id, k, n)?;
                }
                MaterialSpec::FixedConv { fixed_id, conv } => {
                    fixed.check(fixed_id, conv.depth(), conv.out_channels())?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The mask `b` of fixed operand `fixed_id`, checked to be `k x n`.
    fn fixed_mask(&self, fixed_id: u64, k: usize, n: usize) -> Result<Arc<PackedB>> {
        let fixed = self
            .fixed
            .read()
            .map_err(|_| EngineError::Protocol("dealer state poisoned".into()))?;
        fixed.check(fixed_id, k, n)?;
        Ok(fixed.live[&fixed_id].clone())
    }

    /// Serve one request received on a link whose streams are `space`.
    pub(crate) fn serve_batch(&self, space: &mut StreamSpace, words: &[u64]) -> Result<Vec<u64>> {
        let (first, specs) = decode_material_request(words)?;
        // The streams are consumed whether or not the request is served (see the module doc).
        space.admit(first, specs.len() as u64)?;
        self.validate(&specs)?;
        let words: usize = specs
            .iter()
            .map(|s| s.parts().derived.iter().sum::<usize>())
            .sum();
        let mut out = Vec::with_capacity(2 + words);
        out.extend([STATUS_OK, first]);
        for (i, spec) in specs.iter().enumerate() {
            self.corrections(spec, first + i as u64, &mut out)?;
        }
        Ok(out)
    }
}

/// `a = a0 + a1`, summed in place into bob's part (not needed afterwards).
fn sum_into_bobs<'a>(bobs: &'a mut [u64], alices: &[u64]) -> &'a [u64] {
    bobs.par_iter_mut()
        .zip(alices)
        .for_each(|(x, y)| *x = x.wrapping_add(*y));
    bobs
}

/// `im2col(a)·b` for an activation-shaped mask `a` of `conv`'s input: the convolution of the
/// mask by the fixed mask `b`, made block of output pixels by block so im2col's expansion of
/// the mask is never held whole.
fn convolve_mask(conv: &ConvShape, a: &[u64], b: &PackedB) -> Vec<u64> {
    let (pixels, k, n) = (conv.pixels(), conv.depth(), conv.out_channels());
    let mut c = vec![0u64; pixels * n];
    let rows = crate::protocols::matmul::block_rows(k).min(pixels);
    let mut cols = zeroed_words(rows * k);
    for p0 in (0..pixels).step_by(rows) {
        let p1 = (p0 + rows).min(pixels);
        let index = conv.im2col_rows(p0..p1);
        let block = &mut cols[..index.len()];
        block.par_iter_mut().zip(&index).for_each(|(d, &i)| {
            *d = if i == GATHER_ZERO { 0 } else { a[i as usize] };
        });
        gemm_packed(p1 - p0, block, b, &mut c[p0 * n..p1 * n], false);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::dealer::{OP_BATCH, STATUS_OK};
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    /// A dealer for one request, answering a (deviating) bob's raw requests.
    struct Harness {
        alice_seed: [u8; 32],
        bob_seed: [u8; 32],
        dealer: Dealer,
        space: StreamSpace,
    }

    impl Harness {
        fn new(trunc_bits: u32) -> Harness {
            let mut rng = ChaCha20Rng::seed_from_u64(11);
            let mut seeds = [[0u8; 32]; 2];
            for s in &mut seeds {
                rng.fill_bytes(s);
            }
            let policy = DealerPolicy {
                trunc_bits,
                max_request_words: 1 << 20,
            };
            Harness {
                alice_seed: seeds[0],
                bob_seed: seeds[1],
                dealer: Dealer::new(seeds, Arc::new(RwLock::new(FixedMasks::default())), policy),
                space: StreamSpace::new(),
            }
        }

        /// Send a raw request body; Ok(corrections with the assigned stream) or Err(reason).
        fn ask(
            &mut self,
            first: u64,
            specs: &[MaterialSpec],
        ) -> std::result::Result<Vec<u64>, String> {
            self.raw(crate::wire::dealer::encode_material_request(first, specs))
        }

        fn raw(&mut self, req: Vec<u64>) -> std::result::Result<Vec<u64>, String> {
            let reply = match req.first() {
                Some(&OP_BATCH) => self.dealer.serve_batch(&mut self.space, &req[1..]),
                _ => Err(EngineError::Protocol("unknown dealer opcode".into())),
            };
            match reply {
                Ok(r) => {
                    assert_eq!(r[0], STATUS_OK);
                    Ok(r[1..].to_vec())
                }
                Err(e) => Err(e.to_string()),
            }
        }
    }

    /// Alice's and bob's shares of a truncation pair reconstruct `r`, `r >> bits`, `msb(r)`.
    fn check_trunc(h: &Harness, stream: u64, n: usize, bits: u32, corrections: &[u64]) {
        let spec = MaterialSpec::Trunc { n, bits };
        let a =
            expand_party_share(&spec, 0, &mut material_stream(h.alice_seed, stream), None).unwrap();
        let b = expand_party_share(
            &spec,
            1,
            &mut material_stream(h.bob_seed, stream),
            Some(corrections),
        )
        .unwrap();
        for i in 0..n {
            let r = a[0][i].wrapping_add(b[0][i]);
            assert_eq!(a[1][i].wrapping_add(b[1][i]), r >> bits);
            assert_eq!(a[2][i].wrapping_add(b[2][i]), r >> 63);
        }
    }

    #[test]
    fn one_hot_rows_mark_the_shared_mask_and_wide_domains_are_refused() {
        let mut h = Harness::new(16);
        let (n, bits) = (7, 4);
        let spec = MaterialSpec::OneHot { n, bits };
        let ok = h.ask(0, &[spec]).unwrap();
        let a = expand_party_share(&spec, 0, &mut material_stream(h.alice_seed, 0), None).unwrap();
        let b = expand_party_share(
            &spec,
            1,
            &mut material_stream(h.bob_seed, 0),
            Some(&ok[1..]),
        )
        .unwrap();
        for e in 0..n {
            let r = (a[0][e].wrapping_add(b[0][e]) & 15) as usize;
            for j in 0..16 {
                let t = a[1][e * 16 + j].wrapping_add(b[1][e * 16 + j]);
                assert_eq!(t, (j == r) as u64, "element {e}, entry {j}, mask {r}");
            }
        }
        for bad in [0u64, 13, 1 << 32] {
            let mut req = vec![OP_BATCH, 1, 1];
            MaterialSpec::OneHot { n: 1, bits: 1 }.encode(&mut req);
            req[5] = bad;
            let e = h.raw(req).unwrap_err();
            assert!(
                e.contains(&format!("one-hot domain of {bad} bits out of range")),
                "{e}"
            );
        }
    }

    #[test]
    fn streams_are_assigned_by_the_dealer_and_served_once() {
        let mut h = Harness::new(16);
        let t = MaterialSpec::Trunc { n: 5, bits: 16 };
        let ok = h.ask(0, &[t, t]).unwrap();
        assert_eq!(ok[0], 0, "assigned first stream");
        check_trunc(&h, 0, 5, 16, &ok[1..11]);
        check_trunc(&h, 1, 5, 16, &ok[11..21]);
        // Twice: a replay of stream 1.
        let e = h.ask(1, &[t]).unwrap_err();
        assert!(
            e.contains("streams from 1 refused (already served): the next stream is 2"),
            "{e}"
        );
        // Out of order: skipping ahead.
        let e = h.ask(7, &[t]).unwrap_err();
        assert!(e.contains("streams from 7 refused (out of order)"), "{e}");
        // Neither refusal consumed anything: stream 2 is still next and served correctly.
        let ok = h.ask(2, &[t]).unwrap();
        assert_eq!(ok[0], 2);
        check_trunc(&h, 2, 5, 16, &ok[1..]);
    }

    #[test]
    fn altered_parameters_are_refused_and_consume_their_streams() {
        let mut h = Harness::new(16);
        // Another truncation width (the mask-recovery attack needs two widths).
        let e = h
            .ask(0, &[MaterialSpec::Trunc { n: 5, bits: 17 }])
            .unwrap_err();
        assert!(
            e.contains("truncation by 17 bits refused (this session truncates by 16)"),
            "{e}"
        );
        // The refused request consumed stream 0: asking for it again is a replay.
        let e = h
            .ask(0, &[MaterialSpec::Trunc { n: 5, bits: 16 }])
            .unwrap_err();
        assert!(e.contains("already served"), "{e}");
        // Unknown fixed operand, and a shape that disagrees with the registered one.
        let e = h
            .ask(
                1,
                &[MaterialSpec::FixedTriple {
                    fixed_id: 9,
                    m: 2,
                    k: 3,
                    n: 4,
                }],
            )
            .unwrap_err();
        assert!(e.contains("unknown fixed operand 9"), "{e}");
        h.ask(
            2,
            &[MaterialSpec::FixedMask {
                fixed_id: 9,
                k: 3,
                n: 4,
            }],
        )
        .unwrap();
        let e = h
            .ask(
                3,
                &[MaterialSpec::FixedTriple {
                    fixed_id: 9,
                    m: 2,
                    k: 4,
                    n: 3,
                }],
            )
            .unwrap_err();
        assert!(
            e.contains("fixed operand 9 is 3x4, request says 4x3"),
            "{e}"
        );
        // A fixed mask is issued once per id.
        let e = h
            .ask(
                4,
                &[MaterialSpec::FixedMask {
                    fixed_id: 9,
                    k: 3,
                    n: 4,
                }],
            )
            .unwrap_err();
        assert!(e.contains("fixed operand 9 already has a mask"), "{e}");
        // Sizes: overflowing and over the limit (nothing is allocated).
        let huge = 1usize << 40;
        let e = h
            .ask(
                5,
                &[MaterialSpec::MatmulTriple {
                    m: huge,
                    k: huge,
                    n: 1,
                }],
            )
            .unwrap_err();
        assert!(e.contains("size overflows"), "{e}");
        let e = h
            .ask(6, &[MaterialSpec::MulTriple { n: 1 << 19 }])
            .unwrap_err();
        assert!(e.contains("more than 1048576 words"), "{e}");
        // One bad spec refuses the whole request.
        let e = h
            .ask(
                7,
                &[
                    MaterialSpec::MulTriple { n: 3 },
                    MaterialSpec::Trunc { n: 1, bits: 3 },
                ],
            )
            .unwrap_err();
        assert!(e.contains("truncation by 3 bits"), "{e}");
        // Malformed requests.
        let e = h.raw(vec![OP_BATCH, 9]).unwrap_err();
        assert!(e.contains("short material request"), "{e}");
        let e = h.raw(vec![OP_BATCH, 9, u64::MAX, 1, 2]).unwrap_err();
        assert!(e.contains("malformed material request"), "{e}");
        let e = h.raw(vec![OP_BATCH, 9, 1, 99, 0, 0, 0, 0]).unwrap_err();
        assert!(e.contains("unknown material tag 99"), "{e}");
        let e = h.raw(vec![77]).unwrap_err();
        assert!(e.contains("unknown dealer opcode"), "{e}");
        // A width that would equal the session's only once cut to 32 bits.
        let mut req = vec![OP_BATCH, 9, 1];
        MaterialSpec::Trunc { n: 1, bits: 16 }.encode(&mut req);
        req[5] += 1 << 32;
        let e = h.raw(req).unwrap_err();
        assert!(
            e.contains("truncation width 4294967312 out of range"),
            "{e}"
        );
        // The dealer is still serving, at the stream after everything consumed.
        let ok = h.ask(9, &[MaterialSpec::Trunc { n: 3, bits: 16 }]).unwrap();
        check_trunc(&h, 9, 3, 16, &ok[1..]);
    }
}
