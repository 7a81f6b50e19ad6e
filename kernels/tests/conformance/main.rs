//! Backend conformance: one suite run against every available backend.
//!
//! * every backend against a naive host reference written here (wrapping u64, triple-loop
//!   matmul), on edge values and shapes that are not multiples of any tile size;
//! * every GPU configuration against the CPU backend, bit for bit, on random cases (seed from
//!   env `SEED`, else fresh from the OS; printed so a failure can be replayed);
//! * GPU memory stays flat over 1000 repeated ops (pool counters unchanged after warm-up);
//! * asking for a missing wgpu backend fails with `GpuUnavailable`.
//!
//! GPU configurations: the default (variant chosen at start-up), the other u64 variant where the
//! adapter offers it, and a backend whose storage bindings are capped at 64 KiB and dispatch
//! grids at 8 workgroups per axis, so that small tensors exercise the chunking of large operands
//! and 2-D dispatch grids. Without an adapter the GPU parts print
//! one `SKIP gpu conformance: <reason>` line and pass, except with env `CI=true`, where a missing
//! adapter fails.

use std::sync::{Arc, OnceLock};

use kernels::backend::{BeaverKind, BinaryOp, ScalarOp};
use kernels::gpu::{GpuOptions, U64Variant};
use kernels::{Backend, CpuBackend, GpuBackend, KernelError, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BINARY_OPS: [BinaryOp; 5] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Xor,
    BinaryOp::And,
];
const SCALAR_OPS: [ScalarOp; 8] = [
    ScalarOp::Neg,
    ScalarOp::Add,
    ScalarOp::Mul,
    ScalarOp::Xor,
    ScalarOp::And,
    ScalarOp::ShrArith,
    ScalarOp::ShrLogical,
    ScalarOp::Shl,
];
const SHIFTS: [u64; 6] = [0, 1, 31, 32, 33, 63];
const EDGE: [u64; 14] = [
    0,
    1,
    2,
    1 << 63,
    (1 << 63) - 1,
    u64::MAX,
    u64::MAX - 1,
    (1 << 32) - 1,
    1 << 32,
    (1 << 32) + 1,
    1 << 31,
    0xffff,
    0x1_0000,
    0xffff_ffff_0000_0000,
];
/// Dimensions around the tile sizes (64 tiles, 16 deep, 4x4 blocks, skinny limit 16).
const DIMS: [usize; 12] = [1, 2, 7, 15, 16, 17, 33, 63, 65, 100, 129, 257];
/// Random cases of the default GPU configuration (others run fewer).
const RANDOM_CASES: usize = 1000;

mod bit_ops;
mod gather;
mod gpu_vs_cpu;
mod host_reference;
mod memory_and_errors;
mod reference;
mod slow;

// ---------------------------------------------------------------------------------------------
// Backends under test.

/// Write a line straight to stderr, past the test harness's output capture, so the CI log shows
/// it (adapter, SKIP reason, seed) even without `--nocapture`.
fn announce(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// One GPU configuration.
struct GpuUnderTest {
    label: String,
    gpu: Arc<GpuBackend>,
    /// How it was opened (to open a private twin).
    opts: GpuOptions,
}

fn open_gpu(label: &str, opts: GpuOptions) -> GpuUnderTest {
    let gpu = GpuBackend::with_options(opts.clone())
        .unwrap_or_else(|e| panic!("opening GPU configuration '{label}': {e}"));
    announce(&format!("gpu[{label}]: {}", gpu.describe()));
    GpuUnderTest {
        label: label.to_string(),
        gpu: Arc::new(gpu),
        opts,
    }
}

/// The GPU configurations, opened once per test binary. Empty when no adapter exists (after
/// printing the SKIP line); with `CI=true` a missing adapter panics instead.
fn gpus() -> &'static [GpuUnderTest] {
    static GPUS: OnceLock<Vec<GpuUnderTest>> = OnceLock::new();
    GPUS.get_or_init(|| {
        let t0 = std::time::Instant::now();
        let first = match GpuBackend::new() {
            Ok(g) => g,
            Err(KernelError::GpuUnavailable(reason)) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("CI=true but no GPU adapter could be opened: {reason}");
                }
                announce(&format!("SKIP gpu conformance: {reason}"));
                return Vec::new();
            }
            Err(e) => panic!("opening the GPU backend failed: {e}"),
        };
        announce(&format!(
            "gpu adapter: {} (backend opened in {:.0?})",
            first.adapter_name(),
            t0.elapsed()
        ));
        announce(&format!("gpu[default]: {}", first.describe()));
        let chosen = first.variant();
        let mut v = vec![GpuUnderTest {
            label: format!("default/{chosen}"),
            gpu: Arc::new(first),
            opts: GpuOptions::default(),
        }];
        let other = match chosen {
            U64Variant::NativeU64 => Some(U64Variant::U32Pairs),
            U64Variant::U32Pairs => {
                let forced = GpuBackend::with_options(GpuOptions {
                    u64_variant: Some(U64Variant::NativeU64),
                    ..Default::default()
                });
                match forced {
                    Ok(_) => Some(U64Variant::NativeU64),
                    Err(KernelError::GpuUnavailable(why)) => {
                        announce(&format!("gpu: native u64 variant not testable here: {why}"));
                        None
                    }
                    Err(e) => panic!("forcing native u64: {e}"),
                }
            }
        };
        if let Some(o) = other {
            v.push(open_gpu(
                &format!("forced/{o}"),
                GpuOptions {
                    u64_variant: Some(o),
                    ..Default::default()
                },
            ));
        }
        v.push(open_gpu(
            &format!("chunked-64KiB-grid8/{chosen}"),
            GpuOptions {
                u64_variant: Some(chosen),
                max_binding_bytes: Some(64 << 10),
                max_workgroups_per_dim: Some(8),
                ..Default::default()
            },
        ));
        v
    })
}

/// Every backend: the CPU plus each GPU configuration.
fn all_backends() -> Vec<(String, Arc<dyn Backend>)> {
    let mut v: Vec<(String, Arc<dyn Backend>)> = vec![("cpu".into(), Arc::new(CpuBackend::new()))];
    for g in gpus() {
        v.push((format!("gpu[{}]", g.label), g.gpu.clone()));
    }
    v
}

/// The run's seed: env `SEED`, else fresh from the OS; printed once.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let s = match std::env::var("SEED") {
            Ok(v) => v.parse().expect("SEED must be a u64"),
            Err(_) => rand::random(),
        };
        announce(&format!(
            "conformance SEED={s} (rerun with SEED={s} to replay)"
        ));
        s
    })
}

fn rng(salt: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed() ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

// ---------------------------------------------------------------------------------------------
// Values and comparison.

/// Values mixing edge cases and uniform randoms (`edge_share` in [0, 1]).
fn values(r: &mut ChaCha8Rng, len: usize, edge_share: f64) -> Vec<u64> {
    (0..len)
        .map(|_| {
            if r.gen_bool(edge_share) {
                EDGE[r.gen_range(0..EDGE.len())]
            } else {
                r.gen()
            }
        })
        .collect()
}

/// Every ordered pair of edge values, as two equal-length vectors.
fn edge_pairs() -> (Vec<u64>, Vec<u64>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for &x in &EDGE {
        for &y in &EDGE {
            a.push(x);
            b.push(y);
        }
    }
    (a, b)
}

#[track_caller]
fn check(what: &str, got: &[u64], want: &[u64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: element {i} is {:#018x}, expected {:#018x} ({} of {} differ; SEED={})",
            got[i],
            want[i],
            (0..got.len()).filter(|&j| got[j] != want[j]).count(),
            got.len(),
            seed()
        );
    }
}

fn up(be: &dyn Backend, shape: &[usize], data: &[u64]) -> Tensor {
    be.upload(shape, data).expect("upload")
}

fn down(be: &dyn Backend, t: &Tensor) -> Vec<u64> {
    be.download(t).expect("download")
}
