//! ResNet-18 benchmarks with torchvision's initialisation: at ImageNet shape (224x224, 1000
//! classes) torchvision's `resnet18` (7x7 stride-2 stem and max pool, 1.81 GMACs), at CIFAR
//! shape (3x32x32, 10 classes) the CIFAR variant CrypTen's figure is for (3x3 stride-1 stem, no
//! max pool, 0.56 GMACs); time, rounds and bytes per image beside CrypTen's figures.

use std::time::Instant;

use kernels::BackendKind;
use rand::Rng;
use rand_chacha::ChaCha20Rng;

use engine::error::Result;
use engine::nn::geometry::Window2d;
use engine::nn::plain::{GraphBuilder, Layer, Sequential};
use engine::protocols::range_check::{checked_sites, range_check_specs};
use engine::transport::PartyId;

use crate::bench_cnn::{computation, standard_normal};

/// Widths of ResNet-18's four stages.
const WIDTHS: [usize; 4] = [64, 128, 256, 512];

/// ResNet-18 as torchvision initialises it: convolutions `kaiming_normal_(mode="fan_out",
/// nonlinearity="relu")` without bias; batch norms at initialisation (weight 1, bias 0, running
/// mean 0, variance 1) are the identity up to `1/√(1 + 1e-5)`, folded into the convolutions as
/// the import folds them; the classifier PyTorch's default `U(±1/√512)`. `cifar`: the 3x3
/// stride-1 stem without max pool; else torchvision's 7x7 stride-2 stem and 3x3 max pool.
fn resnet18(size: usize, cifar: bool, classes: usize, rng: &mut ChaCha20Rng) -> Result<Sequential> {
    let bn = 1.0 / (1.0f64 + 1e-5).sqrt();
    let conv = |i: usize, o: usize, k: usize, stride: usize, rng: &mut ChaCha20Rng| {
        let std = (2.0 / (o * k * k) as f64).sqrt() * bn;
        let w = standard_normal(rng, o * i * k * k)
            .into_iter()
            .map(|v| v * std)
            .collect();
        Layer::conv2d(i, o, Window2d::square(k, stride, k / 2), w, vec![0.0; o])
    };
    let mut g = GraphBuilder::new();
    let mut v = if cifar {
        g.push(conv(3, 64, 3, 1, rng)?, &[0])
    } else {
        let c = g.push(conv(3, 64, 7, 2, rng)?, &[0]);
        let r = g.push(Layer::ReLU, &[c]);
        g.push(
            Layer::MaxPool2d {
                window: Window2d::square(3, 2, 1),
            },
            &[r],
        )
    };
    if cifar {
        v = g.push(Layer::ReLU, &[v]);
    }
    let mut inp = 64;
    for (s, &w) in WIDTHS.iter().enumerate() {
        for b in 0..2 {
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            let i = if b == 0 { inp } else { w };
            let mut o = g.push(conv(i, w, 3, stride, rng)?, &[v]);
            o = g.push(Layer::ReLU, &[o]);
            o = g.push(conv(w, w, 3, 1, rng)?, &[o]);
            let shortcut = if i != w || stride != 1 {
                g.push(conv(i, w, 1, stride, rng)?, &[v])
            } else {
                v
            };
            o = g.push(Layer::Add, &[o, shortcut]);
            v = g.push(Layer::ReLU, &[o]);
        }
        inp = w;
    }
    v = g.push(Layer::AdaptiveAvgPool2d { output: [1, 1] }, &[v]);
    v = g.push(Layer::Flatten, &[v]);
    let bound = 1.0 / 512f64.sqrt();
    let mut uniform = |n: usize| (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
    let fc = Layer::linear(512, classes, uniform(512 * classes), uniform(classes))?;
    g.push(fc, &[v]);
    g.build(vec![3, size, size])
}

/// One of CrypTen's measured runs.
struct CrypTenFigure {
    size: usize,
    batch: usize,
    seconds: f64,
    rounds: Option<u64>,
    mb_per_party: Option<f64>,
}

/// CrypTen 0.4.1's figures for ResNet-18 on this machine (issue "CNN speed and scale"), per
/// batch; rounds and bytes unknown at batch 8.
const CRYPTEN: [CrypTenFigure; 3] = [
    CrypTenFigure {
        size: 32,
        batch: 1,
        seconds: 1.82,
        rounds: Some(231),
        mb_per_party: Some(448.0),
    },
    CrypTenFigure {
        size: 32,
        batch: 8,
        seconds: 8.09,
        rounds: None,
        mb_per_party: None,
    },
    CrypTenFigure {
        size: 224,
        batch: 1,
        seconds: 11.6,
        rounds: Some(331),
        mb_per_party: Some(3980.0),
    },
];

/// ResNet-18 at `size`x`size` for each batch size: preprocessing and online time (best of
/// two), rounds and MB sent per image (alice), beside CrypTen's figure where there is one.
pub fn resnet18_run(
    kind: BackendKind,
    size: usize,
    batches: &[usize],
    rng: &mut ChaCha20Rng,
) -> Result<()> {
    let cifar = size < 224;
    let classes = if cifar { 10 } else { 1000 };
    let model = resnet18(size, cifar, classes, rng)?;
    let macs = model.macs_per_sample();
    let mut s = computation(kind)?;
    let f = s.fixed_point().frac_bits();
    let t = Instant::now();
    let shared = s.share_model(PartyId::ModelOwner, &model)?;
    println!(
        "ResNet-18 {size}x{size} ({}; {} parameters, {:.2} GMACs per image, {classes} classes, \
         torchvision's initialisation, N(0,1) inputs; {:?} comparisons; shared in {:.1} s):",
        if cifar {
            "CIFAR variant: 3x3 stem, no max pool"
        } else {
            "torchvision's resnet18"
        },
        model.parameters(),
        macs as f64 / 1e9,
        shared.compare(),
        t.elapsed().as_secs_f64()
    );
    println!("| batch | preprocessing ms | online ms | total s/image | rounds (per batch) | MB sent per image | CrypTen s/batch | CrypTen rounds | CrypTen MB per party | speed-up vs CrypTen |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &batch in batches {
        let width = model.in_features();
        let xs = standard_normal(rng, batch * width);
        let xid = s.share(PartyId::Client, &[batch, width], &xs)?.id();
        let (mut best_pre, mut best_on) = (f64::INFINITY, f64::INFINITY);
        let mut traffic = engine::transport::StepStats::default();
        for _ in 0..2 {
            let m = shared.clone();
            let [(pre, on, t), _] = s.run(move |p| {
                let x = p.kept(xid)?;
                let mut specs = m.material_specs(batch, f);
                specs.extend(range_check_specs(checked_sites(&specs)));
                let t0 = Instant::now();
                p.preprocess(&specs)?;
                let t1 = Instant::now();
                let before = p.traffic();
                m.forward(p, &x)?;
                p.finish_range_checks()?;
                let t = p.traffic().since(&before).online();
                Ok(((t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64(), t))
            })?;
            best_pre = best_pre.min(pre);
            best_on = best_on.min(on);
            traffic = t;
        }
        s.run(move |p| {
            p.forget(xid);
            Ok(())
        })?;
        let total = best_pre + best_on;
        let theirs = CRYPTEN.iter().find(|c| c.size == size && c.batch == batch);
        let opt = |v: Option<String>| v.unwrap_or_else(|| "–".into());
        println!(
            "| {batch} | {:.1} | {:.1} | {:.4} | {} | {:.3} | {} | {} | {} | {} |",
            best_pre * 1e3,
            best_on * 1e3,
            total / batch as f64,
            traffic.rounds,
            traffic.bytes_sent as f64 / 1e6 / batch as f64,
            opt(theirs.map(|c| format!("{:.2}", c.seconds))),
            opt(theirs.and_then(|c| c.rounds).map(|r| r.to_string())),
            opt(theirs
                .and_then(|c| c.mb_per_party)
                .map(|m| format!("{m:.0}"))),
            opt(theirs.map(|c| format!("{:.1}x", c.seconds / total))),
        );
    }
    println!();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The two variants have the sizes the literature and torchvision give: 0.56 GMACs at
    /// CIFAR shape, 1.81 GMACs at 224x224; torchvision's parameter counts (11,173,962 and
    /// 11,689,512) less the batch norms' 9,600 weights and biases plus the 4,800 biases they
    /// fold into.
    #[test]
    fn resnet18_variants_have_the_published_sizes() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let cifar = resnet18(32, true, 10, &mut rng).unwrap();
        assert_eq!(cifar.parameters(), 11_173_962 - 4_800);
        assert_eq!(cifar.macs_per_sample() / 1_000_000, 555);
        let imagenet = resnet18(224, false, 1000, &mut rng).unwrap();
        assert_eq!(imagenet.parameters(), 11_689_512 - 4_800);
        assert_eq!(imagenet.macs_per_sample() / 10_000_000, 181);
    }
}
