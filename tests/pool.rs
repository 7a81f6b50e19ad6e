//! The background material pool: entries used exactly once, discarded after a failure,
//! on-demand fallback when empty, and the same predictions with and without it.

mod common;

use std::time::{Duration, Instant};

use engine::nn::plain::{Layer, Sequential};
use engine::nn::{ClassifyOptions, SecureClassifier};
use engine::pool::MaterialPool;
use engine::{EngineError, PartyId, Session, SessionConfig};
use rand::Rng;

fn small_model(rng: &mut impl Rng, i: usize, h: usize, o: usize) -> Sequential {
    let mut lin = |a: usize, b: usize| {
        let w = (0..a * b).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let bias = (0..b).map(|_| rng.gen_range(-0.5..0.5)).collect();
        Layer::linear(a, b, w, bias).unwrap()
    };
    Sequential::new(vec![lin(i, h), Layer::ReLU, Layer::Dropout, lin(h, o)]).unwrap()
}

/// Wait until both parties hold `entries` ready entries' worth (by `next_entry` + readiness).
fn wait_ready(s: &mut Session, pool: &MaterialPool) {
    let t = Instant::now();
    loop {
        let [a, b] = s.pool_status(pool).unwrap();
        if a.ready && b.ready {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "pool never filled");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One request's forward pass from the pool; returns (used the pool, logits revealed).
fn request(
    s: &mut Session,
    model: &engine::nn::SharedModel,
    pool: &MaterialPool,
    x: &[f64],
    batch: usize,
) -> (bool, Vec<f64>) {
    let width = model.in_features();
    s.send_shares(
        PartyId::Client,
        &[batch, width],
        &s.config().fixed.encode(x).unwrap(),
    )
    .unwrap();
    let (m, p) = (model.clone(), pool.clone());
    let [used_a, used_b] = s
        .run(move |party| {
            let x = party.receive_share(PartyId::Client, &[batch, width])?;
            let used = party.preprocess_pooled(&p)?;
            let y = m.forward(party, &x)?;
            party.reveal_to(PartyId::Client, &y)?;
            Ok(used)
        })
        .unwrap();
    assert_eq!(used_a, used_b, "both parties decide alike");
    let (_, ring) = s.receive_revealed(PartyId::Client).unwrap();
    (used_a, s.config().fixed.decode(&ring))
}

#[test]
fn entries_are_used_once_and_empty_pool_falls_back() {
    let mut rng = common::test_rng("pool_once");
    let mut s = common::session();
    let model = small_model(&mut rng, 9, 7, 3);
    let shared = s.share_model(PartyId::ModelOwner, &model).unwrap();
    let batch = 5;
    let x: Vec<f64> = (0..batch * 9).map(|_| rng.gen_range(-2.0..2.0)).collect();
    let want = model.forward_f64(&x, batch).unwrap();
    // A paused pool is empty: requests fall back to on-demand material.
    let pool = s
        .open_pool_with(
            shared.material_specs(batch, s.config().fixed.frac_bits()),
            1,
            true,
        )
        .unwrap();
    for _ in 0..2 {
        let (u, got) = request(&mut s, &shared, &pool, &x, batch);
        assert!(!u, "an empty pool falls back");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-2, "{g} vs {w}");
        }
    }
    let [a, _] = s.pool_status(&pool).unwrap();
    assert_eq!((a.used, a.fallbacks, a.next_entry), (0, 2, 0));
    s.close_pool(&pool).unwrap();
    // Requests that find a ready entry use it and move on to the next one; requests that
    // arrive before the worker has produced fall back to on-demand material. Either way the
    // result is right, and each entry is taken at most once.
    let pool = s
        .open_pool(
            shared.material_specs(batch, s.config().fixed.frac_bits()),
            1,
        )
        .unwrap();
    let mut used = 0;
    for round in 0..4 {
        if round % 2 == 0 {
            wait_ready(&mut s, &pool);
        }
        let (u, got) = request(&mut s, &shared, &pool, &x, batch);
        used += u as u64;
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-2, "round {round}: {g} vs {w}");
        }
        let [a, b] = s.pool_status(&pool).unwrap();
        assert_eq!(a.used, used);
        assert_eq!(b.used, used);
        assert_eq!(a.next_entry, b.next_entry);
        assert_eq!(a.used + a.fallbacks, round + 1);
    }
    assert!(used >= 2, "waited-for entries are used");
    // Closing the pool frees its material; requests then cannot name it.
    s.close_pool(&pool).unwrap();
    let p2 = pool.clone();
    let err = s
        .run(move |p| p.preprocess_pooled(&p2).map(|_| ()))
        .unwrap_err();
    assert!(err.to_string().contains("no material pool"), "{err}");
}

#[test]
fn a_failed_request_discards_the_entry_it_took() {
    let mut rng = common::test_rng("pool_failure");
    let mut s = common::session();
    let model = small_model(&mut rng, 6, 5, 4);
    let shared = s.share_model(PartyId::ModelOwner, &model).unwrap();
    let batch = 3;
    let pool = s
        .open_pool(
            shared.material_specs(batch, s.config().fixed.frac_bits()),
            2,
        )
        .unwrap();
    wait_ready(&mut s, &pool);
    // Take entry 0, then fail before using it.
    let p0 = pool.clone();
    let err = s
        .run(move |p| {
            assert!(p.preprocess_pooled(&p0)?);
            assert!(p.queued_material() > 0);
            Err::<(), _>(EngineError::Invalid("request failed on purpose".into()))
        })
        .unwrap_err();
    assert!(err.to_string().contains("on purpose"));
    let [queued, _] = s.run(|p| Ok(p.queued_material())).unwrap();
    assert_eq!(queued, 0, "the taken material was dropped");
    let [a, _] = s.pool_status(&pool).unwrap();
    assert_eq!(
        (a.used, a.next_entry),
        (1, 1),
        "entry 0 is spent, never offered again"
    );
    // The next request gets entry 1 (or falls back) and is still right.
    wait_ready(&mut s, &pool);
    let x: Vec<f64> = (0..batch * 6).map(|_| rng.gen_range(-2.0..2.0)).collect();
    let want = model.forward_f64(&x, batch).unwrap();
    let (used, got) = request(&mut s, &shared, &pool, &x, batch);
    assert!(used);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-2, "{g} vs {w}");
    }
    let [a, b] = s.pool_status(&pool).unwrap();
    assert_eq!((a.next_entry, b.next_entry), (2, 2));
}

#[test]
fn deleting_a_model_closes_its_pools() {
    let mut rng = common::test_rng("pool_delete");
    let mut s = common::session();
    let shared = s
        .share_model(PartyId::ModelOwner, &small_model(&mut rng, 4, 3, 2))
        .unwrap();
    let pool = s
        .open_pool(shared.material_specs(2, s.config().fixed.frac_bits()), 1)
        .unwrap();
    wait_ready(&mut s, &pool);
    s.delete_model(shared.clone()).unwrap();
    assert!(
        s.pool_status(&pool).is_err(),
        "the pool went with its model"
    );
    let x = s.share(PartyId::Client, &[2, 4], &[0.5; 8]).unwrap();
    let xid = x.id();
    let err = s
        .run(move |p| shared.forward(p, &p.kept(xid)?).map(|_| ()))
        .unwrap_err();
    assert!(err.to_string().contains("no shared tensor"), "{err}");
}

#[test]
fn predictions_match_with_and_without_the_pool() {
    let mut rng = common::test_rng("pool_predictions");
    let (inp, hid, out) = (13, 9, 5);
    let model = small_model(&mut rng, inp, hid, out);
    let n = 23; // batches of 4: five full ones from the pool, one of 3 on demand
    let data: Vec<f64> = (0..n * inp).map(|_| rng.gen_range(-2.0..2.0)).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.gen_range(0..out as i64)).collect();
    let opts = ClassifyOptions {
        batch: 4,
        reveal_predictions: true,
    };
    let mut results = Vec::new();
    for entries in [0, 2] {
        let mut s = Session::new(SessionConfig::default()).unwrap();
        let shared = s.share_model(PartyId::ModelOwner, &model).unwrap();
        let mut clf = SecureClassifier::new(&mut s, shared);
        clf.set_pool(entries).unwrap();
        let r = clf.classify(&data, Some(&labels), &opts).unwrap();
        if entries == 0 {
            assert_eq!(r.pooled_batches, 0);
        }
        let logits = clf.logits_for_client(&data, 4).unwrap();
        results.push((r, logits));
    }
    let ((r0, l0), (r1, l1)) = (&results[0], &results[1]);
    eprintln!(
        "batches from the pool: {} of {}",
        r1.pooled_batches, r1.batches
    );
    assert_eq!(r0.predictions, r1.predictions);
    assert_eq!(r0.correct, r1.correct);
    // Both logits are within the truncation bound of plaintext: each Linear truncates once
    // (error < 1 ulp per output, then carried through the next layer's weights, |w| <= 1).
    let ulp = 1.0 / SessionConfig::default().fixed.scale();
    let bound = 2.0 * ulp * (1.0 + hid as f64) + 2.0 * ulp;
    let plain = model.forward_f64(&data, n).unwrap();
    for ((a, b), p) in l0.iter().zip(l1).zip(&plain) {
        assert!((a - b).abs() <= bound, "{a} vs {b} (bound {bound})");
        assert!(
            (a - p).abs() <= bound && (b - p).abs() <= bound,
            "{a} {b} vs {p}"
        );
    }
    // Predictions equal the plaintext argmax wherever the top two logits are apart by more
    // than the bound.
    let preds = r1.predictions.as_ref().unwrap();
    for (i, row) in plain.chunks(out).enumerate() {
        let mut idx: Vec<usize> = (0..out).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        if row[idx[0]] - row[idx[1]] > 2.0 * bound {
            assert_eq!(preds[i], idx[0] as i64, "row {i}");
        }
    }
}
