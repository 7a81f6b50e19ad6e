//! Interleavings of the services forced with test hooks.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::fixed::FixedPoint;
use crate::nn::{Layer, ModelBounds, Sequential};
use crate::service::hooks::HookPoint;
use crate::service::local::{LocalConfig, LocalDeployment};

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
