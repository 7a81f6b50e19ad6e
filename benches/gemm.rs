//! Criterion benches: plaintext u64 GEMM and secure fixed-operand matmul at the same shapes.
//! Set `BENCH_FULL=1` for the 1024^3 and VGG16 fc1 (64 x 25088 x 4096) shapes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::dealer::MaterialSpec;
use engine::{Backend, FixedPoint, LocalConfig, LocalDeployment, PartyId};
use kernels::CpuBackend;
use rand::{Rng, SeedableRng};

fn shapes() -> Vec<(usize, usize, usize)> {
    if std::env::var("BENCH_FULL").is_ok() {
        vec![(256, 256, 256), (1024, 1024, 1024), (64, 25088, 4096)]
    } else {
        vec![(256, 256, 256)]
    }
}

fn bench(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
    let be = CpuBackend::new();
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    for (m, k, n) in shapes() {
        g.throughput(Throughput::Elements((m * k * n) as u64));
        let a = be
            .upload(
                &[m, k],
                &(0..m * k).map(|_| rng.gen()).collect::<Vec<u64>>(),
            )
            .unwrap();
        let b = be
            .upload(
                &[k, n],
                &(0..k * n).map(|_| rng.gen()).collect::<Vec<u64>>(),
            )
            .unwrap();
        g.bench_function(format!("u64_gemm_{m}x{k}x{n}"), |bench| {
            bench.iter(|| be.matmul(&a, &b, None).unwrap())
        });
        let d = LocalDeployment::start(LocalConfig::default()).unwrap();
        let mut s = engine::Computation::open(&d, FixedPoint::default()).unwrap();
        let small = |rng: &mut rand_chacha::ChaCha20Rng, len: usize| -> Vec<u64> {
            (0..len)
                .map(|_| rng.gen_range(-(1i64 << 14)..(1i64 << 14)) as u64)
                .collect()
        };
        let w = s
            .share_ring(PartyId::ModelOwner, &[k, n], &small(&mut rng, k * n))
            .unwrap();
        let x = s
            .share_ring(PartyId::Client, &[m, k], &small(&mut rng, m * k))
            .unwrap();
        let (wid, xid) = (w.id(), x.id());
        let [fid, _] = s
            .run(move |p| Ok(p.fix_operand(&p.kept(wid)?)?.id()))
            .unwrap();
        g.bench_function(format!("secure_matmul_online_{m}x{k}x{n}"), |bench| {
            bench.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    s.run(move |p| {
                        let w = p.fixed_operand(fid, &p.kept(wid)?)?;
                        let f = p.fixed_point().frac_bits();
                        p.preprocess(&[w.triple_spec(m), MaterialSpec::Trunc { n: m * n, bits: f }])
                    })
                    .unwrap();
                    let t = std::time::Instant::now();
                    s.run(move |p| {
                        let w = p.fixed_operand(fid, &p.kept(wid)?)?;
                        p.matmul_fixed(&p.kept(xid)?, &w).map(|_| ())
                    })
                    .unwrap();
                    total += t.elapsed();
                }
                total
            })
        });
        g.bench_function(
            format!("secure_matmul_with_preprocessing_{m}x{k}x{n}"),
            |bench| {
                bench.iter(|| {
                    s.run(move |p| {
                        let w = p.fixed_operand(fid, &p.kept(wid)?)?;
                        p.matmul_fixed(&p.kept(xid)?, &w).map(|_| ())
                    })
                    .unwrap()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
