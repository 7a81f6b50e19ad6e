//! Large batches stream (issue 17, items 3 and 5): a batch's material is made and consumed in
//! chunks below the dealer's limit, a piece the dealer refuses fails the request at once with
//! its reason, and material made ahead covers convolutional networks too.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::ErrorKind;
use crate::fixed::FixedPoint;
use crate::nn::classify::send_batch;
use crate::nn::geometry::Window2d;
use crate::nn::{Layer, ModelBounds, Sequential};
use crate::service::local::{LocalConfig, LocalDeployment};
use crate::transport::PartyId;
use crate::wire::control::{decode, fresh_id, Reply, Request, REPLY_STEP};

/// A small CNN on `1x8x8` images (conv, ReLU, max pool, linear; 10 classes) with weights from
/// `seed`, `rows` random images, and the plaintext predictions: `None` for a row whose two best
/// logits are too close for the fixed-point rounding to be sure of the argmax.
fn cnn_and_rows(seed: u64, rows: usize) -> (Sequential, Vec<f64>, Vec<Option<i64>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut r = |n: usize, b: f64| (0..n).map(|_| rng.gen_range(-b..b)).collect::<Vec<f64>>();
    let layers = vec![
        Layer::conv2d(1, 4, Window2d::square(3, 1, 1), r(36, 0.5), r(4, 0.1)).unwrap(),
        Layer::ReLU,
        Layer::MaxPool2d {
            window: Window2d::square(2, 2, 0),
        },
        Layer::Flatten,
        Layer::linear(64, 10, r(640, 0.5), r(10, 0.1)).unwrap(),
    ];
    let model = Sequential::with_input(layers, vec![1, 8, 8]).unwrap();
    let x = r(rows * 64, 1.0);
    let logits = model.forward_f64(&x, rows).unwrap();
    let pred = logits
        .chunks(10)
        .map(|row| {
            let mut order: Vec<usize> = (0..10).collect();
            order.sort_by(|&i, &j| row[j].total_cmp(&row[i]));
            (row[order[0]] - row[order[1]] > 1e-2).then_some(order[0] as i64)
        })
        .collect();
    (model, x, pred)
}

/// The predictions agree with the plaintext's wherever the plaintext's argmax is clear.
fn check(got: &[i64], want: &[Option<i64>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (row, (g, w)) in got.iter().zip(want).enumerate() {
        if let Some(w) = w {
            assert_eq!(g, w, "{what}: row {row}");
        }
    }
    let clear = want.iter().filter(|w| w.is_some()).count();
    assert!(
        clear * 2 > want.len(),
        "{what}: too few clear rows to compare"
    );
}

fn upload(d: &LocalDeployment, model: &Sequential) {
    d.model_owner()
        .unwrap()
        .upload(
            "cnn",
            model,
            &FixedPoint::default(),
            &ModelBounds::default(),
            &mut |_, _| {},
        )
        .unwrap();
}

/// Words per party of a batch of `rows` rows of `model` (with labels): all of its material and
/// its largest piece, as the parties of a deployment list them.
fn material_words(model: &Sequential, rows: u64) -> (u64, u64) {
    let d = LocalDeployment::start(LocalConfig {
        pool: 0,
        ..LocalConfig::default()
    })
    .unwrap();
    upload(&d, model);
    d.parties()[0].batch_material_words("cnn", rows, true)
}

/// Item 5: after a CNN request, material of its shape is made ahead, and the next request of
/// that shape runs on it (as heads do), with the plaintext's predictions.
#[test]
fn a_cnn_request_runs_on_material_made_ahead() {
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let (model, x, want) = cnn_and_rows(seed, 8);
    let d = LocalDeployment::start(LocalConfig {
        pool: 1,
        ..LocalConfig::default()
    })
    .unwrap();
    upload(&d, &model);
    let mut client = d.client().unwrap();
    let r = client.classify("cnn", &x, None, 8).unwrap();
    check(&r.predictions, &want, &format!("cold, seed {seed}"));
    assert_eq!(r.stats.batches_ahead, 0);
    let until = Instant::now() + Duration::from_secs(60);
    while d.parties()[0].ready_batches() < 1 {
        assert!(
            Instant::now() < until,
            "no CNN material was made ahead, seed {seed}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = client.classify("cnn", &x, None, 8).unwrap();
    check(&r.predictions, &want, &format!("warm, seed {seed}"));
    assert_eq!(
        r.stats.batches_ahead, 1,
        "the warm CNN request ran on material made ahead"
    );
}

/// Items 3 and 4: a batch of 64 whose whole material exceeds the dealer's limit classifies
/// correctly: its material comes in chunks below the limit. (Such a batch is not kept ahead;
/// the second request streams it again.)
#[test]
fn a_cnn_batch_above_the_dealers_limit_streams_in_chunks() {
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let rows = 64;
    let (model, x, want) = cnn_and_rows(seed, rows);
    let (total, largest) = material_words(&model, rows as u64);
    let limit = largest.max(total / 3);
    assert!(
        limit < total,
        "the test needs a batch above the limit: {total} words, largest piece {largest}"
    );
    eprintln!("batch of {rows}: {total} words of material, dealer's limit {limit}");
    let d = LocalDeployment::start(LocalConfig {
        max_material_words: limit,
        ..LocalConfig::default()
    })
    .unwrap();
    upload(&d, &model);
    let mut client = d.client().unwrap();
    let labels: Vec<i64> = (0..rows as i64).map(|i| i % 10).collect();
    for i in 0..2 {
        let r = client.classify("cnn", &x, Some(&labels), rows).unwrap();
        check(&r.predictions, &want, &format!("request {i}, seed {seed}"));
        assert_eq!(
            r.stats.batches_ahead, 0,
            "a batch above the limit is not kept ahead"
        );
    }
    // Two batches of another shape (64 and 36 rows) in one request run too.
    let (model2, x2, want2) = cnn_and_rows(seed ^ 1, 100);
    let d2 = LocalDeployment::start(LocalConfig {
        max_material_words: limit,
        pool: 0,
        ..LocalConfig::default()
    })
    .unwrap();
    upload(&d2, &model2);
    let r = d2
        .client()
        .unwrap()
        .classify("cnn", &x2, None, rows)
        .unwrap();
    check(&r.predictions, &want2, &format!("two batches, seed {seed}"));
}

/// Item 3: a piece of material larger than the dealer's limit (no chunk can hold it) is refused
/// by the dealer, and the client hears it at once, with the dealer named first and its reason,
/// far within the timeout; both parties serve the next request.
#[test]
fn a_dealer_refusal_reaches_the_client_at_once_with_its_reason() {
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let rows = 64;
    let (model, x, want) = cnn_and_rows(seed, rows);
    let (_, largest) = material_words(&model, rows as u64);
    let timeout = Duration::from_secs(60);
    let d = LocalDeployment::start(LocalConfig {
        max_material_words: largest - 1,
        timeout,
        pool: 0,
        ..LocalConfig::default()
    })
    .unwrap();
    upload(&d, &model);
    let mut client = d.client().unwrap();
    let t = Instant::now();
    let e = client
        .classify("cnn", &x, None, rows)
        .expect_err("a piece above the dealer's limit is refused");
    let waited = t.elapsed();
    let text = e.to_string();
    eprintln!("refused after {waited:?}: {text}");
    assert!(
        waited < timeout / 4,
        "the refusal took {waited:?} (timeout {timeout:?})"
    );
    assert_eq!(e.kind(), ErrorKind::Refused, "{text}");
    assert_eq!(e.peer(), Some(PartyId::Dealer), "{text}");
    let first = ["alice", "bob", "dealer"]
        .into_iter()
        .filter_map(|w| text.find(w).map(|i| (i, w)))
        .min()
        .map(|(_, w)| w);
    assert_eq!(first, Some("dealer"), "the dealer is named first: {text}");
    assert!(
        text.contains(&format!("more than {} words", largest - 1))
            && text.contains("limits.max_material_words"),
        "the dealer's reason: {text}"
    );
    // Each party's own reply names the dealer and its reason: bob heard it from the dealer,
    // alice applied the same limit before expanding the piece (she never asks the dealer).
    let request = Request::Classify {
        request: fresh_id(),
        model: "cnn".into(),
        rows: rows as u64,
        batch: rows as u64,
        labels: false,
    };
    let mut raw = d.client().unwrap();
    let mut owner = raw.begin(&request).unwrap();
    send_batch(&mut owner, &FixedPoint::default(), 64, &x, None).unwrap();
    owner.net().meter().set_step(REPLY_STEP);
    for (party, source) in [
        (PartyId::Alice, "alice did not make them"),
        (PartyId::Bob, "refused 1 piece(s) of material"),
    ] {
        let reply = owner
            .receive_from(party)
            .and_then(|m| decode::<Reply>(&m, "reply"))
            .unwrap();
        let (reason, kind) = reply.failure().expect("a failure reply");
        eprintln!("{party}: {reason}");
        assert_eq!(kind, ErrorKind::Refused, "{party}: {reason}");
        assert_eq!(
            reply.failed_peer(),
            Some(PartyId::Dealer),
            "{party}: {reason}"
        );
        assert!(
            reason.contains("limits.max_material_words") && reason.contains(source),
            "{party}: {reason}"
        );
    }
    // Both parties are free again: a small batch (below the limit) runs.
    let r = client.classify("cnn", &x[..4 * 64], None, 4).unwrap();
    check(
        &r.predictions,
        &want[..4],
        &format!("after the refusal, seed {seed}"),
    );
}
