//! A random-weight VGG16 classifier head (25088-4096-4096-7 by default) classifying a large
//! batch of random features under encryption, printing throughput and traffic.
//!
//! `cargo run --release --example vgg16_head -- [input hidden classes inputs batch]`

use engine::nn::plain::vgg16_head;
use engine::nn::{ClassifyOptions, SecureClassifier};
use engine::{PartyId, Session, SessionConfig};
use rand::{Rng, SeedableRng};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("numeric arguments: input hidden classes inputs batch")
        })
        .collect();
    let get = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (input, hidden, classes, inputs, batch) = (
        get(0, 25088),
        get(1, 4096),
        get(2, 7),
        get(3, 256),
        get(4, 64),
    );
    let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
    let model = vgg16_head(input, hidden, classes, &mut rng);
    println!(
        "VGG16 head {input}-{hidden}-{hidden}-{classes}: {} parameters",
        model.parameters()
    );
    let mut session = Session::new(SessionConfig::default()).expect("session");
    let t = std::time::Instant::now();
    let shared = session
        .share_model(PartyId::ModelOwner, &model)
        .expect("share model");
    println!(
        "model shared and masked in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let data: Vec<f64> = (0..inputs * input)
        .map(|_| rng.gen_range(0.0..1.0))
        .collect();
    let labels: Vec<i64> = (0..inputs)
        .map(|_| rng.gen_range(0..classes as i64))
        .collect();
    let mut clf = SecureClassifier::new(&mut session, shared);
    let r = clf
        .classify(
            &data,
            Some(&labels),
            &ClassifyOptions {
                batch,
                reveal_predictions: false,
            },
        )
        .expect("classify");
    println!(
        "{} inputs in {:.2} s: {:.1} inputs/s (preprocessing included); correct (random labels): {}",
        r.inputs,
        r.seconds,
        r.inputs as f64 / r.seconds,
        r.correct.unwrap_or(0)
    );
    for (i, t) in r.traffic.iter().enumerate() {
        println!(
            "{}: {:.1} MB sent per batch, {} rounds per batch",
            PartyId::compute(i),
            t.bytes_sent as f64 / 1e6 / r.batches as f64,
            t.rounds / r.batches as u64
        );
    }
}
