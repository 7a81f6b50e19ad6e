//! (b) GPU against CPU, bit for bit, on random cases.

use super::*;

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
