//! The project's own bench command: GEMM vs the machine's u64 MAC peak, secure matmul vs
//! plaintext GEMM, comparison costs, and the VGG16 head — ratios measured in one run.

use std::time::{Duration, Instant};

use kernels::cpu::gemm::measure_mac_peak;
use kernels::{backend_from_kind, BackendKind, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use engine::dealer::MaterialSpec;
use engine::error::Result;
use engine::io::ModelFile;
use engine::memory::{self, Role};
use engine::nn::plain::{vgg16_head, Sequential};
use engine::nn::range::ModelBounds;
use engine::nn::shared::SharedModel;
use engine::nn::{LayerShape, ModelSource};
use engine::protocols::compare::compare_specs;
use engine::service::classifier::{ClassifyOptions, SecureClassifier};
use engine::service::computation::{agreed_id, Computation};
use engine::transport::{PartyId, StepStats};
use kernels::TransferStats;

/// Best-of-`reps` wall time of `f` in seconds.
fn time_best(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn random_words(rng: &mut ChaCha20Rng, n: usize) -> Vec<u64> {
    (0..n).map(|_| rng.gen()).collect()
}

/// Small fixed-point values (|v| < 2^14 ring units) so sums stay in range.
fn small_values(rng: &mut ChaCha20Rng, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| rng.gen_range(-(1i64 << 14)..(1i64 << 14)) as u64)
        .collect()
}

/// Run the whole bench and print the tables (`cnn`: only the VGG16 benchmarks; `vgg16_224`:
/// add torchvision's whole VGG16 at 224x224).
pub fn run(kind: BackendKind, quick: bool, cnn: bool, vgg16_224: bool) -> Result<()> {
    if cnn || vgg16_224 {
        return cnn_benches(kind, cnn, vgg16_224);
    }
    let be = backend_from_kind(kind)?;
    let threads = rayon::current_num_threads();
    println!("backend: {}", be.describe());
    let peak = measure_mac_peak(threads);
    println!(
        "u64 multiply-add peak (independent vpmullq+vpaddq chains, {threads} threads): {:.1} GMAC/s\n",
        peak / 1e9
    );
    let mut rng = ChaCha20Rng::from_entropy();
    let shapes: Vec<(usize, usize, usize)> = if quick {
        vec![(64, 64, 64), (256, 256, 256), (16, 1024, 512)]
    } else {
        vec![(256, 256, 256), (1024, 1024, 1024), (64, 25088, 4096)]
    };
    println!("| shape m x k x n | u64 GEMM ms | GMAC/s | % of peak | secure online ms | online / GEMM | with preprocessing ms | total / GEMM |");
    println!("|---|---|---|---|---|---|---|---|");
    for &(m, k, n) in &shapes {
        let a = be.upload(&[m, k], &random_words(&mut rng, m * k))?;
        let b = be.upload(&[k, n], &random_words(&mut rng, k * n))?;
        be.matmul(&a, &b, None)?; // packs b once, as for model weights
        let reps = if m * k * n > 1 << 30 { 3 } else { 5 };
        let t_gemm = time_best(reps, || {
            be.matmul(&a, &b, None).map(|_| ()).map_err(Into::into)
        })?;
        let gmacs = (m * k * n) as f64 / t_gemm / 1e9;
        let (online, total) = secure_matmul_times(kind, m, k, n, &mut rng, reps)?;
        println!(
            "| {m} x {k} x {n} | {:.2} | {:.1} | {:.0}% | {:.2} | {:.2}x | {:.2} | {:.2}x |",
            t_gemm * 1e3,
            gmacs,
            100.0 * gmacs * 1e9 / peak,
            online * 1e3,
            online / t_gemm,
            total * 1e3,
            total / t_gemm
        );
    }
    println!();
    if kind == BackendKind::Gpu {
        gpu_vs_cpu_table(quick, &mut rng)?;
        println!();
        for k in [BackendKind::Cpu, BackendKind::Gpu] {
            println!("Comparison on the {k} backend:");
            comparison_table(k, quick)?;
            println!();
        }
        return gpu_head_table(quick, &mut rng);
    }
    comparison_table(kind, quick)?;
    println!();
    vgg_head(kind, quick, &mut rng)?;
    if !quick {
        println!();
        cnn_benches(kind, true, false)?;
    }
    Ok(())
}

/// VGG16 at CIFAR-10 shape (batch 1 and 64) and, on request, the whole VGG16 at 224x224.
fn cnn_benches(kind: BackendKind, cifar: bool, full: bool) -> Result<()> {
    let mut rng = ChaCha20Rng::from_entropy();
    if cifar {
        crate::bench_cnn::vgg16_run(kind, 32, None, 512, 10, &[1, 64], &mut rng)?;
        crate::bench_resnet::resnet18_run(kind, 32, &[1, 8], &mut rng)?;
    }
    if full {
        crate::bench_cnn::vgg16_run(kind, 224, Some([7, 7]), 4096, 1000, &[1], &mut rng)?;
        crate::bench_resnet::resnet18_run(kind, 224, &[1], &mut rng)?;
    }
    Ok(())
}

/// Secure fixed-operand matmul (weights masked once): online time (both parties, truncation
/// included) and time including the dealer's and parties' preprocessing, best of `reps`.
fn secure_matmul_times(
    kind: BackendKind,
    m: usize,
    k: usize,
    n: usize,
    rng: &mut ChaCha20Rng,
    reps: usize,
) -> Result<(f64, f64)> {
    let mut s = crate::bench_cnn::computation(kind)?;
    let w = s.share_ring(PartyId::ModelOwner, &[k, n], &small_values(rng, k * n))?;
    let x = s.share_ring(PartyId::Client, &[m, k], &small_values(rng, m * k))?;
    let (wid, xid) = (w.id(), x.id());
    let [fa, fb] = s.run(move |p| {
        let w = p.kept(wid)?;
        Ok(p.fix_operand(&w)?.id())
    })?;
    let fid = agreed_id(fa, fb)?;
    let (mut best_online, mut best_total) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps {
        let t0 = Instant::now();
        s.run(move |p| {
            let w = p.fixed_operand(fid, &p.kept(wid)?)?;
            let f = p.fixed_point().frac_bits();
            p.preprocess(&[w.triple_spec(m), MaterialSpec::Trunc { n: m * n, bits: f }])
        })?;
        let t1 = Instant::now();
        s.run(move |p| {
            let w = p.fixed_operand(fid, &p.kept(wid)?)?;
            let x = p.kept(xid)?;
            p.matmul_fixed(&x, &w).map(|_| ())
        })?;
        let t2 = Instant::now();
        best_online = best_online.min((t2 - t1).as_secs_f64());
        best_total = best_total.min((t2 - t0).as_secs_f64());
    }
    Ok((best_online, best_total))
}

/// CPU vs GPU: plaintext GEMM and secure matmul through a VGG16 fc layer at several batch
/// sizes, plus the tutorial's Linear(1,1), measured in the same run.
fn gpu_vs_cpu_table(quick: bool, rng: &mut ChaCha20Rng) -> Result<()> {
    // fc2 (4096 x 4096): fc1 (25088 x 4096) at batch 1024 takes minutes on a software adapter.
    let (k, n) = if quick { (512, 512) } else { (4096, 4096) };
    let cpu = backend_from_kind(BackendKind::Cpu)?;
    let gpu = backend_from_kind(BackendKind::Gpu)?;
    println!(
        "CPU vs GPU through a VGG16 fc layer ({k} x {n}); GPU: {}",
        gpu.describe()
    );
    println!("| case | batch | CPU GEMM ms | GPU GEMM ms | CPU GMAC/s | GPU GMAC/s | GPU/CPU time | CPU secure ms | GPU secure ms | GPU/CPU secure |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let batches: &[usize] = if quick { &[1, 64] } else { &[1, 64, 256, 1024] };
    let mut cases: Vec<(String, usize, usize, usize)> = batches
        .iter()
        .map(|&m| (format!("fc {k}x{n}"), m, k, n))
        .collect();
    cases.push(("Linear(1,1)".into(), 1, 1, 1));
    for (name, m, k, n) in cases {
        let a_host = random_words(rng, m * k);
        let b_host = random_words(rng, k * n);
        let mut times = Vec::new();
        for be in [&cpu, &gpu] {
            let a = be.upload(&[m, k], &a_host)?;
            let b = be.upload(&[k, n], &b_host)?;
            // Include the download so the GPU time covers the finished result.
            be.download(&be.matmul(&a, &b, None)?)?;
            times.push(time_best(3, || {
                be.download(&be.matmul(&a, &b, None)?)?;
                Ok(())
            })?);
        }
        let (c_sec, _) = secure_matmul_times(BackendKind::Cpu, m, k, n, rng, 2)?;
        let (g_sec, _) = secure_matmul_times(BackendKind::Gpu, m, k, n, rng, 2)?;
        let macs = (m * k * n) as f64;
        println!(
            "| {name} | {m} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2} | {:.2} | {:.2}x |",
            times[0] * 1e3,
            times[1] * 1e3,
            macs / times[0] / 1e9,
            macs / times[1] / 1e9,
            times[1] / times[0],
            c_sec * 1e3,
            g_sec * 1e3,
            g_sec / c_sec
        );
    }
    Ok(())
}

fn comparison_table(kind: BackendKind, quick: bool) -> Result<()> {
    let mut s = crate::bench_cnn::computation(kind)?;
    println!("| op | batch | elements | rounds | bytes sent per party | bytes / element | online ms | online us / element | with preprocessing ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let batches: &[usize] = if quick { &[1, 64] } else { &[1, 64, 1024] };
    for &batch in batches {
        for (op, width) in [("ReLU (x4096)", 4096usize), ("argmax (10 classes)", 10)] {
            let n = batch * width;
            let vals: Vec<f64> = (0..n)
                .map(|i| ((i * 37 % 101) as f64 - 50.0) / 8.0)
                .collect();
            let x = s.share(PartyId::Client, &[batch, width], &vals)?;
            let xid = x.id();
            let is_relu = width == 4096;
            let t0 = Instant::now();
            if is_relu {
                s.run(move |p| p.preprocess(&compare_specs(n, 1)))?;
            }
            let t1 = Instant::now();
            let [stats, _] = s.run(move |p| {
                let x = p.kept(xid)?;
                let before = p.traffic();
                if is_relu {
                    p.relu(&x)?;
                } else {
                    p.argmax_last(&x)?;
                }
                Ok(p.traffic().since(&before).online())
            })?;
            let t2 = Instant::now();
            let online = (t2 - t1).as_secs_f64();
            println!(
                "| {op} | {batch} | {n} | {} | {} | {:.1} | {:.2} | {:.3} | {:.2} |",
                stats.rounds,
                stats.bytes_sent,
                stats.bytes_sent as f64 / n as f64,
                online * 1e3,
                online * 1e6 / n as f64,
                (t2 - t0).as_secs_f64() * 1e3
            );
            s.run(move |p| {
                p.forget(xid);
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Plaintext u64 inference of a head: the same products on ring values, bias adds, ReLU as a
/// sign test — the baseline the secure head is compared with.
fn plaintext_u64_head(
    be: &dyn kernels::Backend,
    weights: &[(Tensor, Vec<u64>)],
    x: &Tensor,
    relu_after: &[bool],
    frac: u32,
) -> Result<Tensor> {
    let mut cur = x.clone();
    for ((w, bias), &relu) in weights.iter().zip(relu_after) {
        let z = be.matmul(&cur, w, None)?;
        let mut h = be.download(&z)?;
        let n = bias.len();
        for (i, v) in h.iter_mut().enumerate() {
            let t = ((*v as i64) >> frac) as u64;
            let y = t.wrapping_add(bias[i % n]);
            *v = if relu && (y as i64) < 0 { 0 } else { y };
        }
        cur = be.upload(z.shape(), &h)?;
    }
    Ok(cur)
}

/// Write a VGG16-style head `input-hidden-hidden-classes` with random f32 weights (PyTorch's
/// default initialisation range) as a safetensors state dict (`0.*`, `3.*`, `6.*`, the
/// `vgg16-head` preset), generating one tensor at a time.
pub fn write_random_head(
    path: &std::path::Path,
    input: usize,
    hidden: usize,
    classes: usize,
    rng: &mut impl Rng,
) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let dims = [
        (0, input, hidden),
        (3, hidden, hidden),
        (6, hidden, classes),
    ];
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (idx, i, o) in dims {
        let bound = 1.0 / (i as f32).sqrt();
        let mut gen = |len: usize| -> Vec<u8> {
            let mut b = Vec::with_capacity(4 * len);
            for _ in 0..len {
                b.extend_from_slice(&rng.gen_range(-bound..bound).to_le_bytes());
            }
            b
        };
        bytes.push((format!("{idx}.weight"), vec![o, i], gen(i * o)));
        bytes.push((format!("{idx}.bias"), vec![o], gen(o)));
    }
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("sizes match"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None, path)
        .map_err(|e| engine::EngineError::Format(format!("{}: cannot write: {e}", path.display())))
}

fn vgg_head(kind: BackendKind, quick: bool, rng: &mut ChaCha20Rng) -> Result<()> {
    let (input, hidden, classes, batch) = if quick {
        (1024, 256, 7, 16)
    } else {
        (25088, 4096, 7, 64)
    };
    let path = std::env::temp_dir().join(format!(
        "secure-serving-bench-{}.safetensors",
        std::process::id()
    ));
    write_random_head(&path, input, hidden, classes, rng)?;
    let mut s = crate::bench_cnn::computation(kind)?;
    let fx = s.fixed_point();
    let be = backend_from_kind(kind)?;
    memory::reset_peaks();
    let t_share = Instant::now();
    let file = ModelFile::open(path.to_str().expect("utf-8 temp path"), "vgg16-head", "")?;
    let shared: SharedModel =
        s.share_model_with(PartyId::ModelOwner, &file, &ModelBounds::default())?;
    let share_secs = t_share.elapsed().as_secs_f64();
    let share_bytes = 8 * file.parameter_count() as u64;
    let load_peaks = memory::report();
    let xs: Vec<f64> = (0..batch * input)
        .map(|_| rng.gen_range(0.0..1.0))
        .collect();
    // On-demand material: preprocessing, then the online phase, timed separately.
    let run = secure_head_batch(&mut s, &shared, input, batch, 3, rng)?;
    let (best_on, best_total, st, dealer_bytes) =
        (run.online, run.total, run.traffic, run.dealer_bytes);
    let run_peaks = memory::report();
    // Whole classify requests through the services (share, forward, argmax, reveal): the
    // first makes its material in the request; the next ones find it made ahead.
    let deployment = s.deployment().clone();
    drop(s);
    let mut clf = SecureClassifier::upload(&deployment, &file, &fx, &ModelBounds::default())?;
    let opts = ClassifyOptions { batch };
    let t0 = Instant::now();
    let cold = clf.classify(&xs, None, &opts)?;
    let cold_secs = t0.elapsed().as_secs_f64();
    let mut warm = Vec::new();
    for _ in 0..3 {
        // Material for the next request is made in the background after each one.
        std::thread::sleep(Duration::from_secs_f64(cold_secs.min(60.0)));
        let t0 = Instant::now();
        let r = clf.classify(&xs, None, &opts)?;
        if r.pooled_batches == r.batches {
            warm.push(t0.elapsed().as_secs_f64());
        }
    }
    let _ = cold;
    // The plaintext baseline: the same products on ring values, weights encoded from the file.
    let mut weights = Vec::new();
    for (li, l) in file.layer_shapes().iter().enumerate() {
        if let LayerShape::Linear {
            in_features: i,
            out_features: o,
        } = *l
        {
            let mut wt = vec![0u64; i * o];
            file.encode_weight(li, &fx, &mut wt)?;
            let mut bias = vec![0u64; o];
            file.encode_bias(li, &fx, &mut bias)?;
            weights.push((be.upload(&[i, o], &wt)?, bias));
        }
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    let xt = be.upload(&[batch, input], &fx.encode(&xs)?)?;
    let relu_after = [true, true, false];
    plaintext_u64_head(be.as_ref(), &weights, &xt, &relu_after, fx.frac_bits())?;
    let t_plain = time_best(3, || {
        plaintext_u64_head(be.as_ref(), &weights, &xt, &relu_after, fx.frac_bits()).map(|_| ())
    })?;
    println!("VGG16 head {input}-{hidden}-{hidden}-{classes}, batch {batch}:");
    println!(
        "model load (mmap) + encode + share + mask + prepack: {share_secs:.2} s ({:.1} MB encoded per party)",
        share_bytes as f64 / 1e6
    );
    println!("| phase | ms | images/s | ratio to plaintext u64 head |");
    println!("|---|---|---|---|");
    println!(
        "| plaintext u64 head | {:.1} | {:.0} | 1.00x |",
        t_plain * 1e3,
        batch as f64 / t_plain
    );
    println!(
        "| secure, online only | {:.1} | {:.0} | {:.2}x |",
        best_on * 1e3,
        batch as f64 / best_on,
        best_on / t_plain
    );
    println!(
        "| secure, with preprocessing | {:.1} | {:.0} | {:.2}x |",
        best_total * 1e3,
        batch as f64 / best_total,
        best_total / t_plain
    );
    if let (Some(&best), Some(&worst)) = (
        warm.iter().min_by(|a, b| a.total_cmp(b)),
        warm.iter().max_by(|a, b| a.total_cmp(b)),
    ) {
        println!(
            "| secure classify request, material made in it | {:.1} | {:.0} | {:.2}x |",
            cold_secs * 1e3,
            batch as f64 / cold_secs,
            cold_secs / t_plain
        );
        println!(
            "| secure classify request, material made ahead ({} requests) | {:.1} (max {:.1}) | {:.0} | {:.2}x ({:.2}x the online-only time) |",
            warm.len(),
            best * 1e3,
            worst * 1e3,
            batch as f64 / best,
            best / t_plain,
            best / best_on
        );
    } else {
        println!("| secure classify request, material made ahead | (not ready in time) | | |");
    }
    println!(
        "online traffic per party per batch: {:.1} MB sent, {} rounds",
        st.bytes_sent as f64 / 1e6,
        st.rounds
    );
    println!(
        "dealer material received per batch: alice {} bytes, bob {:.1} MB",
        dealer_bytes[0],
        dealer_bytes[1] as f64 / 1e6
    );
    if let Some(r) = load_peaks {
        println!(
            "peak during loading: alice {:.1} MB, bob {:.1} MB, dealer {:.1} MB, owner {:.1} MB",
            r.role(Role::Alice).peak as f64 / 1e6,
            r.role(Role::Bob).peak as f64 / 1e6,
            r.role(Role::Dealer).peak as f64 / 1e6,
            r.role(Role::Owner).peak as f64 / 1e6
        );
    }
    if run_peaks.is_some() {
        crate::bench_memory::print_memory(share_bytes);
    }
    Ok(())
}

/// One secure head measurement: best of `reps` batches of `batch` rows.
struct HeadRun {
    online: f64,
    total: f64,
    traffic: StepStats,
    dealer_bytes: [u64; 2],
    /// Host<->device transfers of party 0 in one batch (preprocessing and forward pass).
    transfers: TransferStats,
}

/// Share `model` once in a fresh session on `kind`, then for each batch size run `reps`
/// batches: preprocessing, then the forward pass (online), timed separately.
fn secure_head_runs(
    kind: BackendKind,
    model: &Sequential,
    input: usize,
    batches: &[usize],
    reps: usize,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<HeadRun>> {
    let mut s = crate::bench_cnn::computation(kind)?;
    let shared: SharedModel = s.share_model(PartyId::ModelOwner, model)?;
    batches
        .iter()
        .map(|&batch| secure_head_batch(&mut s, &shared, input, batch, reps, rng))
        .collect()
}

/// `reps` batches of `batch` rows through a shared head; the best times.
fn secure_head_batch(
    s: &mut Computation,
    shared: &SharedModel,
    input: usize,
    batch: usize,
    reps: usize,
    rng: &mut ChaCha20Rng,
) -> Result<HeadRun> {
    let xs: Vec<f64> = (0..batch * input)
        .map(|_| rng.gen_range(0.0..1.0))
        .collect();
    let x = s.share(PartyId::Client, &[batch, input], &xs)?;
    let xid = x.id();
    let mut best = HeadRun {
        online: f64::INFINITY,
        total: f64::INFINITY,
        traffic: StepStats::default(),
        dealer_bytes: [0; 2],
        transfers: TransferStats::default(),
    };
    for _ in 0..reps {
        let m1 = shared.clone();
        let t0 = Instant::now();
        let [(d0, moved0), (d1, _)] = s.run(move |p| {
            let f = p.fixed_point().frac_bits();
            let before = (p.traffic(), p.backend().transfers());
            p.preprocess(&m1.material_specs(batch, f))?;
            Ok((
                p.traffic().since(&before.0).step("dealer").bytes_received,
                p.backend().transfers().since(&before.1),
            ))
        })?;
        let t1 = Instant::now();
        let m2 = shared.clone();
        let [(st, moved), _] = s.run(move |p| {
            let before = (p.traffic(), p.backend().transfers());
            let x = p.kept(xid)?;
            m2.forward(p, &x)?;
            Ok((
                p.traffic().since(&before.0).online(),
                p.backend().transfers().since(&before.1),
            ))
        })?;
        let t2 = Instant::now();
        best.online = best.online.min((t2 - t1).as_secs_f64());
        best.total = best.total.min((t2 - t0).as_secs_f64());
        best.traffic = st;
        best.dealer_bytes = [d0, d1];
        best.transfers = TransferStats {
            uploads: moved0.uploads + moved.uploads,
            upload_bytes: moved0.upload_bytes + moved.upload_bytes,
            downloads: moved0.downloads + moved.downloads,
            download_bytes: moved0.download_bytes + moved.download_bytes,
        };
    }
    s.run(move |p| {
        p.forget(xid);
        Ok(())
    })?;
    Ok(best)
}

/// The VGG16 head secure on the CPU and on the GPU backend at several batch sizes, with each
/// batch's host<->device traffic on the GPU.
fn gpu_head_table(quick: bool, rng: &mut ChaCha20Rng) -> Result<()> {
    let (input, hidden, classes) = if quick {
        (256, 64, 7)
    } else {
        (25088, 4096, 7)
    };
    let batches: &[usize] = if quick { &[4, 16] } else { &[64, 256, 1024] };
    let model = vgg16_head(input, hidden, classes, rng);
    println!("VGG16 head {input}-{hidden}-{hidden}-{classes}, secure, CPU vs GPU backend (best of 2 batches):");
    println!("| batch | CPU online ms | GPU online ms | GPU speed-up online | CPU with preprocessing ms | GPU with preprocessing ms | GPU speed-up total | GPU images/s online |");
    println!("|---|---|---|---|---|---|---|---|");
    let cpu = secure_head_runs(BackendKind::Cpu, &model, input, batches, 2, rng)?;
    let gpu = secure_head_runs(BackendKind::Gpu, &model, input, batches, 2, rng)?;
    let mut traffic = Vec::new();
    for ((&batch, c), g) in batches.iter().zip(cpu).zip(gpu) {
        println!(
            "| {batch} | {:.1} | {:.1} | {:.2}x | {:.1} | {:.1} | {:.2}x | {:.0} |",
            c.online * 1e3,
            g.online * 1e3,
            c.online / g.online,
            c.total * 1e3,
            g.total * 1e3,
            c.total / g.total,
            batch as f64 / g.online
        );
        traffic.push((batch, g));
    }
    println!();
    println!(
        "Host<->device traffic per batch on the GPU backend (party 0; preprocessing + forward):"
    );
    println!("| batch | uploads | upload MB | downloads | download MB | online bytes sent to the peer MB | bob's dealer corrections MB |");
    println!("|---|---|---|---|---|---|---|");
    for (batch, g) in traffic {
        let t = g.transfers;
        println!(
            "| {batch} | {} | {:.3} | {} | {:.3} | {:.3} | {:.3} |",
            t.uploads,
            t.upload_bytes as f64 / 1e6,
            t.downloads,
            t.download_bytes as f64 / 1e6,
            g.traffic.bytes_sent as f64 / 1e6,
            g.dealer_bytes[1] as f64 / 1e6
        );
    }
    Ok(())
}
