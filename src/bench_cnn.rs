//! VGG16 benchmarks (ResNet-18's are in [`crate::bench_resnet`]): the CIFAR-10-shaped model (3x32x32, 13 convolutions, 512-512-10
//! classifier) at batch 1 and 64, and torchvision's whole VGG16 at 224x224 on request; MACs per
//! image beside every time, rounds and bytes per image per layer type.

use std::collections::BTreeMap;
use std::time::Instant;

use kernels::{backend_from_kind, Backend, BackendKind, ScalarOp, Tensor};
use rand::Rng;
use rand_chacha::ChaCha20Rng;

use engine::error::Result;
use engine::nn::geometry::{im2col_index, max_pool_index, nhwc_to_nchw_index};
use std::sync::Arc;

use engine::nn::plain::{transposed, vgg16_torch_default, Layer, Sequential};
use engine::nn::rewrite::DEFERRED_RELU;
use engine::nn::shared::{SharedLayer, SharedMaxPool2d, SharedReLU};
use engine::protocols::compare::CompareMode;
use engine::protocols::range_check::{checked_sites, range_check_specs};
use engine::service::computation::Computation;
use engine::service::local::{LocalConfig, LocalDeployment};
use engine::transport::{PartyId, StepStats};
use engine::FixedPoint;

/// Plaintext u64 forward of the same lowering on the same backend (im2col + GEMM + shift),
/// the baseline for the online time. Returns the output tensor.
fn plaintext_u64(
    be: &dyn Backend,
    model: &Sequential,
    params: &[Option<(Tensor, Vec<u64>)>],
    x: &Tensor,
    f: u32,
) -> Result<Tensor> {
    let shapes = model.shapes()?;
    let n = x.shape()[0];
    let mut cur = x.clone();
    for ((l, shape), p) in model.layers.iter().zip(&shapes).zip(params) {
        cur = match l {
            Layer::Conv2d {
                out_channels,
                window,
                ..
            } => {
                let (c, h, w) = (shape[0], shape[1], shape[2]);
                let [oh, ow] = window.output_size("conv", h, w)?;
                let k = c * window.kernel[0] * window.kernel[1];
                let cols =
                    be.gather(&cur, &im2col_index(window, n, c, h, w)?, &[n * oh * ow, k])?;
                let (wt, bias) = p.as_ref().expect("conv params");
                let z = be.matmul(&cols, wt, None)?;
                let mut host = be.download(&z)?;
                for (i, v) in host.iter_mut().enumerate() {
                    *v = (((*v as i64) >> f) as u64).wrapping_add(bias[i % out_channels]);
                }
                let z = be.upload(z.shape(), &host)?;
                be.gather(
                    &z,
                    &nhwc_to_nchw_index(n, *out_channels, oh * ow),
                    &[n, *out_channels, oh, ow],
                )?
            }
            Layer::Linear { out_features, .. } => {
                let (wt, bias) = p.as_ref().expect("linear params");
                let flat = cur.reshaped(vec![n, cur.len() / n]).expect("rows");
                let z = be.matmul(&flat, wt, None)?;
                let mut host = be.download(&z)?;
                for (i, v) in host.iter_mut().enumerate() {
                    *v = (((*v as i64) >> f) as u64).wrapping_add(bias[i % out_features]);
                }
                be.upload(z.shape(), &host)?
            }
            Layer::ReLU => {
                let mut host = be.download(&cur)?;
                host.iter_mut().for_each(|v| {
                    if (*v as i64) < 0 {
                        *v = 0
                    }
                });
                be.upload(cur.shape(), &host)?
            }
            Layer::MaxPool2d { window } => {
                let (c, h, w) = (shape[0], shape[1], shape[2]);
                let [oh, ow] = window.output_size("pool", h, w)?;
                let k = window.kernel[0] * window.kernel[1];
                let win = be.gather(
                    &cur,
                    &max_pool_index(window, n, c, h, w)?,
                    &[n * c * oh * ow, k],
                )?;
                let host = be.download(&win)?;
                let m: Vec<u64> = host
                    .chunks(k)
                    .map(|r| *r.iter().max_by_key(|v| **v as i64).expect("k>0"))
                    .collect();
                be.upload(&[n, c, oh, ow], &m)?
            }
            _ => be.scalar(ScalarOp::Add, &cur, 0)?,
        };
    }
    Ok(cur)
}

fn layer_kind(name: &str) -> String {
    name.split('(').next().unwrap_or(name).to_string()
}

/// Peak resident memory of this process (all roles run in it), from /proc.
fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A custom computation on fresh in-process services on `kind`, at the default precision.
pub fn computation(kind: BackendKind) -> Result<Computation> {
    let d = LocalDeployment::start(LocalConfig {
        backend: kind,
        timeout: std::time::Duration::from_secs(300),
        ..Default::default()
    })?;
    Computation::open(&d, FixedPoint::default())
}

/// One VGG16 configuration at one batch size.
pub fn vgg16_run(
    kind: BackendKind,
    size: usize,
    avgpool: Option<[usize; 2]>,
    hidden: usize,
    classes: usize,
    batches: &[usize],
    rng: &mut ChaCha20Rng,
) -> Result<()> {
    let model = vgg16_torch_default(size, avgpool, hidden, classes, rng)?;
    let macs = model.macs_per_sample();
    let be = backend_from_kind(kind)?;
    let mut s = computation(kind)?;
    let fx = s.fixed_point();
    let f = fx.frac_bits();
    let shapes = model.shapes()?;
    let mut params = Vec::new();
    for (l, shape) in model.layers.iter().zip(&shapes) {
        params.push(match l {
            Layer::Conv2d {
                out_channels,
                weight,
                bias,
                ..
            } => {
                let k = weight.len() / out_channels;
                let wt = fx.encode(&transposed(weight, *out_channels, k))?;
                Some((be.upload(&[k, *out_channels], &wt)?, fx.encode(bias)?))
            }
            Layer::Linear {
                in_features,
                out_features,
                weight,
                bias,
            } => {
                let wt = fx.encode(&transposed(weight, *out_features, *in_features))?;
                Some((
                    be.upload(&[*in_features, *out_features], &wt)?,
                    fx.encode(bias)?,
                ))
            }
            _ => None,
        });
        let _ = shape;
    }
    // The plaintext baseline runs first, so its weights are freed before the model is shared.
    let per = model.in_features();
    let mut inputs = Vec::new();
    for &batch in batches {
        let xs = standard_normal(rng, batch * per);
        let xt = be.upload(&[batch, 3, size, size], &fx.encode(&xs)?)?;
        let reps = reps_for(batch, macs);
        let mut t_plain = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            plaintext_u64(be.as_ref(), &model, &params, &xt, f)?;
            t_plain = t_plain.min(t.elapsed().as_secs_f64());
        }
        inputs.push((batch, xs, t_plain, reps));
    }
    drop(params);
    engine::memory::reset_peaks();
    let t = Instant::now();
    let shared = s.share_model(PartyId::ModelOwner, &model)?;
    let share_secs = t.elapsed().as_secs_f64();
    let share_bytes = 8 * model.parameters() as u64;
    println!("memory while the model was shared:");
    crate::bench_memory::print_memory(share_bytes);
    println!(
        "VGG16 {size}x{size} ({} parameters, {:.2} GMACs per image; model shared once in {share_secs:.1} s):",
        model.parameters(),
        macs as f64 / 1e9
    );
    println!("| batch | MACs/image | plaintext u64 ms | preprocessing ms | online ms | total s/image | images/s (total) | online / plaintext |");
    println!("|---|---|---|---|---|---|---|---|");
    engine::memory::reset_peaks();
    for (batch, xs, t_plain, reps) in inputs {
        let x = s.share(PartyId::Client, &[batch, 3, size, size], &xs)?;
        let xid = x.id();
        let layers = shared.layers().to_vec();
        let (best_pre, best_on, per_kind) = secure_forward(&mut s, &layers, batch, xid, reps)?;
        let total = best_pre + best_on;
        println!(
            "| {batch} | {:.3} G | {:.1} | {:.1} | {:.1} | {:.4} | {:.1} | {:.2}x |",
            macs as f64 / 1e9,
            t_plain * 1e3,
            best_pre * 1e3,
            best_on * 1e3,
            total / batch as f64,
            batch as f64 / total,
            best_on / t_plain
        );
        println!("per layer type at batch {batch}, per party (alice), per image:");
        println!("| layer type | rounds (per batch) | MB sent per image |");
        println!("|---|---|---|");
        for (k, st) in &per_kind {
            println!(
                "| {k} | {} | {:.3} |",
                st.rounds,
                st.bytes_sent as f64 / 1e6 / batch as f64
            );
        }
        if batch == batches[0] && shared.compare() == CompareMode::Checked {
            range_protection_cost(
                &mut s, &model, &layers, batch, xid, reps, best_on, &per_kind,
            )?;
        }
        s.run(move |p| {
            p.forget(xid);
            Ok(())
        })?;
    }
    println!("memory while the batches ran (from the shared model on):");
    crate::bench_memory::print_memory(share_bytes);
    if let Some(mb) = peak_rss_mb() {
        println!("peak resident memory of the process (model owner, client, alice, bob and dealer together): {mb:.0} MB");
    }
    println!();
    Ok(())
}

/// Repetitions of a run of `batch` images of `macs` each (one for the largest runs).
fn reps_for(batch: usize, macs: u64) -> usize {
    if batch * macs as usize > 20_000_000_000 {
        1
    } else {
        2
    }
}

/// Standard normal samples (Box-Muller), within ±15 (the default input bound is ±16).
pub fn standard_normal(rng: &mut ChaCha20Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen_range(0.0..1.0));
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()).clamp(-15.0, 15.0)
        })
        .collect()
}

/// Run `layers` (a chain) on the kept input `xid` of `batch` rows, each layer's material
/// preprocessed just before it (one dealer request per layer, so a large batch's material is
/// never held whole), then the batch's range-check finish where the layers recorded checks;
/// best of `reps`. Returns the preprocessing and online seconds and the online traffic per
/// layer type (the finish as "range check").
fn secure_forward(
    s: &mut Computation,
    layers: &[Arc<dyn SharedLayer>],
    batch: usize,
    xid: u64,
    reps: usize,
) -> Result<(f64, f64, BTreeMap<String, StepStats>)> {
    let (mut best_pre, mut best_on) = (f64::INFINITY, f64::INFINITY);
    let mut last = BTreeMap::new();
    for _ in 0..reps {
        let l2 = layers.to_vec();
        let [(pre, on, per_kind), _] = s.run(move |p| {
            let f = p.fixed_point().frac_bits();
            let (mut pre, mut on) = (0.0, 0.0);
            let mut cur = p.kept(xid)?;
            let mut kinds: BTreeMap<String, StepStats> = BTreeMap::new();
            let mut sites = 0;
            for (i, l) in l2.iter().enumerate() {
                let t0 = Instant::now();
                let specs = l.material(batch, f);
                sites += checked_sites(&specs);
                p.preprocess(&specs)?;
                let t1 = Instant::now();
                let before = p.traffic();
                p.set_range_site(format!("layer {i} {}", l.name()));
                cur = l.forward(p, &cur)?;
                kinds
                    .entry(layer_kind(&l.name()))
                    .or_default()
                    .add(&p.traffic().since(&before).online());
                pre += (t1 - t0).as_secs_f64();
                on += t1.elapsed().as_secs_f64();
            }
            let t0 = Instant::now();
            p.preprocess(&range_check_specs(sites))?;
            let t1 = Instant::now();
            let before = p.traffic();
            p.finish_range_checks()?;
            let fin = p.traffic().since(&before).online();
            if fin.rounds > 0 {
                kinds.entry("range check".into()).or_default().add(&fin);
            }
            pre += (t1 - t0).as_secs_f64();
            on += t1.elapsed().as_secs_f64();
            Ok((pre, on, kinds))
        })?;
        best_pre = best_pre.min(pre);
        best_on = best_on.min(on);
        last = per_kind;
    }
    Ok((best_pre, best_on, last))
}

/// What the range protection costs: the same run with the model's comparisons unchecked
/// (narrow, exact only because this model's values happen to stay small: a measurement, never
/// a default) and with the full-width 64-bit comparisons, against the checked default.
#[allow(clippy::too_many_arguments)]
fn range_protection_cost(
    s: &mut Computation,
    model: &Sequential,
    checked: &[Arc<dyn SharedLayer>],
    batch: usize,
    xid: u64,
    reps: usize,
    checked_online: f64,
    checked_kinds: &BTreeMap<String, StepStats>,
) -> Result<()> {
    let shapes = model.shapes()?;
    // The same lowering as the checked layers: a ReLU the plan moved after its max pool stays
    // the identity, and that pool computes `relu(maxpool(x))`.
    let moved = |i: usize| checked[i].name() == DEFERRED_RELU;
    let with = |mode: CompareMode| -> Result<Vec<Arc<dyn SharedLayer>>> {
        model
            .layers
            .iter()
            .zip(checked)
            .enumerate()
            .map(|(i, (l, sl))| -> Result<Arc<dyn SharedLayer>> {
                Ok(match l {
                    Layer::ReLU if moved(i) => sl.clone(),
                    Layer::ReLU => Arc::new(SharedReLU::new(shapes[i].clone()).comparing(mode)),
                    Layer::MaxPool2d { window } => {
                        let pool =
                            SharedMaxPool2d::new(shapes[i].clone(), *window)?.comparing(mode);
                        Arc::new(if i > 0 && moved(i - 1) {
                            pool.then_relu()
                        } else {
                            pool
                        })
                    }
                    _ => sl.clone(),
                })
            })
            .collect()
    };
    let total = |k: &BTreeMap<String, StepStats>| {
        k.values().fold(StepStats::default(), |mut a, st| {
            a.add(st);
            a
        })
    };
    // Checked and unchecked alternate (three times each, best of each), so both see the same
    // machine load.
    let narrow = with(CompareMode::Narrow)?;
    let (mut on_checked, mut on_narrow) = (checked_online, f64::INFINITY);
    let mut narrow_kinds = BTreeMap::new();
    for _ in 0..reps.max(3) {
        let (_, on, _) = secure_forward(s, checked, batch, xid, 1)?;
        on_checked = on_checked.min(on);
        let (_, on, kinds) = secure_forward(s, &narrow, batch, xid, 1)?;
        on_narrow = on_narrow.min(on);
        narrow_kinds = kinds;
    }
    let (_, on_full, full_kinds) = secure_forward(s, &with(CompareMode::Full)?, batch, xid, reps)?;
    let (c, n, f) = (
        total(checked_kinds),
        total(&narrow_kinds),
        total(&full_kinds),
    );
    println!("range protection at batch {batch} (forward to the logits, online, alice):");
    println!("| comparisons | online ms | rounds | MB sent per image |");
    println!("|---|---|---|---|");
    for (label, on, t) in [
        (
            "narrow, checked (the default for this model)",
            on_checked,
            &c,
        ),
        (
            "narrow, unchecked (the same run without the protection)",
            on_narrow,
            &n,
        ),
        ("full-width 64-bit (before)", on_full, &f),
    ] {
        println!(
            "| {label} | {:.1} | {} | {:.3} |",
            on * 1e3,
            t.rounds,
            t.bytes_sent as f64 / 1e6 / batch as f64
        );
    }
    println!(
        "range protection overhead: {:+.1} % online time, {:+.1} % rounds, {:+.1} % bytes",
        (on_checked / on_narrow - 1.0) * 100.0,
        (c.rounds as f64 / n.rounds as f64 - 1.0) * 100.0,
        (c.bytes_sent as f64 / n.bytes_sent as f64 - 1.0) * 100.0
    );
    Ok(())
}
