//! (c) GPU memory stays flat; (d) errors: missing backends, bad inputs; rows longer than a binding.

use super::*;

#[test]
fn gpu_memory_stays_flat() {
    for shared in gpus() {
        // A private backend: the shared ones serve tests running in parallel.
        let g = open_gpu(&shared.label, shared.opts.clone());
        let be = g.gpu.as_ref();
        let mut r = rng(4);
        let (m, k, n) = (33, 65, 17);
        let a = up(be, &[m, k], &values(&mut r, m * k, 0.3));
        let b = up(be, &[k, n], &values(&mut r, k * n, 0.3));
        let mut x = up(be, &[m, n], &values(&mut r, m * n, 0.3));
        let step = |i: usize, x: &Tensor| -> Tensor {
            match i % 5 {
                0 => be.matmul(&a, &b, Some(x)).unwrap(),
                1 => be.binary(BinaryOp::Mul, x, x).unwrap(),
                2 => be.scalar(ScalarOp::ShrArith, x, 3).unwrap(),
                3 => be
                    .beaver_combine(BeaverKind::Arithmetic, x, x, x, x, x, true)
                    .unwrap(),
                _ => {
                    let s = be.sum_rows(x).unwrap();
                    assert_eq!(down(be, &s).len(), m);
                    x.clone()
                }
            }
        };
        for i in 0..50 {
            x = step(i, &x);
        }
        let _ = down(be, &x);
        let before = g.gpu.pool_stats();
        for i in 0..1000 {
            x = step(i, &x);
        }
        let _ = down(be, &x);
        let after = g.gpu.pool_stats();
        eprintln!(
            "gpu[{}]: pool after warm-up {before:?}, after 1000 ops {after:?}",
            g.label
        );
        assert_eq!(
            before, after,
            "gpu[{}]: pool grew over 1000 repeated ops",
            g.label
        );
    }
}

#[test]
fn missing_wgpu_backend_is_gpu_unavailable() {
    // A backend that cannot exist on this OS.
    let absent = if cfg!(target_os = "macos") {
        wgpu::Backends::DX12
    } else {
        wgpu::Backends::METAL
    };
    match GpuBackend::with_options(GpuOptions {
        backends: Some(absent),
        ..Default::default()
    }) {
        Err(KernelError::GpuUnavailable(msg)) => {
            assert!(msg.contains("no wgpu adapter"), "unclear message: {msg}");
            eprintln!("missing backend reports: {msg}");
        }
        other => panic!("expected GpuUnavailable, got {other:?}"),
    }
}

/// Rows longer than one storage binding work (the 64 KiB configuration holds 8192 values per
/// binding): long rows of A (k), of B and C (n), matrix-vector products, and row sums.
#[test]
fn rows_longer_than_a_binding_work() {
    let Some(g) = gpus().iter().find(|g| g.opts.max_binding_bytes.is_some()) else {
        return;
    };
    let be = g.gpu.as_ref();
    let cpu = CpuBackend::new();
    let mut r = rng(21);
    for &(m, k, n) in &[
        (1, 9000, 1),
        (3, 9001, 5),
        (2, 3, 9000),
        (5, 40, 8300),
        (1, 20000, 3),
    ] {
        let ha = values(&mut r, m * k, 0.3);
        let hb = values(&mut r, k * n, 0.3);
        let hc = values(&mut r, m * n, 0.3);
        for acc in [false, true] {
            let want = reference::matmul(&ha, &hb, acc.then_some(hc.as_slice()), m, k, n);
            let c = up(be, &[m, n], &hc);
            let got = be
                .matmul(
                    &up(be, &[m, k], &ha),
                    &up(be, &[k, n], &hb),
                    acc.then_some(&c),
                )
                .unwrap_or_else(|e| panic!("[{m},{k}]x[{k},{n}]: {e}"));
            check(
                &format!("{} matmul [{m},{k}]x[{k},{n}] acc={acc}", g.label),
                &down(be, &got),
                &want,
            );
        }
        let s = be.sum_rows(&up(be, &[m, k], &ha)).unwrap();
        check(
            &format!("{} sum_rows [{m},{k}]", g.label),
            &down(be, &s),
            &reference::sum_rows(&ha, m, k),
        );
        let t = be.transpose(&up(be, &[m, k], &ha)).unwrap();
        let tc = cpu.transpose(&up(&cpu, &[m, k], &ha)).unwrap();
        check(
            &format!("{} transpose [{m},{k}]", g.label),
            &down(be, &t),
            &down(&cpu, &tc),
        );
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let cpu = CpuBackend::new();
    let cpu_t = cpu.upload(&[2, 2], &[1, 2, 3, 4]).unwrap();
    let other = gpus().get(1).map(|g| g.gpu.clone());
    for (name, be) in all_backends() {
        let a = up(be.as_ref(), &[2, 3], &[1; 6]);
        let b = up(be.as_ref(), &[3, 2], &[1; 6]);
        assert!(
            matches!(
                be.binary(BinaryOp::Add, &a, &b),
                Err(KernelError::Shape { .. })
            ),
            "{name}"
        );
        assert!(
            matches!(be.matmul(&a, &a, None), Err(KernelError::Shape { .. })),
            "{name}"
        );
        assert!(
            matches!(be.matmul(&a, &b, Some(&a)), Err(KernelError::Shape { .. })),
            "{name}"
        );
        assert!(
            matches!(
                be.scalar(ScalarOp::Shl, &a, 64),
                Err(KernelError::Shape { .. })
            ),
            "{name}"
        );
        assert!(
            matches!(
                be.sum_rows(&a.reshaped(vec![6]).unwrap()),
                Err(KernelError::Shape { .. })
            ),
            "{name}"
        );
        assert!(
            matches!(be.upload(&[4], &[1, 2]), Err(KernelError::Shape { .. })),
            "{name}"
        );
        if be.name() == "gpu" {
            assert!(
                matches!(be.download(&cpu_t), Err(KernelError::ForeignTensor { .. })),
                "{name}"
            );
            if let Some(o) = &other {
                let t = o.upload(&[2, 3], &[1; 6]).unwrap();
                if !std::ptr::addr_eq(Arc::as_ptr(o), Arc::as_ptr(&be)) {
                    assert!(
                        matches!(
                            be.binary(BinaryOp::Add, &a, &t),
                            Err(KernelError::ForeignTensor { .. })
                        ),
                        "{name}"
                    );
                }
            }
        }
    }
}
