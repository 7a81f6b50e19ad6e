//! Slow checks, run on demand: `cargo test --release -p kernels --test conformance -- --ignored`.

use super::*;

/// User + system CPU seconds of this process (Linux; 0 elsewhere). lavapipe runs on the CPU,
/// so this is a load-independent cost measure when other jobs share the machine.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Matmul throughput of each u64 variant (prints G MAC/s per wall second and per CPU second).
#[test]
#[ignore = "timing, run on demand"]
fn gpu_matmul_throughput() {
    let Some(first) = gpus().first() else {
        return;
    };
    let mut variants = vec![U64Variant::U32Pairs];
    if gpus()
        .iter()
        .any(|g| g.gpu.variant() == U64Variant::NativeU64)
    {
        variants.push(U64Variant::NativeU64);
    }
    let mut r = rng(5);
    for v in variants {
        let be = GpuBackend::with_options(GpuOptions {
            u64_variant: Some(v),
            ..first.opts.clone()
        })
        .unwrap();
        for &(m, k, n) in &[(512, 512, 512), (1024, 1024, 1024), (8, 4096, 4096)] {
            let a = up(&be, &[m, k], &values(&mut r, m * k, 0.0));
            let b = up(&be, &[k, n], &values(&mut r, k * n, 0.0));
            drop(be.matmul(&a, &b, None).unwrap());
            be.synchronize().unwrap();
            let reps = 3;
            let c0 = cpu_seconds();
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                drop(be.matmul(&a, &b, None).unwrap());
            }
            be.synchronize().unwrap();
            let s = t0.elapsed().as_secs_f64() / reps as f64;
            let c = (cpu_seconds() - c0) / reps as f64;
            let gmac = (m * k * n) as f64 / 1e9;
            eprintln!(
                "gpu {v}: matmul {m}x{k}x{n}: {:.1} ms, {:.2} G MAC/s wall, {:.2} G MAC per CPU s",
                s * 1e3,
                gmac / s,
                gmac / c.max(1e-9)
            );
        }
    }
}

/// A VGG16 fc1-sized weight (25088 x 4096 u64 = 822 MB) exceeds one storage binding on
/// lavapipe (128 MiB): the product must be split over k and still match the host.
#[test]
#[ignore = "uploads 822 MB, run on demand"]
fn gpu_matmul_larger_than_one_binding() {
    let Some(g) = gpus().first() else {
        return;
    };
    let be = g.gpu.as_ref();
    let (m, k, n) = (2, 25088, 4096);
    let mut r = rng(6);
    let a = values(&mut r, m * k, 0.2);
    let w = values(&mut r, k * n, 0.2);
    let acc = values(&mut r, m * n, 0.2);
    let t0 = std::time::Instant::now();
    let (ta, tw, tc) = (
        up(be, &[m, k], &a),
        up(be, &[k, n], &w),
        up(be, &[m, n], &acc),
    );
    let got = down(be, &be.matmul(&ta, &tw, Some(&tc)).unwrap());
    eprintln!(
        "gpu[{}]: {m}x{k}x{n} matmul incl. upload in {:.1?}",
        g.label,
        t0.elapsed()
    );
    let cpu = CpuBackend::new();
    let want = down(
        &cpu,
        &cpu.matmul(
            &up(&cpu, &[m, k], &a),
            &up(&cpu, &[k, n], &w),
            Some(&up(&cpu, &[m, n], &acc)),
        )
        .unwrap(),
    );
    check("matmul 2x25088x4096", &got, &want);
    // Row sums and an elementwise op over the whole weight (also past one binding).
    let got = down(be, &be.sum_rows(&tw).unwrap());
    check("sum_rows 25088x4096", &got, &reference::sum_rows(&w, k, n));
    let got = down(be, &be.scalar(ScalarOp::Mul, &tw, 3).unwrap());
    check(
        "scalar 25088x4096",
        &got,
        &reference::scalar(ScalarOp::Mul, &w, 3),
    );
}
