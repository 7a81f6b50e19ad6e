//! The narrow comparison (dealer lookup tables, 32 bits) and its fused range check, against
//! plaintext: exact signs, ReLU, max and argmax on edge values (0, ±1, ±2^k ± 1 up to ±2^31)
//! and odd sizes on every backend; every value outside the check's range detected, every
//! value inside it passed; exact round and byte counts; transcripts independent of the
//! secret.

mod common;

use common::{byte_chi2, session, sessions, test_rng};
use engine::dealer::tables::{check_top_bit, CHECK_LOW_BIT};
use engine::error::ErrorKind;
use engine::party::CHECK_WORDS_PER_MESSAGE;
use engine::protocols::compare::{pairwise_argmax_specs, CompareMode};
use engine::{Computation, PartyId};
use rand::Rng;
use rand_chacha::ChaCha20Rng;

const F: u32 = 16;

/// Ring values `|v| < 2^31`: the edges and random ones.
fn narrow_values(rng: &mut ChaCha20Rng, n: usize) -> Vec<i64> {
    let mut v = vec![0, 1, -1, (1 << 31) - 1, -(1 << 31), -(1 << 31) + 1];
    for k in 0..31 {
        let p = 1i64 << k;
        v.extend([p, -p, p - 1, -p + 1, p + 1, -p - 1]);
    }
    v.retain(|x| (-(1i64 << 31)..1i64 << 31).contains(x));
    while v.len() < n {
        v.push(match rng.gen_range(0..3) {
            0 => rng.gen_range(-(1i64 << 31)..1i64 << 31),
            1 => rng.gen_range(-1000..1000),
            _ => rng.gen_range(-(1i64 << 20)..1i64 << 20),
        });
    }
    v.truncate(n);
    v
}

fn ring(v: &[i64]) -> Vec<u64> {
    v.iter().map(|&x| x as u64).collect()
}

/// Run `mode`'s ReLU and sign on `vals`, finish the range checks, and reveal both.
fn relu_and_sign(
    s: &mut Computation,
    mode: CompareMode,
    vals: &[i64],
) -> engine::Result<(Vec<i64>, Vec<u64>)> {
    let n = vals.len();
    let x = s.share_ring(PartyId::Client, &[n], &ring(vals))?;
    let id = x.id();
    let [(r, b), _] = s.run(move |p| {
        let x = p.kept(id)?;
        let relu = p.relu_in(mode, &x)?;
        let (bit, _) = p.sign_select(mode, &x, false)?;
        p.finish_range_checks()?;
        Ok((p.keep(relu), p.keep(bit)))
    })?;
    let relu = s.reveal_ring(PartyId::ModelOwner, &Computation::handle(r, &[n]))?;
    let bit = s.reveal_ring(PartyId::ModelOwner, &Computation::handle(b, &[n]))?;
    Ok((relu.into_iter().map(|v| v as i64).collect(), bit))
}

#[test]
fn narrow_sign_relu_and_max_are_exact_below_2_pow_31_on_every_backend() {
    let mut rng = test_rng("narrow_exact");
    for mut s in sessions("narrow comparison") {
        for n in [1usize, 7, 65, 190, 1000] {
            for mode in [CompareMode::Narrow, CompareMode::Checked] {
                // The checked mode passes values below 2^29 only.
                let vals: Vec<i64> = narrow_values(&mut rng, n)
                    .into_iter()
                    .map(|v| {
                        if mode == CompareMode::Checked {
                            v >> 2
                        } else {
                            v
                        }
                    })
                    .collect();
                let (relu, bit) = relu_and_sign(&mut s, mode, &vals).unwrap();
                for i in 0..n {
                    assert_eq!(relu[i], vals[i].max(0), "{mode:?} relu({})", vals[i]);
                    assert_eq!(bit[i], (vals[i] < 0) as u64, "{mode:?} sign({})", vals[i]);
                }
            }
        }
        // Max over odd widths (a tournament of narrow comparisons).
        for (m, k) in [(1usize, 2usize), (5, 3), (33, 4), (3, 9)] {
            let vals = narrow_values(&mut rng, m * k)
                .into_iter()
                .map(|v| v >> 1)
                .collect::<Vec<_>>();
            let x = s
                .share_ring(PartyId::Client, &[m, k], &ring(&vals))
                .unwrap();
            let id = x.id();
            let [h, _] = s
                .run(move |p| {
                    let x = p.kept(id)?;
                    let y = p.max_last_in(CompareMode::Narrow, &x)?;
                    Ok(p.keep(y))
                })
                .unwrap();
            let got = s
                .reveal_ring(PartyId::ModelOwner, &Computation::handle(h, &[m]))
                .unwrap();
            for r in 0..m {
                let want = *vals[r * k..(r + 1) * k].iter().max().unwrap();
                assert_eq!(got[r] as i64, want, "row {r} of [{m}, {k}]");
            }
        }
    }
}

#[test]
fn pairwise_argmax_matches_plaintext_with_lowest_index_ties() {
    let mut rng = test_rng("pairwise_argmax");
    for mut s in sessions("pairwise argmax") {
        for &(m, k) in &[(1usize, 1usize), (1, 2), (7, 10), (65, 3), (3, 17), (2, 10)] {
            let mut x: Vec<i64> = (0..m * k)
                .map(|_| match rng.gen_range(0..3) {
                    0 => rng.gen_range(-3i64..3) << F,
                    // Differences below 2^29: every check passes.
                    _ => rng.gen_range(-(1i64 << 27)..1i64 << 27),
                })
                .collect();
            if m * k > 2 {
                x[..k].fill(5);
            }
            for mode in [CompareMode::Narrow, CompareMode::Checked] {
                let xs = s.share_ring(PartyId::Client, &[m, k], &ring(&x)).unwrap();
                let id = xs.id();
                let [h, _] = s
                    .run(move |p| {
                        let x = p.kept(id)?;
                        let y = p.argmax_in(mode, &x)?;
                        p.finish_range_checks()?;
                        Ok(p.keep(y))
                    })
                    .unwrap();
                let got = s
                    .reveal_ring(PartyId::ModelOwner, &Computation::handle(h, &[m]))
                    .unwrap();
                for r in 0..m {
                    let row = &x[r * k..(r + 1) * k];
                    let mut best = 0;
                    for j in 1..k {
                        if row[j] > row[best] {
                            best = j;
                        }
                    }
                    assert_eq!(got[r], (best as u64) << F, "{mode:?} row {r}: {row:?}");
                }
            }
        }
    }
}

#[test]
fn every_value_outside_the_checked_range_is_detected_and_every_value_inside_passes() {
    let top = check_top_bit(F);
    assert_eq!(top, 50);
    let pass = 1i64 << (CHECK_LOW_BIT - 1);
    let fail = 3i64 << (CHECK_LOW_BIT - 1);
    let mut s = session();
    // Inside: a batch of values at the pass bound's edges passes.
    let inside = vec![pass - 1, -pass, -pass + 1, 0, -1, pass - 2];
    relu_and_sign(&mut s, CompareMode::Checked, &inside).unwrap();
    // Outside, up to the window's precondition 2^(top - 2): each alone is caught, and with
    // many good values beside it.
    let mut rng = test_rng("checked_range");
    for bad in [
        fail,
        -fail - 1,
        1 << 31,
        -(1i64 << 31) - 5,
        1 << 40,
        -(1i64 << 47),
        (1i64 << 48) - 1,
        rng.gen_range(fail..1 << 48),
        -rng.gen_range(fail + 1..1 << 48),
    ] {
        let mut vals: Vec<i64> = (0..100).map(|_| rng.gen_range(-1000..1000)).collect();
        vals[rng.gen_range(0..100)] = bad;
        let e = relu_and_sign(&mut s, CompareMode::Checked, &vals).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OverflowDetected, "{bad}: {e}");
        assert!(e.to_string().contains("overflow detected"), "{e}");
    }
    // The same values through the pairwise argmax (differences of logits).
    let logits = vec![0i64, 1 << 40, 3, 4];
    let x = s
        .share_ring(PartyId::Client, &[1, 4], &ring(&logits))
        .unwrap();
    let id = x.id();
    let e = s
        .run(move |p| {
            let x = p.kept(id)?;
            let y = p.argmax_in(CompareMode::Checked, &x)?;
            p.finish_range_checks()?;
            Ok(p.keep(y))
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OverflowDetected, "{e}");
}

/// Words one party sends for a narrow comparison of `n` values with `check` AND pairs per
/// level and `selected` opened bit vectors: `C`, the two merge levels, the select round.
fn narrow_words(n: u64, check: [u64; 2], selected: u64) -> u64 {
    let w = n.div_ceil(64);
    n + 2 * (3 + 2 * check[0]) * w + 2 * (1 + 2 * check[1]) * w + selected * w
}

#[test]
fn narrow_rounds_and_bytes_are_fixed() {
    let mut s = session();
    let check = [1u64, 1]; // a 20-bit window at f = 16: chunks (7, 7, 6)
    for n in [1usize, 100, 1000, 4096] {
        let x = s.share(PartyId::Client, &[n], &vec![-0.5; n]).unwrap();
        let id = x.id();
        let [(plain, checked), _] = s
            .run(move |p| {
                let x = p.kept(id)?;
                let mut out = Vec::new();
                for mode in [CompareMode::Narrow, CompareMode::Checked] {
                    p.preprocess(&mode.relu_specs(n, F))?;
                    let t0 = p.traffic();
                    p.relu_in(mode, &x)?;
                    out.push(p.traffic().since(&t0).online());
                    p.finish_range_checks()?;
                }
                Ok((out[0], out[1]))
            })
            .unwrap();
        let n = n as u64;
        assert_eq!(plain.rounds, 4);
        assert_eq!(
            plain.bytes_sent,
            8 * (narrow_words(n, [0, 0], 1) + 4 * CHECK_WORDS_PER_MESSAGE)
        );
        assert_eq!(checked.rounds, 4);
        assert_eq!(
            checked.bytes_sent,
            8 * (narrow_words(n, check, 2) + 4 * CHECK_WORDS_PER_MESSAGE)
        );
        if n == 4096 {
            let per = |b: u64| b as f64 / n as f64;
            assert!(per(plain.bytes_sent) <= 9.2, "{}", per(plain.bytes_sent));
            assert!(
                per(checked.bytes_sent) <= 10.3,
                "{}",
                per(checked.bytes_sent)
            );
        }
    }
    // Argmax over 10 classes: 3 rounds of comparison, 4 AND levels, 1 conversion.
    for mode in [CompareMode::Narrow, CompareMode::Checked] {
        let x = s
            .share(PartyId::Client, &[64, 10], &vec![0.25; 640])
            .unwrap();
        let id = x.id();
        let [t, _] = s
            .run(move |p| {
                let x = p.kept(id)?;
                p.preprocess(&mode.argmax_specs(64, 10, F))?;
                let t0 = p.traffic();
                p.argmax_in(mode, &x)?;
                let t = p.traffic().since(&t0).online();
                p.finish_range_checks()?;
                Ok(t)
            })
            .unwrap();
        assert_eq!(t.rounds, 8, "{mode:?}");
        assert_eq!(
            pairwise_argmax_specs(64, 10, mode.check_top(F)).len(),
            3 + 4 + 1
        );
    }
}

#[test]
fn a_partys_narrow_transcript_is_independent_of_the_compared_values() {
    let mut s = session();
    let n = 8192;
    // All zeros against values spread over the whole checked range, half negative.
    let secrets = [
        vec![0i64; n],
        (0..n as i64)
            .map(|i| if i % 2 == 0 { -i << 16 } else { i << 15 })
            .collect::<Vec<_>>(),
    ];
    let mut transcripts = Vec::new();
    for secret in &secrets {
        let x = s.share_ring(PartyId::Client, &[n], &ring(secret)).unwrap();
        let id = x.id();
        let [a, _] = s
            .run(move |p| {
                let x = p.kept(id)?;
                p.record_transcript();
                p.relu_in(CompareMode::Checked, &x)?;
                p.finish_range_checks()?;
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
    assert!(byte_chi2(&ring(&secrets[0]), &ring(&secrets[1])) > 1000.0);
}
