//! Secure comparison: exactness on edge and random values, ReLU, eq, max, argmax (ties), round
//! and byte counts, and transcript independence.

mod common;

use common::{apply, apply2, byte_chi2, reveal, session, test_rng};
use engine::party::CHECK_WORDS_PER_MESSAGE;
use engine::protocols::compare::compare_specs;
use engine::PartyId;
use rand::Rng;

const F: u32 = 16;

fn edge_values() -> Vec<i64> {
    let max = (1i64 << 31) - 1;
    let mut v = vec![
        0,
        1,
        -1,
        max,
        -max,
        max - 1,
        -max + 1,
        i64::MAX,
        i64::MIN,
        i64::MIN + 1,
        i64::MAX - 1,
    ];
    for k in 0..63 {
        let p = 1i64 << k;
        v.extend([p, -p, p - 1, -p + 1, p + 1, -p - 1]);
    }
    v
}

fn ring(v: &[i64]) -> Vec<u64> {
    v.iter().map(|&x| x as u64).collect()
}

#[test]
fn ltz_is_exact_on_edges_and_100k_random_ring_values() {
    let mut rng = test_rng("ltz_exact");
    let mut s = session();
    let mut vals = edge_values();
    while vals.len() < 100_000 {
        let v: i64 = match rng.gen_range(0..3) {
            0 => rng.gen(),
            1 => rng.gen_range(-(1i64 << 31)..(1i64 << 31)),
            _ => rng.gen_range(-1000..1000),
        };
        vals.push(v);
    }
    let n = vals.len();
    let x = s.share_ring(PartyId::Client, &[n], &ring(&vals)).unwrap();
    let b = apply(&mut s, &x, &[n], |p, x| p.ltz(&x));
    let got = reveal(&mut s, &b);
    for (i, (&g, &v)) in got.iter().zip(&vals).enumerate() {
        assert_eq!(g, (v < 0) as u64, "value {v} at {i}");
    }
}

#[test]
fn relu_sign_lt_gt_agree_exactly_with_plaintext() {
    let mut rng = test_rng("relu_sign");
    let mut s = session();
    let mut vals: Vec<i64> = edge_values()
        .into_iter()
        .filter(|v| v.unsigned_abs() < 1 << 31)
        .collect();
    while vals.len() < 5000 {
        vals.push(rng.gen_range(-(1i64 << 31) + 1..(1i64 << 31)));
    }
    let n = vals.len();
    let x = s.share_ring(PartyId::Client, &[n], &ring(&vals)).unwrap();
    let r = apply(&mut s, &x, &[n], |p, x| p.relu(&x));
    let got = reveal(&mut s, &r);
    for (g, v) in got.iter().zip(&vals) {
        assert_eq!(*g as i64, (*v).max(0));
    }
    let sg = apply(&mut s, &x, &[n], |p, x| p.sign(&x));
    let got = reveal(&mut s, &sg);
    for (g, v) in got.iter().zip(&vals) {
        assert_eq!(*g as i64, if *v < 0 { -(1 << F) } else { 1 << F });
    }
    let others: Vec<i64> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                vals[i]
            } else {
                rng.gen_range(-(1i64 << 31) + 1..(1i64 << 31))
            }
        })
        .collect();
    let y = s
        .share_ring(PartyId::ModelOwner, &[n], &ring(&others))
        .unwrap();
    let lt = apply2(&mut s, &x, &y, &[n], |p, x, y| p.lt(&x, &y));
    let gt = apply2(&mut s, &x, &y, &[n], |p, x, y| p.gt(&x, &y));
    let eq = apply2(&mut s, &x, &y, &[n], |p, x, y| p.eq(&x, &y));
    let (lt, gt, eq) = (
        reveal(&mut s, &lt),
        reveal(&mut s, &gt),
        reveal(&mut s, &eq),
    );
    for i in 0..n {
        assert_eq!(
            lt[i],
            (vals[i] < others[i]) as u64,
            "lt {} {} at {i}",
            vals[i],
            others[i]
        );
        assert_eq!(gt[i], (vals[i] > others[i]) as u64);
        assert_eq!(
            eq[i],
            (vals[i] == others[i]) as u64,
            "{} vs {}",
            vals[i],
            others[i]
        );
    }
    let ltp = apply(&mut s, &x, &[n], |p, x| p.lt_public(&x, 0.5));
    let eqp = apply(&mut s, &x, &[n], |p, x| p.eq_public(&x, 1.0));
    let (ltp, eqp) = (reveal(&mut s, &ltp), reveal(&mut s, &eqp));
    for i in 0..n {
        assert_eq!(
            ltp[i],
            (vals[i] < 1 << (F - 1)) as u64,
            "lt_public: {} < 0.5",
            vals[i]
        );
        assert_eq!(eqp[i], (vals[i] == 1 << F) as u64);
    }
}

fn plain_argmax(row: &[i64]) -> (usize, i64) {
    let mut best = 0;
    for j in 1..row.len() {
        if row[j] > row[best] {
            best = j;
        }
    }
    (best, row[best])
}

#[test]
fn argmax_and_max_match_plaintext_with_lowest_index_ties() {
    let mut rng = test_rng("argmax");
    let mut s = session();
    for &(m, n) in &[(1usize, 1usize), (1, 2), (7, 10), (64, 10), (5, 7), (33, 3)] {
        let mut x: Vec<i64> = (0..m * n)
            .map(|_| match rng.gen_range(0..4) {
                0 => rng.gen_range(-3..3) << F, // many ties
                _ => rng.gen_range(-(1i64 << 31) + 1..(1i64 << 31)),
            })
            .collect();
        if m * n > 2 {
            // Force an all-equal row and a row whose max appears twice.
            x[..n].fill(5);
        }
        let xs = s.share_ring(PartyId::Client, &[m, n], &ring(&x)).unwrap();
        let am = apply(&mut s, &xs, &[m], |p, x| p.argmax_last(&x));
        let mx = apply(&mut s, &xs, &[m], |p, x| p.max_last(&x));
        let (am, mx) = (reveal(&mut s, &am), reveal(&mut s, &mx));
        for i in 0..m {
            let (j, v) = plain_argmax(&x[i * n..(i + 1) * n]);
            assert_eq!(
                am[i],
                (j as u64) << F,
                "row {i} of [{m},{n}]: {:?}",
                &x[i * n..(i + 1) * n]
            );
            assert_eq!(mx[i] as i64, v);
        }
    }
}

/// Bytes one party sends for one comparison of `n` elements: two masked words per AND word
/// (level 0: n words; level j: ceil(n/2^j) words for G and, below the top level, for P), plus
/// the packed masked sign bits.
pub fn compare_bytes(n: u64) -> u64 {
    let mut and_words = n;
    for j in 1..=6 {
        and_words += n.div_ceil(1 << j) * if j < 6 { 2 } else { 1 };
    }
    16 * and_words + 8 * n.div_ceil(64)
}

#[test]
fn rounds_and_bytes_per_comparison_are_fixed() {
    let mut s = session();
    for n in [1usize, 100, 1000] {
        let x = s.share(PartyId::Client, &[n], &vec![-0.5; n]).unwrap();
        let id = x.id();
        let [(ltz, relu), _] = s
            .run(move |p| {
                let x = p.kept(id)?;
                // Preprocess so only online traffic is counted.
                p.preprocess(&compare_specs(n, 0))?;
                let t0 = p.traffic();
                p.ltz(&x)?;
                let t1 = p.traffic();
                p.preprocess(&compare_specs(n, 1))?;
                let t2 = p.traffic();
                p.relu(&x)?;
                let t3 = p.traffic();
                Ok((t1.since(&t0).online(), t3.since(&t2).online()))
            })
            .unwrap();
        // Each of the 8 messages also carries the material check word.
        let check = 8 * 8 * CHECK_WORDS_PER_MESSAGE;
        assert_eq!(ltz.rounds, 8);
        assert_eq!(ltz.bytes_sent, compare_bytes(n as u64) + check);
        assert_eq!(relu.rounds, 8);
        assert_eq!(
            relu.bytes_sent,
            compare_bytes(n as u64) + 8 * n as u64 + check
        );
    }
    // Argmax over 10 classes: ceil(log2 10) = 4 tournament levels of 8 rounds.
    let x = s
        .share(PartyId::Client, &[64, 10], &vec![0.25; 640])
        .unwrap();
    let id = x.id();
    let [t, _] = s
        .run(move |p| {
            let x = p.kept(id)?;
            let t0 = p.traffic();
            p.argmax_last(&x)?;
            Ok(p.traffic().since(&t0).online())
        })
        .unwrap();
    assert_eq!(t.rounds, 32);
}

#[test]
fn a_partys_transcript_is_independent_of_the_compared_values() {
    let mut s = session();
    let n = 4096;
    let secrets = [
        vec![0i64; n],
        (0..n as i64).map(|i| -(1 << 30) + i).collect::<Vec<_>>(),
    ];
    let mut transcripts = Vec::new();
    for secret in &secrets {
        let x = s.share_ring(PartyId::Client, &[n], &ring(secret)).unwrap();
        let id = x.id();
        let [a, _] = s
            .run(move |p| {
                let x = p.kept(id)?;
                p.record_transcript();
                p.relu(&x)?;
                Ok(p.take_transcript().concat())
            })
            .unwrap();
        transcripts.push(a);
    }
    let (t0, t1) = (&transcripts[0], &transcripts[1]);
    assert_eq!(t0.len(), t1.len());
    // 255 degrees of freedom: the 1e-9 tail is about 380.
    let chi = byte_chi2(t0, t1);
    assert!(chi < 380.0, "transcripts distinguishable: chi2 = {chi}");
    // The statistic does detect a dependence: the secrets themselves differ wildly.
    assert!(byte_chi2(&ring(&secrets[0]), &ring(&secrets[1])) > 1000.0);
}

/// `eq_index` (one-round equality of small integers by table lookup) against plaintext, for
/// ranges from one class to the largest lookup domain and one past it (the comparison
/// fallback), odd lengths, values at both ends of the range, and the smallest, default and
/// largest fixed-point scales.
#[test]
fn eq_index_is_exact_for_every_pair_in_range() {
    use engine::protocols::compare::{eq_index_bits, MAX_EQ_INDEX_TABLE_WORDS};
    use engine::FixedPoint;
    let mut rng = test_rng("eq_index_exact");
    assert_eq!(eq_index_bits(1, 1, F), Some(1));
    assert_eq!(eq_index_bits(7, 10, F), Some(4));
    assert_eq!(eq_index_bits(7, 16, F), Some(4));
    assert_eq!(eq_index_bits(7, 17, F), Some(5));
    assert_eq!(eq_index_bits(7, 4096, F), Some(12));
    assert_eq!(eq_index_bits(7, 4097, F), None, "past the largest domain");
    assert_eq!(eq_index_bits(MAX_EQ_INDEX_TABLE_WORDS / 16, 10, F), Some(4));
    assert_eq!(
        eq_index_bits(MAX_EQ_INDEX_TABLE_WORDS / 16 + 1, 10, F),
        None,
        "past the table budget"
    );
    assert_eq!(eq_index_bits(usize::MAX, 10, F), None);
    for frac_bits in [1u32, F, 24] {
        let mut s = common::computation(
            engine::LocalConfig {
                ..Default::default()
            },
            FixedPoint::new(frac_bits).unwrap(),
        )
        .unwrap();
        for range in [1usize, 2, 3, 7, 10, 1000, 4096, 4097] {
            for n in [1usize, 7, 65] {
                let top = range as i64 - 1;
                let pick = |rng: &mut rand_chacha::ChaCha20Rng, i: usize| match i % 4 {
                    0 => 0,
                    1 => top,
                    _ => rng.gen_range(0..=top),
                };
                let xs: Vec<i64> = (0..n).map(|i| pick(&mut rng, i)).collect();
                // Every third pair equal, the rest drawn (equal by chance for small ranges).
                let ys: Vec<i64> = (0..n)
                    .map(|i| {
                        if i % 3 == 0 {
                            xs[i]
                        } else {
                            pick(&mut rng, i + 1)
                        }
                    })
                    .collect();
                let enc = |v: &[i64]| -> Vec<u64> {
                    v.iter().map(|&c| (c as u64) << frac_bits).collect()
                };
                let x = s.share_ring(PartyId::Client, &[n], &enc(&xs)).unwrap();
                let y = s.share_ring(PartyId::ModelOwner, &[n], &enc(&ys)).unwrap();
                let eq = apply2(&mut s, &x, &y, &[n], move |p, x, y| {
                    p.eq_index(&x, &y, range)
                });
                let got = reveal(&mut s, &eq);
                for i in 0..n {
                    assert_eq!(
                        got[i],
                        (xs[i] == ys[i]) as u64,
                        "f {frac_bits}, range {range}, n {n}: {} vs {} at {i}",
                        xs[i],
                        ys[i]
                    );
                }
            }
        }
    }
}

#[test]
fn eq_index_takes_one_round_and_eight_bytes_per_element() {
    use engine::protocols::compare::eq_index_specs;
    let mut s = session();
    for n in [1usize, 7, 1000] {
        let x = s.share(PartyId::Client, &[n], &vec![3.0; n]).unwrap();
        let y = s.share(PartyId::ModelOwner, &[n], &vec![4.0; n]).unwrap();
        let (ix, iy) = (x.id(), y.id());
        let [t, _] = s
            .run(move |p| {
                let (x, y) = (p.kept(ix)?, p.kept(iy)?);
                p.preprocess(&eq_index_specs(n, 10, F))?;
                let t0 = p.traffic();
                p.eq_index(&x, &y, 10)?;
                Ok(p.traffic().since(&t0).online())
            })
            .unwrap();
        assert_eq!(t.rounds, 1);
        assert_eq!(t.bytes_sent, 8 * (n as u64 + CHECK_WORDS_PER_MESSAGE));
    }
}

#[test]
fn eq_index_transcript_is_independent_of_the_compared_values() {
    let mut s = session();
    let n = 4096;
    let classes = 1000usize;
    let secrets: [Vec<u64>; 2] = [
        vec![0; n],
        (0..n).map(|i| ((i % classes) as u64) << F).collect(),
    ];
    let mut transcripts = Vec::new();
    for secret in &secrets {
        let x = s.share_ring(PartyId::Client, &[n], secret).unwrap();
        let y = s
            .share_ring(PartyId::ModelOwner, &[n], &vec![0; n])
            .unwrap();
        let (ix, iy) = (x.id(), y.id());
        let [a, _] = s
            .run(move |p| {
                let (x, y) = (p.kept(ix)?, p.kept(iy)?);
                p.record_transcript();
                p.eq_index(&x, &y, classes)?;
                Ok(p.take_transcript().concat())
            })
            .unwrap();
        transcripts.push(a);
    }
    // The opened words are uniform mod 2^11: compare their low two bytes' histograms.
    let low = |t: &[u64]| -> Vec<u64> { t.iter().map(|w| w & 0x7ff).collect() };
    let (t0, t1) = (low(&transcripts[0]), low(&transcripts[1]));
    assert_eq!(t0.len(), n);
    let chi = byte_chi2(&t0, &t1);
    assert!(chi < 380.0, "transcripts distinguishable: chi2 = {chi}");
    assert!(byte_chi2(&secrets[0], &secrets[1]) > 1000.0);
}
