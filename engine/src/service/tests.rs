//! Interleavings of the services forced with test hooks.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::fixed::FixedPoint;
use crate::nn::{Layer, ModelBounds, Sequential};
use crate::service::hooks::HookPoint;
use crate::service::local::{LocalConfig, LocalDeployment};
use crate::wire::control::{fresh_id, Request};

/// A 10-class linear model with random weights and 8 random rows (from `seed`), and the
/// plaintext predictions.
fn model_and_rows(seed: u64) -> (Sequential, Vec<f64>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (inp, out, rows) = (16, 10, 8);
    let w: Vec<f64> = (0..inp * out).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let b: Vec<f64> = (0..out).map(|_| rng.gen_range(-0.5..0.5)).collect();
    let model = Sequential::new(vec![Layer::linear(inp, out, w, b).unwrap()]).unwrap();
    let x: Vec<f64> = (0..rows * inp).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let logits = model.forward_f64(&x, rows).unwrap();
    let pred = logits
        .chunks(out)
        .map(|r| (0..out).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap() as i64)
        .collect();
    (model, x, pred)
}

/// Issue 21's race, forced: alice's dealer join for material made ahead arrives only after
/// bob has made and ended his half of it. The material must still be consistent (or the
/// request must fail loudly): a request that uses it must give the plaintext predictions.
#[test]
fn material_made_ahead_is_consistent_when_alices_dealer_join_is_late() {
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let (model, x, expected) = model_and_rows(seed);
    let d = LocalDeployment::start(LocalConfig::default()).unwrap();
    // The dealer holds alice's join of any request until bob's part of it ended (at most 2 s:
    // requests that need alice before bob can end pass after the wait).
    let ended: Arc<(Mutex<Vec<u64>>, Condvar)> = Arc::default();
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (signal, armed) = (ended.clone(), held.clone());
    d.dealer().hooks.set(Arc::new(move |p| match p {
        HookPoint::DealerEnded { request } => {
            signal.0.lock().unwrap().push(request);
            signal.1.notify_all();
        }
        HookPoint::DealerJoin { request, party: 0 }
            if armed.load(std::sync::atomic::Ordering::SeqCst) =>
        {
            let (lock, cv) = &*signal;
            let mut done = lock.lock().unwrap();
            let until = Instant::now() + Duration::from_secs(2);
            while !done.contains(&request) && Instant::now() < until {
                done = cv.wait_timeout(done, Duration::from_millis(20)).unwrap().0;
            }
        }
        _ => {}
    }));
    let mut owner = d.model_owner().unwrap();
    owner
        .upload(
            "m",
            &model,
            &FixedPoint::default(),
            &ModelBounds::default(),
            &mut |_, _| {},
        )
        .unwrap();
    let mut client = d.client().unwrap();
    let labels: Vec<i64> = (0..8).map(|i| i % 10).collect();
    // The first request runs on demand and starts making material ahead for its shape (with
    // alice's dealer joins held from now on).
    held.store(true, std::sync::atomic::Ordering::SeqCst);
    let first = client.classify("m", &x, Some(&labels), 8).unwrap();
    assert_eq!(first.predictions, expected, "on demand, seed {seed}");
    let until = Instant::now() + Duration::from_secs(30);
    while d.parties()[0].ready_batches() < 2 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        d.parties()[0].ready_batches() >= 1,
        "no material was made ahead"
    );
    held.store(false, std::sync::atomic::Ordering::SeqCst);
    for i in 0..2 {
        let r = client.classify("m", &x, Some(&labels), 8);
        match r {
            Ok(r) => assert_eq!(r.predictions, expected, "request {i}, seed {seed}"),
            Err(e) => panic!("request {i} failed: {e}"),
        }
    }
}

/// Material whose halves were made for different entries (injected: bob's two entries swap
/// their material) stops the request with an error naming the step; no answer is given.
#[test]
fn mismatched_material_fails_the_request_instead_of_answering() {
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let (model, x, expected) = model_and_rows(seed);
    let d = LocalDeployment::start(LocalConfig::default()).unwrap();
    let mut owner = d.model_owner().unwrap();
    owner
        .upload(
            "m",
            &model,
            &FixedPoint::default(),
            &ModelBounds::default(),
            &mut |_, _| {},
        )
        .unwrap();
    let mut client = d.client().unwrap();
    let first = client.classify("m", &x, None, 8).unwrap();
    assert_eq!(first.predictions, expected, "on demand, seed {seed}");
    let until = Instant::now() + Duration::from_secs(30);
    while d.parties()[0].ready_batches() < 2 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Alice's entries are ready once bob confirmed his halves: bob holds both.
    assert!(d.parties()[1].swap_two_held(), "bob holds two entries");
    let e = client
        .classify("m", &x, None, 8)
        .expect_err("mismatched material must not give an answer")
        .to_string();
    assert!(
        e.contains("out of step at") && e.contains("different preprocessed material"),
        "{e}"
    );
    // The next request (a fresh connection, the other entry also mismatched, then on demand)
    // fails the same way or answers correctly: never a wrong answer.
    let mut client = d.client().unwrap();
    for _ in 0..3 {
        match client.classify("m", &x, None, 8) {
            Ok(r) => assert_eq!(r.predictions, expected, "seed {seed}"),
            Err(e) => assert!(e.to_string().contains("out of step at"), "{e}"),
        }
    }
}

/// Wait (at most 30 s) until alice holds `n` batches of material made ahead.
fn wait_ready(d: &LocalDeployment, n: usize) -> bool {
    let until = Instant::now() + Duration::from_secs(30);
    while d.parties()[0].ready_batches() < n {
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn upload(d: &LocalDeployment, name: &str, model: &Sequential) {
    d.model_owner()
        .unwrap()
        .upload(
            name,
            model,
            &FixedPoint::default(),
            &ModelBounds::default(),
            &mut |_, _| {},
        )
        .unwrap();
}

/// Material made ahead is used once per batch, by both parties; a request that finds none
/// ready makes its own; every answer is the plaintext's.
#[test]
fn material_made_ahead_is_used_once_and_requests_without_it_still_run() {
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let (model, x, expected) = model_and_rows(seed);
    let d = LocalDeployment::start(LocalConfig::default()).unwrap();
    upload(&d, "m", &model);
    let mut client = d.client().unwrap();
    let r = client.classify("m", &x, None, 8).unwrap();
    assert_eq!(
        (r.predictions, r.stats.batches_ahead),
        (expected.clone(), 0)
    );
    assert!(wait_ready(&d, 2), "two batches made ahead (the pool size)");
    assert_eq!(d.parties()[1].held_batches(), 2);
    for _ in 0..2 {
        let r = client.classify("m", &x, None, 8).unwrap();
        assert_eq!(r.predictions, expected);
        assert_eq!(
            r.stats.batches_ahead, 1,
            "a batch ran on material made ahead"
        );
    }
    // Both entries used (never twice): the next request may find new ones or make its own;
    // either way it answers correctly. Batches of another size never take them.
    let r = client.classify("m", &x[..7 * 16], None, 7).unwrap();
    assert_eq!(r.predictions, expected[..7].to_vec());
    assert_eq!(
        r.stats.batches_ahead, 0,
        "no material of this shape was made ahead"
    );
}

/// A request that fails after taking material made ahead does not give it back: the next
/// request never reuses it (used once, even by a failure).
#[test]
fn a_failed_request_consumes_the_material_it_took() {
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let (model, x, expected) = model_and_rows(seed);
    let d = LocalDeployment::start(LocalConfig {
        pool: 1,
        ..LocalConfig::default()
    })
    .unwrap();
    upload(&d, "m", &model);
    let mut client = d.client().unwrap();
    client.classify("m", &x, None, 8).unwrap();
    assert!(wait_ready(&d, 1));
    // A client that asks for a batch and goes away before sending its shares: the parties take
    // the entry for the request, then fail on the closed link.
    let mut quitter = d.client().unwrap();
    let request = Request::Classify {
        request: fresh_id(),
        model: "m".into(),
        rows: 8,
        batch: 8,
        labels: false,
    };
    drop(quitter.begin(&request).unwrap());
    let until = Instant::now() + Duration::from_secs(10);
    while d.parties()[0].ready_batches() + d.parties()[1].held_batches() > 0 {
        assert!(Instant::now() < until, "the failed request kept its entry");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = client.classify("m", &x, None, 8).unwrap();
    assert_eq!(r.predictions, expected);
    assert_eq!(
        r.stats.batches_ahead, 0,
        "the consumed entry was not used again"
    );
}

/// Deleting a model drops the material made ahead for it at both parties.
#[test]
fn deleting_a_model_drops_its_material() {
    let seed = rand::random::<u64>();
    let (model, x, _) = model_and_rows(seed);
    let d = LocalDeployment::start(LocalConfig::default()).unwrap();
    upload(&d, "m", &model);
    let mut client = d.client().unwrap();
    client.classify("m", &x, None, 8).unwrap();
    assert!(wait_ready(&d, 2));
    d.model_owner().unwrap().delete("m").unwrap();
    assert_eq!(d.parties()[0].ready_batches(), 0);
    assert_eq!(d.parties()[1].held_batches(), 0);
    // A model uploaded again under the name never gets the old material.
    upload(&d, "m", &model);
    let r = client.classify("m", &x, None, 8).unwrap();
    assert_eq!(r.stats.batches_ahead, 0);
}

/// The same predictions with material made ahead and without (pool 0), equal to plaintext.
#[test]
fn predictions_are_the_same_with_and_without_material_made_ahead() {
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let (model, x, expected) = model_and_rows(seed);
    for pool in [0, 2] {
        let d = LocalDeployment::start(LocalConfig {
            pool,
            ..LocalConfig::default()
        })
        .unwrap();
        upload(&d, "m", &model);
        let mut client = d.client().unwrap();
        for i in 0..4 {
            if pool > 0 && i > 0 {
                assert!(wait_ready(&d, 1));
            }
            let r = client
                .classify("m", &x, Some(&[0, 1, 2, 3, 4, 5, 6, 7]), 8)
                .unwrap();
            assert_eq!(
                r.predictions, expected,
                "pool {pool}, request {i}, seed {seed}"
            );
            if pool == 0 {
                assert_eq!(r.stats.batches_ahead, 0);
            }
        }
    }
}
