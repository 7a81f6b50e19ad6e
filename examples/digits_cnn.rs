//! A small CNN trained on real data (scikit-learn's 8x8 digits; see tests/data/make_onnx.py),
//! imported from ONNX and evaluated on the held-out split under encryption, against plaintext.
//!
//! `cargo run --release --example digits_cnn -- [inputs]`

use engine::io::{load_inputs, load_labels, load_onnx_model};
use engine::service::classifier::{ClassifyOptions, SecureClassifier};
use engine::{FixedPoint, LocalConfig, LocalDeployment};

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let model = load_onnx_model(&format!("{dir}/digits_cnn.onnx")).expect("model");
    let (n, x) = load_inputs(&format!("{dir}/digits_test_x.npy"), &model.input).expect("inputs");
    let labels = load_labels(&format!("{dir}/digits_test_y.npy")).expect("labels");
    let n = std::env::args()
        .nth(1)
        .map(|a| a.parse::<usize>().expect("inputs: a number"))
        .unwrap_or(n)
        .min(n);
    let per = model.in_features();
    let (x, labels) = (&x[..n * per], &labels[..n]);
    println!(
        "model: {} ({} parameters, {} MACs per image)",
        model
            .layers
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(" -> "),
        model.parameters(),
        model.macs_per_sample()
    );
    let plain = model.forward_f64(x, n).expect("plaintext forward");
    let plain_pred: Vec<i64> = plain
        .chunks(model.out_features())
        .map(|r| (0..r.len()).fold(0, |b, j| if r[j] > r[b] { j } else { b }) as i64)
        .collect();
    let plain_correct = plain_pred
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    let d = LocalDeployment::start(LocalConfig::default()).expect("in-process services");
    let mut clf = SecureClassifier::upload(&d, &model, &FixedPoint::default(), &Default::default())
        .expect("upload");
    let r = clf
        .classify(x, Some(labels), &ClassifyOptions { batch: 128 })
        .expect("classify");
    let preds = r.predictions;
    let agree = preds
        .iter()
        .zip(&plain_pred)
        .filter(|(a, b)| a == b)
        .count();
    println!("plaintext: {plain_correct}/{n} correct");
    println!(
        "encrypted: {}/{n} correct in {:.0} ms ({:.0} images/s); {agree}/{n} predictions equal the plaintext ones",
        r.correct.expect("labels given"),
        r.seconds * 1e3,
        n as f64 / r.seconds
    );
    assert_eq!(agree, n, "encrypted and plaintext predictions differ");
}
