//! Naive host reference: wrapping u64 arithmetic and a triple-loop matmul.

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

pub fn matmul(a: &[u64], b: &[u64], acc: Option<&[u64]>, m: usize, k: usize, n: usize) -> Vec<u64> {
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
