//! Core engine: sharing, truncation, Beaver mul/matmul, fixed operands, bad inputs, share
//! statistics. Random inputs come from a logged seed (rerun with SEED=...).

mod common;

use std::time::Duration;

use common::{apply, apply2, reveal, session, test_rng};
use engine::transport::{channel_mesh, Transport};
use engine::{Computation, EngineError, FixedPoint, PartyId};
use rand::Rng;

const F: u32 = 16;

/// A random encoded value within the fixed-point range (|v| < 2^31 ring units), with edges.
fn fixed_value(rng: &mut impl Rng) -> i64 {
    let max = (1i64 << 31) - 1;
    match rng.gen_range(0..10) {
        0 => *[0, 1, -1, max, -max, 1 << F, -(1 << F)]
            .get(rng.gen_range(0..7))
            .unwrap(),
        1..=4 => rng.gen_range(-(1i64 << 20)..(1i64 << 20)),
        _ => rng.gen_range(-max..=max),
    }
}

/// `floor(x / 2^f)` and the only other allowed result `floor + 1`.
fn trunc_ok(got: u64, exact: i128, f: u32) -> bool {
    let fl = exact.div_euclid(1i128 << f);
    let g = got as i64 as i128;
    g == fl || g == fl + 1
}

#[test]
fn sharing_reconstructs_exactly() {
    let mut rng = test_rng("sharing_reconstructs_exactly");
    let mut s = session();
    for shape in [
        vec![1],
        vec![7],
        vec![3, 5],
        vec![1, 1],
        vec![33, 2],
        vec![257],
    ] {
        let n: usize = shape.iter().product();
        let mut vals: Vec<u64> = (0..n).map(|_| rng.gen()).collect();
        vals[0] = u64::MAX;
        if n > 1 {
            vals[1] = 0;
        }
        let x = s.share_ring(PartyId::Client, &shape, &vals).unwrap();
        assert_eq!(reveal(&mut s, &x), vals);
    }
}

#[test]
fn fixed_point_encoding_bounds_and_errors() {
    let fx = FixedPoint::new(F).unwrap();
    assert_eq!(fx.decode_one(fx.encode_one(-1.5, 0).unwrap()), -1.5);
    assert_eq!(fx.encode_one(fx.max_abs(), 0).unwrap(), (1u64 << 31) - 1);
    let e = fx.encode(&[0.0, 1e9]).unwrap_err();
    assert!(
        e.to_string()
            .contains("value 1000000000 at index 1 is outside the fixed-point range"),
        "{e}"
    );
    let e = fx.encode(&[f64::NAN]).unwrap_err();
    assert!(e.to_string().contains("index 0 is not finite (NaN)"), "{e}");
    let e = fx.encode(&[1.0, f64::NEG_INFINITY]).unwrap_err();
    assert!(e.to_string().contains("not finite (-inf)"), "{e}");
    assert!(FixedPoint::new(0).is_err());
    let mut s = session();
    let e = s
        .share(PartyId::Client, &[2], &[1.0, f64::INFINITY])
        .unwrap_err();
    assert!(matches!(e, EngineError::NotFinite { index: 1, .. }), "{e}");
}

#[test]
fn truncation_error_is_below_one_ulp_including_negatives() {
    let mut rng = test_rng("truncation");
    let bound = (1i64 << 62) - 1;
    let mut vals: Vec<i64> = vec![
        0,
        1,
        -1,
        bound,
        -bound,
        1 << 16,
        -(1 << 16),
        (1 << 16) - 1,
        -(1 << 16) + 1,
    ];
    for k in 0..62 {
        vals.extend([1i64 << k, -(1i64 << k), (1i64 << k) - 1, -(1i64 << k) + 1]);
    }
    while vals.len() < 20_000 {
        vals.push(rng.gen_range(-bound..=bound));
    }
    let ring: Vec<u64> = vals.iter().map(|&v| v as u64).collect();
    for bits in [1u32, 8, 16, 24] {
        // The dealer serves truncation by the session's fractional bits only.
        let mut s = common::computation(
            engine::LocalConfig {
                ..Default::default()
            },
            FixedPoint::new(bits).unwrap(),
        )
        .unwrap();
        let x = s.share_ring(PartyId::Client, &[ring.len()], &ring).unwrap();
        let y = apply(&mut s, &x, &[ring.len()], move |p, x| {
            p.truncate_by(&x, bits)
        });
        let got = reveal(&mut s, &y);
        for (i, (&g, &v)) in got.iter().zip(&vals).enumerate() {
            assert!(
                trunc_ok(g, v as i128, bits),
                "bits {bits} value {v} (index {i}) -> {}",
                g as i64
            );
        }
    }
}

#[test]
fn secure_mul_matches_fixed_point_product() {
    let mut rng = test_rng("secure_mul");
    let mut s = session();
    for n in [1usize, 7, 64, 1000] {
        let xs: Vec<i64> = (0..n).map(|_| fixed_value(&mut rng)).collect();
        let ys: Vec<i64> = (0..n).map(|_| fixed_value(&mut rng)).collect();
        let x = s
            .share_ring(
                PartyId::Client,
                &[n],
                &xs.iter().map(|&v| v as u64).collect::<Vec<_>>(),
            )
            .unwrap();
        let y = s
            .share_ring(
                PartyId::ModelOwner,
                &[n],
                &ys.iter().map(|&v| v as u64).collect::<Vec<_>>(),
            )
            .unwrap();
        let z = apply2(&mut s, &x, &y, &[n], |p, x, y| p.mul(&x, &y));
        let got = reveal(&mut s, &z);
        for i in 0..n {
            assert!(
                trunc_ok(got[i], xs[i] as i128 * ys[i] as i128, F),
                "{} * {}",
                xs[i],
                ys[i]
            );
        }
    }
}

fn random_matrix(rng: &mut impl Rng, r: usize, c: usize, small: bool) -> Vec<i64> {
    (0..r * c)
        .map(|_| {
            if small {
                rng.gen_range(-(1i64 << 18)..(1i64 << 18))
            } else {
                fixed_value(rng) >> 8
            }
        })
        .collect()
}

fn plain_matmul(x: &[i64], w: &[i64], m: usize, k: usize, n: usize) -> Vec<i128> {
    let mut out = vec![0i128; m * n];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                out[i * n + j] += x[i * k + p] as i128 * w[p * n + j] as i128;
            }
        }
    }
    out
}

fn to_ring(v: &[i64]) -> Vec<u64> {
    v.iter().map(|&x| x as u64).collect()
}

#[test]
fn secure_matmul_matches_plaintext_on_many_shapes() {
    let mut rng = test_rng("secure_matmul");
    let mut s = session();
    let dims = [1usize, 2, 7, 17, 33];
    for _ in 0..24 {
        let (m, k, n) = (
            dims[rng.gen_range(0..dims.len())],
            dims[rng.gen_range(0..dims.len())],
            dims[rng.gen_range(0..dims.len())],
        );
        let small = rng.gen_bool(0.5);
        let xs = random_matrix(&mut rng, m, k, small);
        let ws = random_matrix(&mut rng, k, n, true);
        let x = s
            .share_ring(PartyId::Client, &[m, k], &to_ring(&xs))
            .unwrap();
        let w = s
            .share_ring(PartyId::ModelOwner, &[k, n], &to_ring(&ws))
            .unwrap();
        let z = apply2(&mut s, &x, &w, &[m, n], |p, x, w| p.matmul(&x, &w));
        let got = reveal(&mut s, &z);
        let want = plain_matmul(&xs, &ws, m, k, n);
        for i in 0..m * n {
            assert!(trunc_ok(got[i], want[i], F), "[{m},{k},{n}] element {i}");
        }
    }
}

#[test]
fn fixed_operand_is_opened_once_and_reused() {
    let mut rng = test_rng("fixed_operand");
    let mut s = session();
    let (k, n) = (33usize, 7usize);
    let ws = random_matrix(&mut rng, k, n, true);
    let w = s
        .share_ring(PartyId::ModelOwner, &[k, n], &to_ring(&ws))
        .unwrap();
    let batches: Vec<(usize, Vec<i64>)> = [1usize, 5, 64]
        .iter()
        .map(|&m| (m, random_matrix(&mut rng, m, k, false)))
        .collect();
    let mut ids = Vec::new();
    for (m, xs) in &batches {
        ids.push(
            s.share_ring(PartyId::Client, &[*m, k], &to_ring(xs))
                .unwrap()
                .id(),
        );
    }
    let wid = w.id();
    let ids2 = ids.clone();
    let [outs, _] = s
        .run(move |p| {
            let w = p.kept(wid)?;
            let fixed = p.fix_operand(&w)?;
            let mut out = Vec::new();
            for &id in &ids2 {
                let x = p.kept(id)?;
                let before = p.traffic();
                let z = p.matmul_fixed(&x, &fixed)?;
                let t = p.traffic().since(&before);
                out.push((p.keep(z), t));
            }
            Ok(out)
        })
        .unwrap();
    for ((m, xs), (id, traffic)) in batches.iter().zip(outs) {
        let got = reveal(&mut s, &Computation::handle(id, &[*m, n]));
        let want = plain_matmul(xs, &ws, *m, k, n);
        for i in 0..m * n {
            assert!(trunc_ok(got[i], want[i], F));
        }
        // Online traffic: E = X - a (m*k words) and the truncation opening (m*n words), each
        // message with its material check word.
        let online = traffic.online();
        assert_eq!(
            online.bytes_sent,
            8 * ((*m * k + *m * n) as u64 + 2 * engine::party::CHECK_WORDS_PER_MESSAGE)
        );
        assert_eq!(online.rounds, 2);
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let mut s = session();
    let x = s.share(PartyId::Client, &[2, 3], &[1.0; 6]).unwrap();
    let y = s.share(PartyId::Client, &[2, 2], &[1.0; 4]).unwrap();
    let e = s.share(PartyId::Client, &[2, 2], &[1.0; 3]).unwrap_err();
    assert!(
        e.to_string()
            .contains("shape [2, 2] does not hold 3 values"),
        "{e}"
    );
    let (ix, iy) = (x.id(), y.id());
    let e = s
        .run(move |p| {
            let (x, y) = (p.kept(ix)?, p.kept(iy)?);
            p.mul(&x, &y).map(|_| ())
        })
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("shape mismatch in mul: [2, 3] vs [2, 2]"),
        "{e}"
    );
    let e = s
        .run(move |p| {
            let (x, y) = (p.kept(ix)?, p.kept(iy)?);
            p.matmul(&x, &y).map(|_| ())
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("cannot multiply [2, 3] by [2, 2]"),
        "{e}"
    );
    let e = s.run(move |p| p.kept(999).map(|_| ())).unwrap_err();
    assert!(
        e.to_string().contains("no shared tensor with id 999"),
        "{e}"
    );
}

#[test]
fn a_stalled_peer_times_out_and_a_closed_one_is_reported() {
    let mut s = common::computation(
        engine::LocalConfig {
            timeout: Duration::from_secs(1),
            ..Default::default()
        },
        engine::FixedPoint::default(),
    )
    .unwrap();
    // The client never sends (its link stays alive): both parties give up within about the
    // timeout, naming the client.
    let t = std::time::Instant::now();
    let e = s
        .run(|p| p.receive_share(PartyId::Client, &[1]).map(|_| ()))
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(e.kind(), engine::error::ErrorKind::PeerLost, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("client is alive but sent nothing for 1s")
            || text.contains("timed out after 1s waiting for client"),
        "{e}"
    );
    let mut mesh = channel_mesh(&[PartyId::Alice, PartyId::Bob], Duration::from_secs(5));
    let mut alice = mesh.remove(&PartyId::Alice).unwrap();
    drop(mesh);
    let e = alice.recv(PartyId::Bob).unwrap_err();
    assert!(
        e.to_string().contains("alice: connection to bob closed"),
        "{e}"
    );
}

/// Chi-square statistic of the 64 bit positions over `words` (each bit should be fair).
fn bit_chi2(words: &[u64]) -> f64 {
    let n = words.len() as f64;
    (0..64)
        .map(|b| {
            let ones = words.iter().filter(|w| (*w >> b) & 1 == 1).count() as f64;
            let e = n / 2.0;
            (ones - e).powi(2) / e + (n - ones - e).powi(2) / e
        })
        .sum()
}

#[test]
fn received_shares_are_uniform_and_independent_of_the_secret() {
    let mut s = session();
    let n = 20_000;
    // Two very different secrets: all zeros and all at the top of the range.
    let secrets = [vec![0u64; n], vec![(1u64 << 31) - 1; n]];
    let mut views = Vec::new();
    for secret in &secrets {
        for _ in 0..2 {
            let x = s.share_ring(PartyId::Client, &[n], secret).unwrap();
            let id = x.id();
            let [a, b] = s
                .run(move |p| {
                    let x = p.kept(id)?;
                    p.own_words(&x)
                })
                .unwrap();
            views.push((a, b));
        }
    }
    // Sharing the same secret twice gives different shares.
    assert_ne!(views[0].1, views[1].1);
    assert_ne!(views[2].0, views[3].0);
    // Chi-square over 64 bit positions (128 cells, 64 degrees of freedom): the 1e-9 tail is
    // about 150; a biased share (e.g. leaking the secret's top bits) scores in the thousands.
    for (a, b) in &views {
        assert!(
            bit_chi2(a) < 150.0,
            "alice's share bits biased: {}",
            bit_chi2(a)
        );
        assert!(
            bit_chi2(b) < 150.0,
            "bob's share bits biased: {}",
            bit_chi2(b)
        );
    }
    // Sanity: the test detects a non-uniform view.
    assert!(bit_chi2(&secrets[1]) > 1000.0);
}

#[test]
fn local_ops_and_public_constants_are_exact() {
    let mut rng = test_rng("local_ops");
    let mut s = session();
    let (m, n) = (7usize, 33usize);
    let xs: Vec<i64> = (0..m * n).map(|_| fixed_value(&mut rng) >> 2).collect();
    let x = s
        .share_ring(PartyId::Client, &[m, n], &to_ring(&xs))
        .unwrap();
    let sums = apply(&mut s, &x, &[m], |p, x| p.sum_last(&x));
    let total = apply(&mut s, &x, &[1], |p, x| p.sum_all(&x));
    let neg = apply(&mut s, &x, &[m, n], |p, x| p.neg(&x));
    let shifted = apply(&mut s, &x, &[m, n], |p, x| p.add_public(&x, -1.5));
    let tripled = apply(&mut s, &x, &[m, n], |p, x| p.mul_public_int(&x, -3));
    let scaled = apply(&mut s, &x, &[m, n], |p, x| p.mul_public(&x, 0.25));
    let want_rows: Vec<u64> = (0..m)
        .map(|i| xs[i * n..(i + 1) * n].iter().sum::<i64>() as u64)
        .collect();
    assert_eq!(reveal(&mut s, &sums), want_rows);
    assert_eq!(reveal(&mut s, &total), vec![xs.iter().sum::<i64>() as u64]);
    let (neg, shifted, tripled, scaled) = (
        reveal(&mut s, &neg),
        reveal(&mut s, &shifted),
        reveal(&mut s, &tripled),
        reveal(&mut s, &scaled),
    );
    for i in 0..m * n {
        assert_eq!(neg[i] as i64, -xs[i]);
        assert_eq!(shifted[i] as i64, xs[i] - 3 * (1 << (F - 1)));
        assert_eq!(tripled[i] as i64, -3 * xs[i]);
        // 0.25 encodes exactly as 2^14: x * 2^14 truncated by 2^16.
        assert!(trunc_ok(scaled[i], xs[i] as i128 * (1 << 14), F));
    }
}

#[test]
fn a_failed_program_leaves_no_stale_material() {
    let mut s = session();
    let x = s
        .share(PartyId::Client, &[4], &[1.0, -2.0, 3.0, -4.0])
        .unwrap();
    // Preprocess material for a comparison, then fail before using it.
    let e = s
        .run(move |p| {
            p.preprocess(&engine::protocols::compare::compare_specs(4, 1))?;
            p.kept(12345).map(|_| ())
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("no shared tensor with id 12345"),
        "{e}"
    );
    // The next program runs normally: its truncation is not fed the stale comparison material.
    let y = apply(&mut s, &x, &[4], |p, x| p.mul_public(&x, 0.5));
    let got: Vec<i64> = reveal(&mut s, &y).iter().map(|&v| v as i64).collect();
    assert_eq!(got, vec![1 << 15, -(1 << 16), 3 << 15, -(1 << 17)]);
}
