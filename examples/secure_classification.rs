//! The tutorial on a real data set: Fisher's iris (shipped by `linfa-datasets`).
//!
//! The server trains a small MLP (4-16-3) in plaintext with its own SGD, then shares it; the
//! client shares its test inputs and labels; the shared model classifies the shared data, and
//! only the correct-count is revealed to the server. For checking, the client also gets its
//! logits and predictions (its own outputs) to compare with plaintext evaluation.

use engine::nn::plain::{Layer, Sequential};
use engine::service::classifier::{ClassifyOptions, SecureClassifier};
use engine::{FixedPoint, LocalConfig, LocalDeployment, PartyId};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Softmax cross-entropy SGD for a one-hidden-layer ReLU MLP.
fn train(
    x: &[Vec<f64>],
    y: &[usize],
    hidden: usize,
    classes: usize,
    rng: &mut impl Rng,
) -> Sequential {
    let d = x[0].len();
    let init = |i: usize, o: usize, rng: &mut dyn rand::RngCore| -> Vec<f64> {
        let b = 1.0 / (i as f64).sqrt();
        (0..i * o).map(|_| rng.gen_range(-b..b)).collect()
    };
    let (mut w1, mut b1) = (init(d, hidden, rng), vec![0.0; hidden]);
    let (mut w2, mut b2) = (init(hidden, classes, rng), vec![0.0; classes]);
    let mut order: Vec<usize> = (0..x.len()).collect();
    let lr = 0.05;
    for _epoch in 0..300 {
        order.shuffle(rng);
        for &i in &order {
            let h: Vec<f64> = (0..hidden)
                .map(|o| (b1[o] + (0..d).map(|c| w1[o * d + c] * x[i][c]).sum::<f64>()).max(0.0))
                .collect();
            let z: Vec<f64> = (0..classes)
                .map(|o| b2[o] + (0..hidden).map(|c| w2[o * hidden + c] * h[c]).sum::<f64>())
                .collect();
            let mx = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
            let s: f64 = e.iter().sum();
            let dz: Vec<f64> = (0..classes)
                .map(|o| e[o] / s - (o == y[i]) as u8 as f64)
                .collect();
            let mut dh = vec![0.0; hidden];
            for o in 0..classes {
                for c in 0..hidden {
                    dh[c] += dz[o] * w2[o * hidden + c];
                    w2[o * hidden + c] -= lr * dz[o] * h[c];
                }
                b2[o] -= lr * dz[o];
            }
            for o in 0..hidden {
                if h[o] <= 0.0 {
                    continue;
                }
                for c in 0..d {
                    w1[o * d + c] -= lr * dh[o] * x[i][c];
                }
                b1[o] -= lr * dh[o];
            }
        }
    }
    Sequential::new(vec![
        Layer::linear(d, hidden, w1, b1).expect("sizes"),
        Layer::ReLU,
        Layer::Dropout,
        Layer::linear(hidden, classes, w2, b2).expect("sizes"),
    ])
    .expect("widths")
}

fn main() {
    let ds = linfa_datasets::iris();
    let feats: Vec<Vec<f64>> = ds.records().outer_iter().map(|r| r.to_vec()).collect();
    let targets: Vec<usize> = ds.targets().iter().copied().collect();
    // Standardise features.
    let d = feats[0].len();
    let n = feats.len();
    let mean: Vec<f64> = (0..d)
        .map(|c| feats.iter().map(|r| r[c]).sum::<f64>() / n as f64)
        .collect();
    let sd: Vec<f64> = (0..d)
        .map(|c| (feats.iter().map(|r| (r[c] - mean[c]).powi(2)).sum::<f64>() / n as f64).sqrt())
        .collect();
    let x: Vec<Vec<f64>> = feats
        .iter()
        .map(|r| (0..d).map(|c| (r[c] - mean[c]) / sd[c]).collect())
        .collect();
    let seed: u64 = rand::rngs::OsRng.gen();
    println!("seed = {seed}");
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng);
    let (train_idx, test_idx) = idx.split_at(100);
    let xtr: Vec<Vec<f64>> = train_idx.iter().map(|&i| x[i].clone()).collect();
    let ytr: Vec<usize> = train_idx.iter().map(|&i| targets[i]).collect();
    let model = train(&xtr, &ytr, 16, 3, &mut rng);

    let xte: Vec<f64> = test_idx.iter().flat_map(|&i| x[i].clone()).collect();
    let yte: Vec<i64> = test_idx.iter().map(|&i| targets[i] as i64).collect();
    let m = yte.len();
    let plain_logits = model.forward_f64(&xte, m).expect("plaintext forward");
    let plain_pred: Vec<i64> = (0..m)
        .map(|i| {
            let row = &plain_logits[i * 3..i * 3 + 3];
            (0..3).fold(0, |b, j| if row[j] > row[b] { j } else { b }) as i64
        })
        .collect();
    let plain_correct = plain_pred.iter().zip(&yte).filter(|(p, y)| p == y).count();

    let d = LocalDeployment::start(LocalConfig::default()).expect("in-process services");
    let mut clf = SecureClassifier::upload(&d, &model, &FixedPoint::default(), &Default::default())
        .expect("upload");
    let report = clf
        .classify(&xte, Some(&yte), &ClassifyOptions { batch: 16 })
        .expect("encrypted classification");
    // The logits themselves, revealed to the client in a custom computation (for comparing).
    let mut c = engine::Computation::open(&d, FixedPoint::default()).expect("computation");
    let shared = c
        .share_model(PartyId::ModelOwner, &model)
        .expect("share model");
    let enc_logits = c.logits_for_client(&shared, &xte, 64).expect("logits");
    let preds = report.predictions.clone();
    let agree = preds
        .iter()
        .zip(&plain_pred)
        .filter(|(a, b)| a == b)
        .count();
    let max_err = enc_logits
        .iter()
        .zip(&plain_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("iris: trained 4-16-3 MLP on 100 flowers, testing on {m}");
    println!("plaintext accuracy: {plain_correct}/{m}");
    println!(
        "encrypted accuracy: {}/{m} (revealed to the model owner only), {:.3} s, {:.0} inputs/s",
        report.correct.unwrap_or(0),
        report.seconds,
        m as f64 / report.seconds
    );
    println!(
        "argmax agreement encrypted vs plaintext: {agree}/{m}; max |logit error| = {max_err:.2e}"
    );
    assert!(max_err <= 1e-3, "logit error {max_err} above 1e-3");
    // A prediction may only differ where the plaintext top two logits are closer than the
    // encrypted error allows; on iris that has not happened (50/50 agreement in every run).
    for i in (0..m).filter(|&i| preds[i] != plain_pred[i]) {
        let row = &plain_logits[i * 3..i * 3 + 3];
        let gap = (row[preds[i] as usize] - row[plain_pred[i] as usize]).abs();
        assert!(
            gap <= 2.0 * max_err,
            "flower {i}: encrypted {} vs plaintext {}",
            preds[i],
            plain_pred[i]
        );
    }
    let enc_correct = preds.iter().zip(&yte).filter(|(p, y)| p == y).count() as u64;
    assert_eq!(
        report.correct,
        Some(enc_correct),
        "revealed count matches the predictions"
    );
}
