//! `scripts/gpu-bench.sh --quick` runs end to end (on lavapipe in CI) and prints every table the
//! full run prints. Without a GPU adapter outside CI the test prints a skip line.

use std::process::Command;

#[test]
fn gpu_bench_script_quick_runs_and_prints_every_table() {
    if std::env::var("CI").as_deref() != Ok("true") && kernels::GpuBackend::new().is_err() {
        eprintln!("SKIP gpu-bench script: no GPU adapter");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/gpu-bench.sh"))
        .arg("--quick")
        .env("SECURE_SERVING_BIN", env!("CARGO_BIN_EXE_secure-serving"))
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "gpu-bench.sh --quick failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "backend: GPU '",
        "64-bit arithmetic:",
        "| shape m x k x n | u64 GEMM ms",
        "CPU vs GPU through a VGG16 fc layer",
        "Comparison on the cpu backend:",
        "Comparison on the gpu backend:",
        "| ReLU (x4096) |",
        "secure, CPU vs GPU backend",
        "Host<->device traffic per batch on the GPU backend",
        "== done in",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}
