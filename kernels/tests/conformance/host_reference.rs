//! (a) Each backend against the naive host reference.

use super::*;

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
