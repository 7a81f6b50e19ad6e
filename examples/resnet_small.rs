//! A small ResNet (a stem, a BasicBlock with a downsampling shortcut, an identity BasicBlock,
//! global average pooling) trained on real data (scikit-learn's 8x8 digits) and exported by
//! `torch.onnx.export` (tests/data/make_torch_onnx.py; this example exports nothing), served by
//! an in-process deployment: the model owner uploads it, a client classifies the held-out split
//! encrypted, the owner receives the correct count. Checked against the plaintext model.
//!
//! `cargo run --release --example resnet_small -- [inputs]`

use engine::io::{import_onnx, load_inputs, load_labels};
use engine::nn::{Layer, ModelBounds};
use engine::service::local::{LocalConfig, LocalDeployment};
use engine::FixedPoint;

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let import = import_onnx(&format!("{dir}/torch/resnet_small.onnx")).expect("model");
    let model = import.model;
    let (n, x) = load_inputs(&format!("{dir}/digits_test_x.npy"), &model.input).expect("inputs");
    let labels = load_labels(&format!("{dir}/digits_test_y.npy")).expect("labels");
    let n = std::env::args()
        .nth(1)
        .map(|a| a.parse::<usize>().expect("inputs: a number"))
        .unwrap_or(n)
        .min(n);
    let per = model.in_features();
    let (x, labels) = (&x[..n * per], &labels[..n]);
    let adds = model
        .layers
        .iter()
        .filter(|l| matches!(l, Layer::Add))
        .count();
    println!(
        "model: {} layers, {adds} residual additions, {} parameters, {} MACs per image",
        model.layers.len(),
        model.parameters(),
        model.macs_per_sample()
    );
    let classes = model.out_features();
    let plain: Vec<i64> = model
        .forward_f64(x, n)
        .expect("plaintext forward")
        .chunks(classes)
        .map(|r| (0..r.len()).fold(0, |b, j| if r[j] > r[b] { j } else { b }) as i64)
        .collect();
    let plain_correct = plain.iter().zip(labels).filter(|(p, l)| p == l).count();

    let deployment = LocalDeployment::start(LocalConfig::default()).expect("deployment");
    let mut owner = deployment.model_owner().expect("owner");
    let bounds = ModelBounds::worst_case(1.0);
    let (plan, up) = owner
        .upload(
            "resnet",
            &model,
            &FixedPoint::default(),
            &bounds,
            &mut |_, _| {},
        )
        .expect("upload");
    if let Some(r) = &plan.range {
        println!("{}", r.summary());
    }
    println!("uploaded in {:.2} s", up.seconds);
    let mut client = deployment.client().expect("client");
    let r = client
        .classify("resnet", x, Some(labels), 64)
        .expect("classify");
    let correct = owner.score(r.stats.request).expect("score");
    let agree = r
        .predictions
        .iter()
        .zip(&plain)
        .filter(|(a, b)| a == b)
        .count();
    println!("plaintext: {plain_correct}/{n} correct");
    println!(
        "encrypted: {correct}/{n} correct in {:.2} s ({:.0} images/s, {:.1} MB sent by alice); {agree}/{n} predictions equal the plaintext ones",
        r.stats.seconds,
        n as f64 / r.stats.seconds,
        r.stats.party_bytes[0] as f64 / 1e6
    );
    assert_eq!(agree, n, "encrypted and plaintext predictions differ");
    assert_eq!(correct as usize, plain_correct);
}
