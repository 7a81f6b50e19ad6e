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

// ---------------------------------------------------------------------------------------------
// Naive host reference.

mod reference {
    use super::{BeaverKind, BinaryOp, ScalarOp};

    pub fn binary(op: BinaryOp, a: &[u64], b: &[u64]) -> Vec<u64> {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| match op {
                BinaryOp::Add => x.wrapping_add(y),
                BinaryOp::Sub => x.wrapping_sub(y),
                BinaryOp::Mul => x.wrapping_mul(y),
                BinaryOp::Xor => x ^ y,
                BinaryOp::And => x & y,
            })
            .collect()
    }

    pub fn scalar(op: ScalarOp, a: &[u64], s: u64) -> Vec<u64> {
        a.iter()
            .map(|&x| match op {
                ScalarOp::Neg => 0u64.wrapping_sub(x),
                ScalarOp::Add => x.wrapping_add(s),
                ScalarOp::Mul => x.wrapping_mul(s),
                ScalarOp::Xor => x ^ s,
                ScalarOp::And => x & s,
                ScalarOp::ShrArith => ((x as i64) >> s) as u64,
                ScalarOp::ShrLogical => x >> s,
                ScalarOp::Shl => x << s,
            })
            .collect()
    }

    pub fn matmul(
        a: &[u64],
        b: &[u64],
        acc: Option<&[u64]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<u64> {
        let mut c = acc.map_or_else(|| vec![0; m * n], <[u64]>::to_vec);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0u64;
                for l in 0..k {
                    s = s.wrapping_add(a[i * k + l].wrapping_mul(b[l * n + j]));
                }
                c[i * n + j] = c[i * n + j].wrapping_add(s);
            }
        }
        c
    }

    pub fn beaver(kind: BeaverKind, t: [&[u64]; 5], with_ef: bool) -> Vec<u64> {
        let [c, e, f, a, b] = t;
        (0..c.len())
            .map(|i| match kind {
                BeaverKind::Arithmetic => {
                    let z = c[i]
                        .wrapping_add(e[i].wrapping_mul(b[i]))
                        .wrapping_add(a[i].wrapping_mul(f[i]));
                    if with_ef {
                        z.wrapping_add(e[i].wrapping_mul(f[i]))
                    } else {
                        z
                    }
                }
                BeaverKind::Boolean => {
                    let z = c[i] ^ (e[i] & b[i]) ^ (a[i] & f[i]);
                    if with_ef {
                        z ^ (e[i] & f[i])
                    } else {
                        z
                    }
                }
            })
            .collect()
    }

    /// The truncation combine written out in i128 arithmetic (independent of the kernels).
    pub fn truncate(c: &[u64], rs: &[u64], rm: &[u64], bits: u32, first: bool) -> Vec<u64> {
        (0..c.len())
            .map(|i| {
                let wrap = (rm[i] as i128) * (1 - (c[i] >> 63) as i128) * (1i128 << (64 - bits));
                let mut y = wrap - rs[i] as i128;
                if first {
                    y += (c[i] >> bits) as i128 - (1i128 << (62 - bits));
                }
                y.rem_euclid(1i128 << 64) as u64
            })
            .collect()
    }

    pub fn sum_rows(a: &[u64], m: usize, n: usize) -> Vec<u64> {
        (0..m)
            .map(|i| {
                a[i * n..(i + 1) * n]
                    .iter()
                    .fold(0u64, |s, &v| s.wrapping_add(v))
            })
            .collect()
    }
}

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

// ---------------------------------------------------------------------------------------------
// (a) Each backend against the naive host reference.

fn reference_suite(name: &str, be: &dyn Backend, r: &mut ChaCha8Rng) {
    // Round trip, including an empty tensor.
    for shape in [vec![0usize], vec![1], vec![7, 33], vec![257, 3]] {
        let len = shape.iter().product();
        let d = values(r, len, 0.5);
        check(
            &format!("{name} upload/download {shape:?}"),
            &down(be, &up(be, &shape, &d)),
            &d,
        );
    }

    // Elementwise ops on every pair of edge values.
    let (ea, eb) = edge_pairs();
    let shape = [EDGE.len(), EDGE.len()];
    let (ta, tb) = (up(be, &shape, &ea), up(be, &shape, &eb));
    for op in BINARY_OPS {
        let got = down(be, &be.binary(op, &ta, &tb).unwrap());
        check(
            &format!("{name} binary {op:?} edges"),
            &got,
            &reference::binary(op, &ea, &eb),
        );
    }
    for op in SCALAR_OPS {
        let scalars: Vec<u64> = match op {
            ScalarOp::ShrArith | ScalarOp::ShrLogical | ScalarOp::Shl => SHIFTS.to_vec(),
            _ => EDGE.to_vec(),
        };
        for s in scalars {
            let got = down(be, &be.scalar(op, &ta, s).unwrap());
            check(
                &format!("{name} scalar {op:?} {s:#x} edges"),
                &got,
                &reference::scalar(op, &ea, s),
            );
        }
    }

    // Beaver, both kinds, with and without e*f, on edge-heavy data of an odd size.
    let shape = [33, 7];
    let t: Vec<Vec<u64>> = (0..5).map(|_| values(r, 33 * 7, 0.6)).collect();
    let tt: Vec<Tensor> = t.iter().map(|d| up(be, &shape, d)).collect();
    for kind in [BeaverKind::Arithmetic, BeaverKind::Boolean] {
        for with_ef in [false, true] {
            let got = be
                .beaver_combine(kind, &tt[0], &tt[1], &tt[2], &tt[3], &tt[4], with_ef)
                .unwrap();
            let want = reference::beaver(kind, [&t[0], &t[1], &t[2], &t[3], &t[4]], with_ef);
            check(
                &format!("{name} beaver {kind:?} ef={with_ef}"),
                &down(be, &got),
                &want,
            );
        }
    }

    // Truncation combine for every shift, both parties, edge-heavy data.
    let t: Vec<Vec<u64>> = (0..3).map(|_| values(r, 33 * 7, 0.6)).collect();
    let tt: Vec<Tensor> = t.iter().map(|d| up(be, &[33, 7], d)).collect();
    for bits in 1..=62 {
        for first in [false, true] {
            let got = be
                .truncate_combine(&tt[0], &tt[1], &tt[2], bits, first)
                .unwrap();
            check(
                &format!("{name} truncate bits={bits} first={first}"),
                &down(be, &got),
                &reference::truncate(&t[0], &t[1], &t[2], bits, first),
            );
        }
    }

    // Matmul and sum_rows over shapes straddling the tile sizes.
    for &(m, k, n) in &[
        (1, 1, 1),
        (1, 257, 7),
        (7, 33, 100),
        (16, 17, 65),
        (17, 16, 33),
        (33, 100, 1),
        (65, 7, 63),
        (100, 65, 129),
        (257, 33, 17),
        (5, 0, 3),
    ] {
        let (a, b, c) = (
            values(r, m * k, 0.4),
            values(r, k * n, 0.4),
            values(r, m * n, 0.4),
        );
        let (ta, tb, tc) = (
            up(be, &[m, k], &a),
            up(be, &[k, n], &b),
            up(be, &[m, n], &c),
        );
        let got = down(be, &be.matmul(&ta, &tb, None).unwrap());
        check(
            &format!("{name} matmul {m}x{k}x{n}"),
            &got,
            &reference::matmul(&a, &b, None, m, k, n),
        );
        let got = down(be, &be.matmul(&ta, &tb, Some(&tc)).unwrap());
        check(
            &format!("{name} matmul+acc {m}x{k}x{n}"),
            &got,
            &reference::matmul(&a, &b, Some(&c), m, k, n),
        );
        let got = down(be, &be.sum_rows(&ta).unwrap());
        check(
            &format!("{name} sum_rows {m}x{k}"),
            &got,
            &reference::sum_rows(&a, m, k),
        );
    }

    // Carry chains: all-ones operands and long all-ones rows.
    let ones = vec![u64::MAX; 257 * 257];
    let t1 = up(be, &[257, 257], &ones);
    let got = down(be, &be.matmul(&t1, &t1, Some(&t1)).unwrap());
    check(
        &format!("{name} matmul all-ones 257^3"),
        &got,
        &reference::matmul(&ones, &ones, Some(&ones), 257, 257, 257),
    );
    let got = down(be, &be.sum_rows(&t1).unwrap());
    check(
        &format!("{name} sum_rows all-ones"),
        &got,
        &reference::sum_rows(&ones, 257, 257),
    );

    // The trait's default beaver_matmul_combine over the backend's matmul.
    let (m, k, n) = (33, 17, 7);
    let d: Vec<Vec<u64>> = [m * n, m * k, k * n, m * k, k * n]
        .iter()
        .map(|&l| values(r, l, 0.3))
        .collect();
    let shapes = [[m, n], [m, k], [k, n], [m, k], [k, n]];
    let t: Vec<Tensor> = d.iter().zip(&shapes).map(|(v, s)| up(be, s, v)).collect();
    for with_ef in [false, true] {
        let got = be
            .beaver_matmul_combine(&t[0], &t[1], &t[2], &t[3], &t[4], with_ef)
            .unwrap();
        let mut want = reference::matmul(&d[1], &d[4], Some(&d[0]), m, k, n);
        want = reference::matmul(&d[3], &d[2], Some(&want), m, k, n);
        if with_ef {
            want = reference::matmul(&d[1], &d[2], Some(&want), m, k, n);
        }
        check(
            &format!("{name} beaver_matmul ef={with_ef}"),
            &down(be, &got),
            &want,
        );
    }
}

#[test]
fn every_backend_matches_host_reference() {
    for (name, be) in all_backends() {
        reference_suite(&name, be.as_ref(), &mut rng(1));
    }
}

// ---------------------------------------------------------------------------------------------
// (b) GPU against CPU, bit for bit, on random cases.

fn dim(r: &mut ChaCha8Rng) -> usize {
    if r.gen_bool(0.7) {
        DIMS[r.gen_range(0..DIMS.len())]
    } else {
        r.gen_range(1..=300)
    }
}

/// What one GPU-vs-CPU case computes.
#[derive(Clone, Copy, Debug)]
enum Case {
    Binary(BinaryOp),
    Scalar(ScalarOp, u64),
    Matmul { acc: bool },
    Beaver(BeaverKind, bool),
    Truncate(u32, bool),
    SumRows,
}

fn is_shift(op: ScalarOp) -> bool {
    matches!(
        op,
        ScalarOp::ShrArith | ScalarOp::ShrLogical | ScalarOp::Shl
    )
}

/// Every op variant once: each binary op, each scalar op (shifts by 0, 1, 31, 32, 33 and 63;
/// the others with 0, 2^64-1 and 2^32+1), matmul with and without accumulator, both Beaver
/// kinds with and without e*f, and sum_rows.
fn sweep() -> Vec<Case> {
    let mut v: Vec<Case> = BINARY_OPS.iter().map(|&op| Case::Binary(op)).collect();
    for op in SCALAR_OPS {
        let scalars: &[u64] = if is_shift(op) {
            &SHIFTS
        } else {
            &[0, u64::MAX, (1 << 32) + 1]
        };
        v.extend(scalars.iter().map(|&s| Case::Scalar(op, s)));
    }
    v.extend([Case::Matmul { acc: false }, Case::Matmul { acc: true }]);
    for kind in [BeaverKind::Arithmetic, BeaverKind::Boolean] {
        v.extend([Case::Beaver(kind, false), Case::Beaver(kind, true)]);
    }
    v.extend([
        Case::Truncate(1, true),
        Case::Truncate(16, false),
        Case::Truncate(62, true),
    ]);
    v.push(Case::SumRows);
    v
}

/// A random case: op kinds about equally likely, scalars and shifts favouring edge values.
fn pick_case(r: &mut ChaCha8Rng) -> Case {
    match r.gen_range(0..7) {
        6 => Case::Truncate(r.gen_range(1..=62), r.gen()),
        0 => Case::Binary(BINARY_OPS[r.gen_range(0..BINARY_OPS.len())]),
        1 => {
            let op = SCALAR_OPS[r.gen_range(0..SCALAR_OPS.len())];
            let s = if !is_shift(op) {
                values(r, 1, 0.5)[0]
            } else if r.gen_bool(0.7) {
                SHIFTS[r.gen_range(0..SHIFTS.len())]
            } else {
                r.gen_range(0..64)
            };
            Case::Scalar(op, s)
        }
        2 => Case::Matmul { acc: r.gen() },
        3 | 4 => {
            let kind = if r.gen() {
                BeaverKind::Arithmetic
            } else {
                BeaverKind::Boolean
            };
            Case::Beaver(kind, r.gen())
        }
        _ => Case::SumRows,
    }
}

/// Run `case` on random shapes and data on both backends; returns its description after
/// checking GPU == CPU bit for bit.
fn run_case(gpu: &dyn Backend, cpu: &dyn Backend, r: &mut ChaCha8Rng, case: Case) -> String {
    let edge_share = [0.0, 0.3, 0.9][r.gen_range(0..3)];
    let (m, n) = (dim(r), dim(r));
    let both = |shape: &[usize], d: &[u64]| (up(gpu, shape, d), up(cpu, shape, d));
    let desc;
    let (g, c) = match case {
        Case::Binary(op) => {
            let (a, b) = (values(r, m * n, edge_share), values(r, m * n, edge_share));
            let ((ga, ca), (gb, cb)) = (both(&[m, n], &a), both(&[m, n], &b));
            desc = format!("binary {op:?} [{m},{n}]");
            (gpu.binary(op, &ga, &gb), cpu.binary(op, &ca, &cb))
        }
        Case::Scalar(op, s) => {
            let a = values(r, m * n, edge_share);
            let (ga, ca) = both(&[m, n], &a);
            desc = format!("scalar {op:?} s={s:#x} [{m},{n}]");
            (gpu.scalar(op, &ga, s), cpu.scalar(op, &ca, s))
        }
        Case::Matmul { acc } => {
            let k = dim(r);
            let a = values(r, m * k, edge_share);
            let b = values(r, k * n, edge_share);
            let ((ga, ca), (gb, cb)) = (both(&[m, k], &a), both(&[k, n], &b));
            if acc {
                let acc = values(r, m * n, edge_share);
                let (gc, cc) = both(&[m, n], &acc);
                desc = format!("matmul+acc {m}x{k}x{n}");
                (
                    gpu.matmul(&ga, &gb, Some(&gc)),
                    cpu.matmul(&ca, &cb, Some(&cc)),
                )
            } else {
                desc = format!("matmul {m}x{k}x{n}");
                (gpu.matmul(&ga, &gb, None), cpu.matmul(&ca, &cb, None))
            }
        }
        Case::Beaver(bk, with_ef) => {
            let d: Vec<Vec<u64>> = (0..5).map(|_| values(r, m * n, edge_share)).collect();
            let t: Vec<(Tensor, Tensor)> = d.iter().map(|v| both(&[m, n], v)).collect();
            desc = format!("beaver {bk:?} ef={with_ef} [{m},{n}]");
            (
                gpu.beaver_combine(bk, &t[0].0, &t[1].0, &t[2].0, &t[3].0, &t[4].0, with_ef),
                cpu.beaver_combine(bk, &t[0].1, &t[1].1, &t[2].1, &t[3].1, &t[4].1, with_ef),
            )
        }
        Case::Truncate(bits, first) => {
            let d: Vec<Vec<u64>> = (0..3).map(|_| values(r, m * n, edge_share)).collect();
            let t: Vec<(Tensor, Tensor)> = d.iter().map(|v| both(&[m, n], v)).collect();
            desc = format!("truncate bits={bits} first={first} [{m},{n}]");
            (
                gpu.truncate_combine(&t[0].0, &t[1].0, &t[2].0, bits, first),
                cpu.truncate_combine(&t[0].1, &t[1].1, &t[2].1, bits, first),
            )
        }
        Case::SumRows => {
            let a = values(r, m * n, edge_share);
            let (ga, ca) = both(&[m, n], &a);
            desc = format!("sum_rows [{m},{n}]");
            (gpu.sum_rows(&ga), cpu.sum_rows(&ca))
        }
    };
    let (g, c) = (g.unwrap_or_else(|e| panic!("gpu {desc}: {e}")), c.unwrap());
    assert_eq!(g.shape(), c.shape(), "{desc}: shape");
    check(&desc, &down(gpu, &g), &down(cpu, &c));
    desc
}

/// `cases` GPU-vs-CPU cases on GPU configuration `index`: the full sweep first, then random.
fn gpu_vs_cpu(index: usize, cases: usize, salt: u64) {
    let Some(g) = gpus().get(index) else {
        return;
    };
    let cpu = CpuBackend::new();
    let mut r = rng(salt);
    let t0 = std::time::Instant::now();
    let sweep = sweep();
    for i in 0..cases.max(sweep.len()) {
        let case = sweep.get(i).copied().unwrap_or_else(|| pick_case(&mut r));
        run_case(g.gpu.as_ref(), &cpu, &mut r, case);
    }
    eprintln!(
        "gpu[{}]: {} cases ({} sweep + random) bit-identical to the CPU in {:.1?} (SEED={})",
        g.label,
        cases.max(sweep.len()),
        sweep.len(),
        t0.elapsed(),
        seed()
    );
}

#[test]
fn gpu_matches_cpu_default() {
    gpu_vs_cpu(0, RANDOM_CASES, 2);
}

#[test]
fn gpu_matches_cpu_other_configs() {
    // The other u64 variant (where offered) and the chunked configuration.
    for i in 1..gpus().len() {
        gpu_vs_cpu(i, 300, 3 + i as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// (b2) Comparison-circuit and layout ops: every backend against a bit-by-bit host reference,
// and every GPU configuration against the CPU, on random and edge values and odd sizes.

/// Sizes around the 64-bit packing, the 256-wide workgroups and the chunked configuration's
/// 8192-element bindings and 2048-element select chunks.
const BIT_SIZES: [usize; 14] = [
    1, 2, 3, 63, 64, 65, 127, 129, 1000, 2047, 2049, 4097, 8193, 16385,
];

mod bit_reference {
    /// Bit `i` of `x`.
    fn bit(x: u64, i: usize) -> u64 {
        (x >> i) & 1
    }

    pub fn compact(words: &[u64], odd: bool) -> Vec<u64> {
        let s = odd as usize;
        (0..words.len().div_ceil(2))
            .map(|i| {
                let mut out = 0u64;
                for half in 0..2 {
                    let w = words.get(2 * i + half).copied().unwrap_or(0);
                    for b in 0..32 {
                        out |= bit(w, 2 * b + s) << (32 * half + b);
                    }
                }
                out
            })
            .collect()
    }

    pub fn pack_msb(x: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; x.len().div_ceil(64)];
        for (i, v) in x.iter().enumerate() {
            out[i / 64] |= bit(*v, 63) << (i % 64);
        }
        out
    }

    /// `[first] d + (1 - 2d) r` written with a branch on the bit.
    pub fn bit_select(d: &[u64], r: &[u64], first: bool) -> Vec<u64> {
        (0..r.len())
            .map(|i| {
                if bit(d[i / 64], i % 64) == 1 {
                    (first as u64).wrapping_sub(r[i])
                } else {
                    r[i]
                }
            })
            .collect()
    }

    /// `(1 - 2d)(prod + e r) + d y` written with a branch on the bit.
    pub fn payload_select(d: &[u64], r: &[u64], e: &[u64], prod: &[u64], y: &[u64]) -> Vec<u64> {
        (0..r.len())
            .map(|i| {
                let yr = prod[i].wrapping_add(e[i].wrapping_mul(r[i]));
                if bit(d[i / 64], i % 64) == 1 {
                    y[i].wrapping_sub(yr)
                } else {
                    yr
                }
            })
            .collect()
    }
}

/// Run every comparison and layout op of `be` at `n` elements and return the outputs by name.
fn compare_ops(
    be: &dyn Backend,
    r: &mut ChaCha8Rng,
    n: usize,
) -> Vec<(String, Vec<u64>, Vec<u64>)> {
    let x = values(r, n, 0.4);
    let d = values(r, n.div_ceil(64), 0.2);
    let [rr, e, prod, y] = [0; 4].map(|_| values(r, n, 0.4));
    let first = r.gen_bool(0.5);
    let xt = up(be, &[n], &x);
    let dt = up(be, &[n.div_ceil(64)], &d);
    let [rt, et, pt, yt] = [&rr, &e, &prod, &y].map(|v| up(be, &[n], v));
    let mut out = Vec::new();
    for odd in [false, true] {
        out.push((
            format!("compact_bits(odd={odd}) n={n}"),
            down(be, &be.compact_bits(&xt, odd).unwrap()),
            bit_reference::compact(&x, odd),
        ));
    }
    out.push((
        format!("pack_msb n={n}"),
        down(be, &be.pack_msb(&xt).unwrap()),
        bit_reference::pack_msb(&x),
    ));
    out.push((
        format!("bit_select(first={first}) n={n}"),
        down(be, &be.bit_select(&dt, &rt, first).unwrap()),
        bit_reference::bit_select(&d, &rr, first),
    ));
    out.push((
        format!("payload_select n={n}"),
        down(be, &be.payload_select(&dt, &rt, &et, &pt, &yt).unwrap()),
        bit_reference::payload_select(&d, &rr, &e, &prod, &y),
    ));
    let start = r.gen_range(0..=n);
    let len = r.gen_range(0..=n - start);
    out.push((
        format!("slice({start}, {len}) n={n}"),
        down(be, &be.slice(&xt, start, len).unwrap()),
        x[start..start + len].to_vec(),
    ));
    out.push((
        format!("concat n={n}"),
        down(be, &be.concat(&[&xt, &dt, &rt]).unwrap()),
        [x.as_slice(), &d, &rr].concat(),
    ));
    let v = values(r, 1, 0.5)[0];
    out.push((
        format!("fill({v:#x}) n={n}"),
        down(be, &be.fill(&[n], v).unwrap()),
        vec![v; n],
    ));
    out.push((
        format!("binary_host(xor) n={n}"),
        down(be, &be.binary_host(BinaryOp::Xor, &xt, &rr).unwrap()),
        x.iter().zip(&rr).map(|(a, b)| a ^ b).collect(),
    ));
    // A transpose of a matrix with n elements in an odd shape.
    let rows = [33, 17, 7, 5, 3]
        .into_iter()
        .find(|m| n.is_multiple_of(*m))
        .unwrap_or(1);
    let cols = n / rows;
    let t = be.transpose(&up(be, &[rows, cols], &x)).unwrap();
    assert_eq!(t.shape(), [cols, rows]);
    out.push((
        format!("transpose [{rows}, {cols}]"),
        down(be, &t),
        (0..n).map(|i| x[(i % rows) * cols + i / rows]).collect(),
    ));
    out
}

#[test]
fn comparison_ops_match_reference_and_cpu() {
    let cpu = CpuBackend::new();
    let backends = all_backends();
    for &n in &BIT_SIZES {
        // The same inputs on every backend: each draws from a generator with one salt.
        let mut cpu_out = None;
        for (name, be) in &backends {
            let mut r = rng(11 + n as u64);
            let got = compare_ops(be.as_ref(), &mut r, n);
            for (what, g, want) in &got {
                check(&format!("{name} {what}"), g, want);
            }
            match &cpu_out {
                None => cpu_out = Some(got),
                Some(c) => {
                    for ((what, g, _), (_, cg, _)) in got.iter().zip(c) {
                        check(&format!("{name} vs cpu {what}"), g, cg);
                    }
                }
            }
        }
    }
    // Edge values through the packing ops.
    let (a, b) = edge_pairs();
    let words = [a.as_slice(), &b].concat();
    for (name, be) in &backends {
        let t = up(be.as_ref(), &[words.len()], &words);
        for odd in [false, true] {
            check(
                &format!("{name} compact edges"),
                &down(be.as_ref(), &be.compact_bits(&t, odd).unwrap()),
                &bit_reference::compact(&words, odd),
            );
        }
        check(
            &format!("{name} pack_msb edges"),
            &down(be.as_ref(), &be.pack_msb(&t).unwrap()),
            &bit_reference::pack_msb(&words),
        );
    }
    // Empty inputs.
    for (name, be) in &backends {
        let e = up(be.as_ref(), &[0], &[]);
        assert_eq!(be.compact_bits(&e, true).unwrap().len(), 0, "{name}");
        assert_eq!(be.pack_msb(&e).unwrap().len(), 0, "{name}");
        assert_eq!(be.bit_select(&e, &e, true).unwrap().len(), 0, "{name}");
        assert_eq!(be.concat(&[]).unwrap().len(), 0, "{name}");
    }
    // Bad operands are errors.
    let x = up(&cpu, &[130], &[0; 130]);
    let d = up(&cpu, &[2], &[0; 2]);
    assert!(cpu.bit_select(&d, &x, true).is_err());
    assert!(cpu.slice(&x, 100, 31).is_err());
    assert!(cpu.transpose(&x).is_err());
}

/// Counters: one upload per upload/binary_host, one download per download, bytes exact.
#[test]
fn transfers_are_counted() {
    // Private backends: the shared ones count the transfers of tests running in parallel.
    let mut backends: Vec<(String, Arc<dyn Backend>)> =
        vec![("cpu".into(), Arc::new(CpuBackend::new()))];
    if let Some(g) = gpus().first() {
        backends.push((g.label.clone(), open_gpu(&g.label, g.opts.clone()).gpu));
    }
    for (name, be) in backends {
        let before = be.transfers();
        let t = up(be.as_ref(), &[5, 3], &[7; 15]);
        let u = be.binary_host(BinaryOp::Add, &t, &[1; 15]).unwrap();
        let s = be.concat(&[&t, &u]).unwrap();
        let _ = be.transpose(&t).unwrap();
        let _ = be.compact_bits(&s, true).unwrap();
        assert_eq!(down(be.as_ref(), &u), vec![8; 15], "{name}");
        let d = be.transfers().since(&before);
        assert_eq!(
            d,
            kernels::TransferStats {
                uploads: 2,
                upload_bytes: 240,
                downloads: 1,
                download_bytes: 120,
            },
            "{name}"
        );
    }
}

/// Few-row products with a deep k are split along k into parallel segments (summed after);
/// the result matches the reference with and without an accumulator.
#[test]
fn skinny_products_split_along_k() {
    let mut r = rng(41);
    for g in gpus() {
        let be = g.gpu.as_ref();
        for &(m, k, n) in &[(1, 4096, 3), (5, 2000, 70), (16, 1100, 1), (3, 1537, 65)] {
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
                    .unwrap();
                check(
                    &format!("{} skinny [{m},{k}]x[{k},{n}] acc={acc}", g.label),
                    &down(be, &got),
                    &want,
                );
            }
        }
    }
}

/// The device ChaCha12 keystream equals rand_chacha's `ChaCha12Rng` (sequential `fill_bytes`)
/// at every seek used by parallel expansion: block and mid-block word positions, the 32-bit
/// block-counter carry, odd lengths and lengths over the chunked configuration's bindings.
#[test]
fn chacha12_matches_rand_chacha_stream() {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut r = rng(31);
    let backends = all_backends();
    let positions: [u128; 8] = [
        0,
        2,
        14,
        16,
        30,
        (1 << 36) + 6,
        16 * ((1u128 << 32) - 1) + 8,
        (1 << 67) + 10,
    ];
    for (case, &pos) in positions.iter().enumerate() {
        let key: [u8; 32] = r.gen();
        let stream: u64 = if case % 2 == 0 { r.gen() } else { case as u64 };
        for len in [0usize, 1, 7, 8, 9, 100, 1000, 20001] {
            let mut want = vec![0u64; len];
            let mut rng = rand_chacha::ChaCha12Rng::from_seed(key);
            rng.set_stream(stream);
            rng.set_word_pos(pos);
            rng.fill_bytes(bytemuck_bytes(&mut want));
            for (name, be) in &backends {
                let t = be.chacha12(&key, stream, pos, len).unwrap();
                check(
                    &format!("{name} chacha12 stream {stream} pos {pos} len {len}"),
                    &down(be.as_ref(), &t),
                    &want,
                );
            }
        }
    }
    let cpu = CpuBackend::new();
    assert!(
        cpu.chacha12(&[0; 32], 0, 3, 4).is_err(),
        "odd word position"
    );
}

fn bytemuck_bytes(v: &mut [u64]) -> &mut [u8] {
    let len = v.len() * 8;
    // SAFETY: u8 has no alignment or validity requirements; the view covers exactly `v`.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), len) }
}

// ---------------------------------------------------------------------------------------------
// (c) Memory stays flat.

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

// ---------------------------------------------------------------------------------------------
// (d) Errors.

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

// ---------------------------------------------------------------------------------------------
// Slow checks, run on demand: `cargo test --release -p kernels --test conformance -- --ignored`.

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

// ---------------------------------------------------------------------------------------------
// Gather (local re-layouts: im2col, pooling windows).

#[test]
fn gather_matches_host_reference() {
    use kernels::GATHER_ZERO;
    let mut r = rng(7);
    for (name, be) in all_backends() {
        // Output lengths past one chunk of the 64 KiB-binding configuration (8192 elements).
        for &(src_len, out_len) in &[(1, 1), (7, 3), (100, 333), (5000, 20_001), (33, 0)] {
            let src = values(&mut r, src_len, 0.3);
            let index: Vec<u32> = (0..out_len)
                .map(|_| {
                    if r.gen_bool(0.2) {
                        GATHER_ZERO
                    } else {
                        r.gen_range(0..src_len as u32)
                    }
                })
                .collect();
            let want: Vec<u64> = index
                .iter()
                .map(|&i| if i == GATHER_ZERO { 0 } else { src[i as usize] })
                .collect();
            let t = up(be.as_ref(), &[src_len], &src);
            let got = be.gather(&t, &index, &[out_len]).unwrap();
            assert_eq!(got.shape(), [out_len]);
            check(
                &format!("{name} gather {src_len}->{out_len}"),
                &down(be.as_ref(), &got),
                &want,
            );
        }
        let t = up(be.as_ref(), &[4], &[1, 2, 3, 4]);
        let e = be.gather(&t, &[0, 4], &[2]).unwrap_err().to_string();
        assert!(
            e.contains("index 4 at position 1 is out of range"),
            "{name}: {e}"
        );
        let e = be.gather(&t, &[0, 1], &[3]).unwrap_err().to_string();
        assert!(e.contains("does not hold 2 indices"), "{name}: {e}");
    }
}
